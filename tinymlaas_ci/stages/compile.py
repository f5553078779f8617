"""The ``compile`` stage: load the fetched model, prune and quantize it for the run's runtime.

Inputs: the ``fetch`` stage's ``model`` (and ``dataset``, for calibration and fine-tuning).
Artifacts: ``model`` (``compile/model.onnx``, or ``compile/model.pt`` for runtime ``pytorch``) and
``baseline`` (``compile/baseline.onnx``: fp32, unpruned); for runtime ``c`` also the generated C
(``c/model.c``, ``c/model.h``, ``c/kernels.h``, see :mod:`tinymlaas_ci.stages.runtime_c`). Records:
``compression`` (a ``CompressionRecord``), ``tools``, ``model_parameters``, ``input_shape``,
``labels`` (the model's output order), ``prepared`` (labels, their source, the preprocessing plan and
input layout, applied the same way by install and infer), ``dataset`` (where the dataset is, for the
install stage), ``source_format``.

    python -m tinymlaas_ci.stages.compile VOLUME --name compile
"""

from __future__ import annotations

import sys

from tinymlaas_ci.errors import TinymlError
from tinymlaas_ci.spec.models import Quantization, Runtime
from tinymlaas_ci.stages.contract import StageContext, fit_dataset, stage_main

__all__ = ["main", "run"]


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

    if run.runtime is Runtime.c:
        from tinymlaas_ci.stages.runtime_c import compile_c

        compile_c(ctx, fmt)
        return
    ctx.log(
        f"compiling {model_path.name} for {run.runtime.value}: quantization {compression.quantization.value}"
        + (f", pruning {compression.pruning.sparsity}" if compression.pruning else "")
    )
    outcome = compress.compile_model(
        model_path,
        ctx.path("model.onnx").parent,
        compression=compression,
        runtime=run.runtime,
        fmt=fmt,
        input_shape=run.model.input_shape,
        dataset=fit_dataset(ctx) if dataset is not None else None,
        preprocess=run.dataset.preprocess,
        input_layout=run.model.input_layout,
        architecture=run.model.architecture,
        code=run.model.code,
        device_arch=ctx.device.arch,
        progress=ctx.log,
    )
    ctx.add_artifact("model", outcome.deployed)
    ctx.add_artifact("baseline", outcome.baseline)
    rec = outcome.record
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


def main(argv: list[str] | None = None) -> int:
    """Run the stage as a process."""
    return stage_main("compile", run, argv)


if __name__ == "__main__":
    sys.exit(main())
