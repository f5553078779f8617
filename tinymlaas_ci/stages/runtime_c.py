"""The built-in stages' ``runtime: c`` path and the ``mcu`` device kind.

* compile (:func:`compile_c`): the int8 ONNX model, the fp32 baseline and the generated C
  (``compile/c/``, each file an artifact ``c/<file>``); records ``cgen`` (operators, MACs,
  weight, quantization-constant and arena bytes).
* install (:func:`add_c_to_bundle`, called by the bundle builder; :func:`install_mcu`): the
  generated C goes into the bundle's ``c/``; on a Linux device it is built there with the host
  compiler (``-O3`` and the device's ISA; on an ``ssh`` device the board builds it at infer),
  on an ``mcu`` device the firmware is built into ``firmware/`` within the device's budgets.
* infer (:func:`infer_c`): on an ``mcu`` device the whole evaluation split is streamed through
  the board (QEMU or a real board on a serial port); on a Linux device the host build is
  measured like ONNX Runtime. Both record the agreement with ONNX Runtime on the same int8 model.

For an ``mcu`` device install and infer run on the runner, where the board is emulated or attached.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinymlaas_ci.errors import TinymlError
from tinymlaas_ci.fs import sha256_file
from tinymlaas_ci.ml.c_runtime import C_DIR, C_FILES, FIRMWARE_DIR, HOST_LIBRARY
from tinymlaas_ci.stages.bundle import MANIFEST, BundleManifest
from tinymlaas_ci.stages.contract import StageContext, fit_dataset

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = ["add_c_to_bundle", "compile_c", "infer_c", "install_mcu"]


# -- compile ----------------------------------------------------------------------------------
def compile_c(ctx: StageContext, fmt: str) -> None:
    """The compile stage for ``runtime: c``."""
    from tinymlaas_ci.ml import c_runtime, measure

    run = ctx.run
    compression = run.compression
    ctx.log(
        f"compiling {ctx.input_path('fetch', 'model').name} to C: static int8, per channel"
        + (f", pruning {compression.pruning.sparsity}" if compression.pruning else "")
    )
    outcome = c_runtime.compile_c(
        ctx.input_path("fetch", "model"),
        ctx.path("model.onnx").parent,
        compression=compression,
        fmt=fmt,
        input_shape=run.model.input_shape,
        progress=ctx.log,
        dataset=fit_dataset(ctx),
        preprocess=run.dataset.preprocess,
        input_layout=run.model.input_layout,
        architecture=run.model.architecture,
        code=run.model.code,
    )
    compiled, info = outcome.compiled, outcome.info
    ctx.add_artifact("model", compiled.deployed)
    ctx.add_artifact("baseline", compiled.baseline)
    for name in info.files:
        ctx.add_artifact(f"{C_DIR}/{name}", outcome.c_dir / name)
    rec = compiled.record
    ctx.log(
        f"{len(info.ops)} operators, {info.macs:,} MACs, {info.weights_bytes:,} B of weights, "
        f"arena {info.arena_bytes:,} B (lower bound {info.arena_lower_bound:,} B)"
    )
    fetch = ctx.upstream("fetch")
    dataset = fetch.artifacts.get("dataset")
    ctx.records.update(
        compression=rec,
        cgen=c_runtime.c_record(info),
        tools=measure.tool_versions("torch", "onnx", "onnxruntime", "onnxscript", "numpy"),
        model_parameters=compiled.parameters,
        input_shape=list(compiled.input_shape),
        source_format=compiled.source_format,
        export=compiled.details.get("export"),
        labels=(compiled.prepared or {}).get("labels"),
        prepared=compiled.prepared,
        dataset=dataset.model_dump() if dataset is not None else None,
    )


# -- install ----------------------------------------------------------------------------------
def _c_sources(ctx: StageContext) -> dict[str, Path]:
    compile_ = ctx.upstream("compile")
    missing = [n for n in C_FILES if f"{C_DIR}/{n}" not in compile_.artifacts]
    if missing:
        raise TinymlError(
            f"runtime c needs the generated C, but the compile stage produced no {', '.join(missing)}",
            hint="re-run the compile stage with runtime: c",
        )
    return {n: ctx.input_path("compile", f"{C_DIR}/{n}") for n in C_FILES}


def add_c_to_bundle(ctx: StageContext, bundle: Path) -> dict[str, str]:
    """Copy the generated C into ``bundle/c`` and build it for the device; returns sha256 by
    bundle-relative path of the files added (for the manifest)."""
    from tinymlaas_ci.ml import c_runtime
    from tinymlaas_ci.ml.cgen.host import compiler_version

    c_dir = bundle / C_DIR
    if c_dir.exists():
        shutil.rmtree(c_dir)
    c_dir.mkdir(parents=True)
    for name, src in _c_sources(ctx).items():
        shutil.copyfile(src, c_dir / name)
    device = ctx.device
    if device.kind == "mcu":
        _build_firmware(ctx, bundle)
    elif device.kind != "ssh":
        host = device.docker.host if device.kind == "docker" else None
        flags = c_runtime.host_build_flags(device.kind, device.arch, docker_host=host)
        lib = c_runtime.build_host_library(c_dir, flags)
        ctx.records["c_build"] = {"compiler": compiler_version(), "flags": flags, "library_bytes": lib.stat().st_size}
        ctx.log(f"built {lib.name} with {' '.join(flags)} ({lib.stat().st_size:,} B)")
    else:
        ctx.log("the generated C is built on the board at infer, with its own compiler for its own CPU")
    return {
        p.relative_to(bundle).as_posix(): sha256_file(p)
        for sub in (C_DIR, FIRMWARE_DIR)
        for p in sorted((bundle / sub).rglob("*"))
        if p.is_file() and "obj" not in p.relative_to(bundle).parts
    }


def _build_firmware(ctx: StageContext, bundle: Path) -> None:
    from tinymlaas_ci.devices.mcu import build_firmware

    device = ctx.device
    out = bundle / FIRMWARE_DIR
    if out.exists():
        shutil.rmtree(out)
    ctx.log(f"building the firmware for {device.board}")
    fw = build_firmware(
        bundle / C_DIR,
        device.board,
        device.flash_kb,
        device.ram_kb,
        out_dir=out,
        stack_bytes=device.stack_bytes,
        baud=device.serial.baudrate if device.serial else 115200,
    )
    # Object files are build leftovers; the image, its map and firmware.json are the install.
    shutil.rmtree(out / "obj", ignore_errors=True)
    ctx.records["firmware"] = {
        "board": fw.board,
        "toolchain": fw.toolchain,
        "cflags": fw.cflags,
        "flash_bytes": fw.flash_bytes,
        "model_flash_bytes": fw.model_flash_bytes,
        "flash_budget_bytes": fw.flash_budget_bytes,
        "ram_bytes": fw.ram_bytes,
        "ram_budget_bytes": fw.ram_budget_bytes,
        "arena_bytes": fw.arena_bytes,
        "stack_bytes": fw.stack_bytes,
    }
    ctx.log(
        f"firmware: {fw.flash_bytes:,} B of {fw.flash_budget_bytes:,} B flash (model {fw.model_flash_bytes:,} B), "
        f"{fw.ram_bytes:,} B static RAM + {fw.stack_bytes:,} B stack of {fw.ram_budget_bytes:,} B; {fw.toolchain}"
    )


def install_mcu(ctx: StageContext) -> dict[str, Any]:
    """The installer of an ``mcu`` device: the bundle (with the firmware) in the run volume."""
    from tinymlaas_ci.stages.install import _record, build_bundle

    if ctx.runtime.value != "c":
        raise TinymlError(
            f"device {ctx.device.name!r} is a microcontroller: it runs runtime 'c', not {ctx.runtime.value!r}",
            hint="set runtime: c and compression.quantization: static-int8",
        )
    bundle = ctx.path("bundle", MANIFEST).parent
    manifest = build_bundle(ctx, bundle)
    ctx.add_artifact("firmware", bundle / FIRMWARE_DIR / "firmware.elf")
    ctx.log(f"installed the firmware and {manifest.samples} {manifest.eval_split} samples for {ctx.device.board}")
    return _record(ctx, manifest, board=ctx.device.board)


# -- infer ------------------------------------------------------------------------------------
def infer_c(ctx: StageContext, bundle: Path, manifest: BundleManifest) -> None:
    """The infer stage for ``runtime: c``: the bundle's evaluation split, labels in the model's
    order and preprocessed as the manifest says, exactly what the other runtimes evaluate."""
    from tinymlaas_ci.ml import measure
    from tinymlaas_ci.stages.infer import bundle_data

    split = manifest.eval_split
    data = bundle_data(bundle, manifest, split)
    # The board and the agreement check take whole arrays: the int8 split of a microcontroller
    # model is small by construction.
    data[f"x_{split}"] = data[f"x_{split}"].materialize()
    if ctx.device.kind == "mcu":
        metrics, runtime = _infer_board(ctx, bundle, manifest, data, split)
    else:
        metrics, runtime = _infer_host(ctx, bundle, manifest, data, split)
    metrics.update(
        preprocess=manifest.preprocess,
        label_source=manifest.label_source,
        input_layout=(manifest.preprocess or {}).get("layout"),
    )
    ctx.metrics.update(metrics)
    ctx.records.update(
        device=measure.device_record(ctx.device) if ctx.device.kind != "mcu" else _mcu_device_record(ctx),
        runtime=runtime,
        tools=measure.tool_versions("onnx", "onnxruntime", "numpy"),
    )


def _agreement(bundle: Path, manifest: BundleManifest, x: np.ndarray, predictions, log) -> float | None:
    from tinymlaas_ci.ml.c_runtime import ort_agreement

    agree = ort_agreement(bundle / manifest.model, x, predictions)
    log(f"agreement with ONNX Runtime on the same int8 model: {agree['same']}/{agree['samples']}")
    return agree["agreement"]


def _infer_host(ctx: StageContext, bundle: Path, manifest: BundleManifest, data: dict[str, Any], split: str):
    import numpy as np

    from tinymlaas_ci.ml import measure
    from tinymlaas_ci.ml.cgen.host import CModel
    from tinymlaas_ci.stages.infer import measure_bundle

    host = manifest.model_copy(update={"model": f"{C_DIR}/{HOST_LIBRARY}"})
    metrics, runtime = measure_bundle(bundle, host, ctx.run.measure, data=data, split=split, log=ctx.log)
    x, _y = measure.eval_split(data, split)
    model = CModel(bundle / C_DIR / HOST_LIBRARY)  # measure_bundle built it, if the board had to
    pred = np.concatenate([model.run(x[i : i + 1]) for i in range(len(x))]).argmax(axis=1)
    metrics["agreement_with_onnxruntime"] = _agreement(bundle, manifest, x, pred, ctx.log)
    metrics["latency_source"] = "measured"
    metrics.update(macs=model.macs, weights_bytes=model.weights_bytes, arena_bytes=model.arena_bytes)
    return metrics, runtime


def _mcu_device_record(ctx: StageContext) -> dict[str, Any]:
    from tinymlaas_ci.devices.mcu import get_board

    device = ctx.device
    board = get_board(device.board)
    return {
        "name": device.name,
        "kind": "mcu",
        "arch": board.arch,
        "cpu_model": f"{board.cpu} ({board.name}, {device.transport})",
        "isa_flags": list(board.features),
        "cpu_count": 1,
        "memory_mb": None,
        "os": "bare metal",
        "board": board.describe(),
    }


def _latency_from(values: list[int], clock_mhz: float, warmup: int) -> dict[str, Any]:
    """A ``Latency`` from per-inference counts (instructions or cycles) at ``clock_mhz``."""
    import statistics

    from tinymlaas_ci.ml.measure import percentile

    ms = sorted(v / (clock_mhz * 1000.0) for v in values)
    return {
        "p50": percentile(ms, 50),
        "p90": percentile(ms, 90),
        "p95": percentile(ms, 95),
        "p99": percentile(ms, 99),
        "mean": statistics.fmean(ms),
        "std": statistics.pstdev(ms) if len(ms) > 1 else 0.0,
        "min": ms[0],
        "max": ms[-1],
        "iterations": len(ms),
        "seconds": sum(ms) / 1000.0,
        "warmup": warmup,
    }


def _infer_board(ctx: StageContext, bundle: Path, manifest: BundleManifest, data: dict[str, Any], split: str):
    import numpy as np

    from tinymlaas_ci.devices.mcu import FirmwareInfo, quantize_inputs, run_on_board
    from tinymlaas_ci.devices.mcu.harness import dequantize_outputs, qemu_version
    from tinymlaas_ci.ml import measure

    device = ctx.device
    fw = FirmwareInfo.load(bundle / FIRMWARE_DIR)
    x, y = measure.eval_split(data, split)
    labels = list(data.get("labels") or manifest.labels)
    num_classes = len(labels) or int(y.max()) + 1
    serial = device.serial.model_dump() if device.serial else None
    ctx.log(f"running {len(x)} {split} samples on {device.board} over {device.transport}")
    board = run_on_board(
        fw,
        quantize_inputs(x, fw),
        transport=device.transport,
        serial=serial,
        clock_mhz=device.clock_mhz,
        work_dir=ctx.path("board", "x").parent,
        device=device.name,
    )
    logits = dequantize_outputs(board.outputs, fw)
    index = np.arange(len(x))[:, None]
    acc = measure.evaluate(lambda idx: logits[idx[:, 0]], index, y, num_classes=num_classes)
    ctx.log(f"accuracy on the board {acc['accuracy']:.4f} on {acc['samples']} {split} samples")
    base_session = _baseline_session(bundle / manifest.baseline, ctx.run.measure.threads)
    base = measure.evaluate(base_session.run, x, y, num_classes=num_classes, batch_size=64)
    m = board.metrics()
    source, per_inference = ("instructions", board.instructions)
    if board.cycles:
        source, per_inference = ("cycles", board.cycles)
    if not per_inference:
        raise TinymlError(
            f"the board {device.board} reported neither instruction counts nor cycles",
            hint="under QEMU the instruction-count plugin needs a host C compiler (apt-get install gcc)",
        )
    latency = _latency_from(per_inference, board.clock_mhz, 0)
    ctx.log(
        f"instructions per inference: median {m['instructions_per_inference']['median']:,.0f}"
        if m.get("instructions_per_inference")
        else f"cycles per inference: median {latency['p50'] * board.clock_mhz * 1000:,.0f}"
    )
    model_bytes = fw.model_flash_bytes
    metrics = {
        "accuracy": acc["accuracy"],
        "top5_accuracy": acc["top5_accuracy"],
        "baseline_accuracy": base["accuracy"],
        "accuracy_drop": base["accuracy"] - acc["accuracy"],
        "samples": acc["samples"],
        "latency_ms": latency,
        "latency_source": source,
        "batch_size": 1,
        "throughput_per_s": 1000.0 / latency["p50"] if latency["p50"] else 0.0,
        "model_size_bytes": model_bytes,
        "model_gzip_bytes": len(gzip.compress(Path(fw.bin).read_bytes(), 9)),
        "baseline_model_bytes": (bundle / manifest.baseline).stat().st_size,
        "compression_ratio": (bundle / manifest.baseline).stat().st_size / model_bytes if model_bytes else None,
        "labels": labels,
        "confusion_matrix": acc["confusion_matrix"],
        "eval_split": split,
        "agreement_with_onnxruntime": _agreement(bundle, manifest, x, board.predictions, ctx.log),
        "board": fw.board,
        "memory_map": {"regions": fw.regions, "sections": fw.sections},
    }
    for key in (
        "flash_bytes",
        "weights_bytes",
        "arena_bytes",
        "ram_bytes",
        "macs",
        "instructions_per_inference",
        "instructions_per_mac",
        "latency_ms_estimate",
        "clock_mhz",
        "cycles_per_inference",
    ):
        if m.get(key) is not None:
            metrics[key] = m[key]
    versions = {"arm-none-eabi-gcc": fw.toolchain}
    if device.transport == "qemu":
        versions["qemu-system-arm"] = qemu_version()
    runtime = {
        "name": "c",
        "version": fw.toolchain,
        "threads": 1,
        "providers": [f"board:{fw.board}", f"transport:{device.transport}"],
        "tools": versions,
        "transport": board.transport,
    }
    return metrics, runtime


def _baseline_session(path: Path, threads: int):
    """The fp32 baseline in ONNX Runtime on the runner, for ``baseline_accuracy``."""
    from tinymlaas_ci.ml.runtime import load_session

    return load_session(path, "onnxruntime", threads=threads)
