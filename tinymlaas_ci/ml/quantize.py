"""Quantization: ONNX Runtime's int8 (dynamic, static QDQ) and fp16 for ONNX models, torch's
for TorchScript, and counting what a quantized graph really runs in integer or half precision.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tinymlaas_ci.errors import TinymlError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import onnx
    import torch

__all__ = [
    "QUANTIZATIONS",
    "calibration_data",
    "convert_onnx_fp16",
    "count_quantized_ops",
    "quantize_onnx",
    "to_torchscript",
]

log = logging.getLogger(__name__)

QUANTIZATIONS = ("none", "dynamic-int8", "static-int8", "fp16")
# Operators that only exist in quantized graphs (QOperator format and dynamic quantization).
_INTEGER_OPS = {
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "ConvInteger",
    "MatMulInteger",
    "QGemm",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
}


def calibration_data(data: Mapping[str, np.ndarray], samples: int, *, seed: int = 0) -> tuple[np.ndarray, str]:
    """Up to ``samples`` inputs from the train split (else val), a seeded random subset."""
    import numpy as np

    for split in ("train", "val"):
        x = data.get(f"x_{split}")
        if x is not None and len(x):
            n = min(int(samples), len(x))
            idx = np.sort(np.random.default_rng(seed).permutation(len(x))[:n])
            return np.ascontiguousarray(x[idx], dtype=np.float32), split
    raise TinymlError(
        "static-int8 needs calibration data, but the dataset has no train or val split",
        hint="add a train (or val) split to the dataset, or use quantization dynamic-int8 or fp16",
    )


def _input_name(path: Path) -> str:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in inits)


def _preprocess(src: Path, dst: Path) -> Path:
    # ORT recommends shape inference + graph cleanup before quantizing; a model it cannot
    # pre-process is still quantized as is.
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        return dst
    except Exception as exc:
        log.info("quantization pre-processing skipped: %s", exc)
        return src


def quantize_onnx(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    mode: str,
    *,
    calibration: np.ndarray | None = None,
    per_channel: bool = False,
) -> None:
    """Write a quantized copy of the fp32 ONNX model ``src`` to ``dst``.

    ``mode`` is ``dynamic-int8``, ``static-int8`` (needs ``calibration`` inputs) or ``fp16``.
    """
    src, dst = Path(src), Path(dst)
    if mode == "fp16":
        convert_onnx_fp16(src, dst)
        return
    # ORT logs "please pre-process" advice on the root logger; pre-processing is done below.
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        _quantize_int8(src, dst, mode, calibration, per_channel)
    finally:
        root.setLevel(level)


def _quantize_int8(src: Path, dst: Path, mode: str, calibration, per_channel: bool) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    with tempfile.TemporaryDirectory(prefix="tinymlaas-q-") as tmp:
        prepared = _preprocess(src, Path(tmp) / "prepared.onnx")
        try:
            if mode == "dynamic-int8":
                quantize_dynamic(str(prepared), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel)
            elif mode == "static-int8":
                if calibration is None or not len(calibration):
                    raise TinymlError("static-int8 needs calibration inputs", hint="give a train or val split")
                name = _input_name(prepared)

                class _Reader(CalibrationDataReader):
                    def __init__(self) -> None:
                        self._it = iter(range(len(calibration)))

                    def get_next(self):
                        i = next(self._it, None)
                        return None if i is None else {name: calibration[i : i + 1]}

                quantize_static(
                    str(prepared),
                    str(dst),
                    _Reader(),
                    quant_format=QuantFormat.QDQ,
                    per_channel=per_channel,
                    activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
                )
            else:
                raise TinymlError(f"unknown quantization {mode!r}", hint=f"use one of {', '.join(QUANTIZATIONS)}")
        except TinymlError:
            raise
        except Exception as exc:
            raise TinymlError(
                f"ONNX Runtime could not quantize the model ({mode}): {type(exc).__name__}: {exc}",
                hint="try another quantization mode, or quantization: none",
            ) from exc


def convert_onnx_fp16(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Convert an fp32 ONNX model to float16, keeping float32 inputs and outputs (Cast nodes).

    Uses ONNX Runtime's converter (``onnxruntime.transformers.float16``); the runtime API
    stays float32, so the same data feeds every variant.
    """
    import onnx
    from onnxruntime.quantization.onnx_model import ONNXModel

    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as exc:  # pragma: no cover - ships with onnxruntime
        raise TinymlError("fp16 conversion needs onnxruntime.transformers", hint="pip install onnxruntime") from exc
    model = onnx.load(str(src))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            half = convert_float_to_float16(model, keep_io_types=True)
        # The converter appends its input Casts at the end of the node list; ONNX Runtime does
        # not mind, but onnx.checker (and other tools) want topological order.
        ONNXModel(half).topological_sort()
        onnx.checker.check_model(half)
    except Exception as exc:
        raise TinymlError(f"cannot convert the model to fp16: {exc}", hint="use another quantization mode") from exc
    onnx.save(half, str(dst))


def count_quantized_ops(model: onnx.ModelProto) -> dict[str, int]:
    """Quantized operators by type in an ONNX graph.

    Integer-only operators (``QLinear*``, ``ConvInteger``, ``MatMulInteger``, ``QuantizeLinear``,
    ``DequantizeLinear``, ...) are counted under their own name; in a QDQ graph, a float operator
    fed by a ``DequantizeLinear`` runs in int8 and is counted as ``<Op>.int8``; in an fp16 graph,
    each operator other than ``Cast`` is counted as ``<Op>.fp16``.
    """
    import onnx

    from_dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    fp16 = any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    counts: Counter[str] = Counter()
    for node in model.graph.node:
        op = node.op_type
        if op in _INTEGER_OPS or op.startswith("QLinear"):
            counts[op] += 1
        elif any(i in from_dq for i in node.input):
            counts[f"{op}.int8"] += 1
        elif fp16 and op != "Cast":
            counts[f"{op}.fp16"] += 1
    return dict(sorted(counts.items()))


def _fp16_module(model: torch.nn.Module) -> torch.nn.Module:
    import torch

    class Float16(torch.nn.Module):
        """Runs ``inner`` in float16 but takes and returns float32, like the ONNX fp16 model."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner.half()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x.half()).float()

    return Float16(model)


def to_torchscript(
    model: torch.nn.Module, dst: str | os.PathLike, input_shape: Sequence[int], mode: str
) -> dict[str, int]:
    """Save ``model`` as TorchScript at ``dst`` after quantization ``mode``; returns ops quantized.

    ``dynamic-int8`` quantizes Linear layers (``torch.ao.quantization.quantize_dynamic``);
    ``fp16`` converts the weights to half with a float32 interface.
    """
    import torch

    model = copy.deepcopy(model).eval()
    counts: Counter[str] = Counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization warns it is deprecated
        if mode == "dynamic-int8":
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
            for m in model.modules():
                if type(m).__module__.startswith("torch.ao.nn.quantized.dynamic"):
                    counts[f"{type(m).__name__}.dynamic-int8"] += 1
            if not counts:
                raise TinymlError(
                    "dynamic-int8 with runtime pytorch quantizes Linear layers, and this model has none",
                    hint="use runtime onnxruntime with static-int8, or quantization fp16",
                )
        elif mode == "fp16":
            model = _fp16_module(model)
            for m in model.modules():
                if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
                    counts[f"{type(m).__name__}.fp16"] += 1
        elif mode == "static-int8":
            raise TinymlError("runtime pytorch does not support static-int8", hint="use runtime onnxruntime")
        elif mode != "none":
            raise TinymlError(f"unknown quantization {mode!r}", hint=f"use one of {', '.join(QUANTIZATIONS)}")
        example = torch.zeros((1, *input_shape), dtype=torch.float32)
        try:
            scripted = (
                model
                if isinstance(model, torch.jit.ScriptModule)
                else torch.jit.trace(model, example, check_trace=False)
            )
            scripted = (
                torch.jit.freeze(scripted.eval())
                if mode == "none" and not isinstance(model, torch.jit.ScriptModule)
                else scripted
            )
            scripted(example)
            torch.jit.save(scripted, str(dst))
        except TinymlError:
            raise
        except Exception as exc:
            raise TinymlError(
                f"cannot convert the model to TorchScript ({mode}): {type(exc).__name__}: {exc}",
                hint="use runtime onnxruntime, or make the model traceable with torch.jit.trace",
            ) from exc
    return dict(sorted(counts.items()))
