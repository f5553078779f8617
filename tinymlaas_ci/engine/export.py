"""``tinymlaas export``: a run's installed model as a self-contained inference bundle.

The bundle the install stage wrote into the run volume (model, baseline, ``eval.npz``,
``manifest.json``) is copied, checked against its sha256 sums, into a folder together with a
standalone runner (``infer.py``: numpy + onnxruntime, no tinymlaas-ci), pinned
``requirements.txt`` (the versions the run was measured with), a ``Dockerfile`` and a README
on running it on a device. Optionally the image is built with the Docker SDK and saved as a
tar that ``docker load`` reads.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from tinymlaas_ci import __version__
from tinymlaas_ci.engine.volume import RunVolume, default_work_dir
from tinymlaas_ci.errors import TinymlError, UsageError
from tinymlaas_ci.fs import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    is_within,
    sha256_file,
)
from tinymlaas_ci.results.layout import result_file
from tinymlaas_ci.spec.models import Runtime
from tinymlaas_ci.stages.bundle import MANIFEST, read_manifest

__all__ = ["EXPORT_SCHEMA", "ExportInfo", "build_export_image", "export_run", "find_bundle", "save_image"]

EXPORT_SCHEMA = 1
TEMPLATES = Path(__file__).resolve().parent / "export_runtime"
"""The runner, Dockerfile and README templates (package data)."""

Sink = Callable[[str], None]


@dataclass
class ExportInfo:
    """What :func:`export_run` wrote."""

    run_id: str
    out: Path
    files: list[str]
    requirements: dict[str, str]
    recorded: dict[str, Any] = field(default_factory=dict)


def _split_id(run: str) -> tuple[str | None, str]:
    if "/" in run:
        project, name = run.split("/", 1)
        return project, name
    return None, run


def find_bundle(root: Path, run: str, work_dir: Path | None = None) -> tuple[str, Path]:
    """``(run_id, bundle folder)`` of ``run`` (``project/name``, or ``name`` when unique) in the
    run volumes under ``work_dir``. A missing bundle says how to make it."""
    work = (work_dir or default_work_dir(root)).resolve()
    project, name = _split_id(run)
    if project is None:
        matches = sorted(p.parent.name for p in work.glob(f"*/{name}") if p.is_dir()) if work.is_dir() else []
        if len(matches) > 1:
            raise UsageError(
                f"run {name!r} exists in several projects: {', '.join(matches)}", hint=f"name it as PROJECT/{name}"
            )
        project = matches[0] if matches else None
    run_id = f"{project}/{name}" if project else name
    if project is None or not (work / project / name).is_dir():
        raise TinymlError(
            f"run {run_id} has no run volume under {work}",
            hint=f"run it first on this machine: tinymlaas run --select {run_id} "
            "(export reads the bundle the install stage wrote)",
        )
    volume = RunVolume(work, project, name)
    bundle = volume.stage_dir("install") / "bundle"
    status = volume.status("install")
    if not (bundle / MANIFEST).is_file() or status.status != "generated":
        raise TinymlError(
            f"run {run_id} has no installed bundle (install stage: {status.status}) in {volume.root}",
            hint=f"run it up to the install stage: tinymlaas run --select {run_id}"
            + (" --force" if status.status == "generated" else ""),
        )
    return run_id, bundle


def _recorded_result(root: Path, run_id: str, bundle: Path) -> dict[str, Any] | None:
    project, name = run_id.split("/", 1)
    # The volume's result belongs to the bundle being exported; the committed one may be older.
    for path in (bundle.parent.parent / "result.json", result_file(root, project, name)):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("metrics"):
            return data
    return None


def _installed(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def pinned_requirements(result: dict[str, Any] | None) -> dict[str, str]:
    """``{distribution: version}`` of the runtime: as recorded in the result, else as installed."""
    tools = (result or {}).get("tools") or {}
    runtime = (result or {}).get("runtime") or {}
    ort = (
        (runtime.get("version") if runtime.get("name") == "onnxruntime" else None)
        or tools.get("onnxruntime")
        or _installed("onnxruntime")
    )
    numpy = tools.get("numpy") or _installed("numpy")
    missing = [n for n, v in (("onnxruntime", ort), ("numpy", numpy)) if not v]
    if missing:
        raise TinymlError(
            f"cannot pin {', '.join(missing)}: the result does not record it and it is not installed",
            hint="pip install 'tinymlaas-ci[ml]' and export again",
        )
    return {"onnxruntime": str(ort), "numpy": str(numpy)}


def _fmt(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "unknown"


def export_run(
    root: Path,
    run: str,
    out: Path,
    *,
    work_dir: Path | None = None,
    force: bool = False,
    tag: str | None = None,
) -> ExportInfo:
    """Write the inference bundle of ``run`` into ``out`` and return what was written.

    ``out`` must not exist or be empty, unless ``force`` (files of an earlier export are
    replaced; nothing else in it is touched).
    """
    run_id, bundle = find_bundle(root, run, work_dir)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder", hint="give a new or empty folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UsageError(f"--out {out}: the folder is not empty", hint="give a new or empty folder, or add --force")
    if is_within(out, bundle.parent.parent):
        raise UsageError(f"--out {out}: is inside the run volume", hint="export to a folder outside .tinymlaas/")
    manifest = read_manifest(bundle)
    if manifest.runtime is not Runtime.onnxruntime:
        raise TinymlError(
            f"run {run_id} deploys a {manifest.runtime.value!r} model; export supports onnxruntime models",
            hint="use runtime: onnxruntime in the run spec",
        )
    model_files = [manifest.model, manifest.baseline, manifest.data]
    sums = manifest.sha256
    out.mkdir(parents=True, exist_ok=True)
    for name in model_files:
        src = bundle / name
        if Path(name).name != name or not src.is_file():
            raise TinymlError(
                f"the bundle of {run_id} lacks {name!r}", hint=f"re-run: tinymlaas run --select {run_id} --force"
            )
        if sums.get(name) and sha256_file(src) != sums[name]:
            raise TinymlError(
                f"{src} does not match the sha256 in its manifest: the bundle was changed",
                hint=f"re-run: tinymlaas run --select {run_id} --force",
            )
        shutil.copyfile(src, out / name)
    atomic_write_bytes(out / MANIFEST, (bundle / MANIFEST).read_bytes())

    result = _recorded_result(root, run_id, bundle)
    reqs = pinned_requirements(result)
    metrics = (result or {}).get("metrics") or {}
    recorded = (
        {
            "accuracy": metrics.get("accuracy"),
            "samples": metrics.get("samples"),
            "latency_p50_ms": (metrics.get("latency_ms") or {}).get("p50"),
            "model_size_bytes": metrics.get("model_size_bytes"),
        }
        if metrics
        else {}
    )
    atomic_write_json(
        out / "export.json",
        {
            "schema": EXPORT_SCHEMA,
            "run": run_id,
            "spec_hash": ((result or {}).get("run") or {}).get("spec_hash"),
            "status": (result or {}).get("status"),
            "recorded": recorded,
            "device": (result or {}).get("device"),
            "requirements": reqs,
            "tinymlaas_ci": __version__,
        },
    )
    atomic_write_text(
        out / "requirements.txt",
        "# The runtime the run was measured with.\n"
        + "".join(f"{name}=={version}\n" for name, version in reqs.items()),
    )
    atomic_write_text(out / "infer.py", (TEMPLATES / "infer.py").read_text(encoding="utf-8"))
    dockerfile = (TEMPLATES / "Dockerfile").read_text(encoding="utf-8")
    atomic_write_text(out / "Dockerfile", dockerfile.replace("__MODEL_FILES__", " ".join(model_files)))
    (out / "certs").mkdir(exist_ok=True)
    atomic_write_text(
        out / "certs" / "README.txt",
        "Put a CA bundle here as ca-certificates.crt when pip must trust a TLS-inspecting proxy.\n",
    )
    spec = (result or {}).get("spec") or {}
    device = (result or {}).get("device") or {}
    lat = metrics.get("latency_ms") or {}
    values = {
        "__RUN__": run_id,
        "__DESCRIPTION__": spec.get("description") or "",
        "__MODEL__": manifest.model,
        "__BASELINE__": manifest.baseline,
        "__QUANTIZATION__": ((result or {}).get("compression") or {}).get("quantization") or "as compiled",
        "__MODEL_BYTES__": _fmt((bundle / manifest.model).stat().st_size, ","),
        "__SPLIT__": manifest.eval_split,
        "__SHAPE__": str(tuple(manifest.input_shape)),
        "__DEVICE__": device.get("name") or "unknown",
        "__CPU__": device.get("cpu_model") or "CPU unknown",
        "__ACCURACY__": _fmt(metrics.get("accuracy"), ".4f"),
        "__SAMPLES__": _fmt(metrics.get("samples"), "d"),
        "__P50__": _fmt(lat.get("p50"), ".4f"),
        "__TAG__": tag or run_id.replace("/", "-"),
    }
    readme = (TEMPLATES / "README.md").read_text(encoding="utf-8")
    for key, value in values.items():
        readme = readme.replace(key, value)
    atomic_write_text(out / "README.md", readme)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    # Atomic writes create 0600 files; the image runs as an unprivileged user and the folder
    # is meant to be shared, so make them world-readable.
    for rel in files:
        (out / rel).chmod(0o755 if rel == "infer.py" else 0o644)
    return ExportInfo(run_id=run_id, out=out, files=files, requirements=reqs, recorded=recorded)


def build_export_image(
    out: Path,
    tag: str,
    *,
    base: str | None = None,
    docker_host: str | None = None,
    sink: Sink = print,
) -> str:
    """Build the exported folder ``out`` into ``tag`` on the engine at ``docker_host``; returns
    the image id. The build context is a copy of ``out`` plus the host's CA bundle (pip behind
    a TLS-inspecting proxy), built with the host network like our other images."""
    from tinymlaas_ci.devices.docker_build import DEFAULT_BASE, build_image, ca_bundle
    from tinymlaas_ci.devices.docker_client import client_for

    out = Path(out)
    if not (out / "Dockerfile").is_file() or not (out / "manifest.json").is_file():
        raise UsageError(
            f"{out} is not an export folder (no Dockerfile or manifest.json)",
            hint="write one with: tinymlaas export RUN --out DIR",
        )
    client = client_for(docker_host)
    try:
        with tempfile.TemporaryDirectory(prefix="tmx.") as tmp:
            ctx = Path(tmp) / "ctx"
            shutil.copytree(out, ctx)
            ca = ca_bundle()
            if ca is not None and not (ctx / "certs" / "ca-certificates.crt").is_file():
                shutil.copyfile(ca, ctx / "certs" / "ca-certificates.crt")
            return build_image(
                client,
                ctx,
                tag,
                buildargs={"BASE": base or DEFAULT_BASE},
                labels={"org.tinymlaas.export": tag},
                sink=sink,
                host=docker_host,
            )
    finally:
        client.close()


def save_image(tag: str, path: Path, *, docker_host: str | None = None) -> int:
    """Save image ``tag`` as a tar at ``path`` (atomically; ``docker load -i`` reads it).
    Returns its size in bytes."""
    from tinymlaas_ci.devices.docker_client import client_for, docker_errors, require_image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    client = client_for(docker_host)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        image = require_image(
            client,
            tag,
            docker_host,
            needed_by="saving the export",
            hint="build it first: tinymlaas export RUN --out DIR --image TAG",
        )
        with docker_errors(docker_host, f"saving {tag} to {path}"), open(tmp, "wb") as fh:
            fh.writelines(image.save(named=True))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
        client.close()
    return path.stat().st_size
