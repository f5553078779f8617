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
    prepared: dict[str, Any] | None = None
    """Labels, label source, preprocessing and input layout decided for the dataset (see
    :meth:`tinymlaas_ci.ml.prepared.PreparedData.record`), when a dataset file was given."""
    calibration: tuple[Any, str] | None = None
    """``(samples, split)``: model-ready calibration inputs, when asked for with ``calibrate``."""


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
    dataset: str | os.PathLike | None = None,
    preprocess: Any | None = None,
    input_layout: Any | None = None,
    architecture: Any | None = None,
    code: str | None = None,
    calibrate: bool = False,
    device_arch: str | None = None,
    runtimes: Sequence[Any] = (),
    batch_size: int = 1,
    threads: int = 1,
) -> CompileOutcome:
    """Load, prune, quantize and save a model for ``runtime``.

    ``compression`` is the run spec's ``compression`` section, ``data`` the
    dataset arrays (``x_train``, ``y_train``, ``x_val``, ...) used for fine-tuning and calibration,
    already preprocessed. Alternatively ``dataset`` is a fetched ``dataset.npz`` of raw samples:
    then labels and preprocessing (``preprocess``: the spec's ``dataset.preprocess``) are decided
    from it and the model's metadata, and checked on a first batch right after loading
    (:mod:`.prepared`), before anything slow runs. ``architecture``/``code`` are the spec's
    ``model.architecture``/``model.code``. ``calibrate`` also returns the model-ready calibration
    samples (:attr:`CompileOutcome.calibration`) whatever the quantization, for a quantizer of
    its own (the C generator's).
    Writes ``baseline.onnx`` and ``model.onnx`` (or ``model.pt``) into ``out_dir``.
    ``device_arch`` is the device's architecture (default: this machine's): ``static-int8``
    picks its recipe for it (:func:`tinymlaas_ci.ml.quantize.quantize_onnx`), and ``runtimes``
    (:class:`~tinymlaas_ci.ml.quantize.RuntimeCandidate`) are timed with its recipes; the record's
    ``runtime`` then names the runtime whose model was deployed. ``batch_size`` and ``threads``
    are the run's ``measure`` settings, at which the candidates are timed.
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
    if dataset is not None:
        from tinymlaas_ci.ml.datasets import load_npz_meta

        sizes = load_npz_meta(dataset)["sizes"]
        has_train = sizes.get("train", 0) > 0
        if runtime == "onnxruntime" and quant == "static-int8" and not (has_train or sizes.get("val")):
            calibration_data({}, compression.calibration_samples)  # raises the one message for this
    else:
        has_train = bool(len(data.get("x_train", ())))
        if runtime == "onnxruntime" and quant == "static-int8":
            calib, calib_split = calibration_data(data, compression.calibration_samples, seed=seed)
    if pruning is not None and pruning.fine_tune_epochs > 0 and not has_train:
        raise TinymlError(
            "fine-tuning after pruning needs a train split, and the dataset has none",
            hint="add a train split, or set compression.pruning.fine_tune_epochs: 0",
        )
    prepared = None

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
            # One self-contained, sorted file: external data inlined, so every later step
            # (quantization, bundle, export) has the whole model in one place.
            formats.save_onnx_single(proto, baseline)
            parameters = formats.count_onnx_parameters(proto)
            del proto
            fp32 = baseline
            if dataset is not None:
                from tinymlaas_ci.ml.architectures import read_model_meta

                prepared, found = _prepare(
                    dataset,
                    read_model_meta(Path(model_path).parent),
                    preprocess,
                    shape or input_shape,
                    input_layout,
                    progress,
                )
                shape = shape or tuple(found)
                _preflight_onnx(baseline, prepared, progress)
            if shape is None:
                shape = formats.resolve_input_shape(input_shape, None, fmt=fmt)
        else:
            torch_model, meta = formats.load_model(model_path, fmt, architecture=architecture, code=code)
            found = formats.torch_input_shape(torch_model)
            if dataset is not None:
                prepared, from_data = _prepare(
                    dataset, meta, preprocess, tuple(input_shape) if input_shape else found, input_layout, progress
                )
                found = found or tuple(from_data)
                _preflight_torch(torch_model, prepared, progress)
            shape = formats.resolve_input_shape(input_shape, found, fmt=fmt)
            parameters = formats.count_parameters(torch_model)
            progress(f"{parameters} parameters, input shape {list(shape)}; exporting the fp32 ONNX baseline")
            details["export"] = formats.export_onnx(torch_model, baseline, shape)
            fp32 = baseline
            if prepared is not None and pruning is not None:
                data = _model_ready_data(prepared, compression, pruning, seed)
            if pruning is not None:
                torch_model = prune_and_tune(torch_model, pruning, data, record, details, seed, progress)
                if runtime == "onnxruntime":
                    fp32 = tmp_dir / "pruned.onnx"
                    if not with_pruned_weights(baseline, torch_model, fp32):
                        formats.export_onnx(torch_model, fp32, shape)

        if prepared is not None and runtime == "onnxruntime" and (quant == "static-int8" or calibrate):
            if not data:
                data = _model_ready_data(prepared, compression, None, seed)
            calib, calib_split = calibration_data(data, compression.calibration_samples, seed=seed)
        elif calibrate and calib is None:
            calib, calib_split = calibration_data(data, compression.calibration_samples, seed=seed)
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
                        runtimes=runtimes if quant == "static-int8" else (),
                        batch_size=batch_size,
                        threads=threads,
                    )
                )
            proto = formats.check_onnx(deployed)
            record["ops_quantized"] = count_quantized_ops(proto)
            kept_runtime = record.get("runtime", "onnxruntime")
            if kept_runtime == "onnxruntime":
                record["integer_ops"] = integer_ops(deployed)
                where = "after ONNX Runtime's optimizer"
            else:  # what the kept runtime counted of its own kernels
                kept = next(c for c in record["recipe_candidates"] if c.get("kept"))
                record["integer_ops"] = kept["integer_ops"]
                where = f"in the {kept_runtime} model"
            progress(
                f"integer kernels {where}: {record['integer_ops']['integer']} of "
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
        prepared=prepared.record() if prepared is not None else None,
        calibration=(calib, calib_split) if calibrate and calib is not None else None,
    )


def _prepare(dataset, meta, preprocess, model_shape, layout, progress):
    from tinymlaas_ci.ml.prepared import prepare_data

    return prepare_data(
        dataset,
        meta=meta,
        spec_preprocess=preprocess,
        model_shape=model_shape,
        declared_layout=layout,
        log_fn=progress,
    )


def _preflight_torch(model: Any, prepared: Any, progress: Callable[[str], None]) -> None:
    import torch

    from tinymlaas_ci.ml.prepared import preflight

    def run(x):
        with torch.no_grad():
            out = model(torch.from_numpy(x))
        out = getattr(out, "logits", out)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.detach().cpu().numpy()

    checked = preflight(run, prepared)
    progress(f"pre-flight: a first batch of {checked['checked_samples']} gives {checked['outputs']} finite outputs")


def _preflight_onnx(path: Path, prepared: Any, progress: Callable[[str], None]) -> None:
    from tinymlaas_ci.ml.prepared import preflight
    from tinymlaas_ci.ml.runtime import load_session

    session = load_session(path, "onnxruntime", threads=1)
    fixed = session.fixed_batch

    def run(x):
        import numpy as np

        if fixed and len(x) != fixed:
            x = np.concatenate([x] * (-(-fixed // len(x))))[:fixed]
        return session.run(x)

    checked = preflight(run, prepared, batch=fixed or 8)
    progress(f"pre-flight: a first batch of {checked['checked_samples']} gives {checked['outputs']} finite outputs")


def _model_ready_data(prepared: Any, compression: Compression, pruning: Any, seed: int) -> dict[str, Any]:
    # Only what is needed: fine-tuning reads the train split whole, calibration a seeded subset.
    limit: dict[str, int] = {}
    splits = ["train", "val"]
    if pruning is None or not pruning.fine_tune_epochs:
        limit = {"train": compression.calibration_samples, "val": compression.calibration_samples}
    return prepared.arrays(splits, limit=limit, seed=seed)
