"""Compression: magnitude pruning (+ fine-tuning) in torch, quantization in ONNX Runtime or torch.

:func:`compile_model` is what the compile stage and the benchmark call. It always writes the
uncompressed fp32 ONNX baseline next to the deployed artifact, so accuracy and size can be
compared on the device against the same model before compression.

Deployed artifacts:

* runtime ``onnxruntime``: ``model.onnx`` - fp32 (``none``), ``quantize_dynamic`` (``dynamic-int8``),
  ``quantize_static`` in QDQ format calibrated on train data (``static-int8``), or float16 weights
  and compute with float32 inputs and outputs (``fp16``);
* runtime ``pytorch``: ``model.pt`` (TorchScript) - fp32, dynamic int8 Linear layers, or fp16
  with a float32 interface.
"""

from __future__ import annotations

import copy
import gzip
import logging
import os
import shutil
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinymlaas_ci.errors import TinymlError
from tinymlaas_ci.ml import formats

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import onnx
    import torch

__all__ = [
    "QUANTIZATIONS",
    "CompileOutcome",
    "calibration_data",
    "compile_model",
    "convert_onnx_fp16",
    "count_quantized_ops",
    "fine_tune",
    "gzip_size",
    "prune_model",
    "quantize_onnx",
    "to_torchscript",
    "torch_accuracy",
    "weight_sparsity",
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


def gzip_size(path: str | os.PathLike) -> int:
    """Bytes of the file after ``gzip -9`` (fixed mtime, so it is deterministic)."""
    return len(gzip.compress(Path(path).read_bytes(), compresslevel=9, mtime=0))


# --------------------------------------------------------------------------- pruning


def _prunable(model: torch.nn.Module) -> list[tuple[torch.nn.Module, str]]:
    from torch import nn

    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    return [(m, "weight") for m in model.modules() if isinstance(m, kinds) and getattr(m, "weight", None) is not None]


def weight_sparsity(model: torch.nn.Module) -> float:
    """Fraction of exactly-zero weights over all Conv/Linear weight tensors."""
    layers = _prunable(model)
    total = sum(getattr(m, n).numel() for m, n in layers)
    zeros = sum(int((getattr(m, n) == 0).sum()) for m, n in layers)
    return zeros / total if total else 0.0


def prune_model(model: torch.nn.Module, sparsity: float, *, scope: str = "layer") -> None:
    """Apply L1 magnitude pruning masks to every Conv/Linear weight of ``model``, in place.

    ``scope="layer"`` prunes ``sparsity`` of each layer (what the spec promises);
    ``scope="global"`` ranks all weights together. The masks stay attached (so fine-tuning keeps
    pruned weights at zero) until :func:`make_permanent`.
    """
    from torch.nn.utils import prune

    layers = _prunable(model)
    if not layers:
        raise TinymlError(
            "the model has no Conv or Linear layers to prune",
            hint="remove compression.pruning from the run spec",
        )
    if scope == "global":
        prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=float(sparsity))
    elif scope == "layer":
        for module, name in layers:
            prune.l1_unstructured(module, name=name, amount=float(sparsity))
    else:
        raise TinymlError(f"unknown pruning scope {scope!r}", hint="use 'layer' or 'global'")


def make_permanent(model: torch.nn.Module) -> None:
    """Fold pruning masks into the weights (drops the ``weight_orig``/``weight_mask`` pairs)."""
    from torch.nn.utils import prune

    for module, name in _prunable(model):
        if prune.is_pruned(module) and hasattr(module, f"{name}_mask"):
            prune.remove(module, name)


def fine_tune(
    model: torch.nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    learning_rate: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
) -> None:
    """Train ``model`` in place with Adam and cross-entropy; deterministic for a given ``seed``."""
    import torch

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x).float(), torch.from_numpy(y).long()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    for _ in range(int(epochs)):
        order = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad()
            loss_fn(model(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()


def torch_accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    """Top-1 accuracy of a torch model on arrays ``x``/``y``."""
    import torch

    if len(x) == 0:
        return float("nan")
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            logits = model(torch.from_numpy(x[start : start + batch_size]).float())
            correct += int((logits.argmax(1).numpy() == y[start : start + batch_size]).sum())
    return correct / len(x)


# --------------------------------------------------------------------------- ONNX quantization


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

    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as exc:  # pragma: no cover - ships with onnxruntime
        raise TinymlError("fp16 conversion needs onnxruntime.transformers", hint="pip install onnxruntime") from exc
    model = onnx.load(str(src))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            half = convert_float_to_float16(model, keep_io_types=True)
        _topological_sort(half.graph)
        onnx.checker.check_model(half)
    except Exception as exc:
        raise TinymlError(f"cannot convert the model to fp16: {exc}", hint="use another quantization mode") from exc
    onnx.save(half, str(dst))


def _topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder nodes so each comes after its inputs' producers.

    The fp16 converter appends its input Casts at the end of the node list; ONNX Runtime does
    not mind, but ``onnx.checker`` (and other tools) require topological order.
    """
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        if not ready:  # names from an outer scope (subgraphs): keep the rest in file order
            ordered.extend(pending)
            break
        for node in ready:
            ordered.append(node)
            known.update(node.output)
        pending = [n for n in pending if all(n is not r for r in ready)]
    copies = [type(n)() for n in ordered]
    for copy_, node in zip(copies, ordered, strict=True):
        copy_.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


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


# --------------------------------------------------------------------------- torch runtime


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


# --------------------------------------------------------------------------- the whole compile


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


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def compile_model(
    model_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    compression: Mapping[str, Any] | None = None,
    runtime: str = "onnxruntime",
    fmt: str = "auto",
    input_shape: Sequence[int] | None = None,
    data: Mapping[str, np.ndarray] | None = None,
    seed: int = 0,
    progress: Callable[[str], None] = lambda _msg: None,
) -> CompileOutcome:
    """Load, prune, quantize and save a model for ``runtime``.

    ``compression`` is the run spec's ``compression`` section (as a dict or model), ``data`` the
    dataset arrays (``x_train``, ``y_train``, ``x_val``, ...) used for fine-tuning and calibration.
    Writes ``baseline.onnx`` and ``model.onnx`` (or ``model.pt``) into ``out_dir``.
    """
    data = dict(data or {})
    runtime = getattr(runtime, "value", runtime)
    quant = getattr(_get(compression, "quantization", "none"), "value", _get(compression, "quantization", "none"))
    per_channel = bool(_get(compression, "per_channel", False))
    pruning = _get(compression, "pruning")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    baseline = out_dir / "baseline.onnx"
    fmt = formats.detect_format(model_path, fmt)
    progress(f"model format: {fmt}")
    if runtime not in ("onnxruntime", "pytorch"):
        raise TinymlError(f"unknown runtime {runtime!r}", hint="use onnxruntime or pytorch")
    if quant not in QUANTIZATIONS:
        raise TinymlError(f"unknown quantization {quant!r}", hint=f"use one of {', '.join(QUANTIZATIONS)}")
    if runtime == "pytorch" and quant == "static-int8":
        raise TinymlError("runtime pytorch does not support static-int8", hint="use runtime onnxruntime")

    # Cheapest checks first: refuse what cannot work before loading and exporting anything.
    calib = None
    if runtime == "onnxruntime" and quant == "static-int8":
        calib, calib_split = calibration_data(data, _get(compression, "calibration_samples", 256), seed=seed)
    if pruning is not None and int(_get(pruning, "fine_tune_epochs", 0) or 0) > 0 and not len(data.get("x_train", ())):
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
                torch_model = _prune_and_tune(torch_model, pruning, data, record, details, seed, progress)
                if runtime == "onnxruntime":
                    fp32 = tmp_dir / "pruned.onnx"
                    if not _with_weights(baseline, torch_model, fp32):
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
                quantize_onnx(fp32, deployed, quant, calibration=calib, per_channel=per_channel)
            proto = formats.check_onnx(deployed)
            record["ops_quantized"] = count_quantized_ops(proto)
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


def _with_weights(baseline: Path, model: torch.nn.Module, dst: Path) -> bool:
    """Write ``baseline`` with the (pruned, fine-tuned) weights of ``model`` to ``dst``.

    Pruning changes values, not the graph, so swapping the initializers is exact and skips a
    second export. Returns False when initializer names do not map onto the model's parameters
    (the caller then exports again).
    """
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(baseline))
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    prunable = {id(m) for m, _ in _prunable(model)}
    wanted = {f"{n}.weight" if n else "weight" for n, m in model.named_modules() if id(m) in prunable}
    replaced = set()
    for init in proto.graph.initializer:
        value = state.get(init.name)
        if value is not None and tuple(init.dims) == value.shape and init.data_type == onnx.TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(value.astype("float32"), init.name))
            replaced.add(init.name)
    if not wanted <= replaced:
        return False
    onnx.save(proto, str(dst))
    return True


def _prune_and_tune(model, pruning, data, record, details, seed, progress):
    sparsity = float(_get(pruning, "sparsity"))
    epochs = int(_get(pruning, "fine_tune_epochs", 0) or 0)
    lr = float(_get(pruning, "learning_rate", 1e-3))
    scope = str(_get(pruning, "scope", "layer") or "layer")
    model = copy.deepcopy(model)
    if not any(True for _ in model.parameters()) or not _prunable(model):
        raise TinymlError(
            "this model has no prunable Conv/Linear weights (TorchScript models cannot be pruned)",
            hint="remove compression.pruning, or upload the model as a pickled nn.Module",
        )
    x_val, y_val = data.get("x_val"), data.get("y_val")
    has_val = x_val is not None and len(x_val) > 0
    if has_val:
        details["val_accuracy_before_pruning"] = torch_accuracy(model, x_val, y_val)
    progress(f"pruning to sparsity {sparsity:.2f} ({scope})")
    prune_model(model, sparsity, scope=scope)
    if has_val:
        details["val_accuracy_after_pruning"] = torch_accuracy(model, x_val, y_val)
    if epochs:
        x_tr, y_tr = data["x_train"], data["y_train"]
        progress(f"fine-tuning {epochs} epoch(s) on {len(x_tr)} train samples")
        fine_tune(model, x_tr, y_tr, epochs=epochs, learning_rate=lr, seed=seed)
        if has_val:
            details["val_accuracy_after_fine_tune"] = torch_accuracy(model, x_val, y_val)
    make_permanent(model)
    achieved = weight_sparsity(model)
    record.update(target_sparsity=sparsity, achieved_sparsity=round(achieved, 6), fine_tune_epochs=epochs)
    record.update({k: round(v, 6) for k, v in details.items() if k.startswith("val_accuracy")})
    progress(f"achieved sparsity {achieved:.4f}")
    return model
