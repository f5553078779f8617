"""``tinymlaas new``: look at a model and a dataset, and write a run spec that validates and runs.

What is looked at, with the same code the stages use: the model's format
(:func:`~tinymlaas_ci.ml.model_format.detect_model_format`), its input shape (from the ONNX
graph, an exported program, or the module's ``input_shape``), its parameter count; the
dataset's layout, splits, labels and sample shape (:func:`~tinymlaas_ci.ml.datasets.convert_dataset`).
A model or dataset that is not a file in the repository is taken as a Hugging Face Hub id and
downloaded into a temporary folder (``HF_TOKEN`` and ``HF_ENDPOINT`` apply). Every finding goes
into the spec as a comment, so the reader sees why each field has its value.

Loading a pickled PyTorch model runs its code: only inspect models you trust, as you would
before running them (``tinymlaas run`` does the same on this machine with the local executor).
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from tinymlaas_ci.errors import SourceError, TinymlError, UsageError
from tinymlaas_ci.fs import atomic_write_text

__all__ = ["QUANTIZATION_SWEEP", "DatasetFacts", "ModelFacts", "NewRun", "inspect_dataset", "inspect_model", "new_run"]

QUANTIZATION_SWEEP = ("none", "dynamic-int8", "static-int8", "fp16")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_MODEL_SUFFIXES = (".onnx", ".pt2", ".pt", ".pth", ".pkl", ".pickle")
_RUN_FILE = re.compile(r"^runs/(?P<project>[^/]+)/(?P<name>[^/]+)\.ya?ml$")


@dataclass
class ModelFacts:
    """What :func:`inspect_model` found."""

    source: dict[str, Any]
    """The spec's ``model`` mapping (``upload`` or ``huggingface``/``file``/``revision``)."""
    format: str
    input_shape: list[int] | None = None
    parameters: int | None = None
    bytes: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class DatasetFacts:
    """What :func:`inspect_dataset` found."""

    source: dict[str, Any]
    format: str
    splits: dict[str, int]
    labels: list[str]
    sample_shape: list[int]
    eval_split: str
    notes: list[str] = field(default_factory=list)


@dataclass
class NewRun:
    """The spec written by :func:`new_run`."""

    path: Path
    text: str
    model: ModelFacts
    dataset: DatasetFacts
    runs: int


def _in_repo(root: Path, given: str) -> str | None:
    """``given`` as a path relative to the repository when it names a file in it, else None."""
    for candidate in (Path(given), root / given):
        if candidate.exists():
            full = candidate.resolve()
            if not full.is_relative_to(root):
                raise UsageError(
                    f"{given} is outside the repository {root}",
                    hint="copy it under uploads/ (Git LFS welcome) and give that path",
                )
            if not full.is_file():
                raise UsageError(
                    f"{given} is a folder; a run spec names one file",
                    hint="give the model file, or the dataset as a .zip / .tar.gz archive or a .parquet file",
                )
            return full.relative_to(root).as_posix()
    return None


_FILE_SUFFIXES = (*_MODEL_SUFFIXES, ".zip", ".tar", ".gz", ".tgz", ".parquet")


def _hub_or_fail(given: str, what: str) -> str:
    # "uploads/m.onnx" is also a valid Hub id by its characters; a path of a missing file must
    # not turn into a download attempt.
    looks_like_path = given.startswith(("uploads/", "./", "../", "/", "~")) or given.lower().endswith(_FILE_SUFFIXES)
    if _HUB_ID.match(given) and not looks_like_path:
        return given
    raise UsageError(
        f"--{what} {given}: no such file, and not a Hugging Face Hub id (owner/name)",
        hint=f"give a file in the repository (e.g. uploads/my-{what}/...) or a Hub id such as owner/{what}-repo",
    )


def _pick_model_file(repo: str, files: list[str]) -> str:
    ranked = sorted(
        (f for f in files if PurePosixPath(f).suffix.lower() in _MODEL_SUFFIXES),
        key=lambda f: (_MODEL_SUFFIXES.index(PurePosixPath(f).suffix.lower()), f.count("/"), f),
    )
    if not ranked:
        raise SourceError(
            f"Hub repository {repo!r} holds no model file ({', '.join(_MODEL_SUFFIXES)})",
            source=repo,
            hint=f"its files: {', '.join(files[:20]) or 'none'}; give the file with --model-file",
        )
    return ranked[0]


def _model_shape(path: Path, fmt: str, notes: list[str]) -> tuple[list[int] | None, int | None]:
    from tinymlaas_ci.ml import formats

    if fmt == "onnx":
        model = formats.check_onnx(path)
        shape = formats.onnx_input_shape(model)
        if shape is None:
            notes.append("the ONNX graph's input has a dimension that is not fixed")
        return (list(shape) if shape else None), formats.count_onnx_parameters(model)
    try:
        module = formats.load_torch_model(path, fmt)
    except TinymlError as exc:
        notes.append(f"could not load it here: {exc.message}")
        if exc.hint:
            notes.append(exc.hint)
        return None, None
    shape = formats.torch_input_shape(module)
    if shape is None:
        notes.append("the module does not declare its input shape")
    return (list(shape) if shape else None), formats.count_parameters(module)


def inspect_model(root: Path, given: str, *, file: str | None = None, revision: str = "main") -> ModelFacts:
    """Look at the model at ``given``: a file in the repository, or a Hub model repository."""
    from tinymlaas_ci.ml.model_format import detect_model_format

    rel = _in_repo(root, given)
    with tempfile.TemporaryDirectory(prefix="tinymlaas-new-") as tmp:
        if rel is not None:
            path = root / rel
            source: dict[str, Any] = {"upload": rel}
            notes = [f"file in the repository, {path.stat().st_size:,} bytes"]
        else:
            from tinymlaas_ci.sources.hub import download_file, list_repo_files, resolve_revision

            repo = _hub_or_fail(given, "model")
            commit = resolve_revision(repo, revision, repo_type="model")
            chosen = file or _pick_model_file(repo, list_repo_files(repo, commit, repo_type="model"))
            got = download_file(repo, chosen, tmp, revision=commit, repo_type="model")
            path = got.path
            source = {"huggingface": repo, "file": chosen, "revision": revision}
            notes = [f"Hub model {repo} at {revision} (commit {commit[:12]}), file {chosen}, {got.bytes:,} bytes"]
        fmt = detect_model_format(path)
        shape, params = _model_shape(path, fmt, notes)
        return ModelFacts(source, fmt, shape, params, path.stat().st_size, notes)


def inspect_dataset(root: Path, given: str, *, revision: str = "main") -> DatasetFacts:
    """Look at the dataset at ``given``: an archive or parquet file in the repository, or a Hub
    dataset repository."""
    from tinymlaas_ci.ml.datasets import convert_dataset
    from tinymlaas_ci.sources.archives import extract_archive, is_archive

    rel = _in_repo(root, given)
    with tempfile.TemporaryDirectory(prefix="tinymlaas-new-") as tmp:
        folder = Path(tmp) / "dataset"
        folder.mkdir()
        if rel is not None:
            path = root / rel
            if is_archive(path.name):
                extract_archive(path, folder)
            elif path.suffix == ".parquet":
                (folder / path.name).write_bytes(path.read_bytes())
            else:
                raise UsageError(
                    f"dataset {rel} is neither an archive nor a parquet file",
                    hint="zip the ImageFolder layout ({train,val,test}/<label>/<file>) or give a .parquet file",
                )
            source: dict[str, Any] = {"upload": rel}
            notes = [f"file in the repository, {path.stat().st_size:,} bytes"]
        else:
            from tinymlaas_ci.sources.hub import download_snapshot

            repo = _hub_or_fail(given, "dataset")
            snap = download_snapshot(repo, folder, revision=revision, repo_type="dataset")
            source = {"huggingface": repo, "revision": revision}
            notes = [f"Hub dataset {repo} at {revision} (commit {snap.commit[:12]}), {len(snap.files)} files"]
        summary = convert_dataset(folder, Path(tmp) / "dataset.npz")
    splits = {k: v for k, v in summary.splits.items() if v}
    eval_split = next((s for s in ("test", "val") if splits.get(s)), None)
    if eval_split is None:
        raise SourceError(
            f"dataset {given} has only a {', '.join(splits) or 'no'} split: nothing to measure accuracy on",
            source=given,
            hint="add a test (or val) split: a test/ folder next to train/, or test-*.parquet",
        )
    return DatasetFacts(
        source, summary.format, splits, list(summary.labels), list(summary.sample_shape), eval_split, notes
    )


def _flow(value: Any) -> str:
    """A list as a one-line YAML flow sequence."""
    import json

    return json.dumps(value, ensure_ascii=False)


def _comment(lines: list[str], indent: str = "") -> list[str]:
    return [f"{indent}# {line}" for line in lines]


def render_spec(
    name: str,
    model: ModelFacts,
    dataset: DatasetFacts,
    *,
    device: str,
    sweep: str | None,
    description: str,
) -> str:
    """The spec's text, with comments saying what was found."""
    import yaml

    def scalar(value: Any) -> str:
        return yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip().removesuffix("...").strip()

    shape = model.input_shape or dataset.sample_shape
    out = [
        "# yaml-language-server: $schema=../../schemas/run.schema.json",
        "# Written by 'tinymlaas new'. Check it with 'tinymlaas validate', run it with 'tinymlaas run'.",
        "schema: 1",
        f"description: {scalar(description)}",
        "model:",
    ]
    found = [f"found: format {model.format}"]
    if model.parameters is not None:
        found[0] += f", {model.parameters:,} parameters"
    found += model.notes
    out += _comment(found, "  ")
    for key, value in model.source.items():
        out.append(f"  {key}: {scalar(value)}")
    out.append(f"  format: {model.format}")
    if model.input_shape:
        out += _comment([f"the model declares its input shape {model.input_shape} (one sample, no batch axis)"], "  ")
    else:
        out += _comment([f"taken from the dataset's samples {dataset.sample_shape}: the model does not say"], "  ")
    if model.input_shape and dataset.sample_shape and list(model.input_shape) != list(dataset.sample_shape):
        out += _comment(
            [f"WARNING: the dataset's samples are {dataset.sample_shape}; they must match the model's input"], "  "
        )
    out.append(f"  input_shape: {_flow(shape)}")
    out.append("dataset:")
    split_text = ", ".join(f"{s} {n}" for s, n in dataset.splits.items())
    labels = ", ".join(dataset.labels[:12]) + (
        f", … ({len(dataset.labels)} in all)" if len(dataset.labels) > 12 else ""
    )
    out += _comment(
        [
            f"found: {dataset.format}, splits {split_text}, samples of shape {dataset.sample_shape}",
            f"labels (index = position): {labels}",
            *dataset.notes,
        ],
        "  ",
    )
    for key, value in dataset.source.items():
        out.append(f"  {key}: {scalar(value)}")
    why = "the test split" if dataset.eval_split == "test" else "no test split, so the validation split"
    out += _comment([f"accuracy is measured on {why}"], "  ")
    out.append(f"  split: {dataset.eval_split}")
    has_train = bool(dataset.splits.get("train"))
    out.append("compression:")
    if sweep == "quantization":
        out += _comment(["the sweep below sets quantization: one run per mode"], "  ")
        out.append("  quantization: none")
    else:
        out += _comment(["none: the baseline; try static-int8, dynamic-int8 or fp16 (or --sweep quantization)"], "  ")
        out.append("  quantization: none")
    calib = "train" if has_train else dataset.eval_split
    out += _comment([f"static-int8 calibrates on samples of the {calib} split"], "  ")
    out.append(f"  calibration_samples: {min(256, dataset.splits.get(calib, 256))}")
    out.append(f"device: {device}")
    out += _comment(
        ["auto: static-int8 deploys the faster of ONNX Runtime and generated C, timed on the device at compile"]
    )
    out.append("runtime: auto")
    out.append("measure: {warmup: 20, min_iterations: 200, min_seconds: 1.0}")
    out += _comment(["gates fail a run that misses them, e.g.:", "gates: {min_accuracy: 0.9, max_accuracy_drop: 0.01}"])
    out.append("notify: []")
    if sweep == "quantization":
        out.append("matrix:")
        out.append(f"  compression.quantization: {_flow(list(QUANTIZATION_SWEEP))}")
    del name  # the file name is the run name
    return "\n".join(out) + "\n"


def _device(root: Path, wanted: str | None) -> str:
    names = sorted(p.stem for p in (root / "devices").glob("*.yaml")) if (root / "devices").is_dir() else []
    if wanted:
        if wanted not in names:
            raise UsageError(
                f"--device {wanted}: no devices/{wanted}.yaml",
                hint=f"devices: {', '.join(names) or 'none'}; register one with 'tinymlaas device register {wanted}'",
            )
        return wanted
    if "host" in names:
        return "host"
    if names:
        return names[0]
    raise UsageError("the repository has no device", hint="register this machine: tinymlaas device register host")


def new_run(
    root: Path,
    run_file: str,
    model: str,
    dataset: str,
    *,
    device: str | None = None,
    sweep: str | None = None,
    model_file: str | None = None,
    revision: str = "main",
    dataset_revision: str = "main",
    force: bool = False,
) -> NewRun:
    """Inspect ``model`` and ``dataset`` and write the run spec ``run_file``
    (``runs/<project>/<run>.yaml``); the written spec is checked with the repository's specs."""
    from tinymlaas_ci.spec.repo import load_repo

    root = Path(root).resolve()
    target = Path(run_file)
    full = (target if target.is_absolute() else Path.cwd() / target).resolve()
    if not full.is_relative_to(root):
        full = (root / run_file).resolve()
    rel = full.relative_to(root).as_posix() if full.is_relative_to(root) else run_file
    match = _RUN_FILE.match(rel)
    if not match:
        raise UsageError(
            f"{run_file}: a run spec lives at runs/<project>/<run>.yaml",
            hint="e.g. tinymlaas new runs/my-project/baseline.yaml --model ... --dataset ...",
        )
    if full.exists() and not force:
        raise UsageError(f"{rel} exists", hint="pick another name, or --force to replace it")
    if sweep not in (None, "quantization"):
        raise UsageError(f"--sweep {sweep}: only 'quantization' can be swept by 'new'", hint="--sweep quantization")
    dev = _device(root, device)
    model_facts = inspect_model(root, model, file=model_file, revision=revision)
    data_facts = inspect_dataset(root, dataset, revision=dataset_revision)
    if not model_facts.input_shape and not data_facts.sample_shape:
        raise TinymlError("the input shape is unknown", hint="add model.input_shape to the spec by hand")
    label = PurePosixPath(str(model_facts.source.get("file") or model_facts.source.get("upload") or model)).name
    description = f"{label} on {PurePosixPath(str(dataset)).name}, measured on {dev}"
    text = render_spec(match["name"], model_facts, data_facts, device=dev, sweep=sweep, description=description)
    previous = full.read_text(encoding="utf-8") if full.exists() else None
    atomic_write_text(full, text)
    os.chmod(full, 0o644)
    repo = load_repo(root, [full])
    problems = [p for p in repo.problems if p.path == rel]
    if problems:
        if previous is None:
            full.unlink()
        else:
            atomic_write_text(full, previous)
        raise TinymlError(
            "the spec it would write does not validate:\n  " + "\n  ".join(p.format() for p in problems),
            hint="this is a bug in 'tinymlaas new'; write the spec by hand from the messages above",
        )
    runs = sum(len(rf.runs) for rf in repo.run_files if rf.path == rel)
    return NewRun(full, text, model_facts, data_facts, runs)
