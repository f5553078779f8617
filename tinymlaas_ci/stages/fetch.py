"""The fetch stage: get the model and the dataset, record exactly what was fetched.

``python -m tinymlaas_ci.stages.fetch VOLUME [--name fetch]``

* model -> ``fetch/model/<file>``, with the files that come with it, from the upload's folder or
  the Hub repository: ``*.py`` (pickled classes, ``python:`` architectures, ``model.code``),
  ``config.json`` and ``preprocessor_config.json`` (architecture, labels, preprocessing), and
  every external-data file an ONNX model references (each checked to stay inside the folder);
  each is an artifact ``model-file:<name>``, so it is part of the later stages' cache keys;
* dataset -> ``fetch/dataset/`` (archives extracted safely, Hub datasets as a snapshot), then
  converted to ``fetch/dataset.npz``;
* artifacts ``model``, ``dataset`` and ``fit_dataset`` (``fetch/fit.npz``: the same file with the
  evaluation split emptied, for compile); ``fetch/dataset.npz`` and ``fetch/dataset/`` are
  *withheld* (:attr:`StageOutputs.withheld`): only install and infer read them;
* records ``model`` (a ``ModelInput``), ``dataset`` (a ``DatasetInput``) and ``tools``.

Hub revisions are resolved to commit shas and recorded; ``HF_TOKEN`` is used, never written.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path, PurePosixPath
from typing import Any

from tinymlaas_ci.errors import SourceError
from tinymlaas_ci.fs import is_within
from tinymlaas_ci.ml.model_format import detect_model_format
from tinymlaas_ci.spec.models import DatasetSource, ModelSource
from tinymlaas_ci.stages.contract import StageContext, stage_main

__all__ = ["main", "run_fetch"]


def _reset(path: Path) -> None:
    # A resumed stage starts from a clean folder: stale files must not leak into this run.
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _copy(src: Path, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.part")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def _tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    tools: dict[str, str] = {}
    for dist in ("huggingface_hub", "numpy", "Pillow", "pyarrow"):
        try:
            tools[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return tools


def _prepare_hub_env(ctx: StageContext) -> None:
    # Must run before huggingface_hub is imported: it reads these once. The client's home
    # goes into this stage's folder, so a read-only container root is fine and nothing of
    # the machine's own Hub login leaks in (the token comes from HF_TOKEN only).
    os.environ.setdefault("HF_HOME", str(ctx.path(".hf-home")))
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


_METADATA = ("config.json", "preprocessor_config.json")


def _upload_companions(folder: Path, repo_root: Path, model_name: str) -> tuple[list[Path], list[str]]:
    """Files next to an uploaded model that come with it: ``*.py`` and the metadata files.

    Only plain files inside the repository: a link must not smuggle in outside code.
    """
    keep, skipped = [], []
    for path in sorted(folder.iterdir()):
        if path.name == model_name or not (path.suffix == ".py" or path.name in _METADATA):
            continue
        if path.is_symlink() or not path.is_file() or not is_within(path, repo_root):
            skipped.append(path.name)
            continue
        keep.append(path)
    return keep, skipped


def _external_data(model: Path, fmt: str) -> list[str]:
    if fmt != "onnx":
        return []
    from tinymlaas_ci.ml.formats import onnx_external_files

    return onnx_external_files(model, unreadable_ok=True)


def _fetch_model(ctx: StageContext, repo_root: Path, model: ModelSource) -> dict[str, Any]:
    from tinymlaas_ci.sources.uploads import resolve_upload

    model_dir = ctx.path("model")
    _reset(model_dir)
    model_dir.mkdir(parents=True)
    companions: list[str] = []
    if model.upload:
        upload = resolve_upload(repo_root, model.upload)
        dest = model_dir / PurePosixPath(upload.rel).name
        _copy(upload.path, dest)
        ctx.log(f"model: copied upload {upload.rel} ({upload.bytes} bytes, sha256 {upload.sha256[:12]})")
        folder = upload.path.parent
        files, skipped = _upload_companions(folder, repo_root, dest.name)
        for name in skipped:
            ctx.log(f"model: skipped {name} next to the model (not a regular file in the repository)")
        for path in files:
            _copy(path, model_dir / path.name)
            companions.append(path.name)
        fmt = detect_model_format(dest, model.format)
        for rel in _external_data(dest, fmt):
            src = folder.joinpath(*PurePosixPath(rel).parts)
            if src.is_symlink() or not src.is_file() or not is_within(src, folder):
                raise SourceError(
                    f"{upload.rel} references external data {rel!r}, which is not a file next to it",
                    source=upload.rel,
                    hint="commit the external data file (e.g. model.onnx.data) in the same folder as the model",
                )
            target = model_dir.joinpath(*PurePosixPath(rel).parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            _copy(src, target)
            companions.append(rel)
        record: dict[str, Any] = {
            "kind": "upload",
            "path": upload.rel,
            "sha256": upload.sha256,
            "bytes": upload.bytes,
            "format": fmt,
        }
    else:
        _prepare_hub_env(ctx)
        from tinymlaas_ci.sources.hub import download_file, list_repo_files, model_companions

        repo, file, revision = model.huggingface, model.file, model.revision
        if not file:
            raise SourceError(
                f"model from Hugging Face repo {repo!r} names no file",
                source=repo,
                hint="set model.file to the model's path inside the repository",
            )
        staging = ctx.path(".download")
        _reset(staging)
        folder = PurePosixPath(file).parent.as_posix()
        folder = "" if folder == "." else folder
        try:
            got = download_file(repo, file, staging, revision=revision, repo_type="model")
            dest = model_dir / PurePosixPath(file).name
            os.replace(got.path, dest)
            fmt = detect_model_format(dest, model.format)
            wanted = model_companions(file, list_repo_files(repo, got.commit, repo_type="model"))
            external = [(f"{folder}/{rel}" if folder else rel, rel) for rel in _external_data(dest, fmt)]
            for rel in wanted:
                # Files at the root (config.json, *.py) join the model in its folder; files next
                # to it keep their relative name.
                extra = download_file(repo, rel, staging, revision=got.commit, repo_type="model")
                target = model_dir / PurePosixPath(rel).name
                if not target.exists():
                    os.replace(extra.path, target)
                    companions.append(target.name)
            for repo_rel, rel in external:
                extra = download_file(repo, repo_rel, staging, revision=got.commit, repo_type="model")
                target = model_dir.joinpath(*PurePosixPath(rel).parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(extra.path, target)
                companions.append(rel)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        ctx.log(
            f"model: downloaded {file} from {repo} at {revision} -> commit {got.commit} "
            f"({got.bytes} bytes, sha256 {got.sha256[:12]})"
        )
        record = {
            "kind": "huggingface",
            "repo": repo,
            "revision": revision,
            "commit": got.commit,
            "file": file,
            "sha256": got.sha256,
            "bytes": got.bytes,
            "format": fmt,
        }
    if companions:
        ctx.log(f"model: {len(companions)} file(s) with it: {', '.join(companions)}")
        record["support_files"] = companions
        for rel in companions:
            # Each one is an artifact, so its digest is part of the later stages' cache keys.
            ctx.add_artifact(f"model-file:{rel}", model_dir.joinpath(*PurePosixPath(rel).parts))
    ctx.add_artifact("model", dest)
    ctx.log(f"model: format {record['format']}")
    return record


def _fetch_dataset(
    ctx: StageContext, repo_root: Path, dataset: DatasetSource, sample_shape: list[int] | None
) -> dict[str, Any]:
    from tinymlaas_ci.ml.datasets import canonical_split, convert_dataset, write_without_split
    from tinymlaas_ci.sources.archives import extract_archive, is_archive
    from tinymlaas_ci.sources.uploads import resolve_upload

    data_dir = ctx.path("dataset")
    _reset(data_dir)
    data_dir.mkdir(parents=True)
    if dataset.upload:
        upload = resolve_upload(repo_root, dataset.upload)
        name = PurePosixPath(upload.rel).name
        if is_archive(name):
            extracted = extract_archive(upload.path, data_dir)
            ctx.log(f"dataset: extracted {extracted.files} files ({extracted.bytes} bytes) from {upload.rel}")
        elif name.lower().endswith((".parquet", ".csv", ".npz")):
            _copy(upload.path, data_dir / name)
            ctx.log(f"dataset: copied {upload.rel} ({upload.bytes} bytes)")
        else:
            raise SourceError(
                f"dataset upload {upload.rel!r} is neither an archive nor a .parquet, .csv or .npz file",
                source=upload.rel,
                hint="upload a .zip, .tar.gz, .tgz or .tar of the ImageFolder layout (or of CSV/.npz files "
                "named after their split), or one .parquet, .csv or .npz file (with a split column or "
                "x_<split>/y_<split> arrays)",
            )
        base: dict[str, Any] = {"kind": "upload", "path": upload.rel, "sha256": upload.sha256}
    else:
        _prepare_hub_env(ctx)
        from tinymlaas_ci.sources.hub import download_snapshot

        repo, revision = dataset.huggingface, dataset.revision
        snap = download_snapshot(repo, data_dir, revision=revision, repo_type="dataset")
        shutil.rmtree(data_dir / ".cache", ignore_errors=True)  # the client's bookkeeping
        ctx.log(
            f"dataset: downloaded {len(snap.files)} files ({snap.bytes} bytes) from {repo} at {revision} "
            f"-> commit {snap.commit}"
        )
        base = {
            "kind": "huggingface",
            "repo": repo,
            "revision": revision,
            "commit": snap.commit,
            "sha256": snap.sha256,
        }
    npz = ctx.path("dataset.npz")
    pre = dataset.preprocess
    summary = convert_dataset(
        data_dir,
        npz,
        format=dataset.format.value,
        image_column=dataset.image_column,
        label_column=dataset.label_column,
        split_column=dataset.split_column,
        sample_shape=sample_shape,
        # Geometry the spec asks for is applied while decoding (with Pillow), so images of mixed
        # sizes can be read; preprocessing then finds them at the size it wants.
        resize=pre.resize if pre else None,
        channels=pre.channels if pre else None,
        labels=dataset.labels,
        log=lambda m: ctx.log(f"dataset: {m}"),
    )
    eval_split = canonical_split(dataset.split)
    if summary.splits.get(eval_split, 0) == 0:
        found = ", ".join(f"{s} ({n})" for s, n in summary.splits.items() if n) or "none"
        raise SourceError(
            f"the dataset has no samples in the evaluation split {eval_split!r}; splits found: {found}",
            source=base.get("path") or base.get("repo"),
            hint="set dataset.split to a split that exists (test or val), or add that split to the dataset",
        )
    ctx.add_artifact("dataset", npz)
    # The evaluation split is for the grading stages only: compile (where a model's own code
    # runs) gets every other split, and the whole file and the downloaded sources are withheld.
    fit = ctx.path("fit.npz")
    fit_sizes = write_without_split(npz, fit, eval_split)
    ctx.add_artifact("fit_dataset", fit)
    ctx.withhold(npz)
    ctx.withhold(data_dir)
    ctx.log(
        f"dataset: {summary.format}, splits {summary.splits}, {len(summary.labels)} labels, "
        f"sample shape {list(summary.sample_shape)}; the {eval_split} split is withheld from compile "
        f"(it gets {', '.join(f'{k} {v}' for k, v in fit_sizes.items() if v) or 'no samples'})"
    )
    return {
        **base,
        "format": summary.format,
        "splits": summary.splits,
        "labels": summary.labels,
        "label_source": summary.label_source,
        "eval_split": eval_split,
        "sample_shape": list(summary.sample_shape),
    }


def run_fetch(ctx: StageContext) -> None:
    """The stage body: fetch the model and the dataset named by the run spec."""
    model = _fetch_model(ctx, ctx.repo, ctx.run.model)
    dataset = _fetch_dataset(ctx, ctx.repo, ctx.run.dataset, ctx.run.model.input_shape)
    shutil.rmtree(ctx.dir / ".hf-home", ignore_errors=True)
    ctx.records.update({"model": model, "dataset": dataset, "tools": _tool_versions()})
    ctx.metrics.update({"model_bytes": model["bytes"], "dataset_samples": sum(dataset["splits"].values())})


def main(argv: list[str] | None = None) -> int:
    """``python -m tinymlaas_ci.stages.fetch VOLUME [--name NAME]``."""
    return stage_main("fetch", run_fetch, argv)


if __name__ == "__main__":
    sys.exit(main())
