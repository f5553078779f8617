"""The integer IR: what the C emitter and the numpy reference both execute.

A :class:`Graph` is a list of operators in execution order over named int8 tensors
(:class:`QTensor`). Every tensor is one sample in the model's own layout (NCHW without the batch
axis, so ``(C, H, W)`` for images, ``(N,)`` after Flatten) and carries its asymmetric int8
quantization: ``real = scale * (q - zero_point)``.

Operators hold only integers (plus the float scales kept for the record):

* :class:`Conv` - weights ``int8[OC, IC/groups, KH, KW]`` (per-output-channel symmetric, zero
  point 0), bias ``int32[OC]`` at scale ``s_in * s_w[oc]``, and per-channel requantization
  ``(multiplier, shift)`` for ``s_in * s_w[oc] / s_out``. Depthwise convolution is the case
  ``groups == IC`` with one input channel per group.
* :class:`FullyConnected` - Gemm / MatMul; weights ``int8[OUT, IN]``, same conventions.
* :class:`Add` - TFLite's integer add: both inputs shifted left by 20 bits, rescaled to a
  common scale ``2 * max(s_a, s_b)``, summed, and rescaled to the output.
* :class:`MaxPool`, :class:`AvgPool` (GlobalAveragePool is an AvgPool over the whole plane),
  :class:`Concat`, :class:`Requantize` (an elementwise rescale + clamp: a Relu or Clip that
  could not be fused, or a Reshape whose output scale differs) and :class:`Reshape` (no code:
  the output aliases the input's memory).

Every operator writing int8 has ``act_min``/``act_max``: the output is clamped to them, which is
how Relu, Relu6 and Clip are fused into the operator before them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = [
    "Add",
    "AvgPool",
    "Concat",
    "Conv",
    "FullyConnected",
    "Graph",
    "MaxPool",
    "Op",
    "QTensor",
    "Requantize",
    "Reshape",
]


@dataclass
class QTensor:
    """An int8 activation tensor of one sample."""

    name: str
    shape: tuple[int, ...]
    scale: float
    zero_point: int

    @property
    def size(self) -> int:
        """Number of int8 elements (= bytes)."""
        return int(prod(self.shape))


@dataclass
class Op:
    """Base of every operator: the ONNX node it came from, its inputs and its output."""

    name: str
    onnx_op: str
    inputs: list[str]
    output: str
    act_min: int = -128
    act_max: int = 127

    kind = "op"

    @property
    def macs(self) -> int:
        """Multiply-accumulates of one inference (only Conv and FullyConnected count)."""
        return 0

    @property
    def weights_bytes(self) -> int:
        """Bytes of int8 weights and int32 biases this operator puts in flash."""
        return 0

    @property
    def quant_bytes(self) -> int:
        """Bytes of requantization constants (multipliers, shifts) this operator puts in flash."""
        return 0


@dataclass
class Conv(Op):
    """2-D convolution, dilation 1, groups >= 1."""

    weight: np.ndarray = None  # int8 [OC, IC/g, KH, KW]
    bias: np.ndarray = None  # int32 [OC]
    multiplier: np.ndarray = None  # int32 [OC]
    shift: np.ndarray = None  # int32 [OC]
    stride: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    groups: int = 1
    in_shape: tuple[int, int, int] = (0, 0, 0)
    out_shape: tuple[int, int, int] = (0, 0, 0)

    kind = "conv"

    @property
    def depthwise(self) -> bool:
        """One input channel per group (channel multiplier ``OC / IC``)."""
        return self.groups > 1 and self.weight.shape[1] == 1

    @property
    def macs(self) -> int:
        oc, icg, kh, kw = self.weight.shape
        return int(oc * icg * kh * kw * self.out_shape[1] * self.out_shape[2])

    @property
    def weights_bytes(self) -> int:
        return int(self.weight.size + 4 * self.bias.size)

    @property
    def quant_bytes(self) -> int:
        return int(5 * self.multiplier.size)  # int32 multipliers, int8 shifts


@dataclass
class FullyConnected(Op):
    """``y = W x + b`` over a flattened input; Gemm (transA=0, alpha=beta=1) and MatMul."""

    weight: np.ndarray = None  # int8 [OUT, IN]
    bias: np.ndarray = None  # int32 [OUT]
    multiplier: np.ndarray = None
    shift: np.ndarray = None

    kind = "fc"

    @property
    def macs(self) -> int:
        return int(self.weight.size)

    @property
    def weights_bytes(self) -> int:
        return int(self.weight.size + 4 * self.bias.size)

    @property
    def quant_bytes(self) -> int:
        return int(5 * self.multiplier.size)  # int32 multipliers, int8 shifts


@dataclass
class Add(Op):
    """Elementwise sum of two tensors of the same shape (TFLite's integer add)."""

    left_shift: int = 20
    in_multiplier: tuple[int, int] = (0, 0)
    in_shift: tuple[int, int] = (0, 0)
    out_multiplier: int = 0
    out_shift: int = 0

    kind = "add"


@dataclass
class MaxPool(Op):
    """Max over windows; padding never wins. A rescale follows when the output scale differs."""

    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    in_shape: tuple[int, int, int] = (0, 0, 0)
    out_shape: tuple[int, int, int] = (0, 0, 0)
    rescale: tuple[int, int] | None = None  # (multiplier, shift) for s_in / s_out

    kind = "maxpool"


@dataclass
class AvgPool(Op):
    """Average over windows as ``sum(x - zp_in) * s_in / (s_out * count)`` in fixed point.

    ``count`` is the number of input elements the window covers (``KH * KW`` when
    ``count_include_pad``); one ``(multiplier, shift)`` per possible count, index ``count - 1``.
    """

    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    count_include_pad: bool = False
    in_shape: tuple[int, int, int] = (0, 0, 0)
    out_shape: tuple[int, int, int] = (0, 0, 0)
    multiplier: np.ndarray = None  # int32 [KH*KW]
    shift: np.ndarray = None

    kind = "avgpool"

    @property
    def quant_bytes(self) -> int:
        return int(8 * self.multiplier.size)


@dataclass
class Concat(Op):
    """Concatenation along ``axis`` of the sample shape; each input rescaled when its scale differs."""

    axis: int = 0
    rescale: list[tuple[int, int] | None] = field(default_factory=list)

    kind = "concat"


@dataclass
class Requantize(Op):
    """``clamp(requantize(x - zp_in) + zp_out)``: an unfused Relu/Clip, or a rescaling Reshape."""

    multiplier: int = 0
    shift: int = 0

    kind = "requantize"


@dataclass
class Reshape(Op):
    """Reshape / Flatten with unchanged quantization: the output aliases the input."""

    kind = "reshape"


@dataclass
class Graph:
    """A whole model: tensors by name, operators in execution order, one input, one output."""

    tensors: dict[str, QTensor]
    ops: list[Op]
    input: str
    output: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def macs(self) -> int:
        """Multiply-accumulates of one inference."""
        return sum(op.macs for op in self.ops)

    @property
    def weights_bytes(self) -> int:
        """Bytes of int8 weights and int32 biases."""
        return sum(op.weights_bytes for op in self.ops)

    @property
    def quant_bytes(self) -> int:
        """Bytes of requantization multipliers and shifts."""
        return sum(op.quant_bytes for op in self.ops)

    def consumers(self, name: str) -> list[Op]:
        """Operators reading tensor ``name``."""
        return [op for op in self.ops if name in op.inputs]
