"""The ``compile`` stage: load the fetched model, prune and quantize it for the run's runtime.

Inputs: the ``fetch`` stage's ``model`` (and ``dataset``, for calibration and fine-tuning).
Artifacts: ``model`` (``compile/model.onnx``, or ``compile/model.pt`` for runtime ``pytorch``) and
``baseline`` (``compile/baseline.onnx``: fp32, unpruned); for runtime ``c`` also the generated C
(``c/model.c``, ``c/model.h``, ``c/kernels.h``, see :mod:`tinymlaas_ci.stages.runtime_c`). Records:
``compression`` (a ``CompressionRecord``; its ``runtime`` is the runtime deployed for, which for
``runtime: auto`` this stage chooses, see :func:`resolve_auto`), ``tools``, ``model_parameters``, ``input_shape``,
``labels`` (the model's output order), ``prepared`` (labels, their source, the preprocessing plan and
input layout, applied the same way by install and infer), ``dataset`` (where the dataset is, for the
install stage), ``source_format``.

    python -m tinymlaas_ci.stages.compile VOLUME --name compile
"""

from __future__ import annotations

import sys

from tinymlaas_ci.errors import TinymlError
from tinymlaas_ci.ml.c_runtime import C_DIR, is_this_machine
from tinymlaas_ci.spec.models import Quantization, Runtime
from tinymlaas_ci.stages.contract import StageContext, fit_dataset, stage_main

__all__ = ["main", "resolve_auto", "run"]


def run(ctx: StageContext) -> None:
    """Compile the model of ``ctx``'s run; see the module docstring for inputs and outputs."""
    from tinymlaas_ci.ml import compress, measure

    run = ctx.run
    compression = run.compression
    fetch = ctx.upstream("fetch")
    model_path = ctx.input_path("fetch", "model")
    # What fetch detected, unless the spec declares a format; compile_model checks it again.
    fmt = run.model.format.value
    if fmt == "auto":
        fmt = (fetch.records.get("model") or {}).get("format") or "auto"

    dataset = fetch.artifacts.get("dataset")
    if dataset is None and (compression.quantization is Quantization.static_int8 or compression.pruning):
        raise TinymlError(
            "this compression needs the dataset, but the fetch stage produced none",
            hint="give the run a dataset, or use quantization none / dynamic-int8 / fp16 without pruning",
        )

    runtime, runtime_reason, c_candidate = run.runtime, None, None
    if runtime is Runtime.auto:
        runtime, runtime_reason, c_candidate = resolve_auto(ctx)
        ctx.log(f"runtime auto: {runtime.value}" + ("" if c_candidate else f" ({runtime_reason})"))
    if runtime is Runtime.c:
        from tinymlaas_ci.stages.runtime_c import compile_c

        compile_c(ctx, fmt)
        ctx.records["compression"].update(runtime=runtime.value, runtime_reason=runtime_reason)
        return
    ctx.log(
        f"compiling {model_path.name} for {runtime.value}: quantization {compression.quantization.value}"
        + (f", pruning {compression.pruning.sparsity}" if compression.pruning else "")
        + (", timing ONNX Runtime against the generated C" if c_candidate else "")
    )
    outcome = compress.compile_model(
        model_path,
        ctx.path("model.onnx").parent,
        compression=compression,
        runtime=runtime,
        fmt=fmt,
        input_shape=run.model.input_shape,
        dataset=fit_dataset(ctx) if dataset is not None else None,
        preprocess=run.dataset.preprocess,
        input_layout=run.model.input_layout,
        architecture=run.model.architecture,
        code=run.model.code,
        device_arch=ctx.device.arch,
        progress=ctx.log,
        runtimes=[c_candidate.candidate()] if c_candidate else (),
        batch_size=run.measure.batch_size,
        threads=run.measure.threads,
    )
    rec = outcome.record
    rec.setdefault("runtime", runtime.value)
    if runtime_reason and "runtime_reason" not in rec:
        rec["runtime_reason"] = runtime_reason
    if c_candidate is not None:
        if rec["runtime"] == Runtime.c.value:
            from tinymlaas_ci.ml.c_runtime import c_record

            assert c_candidate.info is not None  # it was built, timed and kept
            for name in c_candidate.info.files:
                ctx.add_artifact(f"{C_DIR}/{name}", c_candidate.c_dir / name)
            ctx.records["cgen"] = c_record(c_candidate.info)
        else:
            c_candidate.discard()
        ctx.log(f"runtime auto: kept {rec['runtime']}: {rec.get('runtime_reason')}")
    ctx.add_artifact("model", outcome.deployed)
    ctx.add_artifact("baseline", outcome.baseline)
    ctx.log(
        f"baseline {rec['baseline_bytes']} B -> deployed {rec['compressed_bytes']} B "
        f"(gzip {rec['compressed_gzip_bytes']} B)"
    )
    ctx.records.update(
        compression=rec,
        tools=measure.tool_versions(
            "torch",
            "onnx",
            "onnxruntime",
            "onnxscript",
            "numpy",
            # the optional model libraries, only when this model needed them
            *(m for m in ("timm", "torchvision", "transformers", "safetensors", "fastai") if m in sys.modules),
        ),
        model_parameters=outcome.parameters,
        input_shape=list(outcome.input_shape),
        source_format=outcome.source_format,
        export=outcome.details.get("export"),
        labels=(outcome.prepared or {}).get("labels"),
        prepared=outcome.prepared,
        dataset=dataset.model_dump() if dataset is not None else None,
    )


def resolve_auto(ctx: StageContext):
    """``runtime: auto``: ``(runtime, reason, c_candidate)``.

    On an ``mcu`` device generated C is the only runtime. Other quantizations than static-int8
    run in ONNX Runtime. For static-int8 the generated C is a candidate, timed with ONNX Runtime's
    recipes, when the device is this machine (``local``, or a Docker engine on it): then
    ``c_candidate`` is a :class:`~tinymlaas_ci.ml.c_runtime.CCandidate` and the runtime is decided
    by the timing. Elsewhere ONNX Runtime, and ``reason`` says why the C was not timed.
    """
    from tinymlaas_ci.hostinfo import arch as host_arch

    device = ctx.device
    quant = ctx.run.compression.quantization
    if device.kind == "mcu":
        return Runtime.c, f"device {device.name!r} is a microcontroller: generated C is its runtime", None
    if quant is not Quantization.static_int8:
        return (
            Runtime.onnxruntime,
            f"quantization {quant.value} runs in ONNX Runtime; only static-int8 has generated C as an alternative",
            None,
        )
    docker_host = device.docker.host if device.kind == "docker" else None
    here = is_this_machine(device.kind, docker_host)
    if not here or device.arch != host_arch():
        return (
            Runtime.onnxruntime,
            f"the generated C is timed only where the device is this machine; device {device.name!r} is "
            f"{'a remote ' + device.kind + ' device' if not here else 'of architecture ' + device.arch}",
            None,
        )
    from tinymlaas_ci.ml.c_runtime import CCandidate, host_build_flags
    from tinymlaas_ci.ml.cgen.host import compiler

    try:
        compiler()
    except TinymlError as exc:
        return Runtime.onnxruntime, f"the generated C cannot be built here: {exc}", None
    flags = host_build_flags(device.kind, device.arch, docker_host=docker_host)
    return Runtime.onnxruntime, None, CCandidate(ctx.path(C_DIR, "model.c").parent, flags)


def main(argv: list[str] | None = None) -> int:
    """Run the stage as a process."""
    return stage_main("compile", run, argv)


if __name__ == "__main__":
    sys.exit(main())
