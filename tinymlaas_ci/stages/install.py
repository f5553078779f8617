"""The ``install`` stage: put the compiled model on the device as a self-contained bundle.

A bundle is a folder with the deployed model, the fp32 baseline, the evaluation split of the
dataset (``eval.npz``: inference runs on the device over it) and ``manifest.json`` (a
:class:`~tinymlaas_ci.stages.bundle.BundleManifest`).

One installer per device kind (:data:`INSTALLERS`): ``local`` leaves the bundle in the run
volume, where infer runs next to it; ``docker`` builds the inference image with the bundle on
the device's engine; ``ssh`` checks the board's runtime and copies the bundle to the board;
``mcu`` builds the firmware for the board within its flash and RAM budgets. With runtime ``c``
the bundle also holds the generated C (built for the device) in ``c/``.
Install runs on the runner for every kind, because it talks to the device.

Artifacts: ``bundle`` (the manifest), ``model``, ``baseline``, ``data``. Records: ``bundle``.

    python -m tinymlaas_ci.stages.install VOLUME --name install
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tinymlaas_ci.errors import DeviceError, TinymlError
from tinymlaas_ci.fs import atomic_write_bytes, sha256_file
from tinymlaas_ci.spec.models import Runtime
from tinymlaas_ci.stages.bundle import MANIFEST, BundleDevice, BundleManifest, write_manifest
from tinymlaas_ci.stages.contract import StageContext, stage_main

__all__ = ["INSTALLERS", "build_bundle", "main", "run"]


def _dataset_path(ctx: StageContext) -> Path:
    # The dataset comes from fetch; when the pipeline gives install only compile's outputs,
    # compile's record says where fetch put it.
    if ctx.has_upstream("fetch"):
        return ctx.input_path("fetch", "dataset")
    rel = (ctx.upstream("compile").records.get("dataset") or {}).get("path")
    if not rel:
        raise TinymlError(
            "no dataset to evaluate on: neither the fetch stage nor the compile stage names one",
            hint="the run needs a dataset with a held-out split",
        )
    path = ctx.volume_path(rel)
    if not path.is_file():
        raise TinymlError(f"dataset {rel!r} is missing from the run volume", hint="re-run the fetch stage")
    return path


def build_bundle(ctx: StageContext, bundle: Path) -> BundleManifest:
    """Write the bundle folder (model, baseline, eval data, manifest); returns the manifest."""
    import numpy as np

    records = ctx.upstream("compile").records
    model = ctx.input_path("compile", "model")
    baseline = ctx.input_path("compile", "baseline")
    split = ctx.run.dataset.split
    prepared = records.get("prepared") or {}
    # Only the evaluation split is read; samples stay raw (preprocessing travels in the manifest).
    x, y, dataset_labels = _eval_split_raw(_dataset_path(ctx), split)
    if prepared.get("label_map") is not None and len(y):
        y = np.asarray(prepared["label_map"], dtype=np.int64)[y]
    labels = [str(v) for v in prepared.get("labels") or records.get("labels") or dataset_labels]

    files: dict[str, str] = {}
    for src in (model, baseline):
        atomic_write_bytes(bundle / src.name, src.read_bytes())
        files[src.name] = sha256_file(bundle / src.name)
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y, labels=np.asarray(labels, dtype=str))
    atomic_write_bytes(bundle / "eval.npz", buf.getvalue())
    files["eval.npz"] = sha256_file(bundle / "eval.npz")
    if ctx.runtime is Runtime.c:
        from tinymlaas_ci.stages.runtime_c import add_c_to_bundle

        files.update(add_c_to_bundle(ctx, bundle))
    manifest = BundleManifest(
        runtime=ctx.runtime,
        model=model.name,
        baseline=baseline.name,
        data="eval.npz",
        eval_split=split,
        samples=len(x),
        input_shape=records.get("input_shape") or list(x.shape[1:]),
        labels=labels,
        label_source=prepared.get("label_source"),
        preprocess=prepared.get("preprocess"),
        measure=ctx.run.measure,
        sha256=files,
        device=BundleDevice(name=ctx.device.name, kind=ctx.device.kind, arch=ctx.device.arch),
    )
    write_manifest(bundle, manifest)
    return manifest


def _eval_split_raw(path: Path, split: str):
    import numpy as np

    from tinymlaas_ci.ml.datasets import SplitReader, load_npz_meta

    meta = load_npz_meta(path)
    if not meta["sizes"].get(split):
        present = ", ".join(s for s, n in meta["sizes"].items() if n) or "none"
        raise TinymlError(
            f"the dataset has no samples in split {split!r} (splits with samples: {present})",
            hint="set dataset.split in the run spec to a held-out split the dataset has (test or val)",
        )
    x = SplitReader(path, f"x_{split}").materialize()
    y = SplitReader(path, f"y_{split}").materialize().astype(np.int64)
    return x, y, meta["labels"]


def _record(ctx: StageContext, manifest: BundleManifest, **extra: Any) -> dict[str, Any]:
    return {"location": ctx.dir.name + "/bundle", **manifest.model_dump(mode="json", by_alias=True), **extra}


def _install_local(ctx: StageContext) -> dict[str, Any]:
    bundle = ctx.path("bundle", MANIFEST).parent
    manifest = build_bundle(ctx, bundle)
    ctx.log(
        f"installed {manifest.model} ({manifest.runtime.value}) and {manifest.samples} "
        f"{manifest.eval_split} samples on the local device"
    )
    return _record(ctx, manifest)


def _install_docker(ctx: StageContext) -> dict[str, Any]:
    """Build the inference image (runtime + this package + the bundle) on the device's Docker
    engine, or reuse the one with the same content; infer then runs in that image there."""
    from tinymlaas_ci.devices.docker_build import install_bundle

    bundle = ctx.path("bundle", MANIFEST).parent
    manifest = build_bundle(ctx, bundle)
    image = install_bundle(bundle, ctx.device, sink=ctx.log)
    ctx.records["image"] = image["image"]
    ctx.records["image_digest"] = image["image_digest"]
    ctx.log(f"installed {manifest.model} ({manifest.runtime.value}) as {image['image']} on device {ctx.device.name!r}")
    return _record(ctx, manifest, **image)


def _install_ssh(ctx: StageContext) -> dict[str, Any]:
    """Check that the board has what inference needs, then copy the bundle to it."""
    from tinymlaas_ci.devices.ssh import SshTarget

    bundle = ctx.path("bundle", MANIFEST).parent
    manifest = build_bundle(ctx, bundle)
    target = SshTarget(ctx.device.ssh, device=ctx.device.name)
    facts = target.probe()
    missing = target.missing_runtime(facts)
    if missing:
        raise DeviceError(
            f"the board {target.label} lacks {', '.join(missing)} for {target.python}",
            device=ctx.device.name,
            hint=f"on the board: {target.python} -m pip install tinymlaas-ci onnxruntime numpy",
        )
    remote = f"{target.work_dir}/work/{ctx.config.run.project}/{ctx.config.run.name}/{ctx.name}"
    files = [p.relative_to(ctx.dir).as_posix() for p in sorted(bundle.rglob("*")) if p.is_file()]
    target.put(ctx.dir, files, remote, doing="copying the bundle")
    ctx.log(
        f"installed {manifest.model} ({manifest.runtime.value}) on {target.label}:{remote} "
        f"(python {facts.get('python')}, onnxruntime {facts.get('onnxruntime')}, {facts.get('machine')})"
    )
    return _record(ctx, manifest, remote=f"{target.label}:{remote}", board=facts)


def _install_mcu(ctx: StageContext) -> dict[str, Any]:
    """Build the firmware within the device's budgets (see :mod:`tinymlaas_ci.stages.runtime_c`)."""
    from tinymlaas_ci.stages.runtime_c import install_mcu

    return install_mcu(ctx)


INSTALLERS: dict[str, Callable[[StageContext], dict[str, Any]]] = {
    "local": _install_local,
    "docker": _install_docker,
    "ssh": _install_ssh,
    "mcu": _install_mcu,
}
"""Installer per device kind. An installer writes the bundle and puts it on the device."""


def run(ctx: StageContext) -> None:
    """Install the compiled model on the run's device."""
    kind = ctx.device.kind
    installer = INSTALLERS.get(kind)
    if installer is None:
        raise DeviceError(
            f"there is no installer for a {kind!r} device",
            device=ctx.device.name,
            hint=f"use a device of kind {', '.join(sorted(INSTALLERS))}",
        )
    record = installer(ctx)
    bundle = ctx.dir / "bundle"
    ctx.add_artifact("bundle", bundle / MANIFEST)
    ctx.add_artifact("model", bundle / record["model"])
    ctx.add_artifact("baseline", bundle / record["baseline"])
    ctx.add_artifact("data", bundle / record["data"])
    ctx.records["bundle"] = record


def main(argv: list[str] | None = None) -> int:
    """Run the stage as a process."""
    return stage_main("install", run, argv)


if __name__ == "__main__":
    sys.exit(main())
