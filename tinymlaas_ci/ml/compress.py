"""Compile a model for a runtime: load, export the fp32 ONNX baseline, prune, quantize, save.

:func:`compile_model` is what the compile stage and the benchmark call. It always writes the
uncompressed fp32 ONNX baseline next to the deployed artifact, so accuracy and size can be
compared on the device against the same model before compression. The steps live in their
own modules: :mod:`.formats` (load, export to ONNX), :mod:`.prune`, :mod:`.quantize`.

Deployed artifacts:

* runtime ``onnxruntime``: ``model.onnx`` - fp32 (``none``), ``quantize_dynamic`` (``dynamic-int8``),
  ``quantize_static`` in QDQ format calibrated on train data (``static-int8``), or float16 weights
  and compute with float32 inputs and outputs (``fp16``);
* runtime ``pytorch``: ``model.pt`` (TorchScript) - fp32, dynamic int8 Linear layers, or fp16
  with a float32 interface.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinymlaas_ci.errors import TinymlError
from tinymlaas_ci.ml import formats
from tinymlaas_ci.ml.measure import gzip_size
from tinymlaas_ci.ml.model_format import detect_model_format
from tinymlaas_ci.ml.prune import prune_and_tune, with_pruned_weights
from tinymlaas_ci.ml.quantize import (
    calibration_data,
    count_quantized_ops,
    integer_ops,
    quantize_onnx,
    to_torchscript,
)
from tinymlaas_ci.spec.models import Compression, ModelFormat, Runtime

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = ["CompileOutcome", "compile_model"]


@dataclass
class CompileOutcome:
    """What :func:`compile_model` produced."""

    deployed: Path
    """The artifact to install: ``model.onnx`` or ``model.pt``."""
    baseline: Path
    """The uncompressed, unpruned fp32 ONNX model."""
    record: dict[str, Any]
    """Fits :class:`tinymlaas_ci.results.models.CompressionRecord`."""
    parameters: int
    input_shape: tuple[int, ...]
    source_format: str
    details: dict[str, Any] = field(default_factory=dict)


def compile_model(
    model_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    compression: Compression = Compression(),
    runtime: Runtime = Runtime.onnxruntime,
    fmt: ModelFormat | str = ModelFormat.auto,
    input_shape: Sequence[int] | None = None,
    data: Mapping[str, np.ndarray] | None = None,
    seed: int = 0,
    progress: Callable[[str], None] = lambda _msg: None,
    device_arch: str | None = None,
) -> CompileOutcome:
    """Load, prune, quantize and save a model for ``runtime``.

    ``compression`` is the run spec's ``compression`` section, ``data`` the
    dataset arrays (``x_train``, ``y_train``, ``x_val``, ...) used for fine-tuning and calibration.
    Writes ``baseline.onnx`` and ``model.onnx`` (or ``model.pt``) into ``out_dir``.
    ``device_arch`` is the device's architecture (default: this machine's): ``static-int8``
    picks its recipe for it (:func:`tinymlaas_ci.ml.quantize.quantize_onnx`).
    """
    data = dict(data or {})
    runtime = Runtime(runtime).value
    quant = compression.quantization.value
    per_channel = compression.per_channel
    pruning = compression.pruning
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    baseline = out_dir / "baseline.onnx"
    fmt = detect_model_format(model_path, fmt)
    progress(f"model format: {fmt}")
    if runtime == "pytorch" and quant == "static-int8":
        raise TinymlError("runtime pytorch does not support static-int8", hint="use runtime onnxruntime")

    # Cheapest checks first: refuse what cannot work before loading and exporting anything.
    calib = None
    if runtime == "onnxruntime" and quant == "static-int8":
        calib, calib_split = calibration_data(data, compression.calibration_samples, seed=seed)
    if pruning is not None and pruning.fine_tune_epochs > 0 and not len(data.get("x_train", ())):
        raise TinymlError(
            "fine-tuning after pruning needs a train split, and the dataset has none",
            hint="add a train split, or set compression.pruning.fine_tune_epochs: 0",
        )

    record: dict[str, Any] = {"quantization": quant, "per_channel": per_channel}
    details: dict[str, Any] = {}
    torch_model = None
    with tempfile.TemporaryDirectory(prefix="tinymlaas-compile-") as tmp:
        tmp_dir = Path(tmp)
        if fmt == "onnx":
            if pruning is not None:
                raise TinymlError(
                    "pruning needs a PyTorch model; this model is ONNX",
                    hint="remove compression.pruning, or upload the PyTorch model instead",
                )
            if runtime == "pytorch":
                raise TinymlError(
                    "an ONNX model cannot run with runtime pytorch",
                    hint="use runtime onnxruntime for ONNX models",
                )
            proto = formats.check_onnx(model_path)
            shape = formats.onnx_input_shape(proto)
            if shape is None:
                shape = formats.resolve_input_shape(input_shape, None, fmt=fmt)
            shutil.copyfile(model_path, baseline)
            parameters = formats.count_onnx_parameters(proto)
            fp32 = baseline
        else:
            torch_model = formats.load_torch_model(model_path, fmt)
            shape = formats.resolve_input_shape(input_shape, formats.torch_input_shape(torch_model), fmt=fmt)
            parameters = formats.count_parameters(torch_model)
            progress(f"{parameters} parameters, input shape {list(shape)}; exporting the fp32 ONNX baseline")
            details["export"] = formats.export_onnx(torch_model, baseline, shape)
            fp32 = baseline
            if pruning is not None:
                torch_model = prune_and_tune(torch_model, pruning, data, record, details, seed, progress)
                if runtime == "onnxruntime":
                    fp32 = tmp_dir / "pruned.onnx"
                    if not with_pruned_weights(baseline, torch_model, fp32):
                        formats.export_onnx(torch_model, fp32, shape)

        if runtime == "onnxruntime":
            deployed = out_dir / "model.onnx"
            if quant == "none":
                shutil.copyfile(fp32, deployed)
            else:
                if calib is not None:
                    record["calibration_samples"] = len(calib)
                    progress(f"calibrating static int8 on {len(calib)} {calib_split} samples")
                progress(f"quantizing with ONNX Runtime: {quant}")
                check = None
                if data.get("x_val") is not None and len(data["x_val"]) and data.get("y_val") is not None:
                    check = (data["x_val"], data["y_val"])
                record.update(
                    quantize_onnx(
                        fp32,
                        deployed,
                        quant,
                        calibration=calib,
                        per_channel=per_channel,
                        arch=device_arch,
                        check=check,
                        progress=progress,
                    )
                )
            proto = formats.check_onnx(deployed)
            record["ops_quantized"] = count_quantized_ops(proto)
            record["integer_ops"] = integer_ops(deployed)
            progress(
                f"integer kernels after ONNX Runtime's optimizer: {record['integer_ops']['integer']} of "
                f"{record['integer_ops']['total']} Conv/Gemm/MatMul"
            )
        else:
            deployed = out_dir / "model.pt"
            progress(f"saving TorchScript for runtime pytorch: {quant}")
            record["ops_quantized"] = to_torchscript(torch_model, deployed, shape, quant)

    record["baseline_bytes"] = baseline.stat().st_size
    record["compressed_bytes"] = deployed.stat().st_size
    record["baseline_gzip_bytes"] = gzip_size(baseline)
    record["compressed_gzip_bytes"] = gzip_size(deployed)
    return CompileOutcome(
        deployed=deployed,
        baseline=baseline,
        record=record,
        parameters=int(parameters),
        input_shape=tuple(shape),
        source_format=fmt,
        details=details,
    )
