"""C code generation for static-int8 models: ``runtime: c`` on microcontrollers and Linux devices.

The generator turns the static-int8 ONNX model the compile stage writes (QDQ format, int8
activations with zero points, symmetric per-channel int8 weights; :func:`quantize_qdq` writes
exactly this form) into self-contained C99:

1. :mod:`~tinymlaas_ci.ml.cgen.parse` reads the QDQ graph into an integer IR
   (:mod:`~tinymlaas_ci.ml.cgen.ir`): int8 tensors with scale and zero point, and operators
   holding int8 weights, int32 biases and fixed-point requantization constants. An operator
   outside the supported set fails here, naming the node, before anything is written.
2. :mod:`~tinymlaas_ci.ml.cgen.arena` plans one static arena from tensor lifetimes.
3. :mod:`~tinymlaas_ci.ml.cgen.emit` writes ``model.h`` (the fixed interface), ``model.c``
   (weights as ``const`` arrays, one function ``tinyml_model_run``) and ``kernels.h``
   (:mod:`~tinymlaas_ci.ml.cgen.csource`: portable C, Arm DSP, Arm MVE, x86 AVX-512 VNNI and
   AVX2 kernels chosen at compile time by the target's predefined macros).

Inside ``tinyml_model_run`` image tensors are stored channels-last; the interface is the model's
own layout (NCHW, flattened), quantized: ``q = clamp(round(x / tinyml_input_scale) +
tinyml_input_zero_point, -128, 127)`` in, ``(q - tinyml_output_zero_point) * tinyml_output_scale``
out.

The arithmetic is TensorFlow Lite's / CMSIS-NN's int8 scheme
(:mod:`~tinymlaas_ci.ml.cgen.fixedpoint`), and :mod:`~tinymlaas_ci.ml.cgen.reference` is a numpy
implementation of it that the generated code matches bit for bit. :mod:`~tinymlaas_ci.ml.cgen.host`
builds the generated code with the host compiler into a shared library and runs it from Python.

Only numpy (and onnx when parsing) are imported by this package's modules, lazily.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tinymlaas_ci.ml.cgen.quantize import quantize_qdq

__all__ = ["CModelInfo", "generate_c", "generate_from_graph", "quantize_qdq"]


@dataclass(frozen=True)
class CModelInfo:
    """What :func:`generate_c` produced: sizes, costs, quantization and the operator list."""

    out_dir: Path
    files: tuple[str, ...]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    input_size: int
    """int8 elements of one input sample (``TINYML_INPUT_SIZE``)."""
    output_size: int
    """int8 elements of one output (``TINYML_OUTPUT_SIZE``)."""
    arena_bytes: int
    """Bytes of the static tensor arena (``TINYML_ARENA_SIZE``)."""
    arena_lower_bound: int
    """The largest sum of buffers live at one step: the arena can be no smaller."""
    arena_strategy: str
    input_scale: float
    input_zero_point: int
    output_scale: float
    output_zero_point: int
    macs: int
    """Multiply-accumulates per inference (``tinyml_macs``)."""
    weights_bytes: int
    """int8 weights + int32 biases (``tinyml_weights_bytes``)."""
    quant_bytes: int
    """Requantization multipliers and shifts (int32 each), also in flash."""
    ops: list[dict[str, Any]] = field(default_factory=list)
    """One entry per operator: ``name``, ``onnx_op``, ``kernel``, ``output_shape``, ``macs``."""

    def record(self) -> dict[str, Any]:
        """A JSON-ready dict (paths as strings)."""
        d = asdict(self)
        d["out_dir"] = str(self.out_dir)
        d["files"] = list(self.files)
        d["input_shape"] = list(self.input_shape)
        d["output_shape"] = list(self.output_shape)
        return d


def generate_from_graph(graph, out_dir: str | os.PathLike) -> CModelInfo:
    """Write the C files for an already parsed :class:`~tinymlaas_ci.ml.cgen.ir.Graph`."""
    from tinymlaas_ci.fs import atomic_write_text
    from tinymlaas_ci.ml.cgen import ir
    from tinymlaas_ci.ml.cgen.arena import ALIGN, lower_bound
    from tinymlaas_ci.ml.cgen.emit import emit

    files, lay = emit(graph)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        atomic_write_text(out_dir / name, text)
    tin, tout = graph.tensors[graph.input], graph.tensors[graph.output]

    def kernel(op) -> str:
        if isinstance(op, ir.Conv):
            return "depthwise" if op.depthwise else "conv"
        return op.kind

    return CModelInfo(
        out_dir=out_dir,
        files=tuple(files),
        input_shape=tin.shape,
        output_shape=tout.shape,
        input_size=tin.size,
        output_size=tout.size,
        arena_bytes=lay.plan.size,
        arena_lower_bound=lower_bound(lay.buffers, ALIGN),
        arena_strategy=lay.plan.strategy,
        input_scale=tin.scale,
        input_zero_point=tin.zero_point,
        output_scale=tout.scale,
        output_zero_point=tout.zero_point,
        macs=graph.macs,
        weights_bytes=graph.weights_bytes,
        quant_bytes=graph.quant_bytes,
        ops=[
            {
                "name": op.name,
                "onnx_op": op.onnx_op,
                "kernel": kernel(op),
                "output_shape": list(graph.tensors[op.output].shape),
                "macs": op.macs,
            }
            for op in graph.ops
        ],
    )


def generate_c(onnx_path: str | os.PathLike, out_dir: str | os.PathLike) -> CModelInfo:
    """Generate ``model.h``, ``model.c`` and ``kernels.h`` for the static-int8 QDQ model at ``onnx_path``.

    Raises :class:`~tinymlaas_ci.errors.TinymlError` naming the node for an unsupported operator
    or attribute; nothing is written in that case.
    """
    from tinymlaas_ci.ml.cgen.parse import load_graph

    return generate_from_graph(load_graph(onnx_path), out_dir)
