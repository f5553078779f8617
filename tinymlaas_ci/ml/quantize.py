"""Quantization: ONNX Runtime's int8 (dynamic, static QDQ) and fp16 for ONNX models, torch's
for TorchScript, and counting what a quantized graph really runs in integer or half precision.

``static-int8`` is not one fixed recipe: ONNX Runtime fuses a QDQ graph into integer kernels
(``QLinearConv``, ``QGemm``) only for the activation/weight types its CPU kernels support on
the architecture, and what it cannot fuse runs in fp32 behind ``DequantizeLinear`` on every
call, slower than no quantization at all. :func:`static_recipes` lists, per architecture, the
recipes worth trying (the first one is the default); when the compile runs on the device's
architecture, :func:`quantize_onnx` times them side by side against the fp32 model and keeps
the fastest whose accuracy holds. :func:`integer_ops` counts what really runs as integer
kernels after ONNX Runtime's graph optimizer.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import statistics
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinymlaas_ci.errors import TinymlError
from tinymlaas_ci.hostinfo import ARCHES, cpu_info, normalise_arch
from tinymlaas_ci.hostinfo import arch as host_arch

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import onnx
    import torch

__all__ = [
    "ACCURACY_TOLERANCE",
    "QUANTIZATIONS",
    "SWITCH_MARGIN",
    "Recipe",
    "RuntimeCandidate",
    "calibration_data",
    "convert_onnx_fp16",
    "count_integer_ops",
    "count_quantized_ops",
    "fp16_native",
    "integer_ops",
    "optimized_graph",
    "quantize_onnx",
    "static_recipes",
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
# What runs a Conv/Gemm/MatMul after ONNX Runtime's optimizer: integer kernels...
_INTEGER_KERNELS = {
    "QLinearConv",
    "QLinearConvTranspose",
    "QLinearMatMul",
    "QGemm",
    "ConvInteger",
    "MatMulInteger",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "MatMulNBits",
    "QAttention",
}
# ...or float ones (the optimizer's fused and NCHWc/NHWC forms included, whatever their domain).
_FLOAT_KERNELS = {
    "Conv",
    "FusedConv",
    "NhwcConv",
    "NhwcFusedConv",
    "ConvTranspose",
    "Gemm",
    "FusedGemm",
    "MatMul",
    "FusedMatMul",
    "TransposeMatMul",
}
ACCURACY_TOLERANCE = 0.01
"""A recipe's accuracy "holds" when it is at most this much (absolute) below the fp32 model's."""
SWITCH_MARGIN = 0.05
"""Another recipe replaces the architecture's default only when it is timed this much faster,
by the lower end of the 95% interval of the two recipes' speed ratio."""


@dataclass(frozen=True)
class Recipe:
    """One way to run ``quantize_static`` (always the QDQ format)."""

    name: str
    """Short name recorded in the result, e.g. ``qdq-u8s8-per-channel``."""
    activations: str
    """``uint8`` or ``int8``."""
    weights: str
    """``int8`` or ``uint8``."""
    per_channel: bool
    """One scale per output channel of a weight, instead of one per tensor."""
    reduce_range: bool = False
    """7-bit weights, against the U8S8 saturation of x86 CPUs without VNNI."""
    why: str = ""
    """Why this recipe is tried on the architecture."""
    op_types: tuple[str, ...] | None = None
    """Quantize only these operator types (None: every type ONNX Runtime can quantize)."""
    channels_last: bool = False
    """Prepare the graph for ONNX Runtime's channels-last integer kernels first
    (:mod:`tinymlaas_ci.ml.channels_last`): the Transposes it would add around them cancel out."""

    def options(self) -> dict[str, Any]:
        """Keyword arguments of ``quantize_static`` for this recipe (types as strings)."""
        extra: dict[str, Any] = {"WeightSymmetric": self.weights == "int8"}
        if self.activations == "int8":
            extra["ActivationSymmetric"] = False
        return {
            "activation_type": self.activations,
            "weight_type": self.weights,
            "per_channel": self.per_channel,
            "reduce_range": self.reduce_range,
            "extra_options": extra,
            "op_types_to_quantize": list(self.op_types) if self.op_types else None,
        }


@dataclass
class RuntimeCandidate:
    """A runtime other than ONNX Runtime that can run a static-int8 model, timed with the recipes.

    :func:`quantize_onnx` calls ``build(fp32_model, calibration, work_dir)``, which quantizes the
    fp32 model its own way and returns ``(int8_onnx_path, run, facts)``: ``run`` maps a float32
    batch to the outputs, ``facts`` holds at least ``integer_ops``. A build that raises
    :class:`~tinymlaas_ci.errors.TinymlError` (an operator the runtime lacks) is recorded as a
    candidate with its error and not kept.
    """

    runtime: str
    """The runtime's name in a run spec, e.g. ``c``."""
    recipe: str
    """Recorded as the candidate's ``recipe``."""
    why: str
    """Why the runtime is worth trying, recorded in ``recipe_reason`` when it is kept."""
    build: Callable[[Path, np.ndarray, Path], tuple[Path, Callable[[Any], Any], dict[str, Any]]]
    """``(fp32 model, calibration inputs, work folder) -> (int8 ONNX model, run, facts)``."""
    per_channel: bool = True
    """Whether its weights have one scale per output channel."""


def _recipe(
    acts: str, weights: str, per_channel: bool, why: str, reduce_range: bool = False, channels_last: bool = True
) -> Recipe:
    short = {"uint8": "u8", "int8": "s8"}
    name = f"qdq-{short[acts]}{short[weights]}-{'per-channel' if per_channel else 'per-tensor'}"
    return Recipe(
        name + ("-reduce-range" if reduce_range else ""),
        acts,
        weights,
        per_channel,
        reduce_range,
        why,
        channels_last=channels_last,
    )


_X86_U8S8 = (
    "ONNX Runtime's x86 int8 kernels take uint8 activations and int8 weights (U8S8): every Conv and "
    "Gemm of a QDQ graph fuses into QLinearConv/QGemm; with int8 activations most Convs stay fp32 "
    "behind DequantizeLinear"
)
_ARM_S8S8 = (
    "ONNX Runtime documents S8S8 in QDQ format as its default and first choice; ARM CPUs have no "
    "U8S8 saturation issue, and ARM64 kernels run both S8S8 and U8S8 with dot-product instructions"
)


def _device_arch(arch: str) -> str:
    # A device spec's value as is; a machine name (x86_64, aarch64) as a device spec spells it.
    return arch if arch in ARCHES else normalise_arch(arch)


def static_recipes(
    arch: str, isa_flags: Sequence[str] | None = None, *, per_channel_only: bool = False
) -> list[Recipe]:
    """The static-int8 recipes worth trying on ``arch``, the default first.

    ``isa_flags`` (the device's CPU flags, when known) refine the choice: an x86 CPU without
    VNNI gets the 7-bit ``reduce_range`` recipe first, as ONNX Runtime advises for per-channel
    U8S8 on AVX2/AVX-512 without VNNI. ``per_channel_only`` keeps only per-channel recipes.
    """
    arch = _device_arch(arch)
    if arch in ("amd64", "x86"):
        recipes = [
            _recipe("uint8", "int8", True, _X86_U8S8 + "; per-channel weights keep accuracy"),
            _recipe("uint8", "int8", False, _X86_U8S8 + "; one scale per tensor is a little cheaper"),
        ]
        if isa_flags is not None and not any("vnni" in f for f in isa_flags):
            why = "no VNNI on this CPU: 7-bit weights avoid the saturation of its U8S8 instruction (VPMADDUBSW)"
            recipes.insert(0, _recipe("uint8", "int8", True, why, reduce_range=True))
    elif arch == "arm64":
        recipes = [
            _recipe("int8", "int8", True, _ARM_S8S8),
            _recipe("uint8", "int8", True, "ONNX Runtime's U8S8 kernels, the alternative on ARM64"),
        ]
    else:
        recipes = [_recipe("int8", "int8", True, "ONNX Runtime's documented default (S8S8, QDQ)")]
    if per_channel_only:
        recipes = [r for r in recipes if r.per_channel]
    return recipes


def fp16_native(arch: str | None, isa_flags: Sequence[str] | None) -> bool | None:
    """Whether a CPU computes in fp16 natively (None when its flags are unknown).

    x86: ``avx512fp16`` or ``amx-fp16`` (``/proc/cpuinfo`` spells them ``avx512_fp16``,
    ``amx_fp16``); ARM: ``asimdhp`` or ``fphp``. Without them ONNX Runtime runs an fp16 model
    through Casts around fp32 kernels, which is slower than the fp32 model.
    """
    if isa_flags is None or arch is None:
        return None
    flags = {f.lower().replace("_", "").replace("-", "") for f in isa_flags}
    arch = _device_arch(arch)
    if arch in ("amd64", "x86"):
        return bool(flags & {"avx512fp16", "amxfp16"})
    if arch in ("arm64", "armv7"):
        return bool(flags & {"asimdhp", "fphp"})
    return None


def count_integer_ops(optimized: onnx.ModelProto) -> dict[str, int]:
    """``{"integer": n, "total": m}``: of the ``m`` Conv/Gemm/MatMul nodes of an ONNX Runtime-optimized
    graph, the ``n`` that run as integer kernels (``QLinearConv``, ``QGemm``, ``MatMulInteger``, ...).

    A QDQ Conv that the optimizer could not fuse stays a float ``Conv`` fed by ``DequantizeLinear``
    and counts as not integer: that is what it runs.
    """
    integer = sum(1 for n in optimized.graph.node if n.op_type in _INTEGER_KERNELS)
    floats = sum(1 for n in optimized.graph.node if n.op_type in _FLOAT_KERNELS)
    return {"integer": integer, "total": integer + floats}


def integer_ops(path: str | os.PathLike, *, threads: int = 1) -> dict[str, int]:
    """:func:`count_integer_ops` of the graph ONNX Runtime really runs for the model at ``path``."""
    return count_integer_ops(optimized_graph(path, threads=threads))


def optimized_graph(path: str | os.PathLike, *, threads: int = 1) -> onnx.ModelProto:
    """The graph ONNX Runtime really runs for the model at ``path``.

    Loads the model into this machine's ONNX Runtime (CPU, all graph optimizations) and reads the
    optimized graph it writes (``SessionOptions.optimized_model_filepath``).
    """
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="tinymlaas-opt-") as tmp:
        opt = Path(tmp) / "optimized.onnx"
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        so.optimized_model_filepath = str(opt)
        try:
            ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
            proto = onnx.load(str(opt), load_external_data=False)
        except Exception as exc:
            raise TinymlError(
                f"cannot read the optimized graph of {Path(path).name}: {type(exc).__name__}: {exc}",
                hint="check that ONNX Runtime can load the model",
            ) from exc
    return proto


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
    arch: str | None = None,
    check: tuple[np.ndarray, np.ndarray | None] | None = None,
    progress: Callable[[str], None] = lambda _msg: None,
    recipes: Sequence[Recipe] | None = None,
    runtimes: Sequence[RuntimeCandidate] = (),
    batch_size: int = 1,
    threads: int = 1,
) -> dict[str, Any]:
    """Write a quantized copy of the fp32 ONNX model ``src`` to ``dst``; returns what was done.

    ``mode`` is ``dynamic-int8`` (MatMul/Gemm only: the weights int8, the activations quantized
    per call; ONNX Runtime recommends it for transformers and RNNs, and a Conv would become a
    slow ``ConvInteger``), ``static-int8`` (needs ``calibration`` inputs) or ``fp16``.

    ``arch`` is the device's architecture (default: this machine's). ``static-int8`` tries the
    recipes of :func:`static_recipes` for it: when this machine has the device's architecture,
    each candidate is timed side by side with the fp32 model (interleaved rounds) and checked for
    accuracy on ``check`` (inputs and labels; labels None: agreement with the fp32 model's top-1),
    and the fastest whose accuracy holds (:data:`ACCURACY_TOLERANCE`) is kept (the default, unless
    another is more than :data:`SWITCH_MARGIN` faster); otherwise the
    architecture's default recipe is used untimed. ``per_channel`` True allows only per-channel
    recipes. ``recipes`` replaces the architecture's list (one recipe: used as is, untimed).
    ``runtimes`` are other runtimes timed in the same rounds when this machine is the device
    (static-int8 only): one replaces ONNX Runtime's chosen recipe only when its accuracy holds
    and it is more than :data:`SWITCH_MARGIN` faster beyond the timing noise. The candidates are
    timed at the run's ``batch_size`` with ONNX Runtime on ``threads`` intra-op threads, as the
    infer stage will measure them.

    Returns fields of ``results.models.CompressionRecord``: ``recipe``, ``recipe_reason``,
    ``recipe_candidates`` (static-int8), ``per_channel``, ``fp16_native`` (fp16), and with
    ``runtimes`` also ``runtime`` (``onnxruntime`` or the candidate's) and ``runtime_reason``.
    """
    src, dst = Path(src), Path(dst)
    target = _device_arch(arch) if arch else host_arch()
    on_target = target == host_arch()
    if mode == "fp16":
        convert_onnx_fp16(src, dst)
        flags = cpu_info()["isa_flags"] if on_target else None
        native = fp16_native(target, flags)
        if native is False:
            progress(
                "fp16: this CPU has no fp16 arithmetic (no avx512fp16/amx-fp16 on x86, asimdhp/fphp on ARM): "
                "ONNX Runtime runs the fp16 model through Casts around fp32 kernels, expect it slower than fp32"
            )
        elif native is None:
            progress(
                f"fp16: the {target} device's CPU flags are unknown here; whether it computes in fp16 is not known"
            )
        return {"recipe": "fp16-keep-io-fp32", "fp16_native": native}
    # ORT logs "please pre-process" advice on the root logger; pre-processing is done below.
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        with tempfile.TemporaryDirectory(prefix="tinymlaas-q-") as tmp:
            tmp_dir = Path(tmp)
            prepared = _preprocess(src, tmp_dir / "prepared.onnx")
            if mode == "dynamic-int8":
                _quantize_dynamic(prepared, dst, per_channel)
                return {"recipe": "dynamic-matmul-gemm", "per_channel": per_channel}
            if mode != "static-int8":
                raise TinymlError(f"unknown quantization {mode!r}", hint=f"use one of {', '.join(QUANTIZATIONS)}")
            if calibration is None or not len(calibration):
                raise TinymlError("static-int8 needs calibration inputs", hint="give a train or val split")
            flags = cpu_info()["isa_flags"] if on_target else None
            if recipes is None:
                recipes = static_recipes(target, flags, per_channel_only=per_channel)
            recipes = list(recipes)
            return _static_best(
                src,
                prepared,
                dst,
                calibration,
                recipes,
                target,
                on_target,
                check,
                tmp_dir,
                progress,
                list(runtimes),
                timing=(batch_size, threads),
            )
    finally:
        root.setLevel(level)


def _quantize_dynamic(prepared: Path, dst: Path, per_channel: bool) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ops = Counter(n.op_type for n in onnx.load(str(prepared), load_external_data=False).graph.node)
    if not ops["MatMul"] + ops["Gemm"]:
        raise TinymlError(
            "dynamic-int8 quantizes MatMul/Gemm layers, and this model has none",
            hint="use static-int8 for a convolutional model",
        )
    try:
        quantize_dynamic(
            str(prepared),
            str(dst),
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            op_types_to_quantize=["MatMul", "Gemm"],
        )
    except Exception as exc:
        raise TinymlError(
            f"ONNX Runtime could not quantize the model (dynamic-int8): {type(exc).__name__}: {exc}",
            hint="try another quantization mode, or quantization: none",
        ) from exc


def _quantize_static(prepared: Path, dst: Path, calibration: np.ndarray, recipe: Recipe) -> list[str]:
    """Quantize ``prepared`` to ``dst`` with ``recipe``; returns the channels-last rewrites kept.

    With ``recipe.channels_last`` the graph is prepared first; the prepared model is kept only
    when every Transpose the preparation inserted cancels in ONNX Runtime's optimized graph
    (otherwise it would add work), else the model is quantized as it is.
    """
    if recipe.channels_last:
        from tinymlaas_ci.ml import channels_last

        with tempfile.TemporaryDirectory(prefix="tinymlaas-cl-") as tmp:
            ready = Path(tmp) / "channels-last.onnx"
            rewrites = channels_last.prepare(prepared, ready)
            if rewrites:
                _run_quantize_static(ready, dst, calibration, recipe)
                left = channels_last.surviving(optimized_graph(dst))
                if not left:
                    return rewrites
                log.info("channels-last preparation not kept: %s stayed in the optimized graph", ", ".join(left))
    _run_quantize_static(prepared, dst, calibration, recipe)
    return []


def _run_quantize_static(prepared: Path, dst: Path, calibration: np.ndarray, recipe: Recipe) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    name = _input_name(prepared)

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(range(len(calibration)))

        def get_next(self):
            i = next(self._it, None)
            return None if i is None else {name: calibration[i : i + 1]}

    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    opts = recipe.options()
    try:
        quantize_static(
            str(prepared),
            str(dst),
            _Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=opts["per_channel"],
            reduce_range=opts["reduce_range"],
            activation_type=types[opts["activation_type"]],
            weight_type=types[opts["weight_type"]],
            extra_options=opts["extra_options"],
            op_types_to_quantize=opts["op_types_to_quantize"],
        )
    except Exception as exc:
        raise TinymlError(
            f"ONNX Runtime could not quantize the model (static-int8, {recipe.name}): {type(exc).__name__}: {exc}",
            hint="try another quantization mode, or quantization: none",
        ) from exc


def _top1(run: Callable[[Any], Any], x: np.ndarray, fixed: int | None) -> np.ndarray:
    import numpy as np

    step = fixed or 64
    preds = []
    for start in range(0, len(x), step):
        xb = x[start : start + step]
        real = len(xb)
        if fixed and real < fixed:
            xb = np.concatenate([xb, np.repeat(xb[-1:], fixed - real, axis=0)])
        preds.append(np.asarray(run(xb))[:real].reshape(real, -1).argmax(axis=1))
    return np.concatenate(preds)


def _static_best(
    src: Path,
    prepared: Path,
    dst: Path,
    calibration: np.ndarray,
    recipes: list[Recipe],
    target: str,
    on_target: bool,
    check: tuple[np.ndarray, np.ndarray | None] | None,
    tmp_dir: Path,
    progress: Callable[[str], None],
    runtimes: list[RuntimeCandidate],
    *,
    timing: tuple[int, int] = (1, 1),
) -> dict[str, Any]:
    if not on_target:
        runtimes = []
    if not on_target or (len(recipes) == 1 and not runtimes):
        recipe = recipes[0]
        layout = _quantize_static(prepared, dst, calibration, recipe)
        where = (
            f"not timed: this machine is {host_arch()}, the device {target}"
            if not on_target
            else "the only recipe for this architecture"
        )
        progress(f"static-int8 recipe {recipe.name} ({where})")
        return {
            "recipe": recipe.name,
            "recipe_reason": f"default for {target}: {recipe.why}; {where}",
            "recipe_candidates": [],
            "per_channel": recipe.per_channel,
            "layout": layout,
        }
    return _time_recipes(
        src, prepared, dst, calibration, recipes, target, check, tmp_dir, progress, runtimes, timing=timing
    )


def _time_recipes(
    src, prepared, dst, calibration, recipes, target, check, tmp_dir, progress, runtimes=(), *, timing=(1, 1)
) -> dict[str, Any]:
    import numpy as np

    from tinymlaas_ci.ml.measure import interleaved_rounds, speedup_ci95
    from tinymlaas_ci.ml.runtime import load_session

    batch_size, threads = timing
    fp32 = load_session(src, "onnxruntime", threads=threads)
    x, y = check if check is not None else (calibration, None)
    x = np.ascontiguousarray(x[:1000], dtype=np.float32)
    ref = _top1(fp32.run, x, fp32.fixed_batch)
    if y is not None:
        y = np.asarray(y[: len(x)])
        fp32_acc = float((ref == y).mean())

    def judge(entry: dict[str, Any], run: Callable[[Any], Any], fixed: int | None) -> None:
        pred = _top1(run, x, fixed)
        if y is not None:
            entry["accuracy"] = float((pred == y).mean())
            entry["accuracy_drop"] = fp32_acc - entry["accuracy"]
        else:
            entry["agreement"] = float((pred == ref).mean())
            entry["accuracy_drop"] = 1.0 - entry["agreement"]
        entry["holds"] = entry["accuracy_drop"] <= ACCURACY_TOLERANCE + 1e-12

    candidates: list[dict[str, Any]] = []
    runners = {"fp32": fp32.run}
    for recipe in recipes:
        path = tmp_dir / f"{recipe.name}.onnx"
        entry: dict[str, Any] = {"recipe": recipe.name}
        try:
            entry["_layout"] = _quantize_static(prepared, path, calibration, recipe)
            session = load_session(path, "onnxruntime", threads=threads)
        except TinymlError as exc:
            entry.update(error=str(exc), kept=False)
            candidates.append(entry)
            continue
        judge(entry, session.run, session.fixed_batch)
        entry["integer_ops"] = integer_ops(path)
        entry["_path"] = path
        runners[recipe.name] = session.run
        candidates.append(entry)
    by_runtime: dict[str, RuntimeCandidate] = {}
    for cand in runtimes:
        entry = {"recipe": cand.recipe, "runtime": cand.runtime}
        work = tmp_dir / f"runtime-{cand.runtime}"
        work.mkdir(parents=True, exist_ok=True)
        try:
            path, run, facts = cand.build(Path(src), calibration, work)
        except TinymlError as exc:
            progress(f"runtime {cand.runtime} is not a candidate for this model: {exc}")
            entry.update(error=str(exc), kept=False)
            candidates.append(entry)
            continue
        judge(entry, run, None)
        entry.update(facts)
        entry["_path"] = path
        runners[cand.recipe] = run
        by_runtime[cand.recipe] = cand
        candidates.append(entry)
    timed = [c for c in candidates if "_path" in c]
    if not timed:
        raise TinymlError(
            f"no static-int8 recipe could quantize the model: {candidates[0].get('error')}",
            hint="try dynamic-int8, fp16 or quantization: none",
        )
    # The batch the infer stage will measure (a model of a fixed batch size: that size).
    n = fp32.fixed_batch or batch_size
    batch = np.ascontiguousarray(np.resize(x, (n, *x.shape[1:])) if len(x) < n else x[:n])
    times = interleaved_rounds(runners, batch, rounds=5, warmup=10, min_iterations=50, min_seconds=0.25)

    def medians(name: str) -> list[float]:
        return [statistics.median(r) for r in times[name]]

    base = statistics.median(medians("fp32"))
    for c in timed:
        c["speedup_vs_fp32"] = base / statistics.median(medians(c["recipe"]))
    ort = [c for c in timed if "runtime" not in c]
    held = [c for c in ort if c["holds"]]
    if held:
        # The default stays unless another recipe is clearly faster: close timings, or a busy
        # machine, must not flip the choice from one compile of the same model to the next. So a
        # recipe replaces it only when the lower end of the 95% interval of their speed ratio,
        # from the same interleaved rounds, is more than SWITCH_MARGIN above 1.
        chosen = held[0] if held[0]["recipe"] == recipes[0].name else max(held, key=lambda c: c["speedup_vs_fp32"])
        for c in held:
            if c is not chosen:
                c["ci95_vs_default"] = list(speedup_ci95(medians(chosen["recipe"]), medians(c["recipe"])))
        faster = [c for c in held if c is not chosen and c["ci95_vs_default"][0] > 1 + SWITCH_MARGIN]
        if faster:
            chosen = max(faster, key=lambda c: c["speedup_vs_fp32"])
        why = (
            f"fastest of {len(ort)} recipes timed side by side with fp32 whose accuracy holds "
            f"(the default unless another is more than {SWITCH_MARGIN:.0%} faster beyond the timing noise)"
        )
    elif ort:
        chosen = min(ort, key=lambda c: c["accuracy_drop"])
        why = f"no recipe kept accuracy within {ACCURACY_TOLERANCE:g}; the most accurate of {len(ort)}"
    else:
        chosen, why = None, "ONNX Runtime could quantize the model with none of its recipes"
    ort_chosen = chosen
    # Another runtime takes over under the same rule, against ONNX Runtime's choice; or when
    # its accuracy holds and ONNX Runtime's does not.
    other = [c for c in timed if "runtime" in c and c["holds"]]
    if chosen is not None:
        for c in other:
            c["ci95_vs_default"] = list(speedup_ci95(medians(chosen["recipe"]), medians(c["recipe"])))
    if chosen is None or not chosen["holds"]:
        faster = other
    else:
        faster = [c for c in other if c["ci95_vs_default"][0] > 1 + SWITCH_MARGIN]
    if faster:
        chosen = max(faster, key=lambda c: c["speedup_vs_fp32"])
    if chosen is None:
        chosen = min(timed, key=lambda c: c["accuracy_drop"])
    for c in candidates:
        c["kept"] = c is chosen
    shutil.copyfile(chosen.pop("_path"), dst)
    layout = chosen.pop("_layout", [])
    for c in candidates:
        c.pop("_path", None)
        c.pop("_layout", None)
    summary = ", ".join(
        f"{c['recipe']} {c['speedup_vs_fp32']:.2f}x drop {c['accuracy_drop']:+.3f}"
        + (f" ({c['runtime']})" if "runtime" in c else "")
        for c in timed
    )
    progress(f"static-int8 recipes: {summary}; kept {chosen['recipe']}")
    out: dict[str, Any] = {"recipe": chosen["recipe"], "recipe_candidates": candidates, "layout": layout}
    speed = (
        f"{chosen['speedup_vs_fp32']:.2f}x vs fp32, "
        f"{chosen['integer_ops']['integer']} of {chosen['integer_ops']['total']} Conv/Gemm/MatMul integer"
    )
    if "runtime" in chosen:
        cand = by_runtime[chosen["recipe"]]
        if ort_chosen is not None and ort_chosen["holds"]:
            lo, hi = chosen["ci95_vs_default"]
            vs = (
                f"{lo:.2f}-{hi:.2f}x the speed of ONNX Runtime's {ort_chosen['recipe']} "
                f"({ort_chosen['speedup_vs_fp32']:.2f}x vs fp32; 95% interval), more than {SWITCH_MARGIN:.0%} "
                "faster beyond the timing noise"
            )
        else:
            vs = "its accuracy holds and ONNX Runtime's does not"
        out.update(
            recipe_reason=f"{cand.why}; on this {target} machine {speed}",
            runtime_reason=f"runtime {cand.runtime}: {vs}, timed side by side with fp32 on this {target} machine",
            per_channel=cand.per_channel,
            runtime=cand.runtime,
        )
        return out
    recipe = next(r for r in recipes if r.name == chosen["recipe"])
    out.update(
        recipe_reason=f"{why}, on this {target} machine ({speed}); {recipe.why}",
        per_channel=recipe.per_channel,
    )
    if runtimes:
        rivals = [c for c in candidates if "runtime" in c]
        out["runtime"] = "onnxruntime"
        out["runtime_reason"] = "; ".join(_rival_note(c, SWITCH_MARGIN) for c in rivals)
    return out


def _rival_note(c: dict[str, Any], margin: float) -> str:
    """Why runtime candidate ``c`` was not kept, in one clause."""
    name = f"runtime {c['runtime']}"
    if "error" in c:
        return f"{name} cannot run this model: {c['error']}"
    if not c["holds"]:
        return f"{name} lost {c['accuracy_drop']:.3f} of accuracy, more than {ACCURACY_TOLERANCE:g}"
    lo, hi = c["ci95_vs_default"]
    return (
        f"{name} timed {c['speedup_vs_fp32']:.2f}x vs fp32, {lo:.2f}-{hi:.2f}x ONNX Runtime's speed "
        f"(95% interval), not more than {margin:.0%} faster beyond the timing noise"
    )


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
