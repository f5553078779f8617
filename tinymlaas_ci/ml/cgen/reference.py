"""A numpy reference of the integer arithmetic: the oracle the generated C must match bit for bit.

Each operator of :mod:`tinymlaas_ci.ml.cgen.ir` is written here as directly as numpy allows,
independently of how the C kernels order their loops (im2col, dual MACs, vector lanes). Integer
sums are exact in int64, so any order of accumulation gives the same int32 accumulator, and the
requantization is :func:`tinymlaas_ci.ml.cgen.fixedpoint.requantize`. Conv and FullyConnected
compute ``acc = bias + sum(w * (x - zp_in))`` with padding contributing nothing (a padded input
is the real value 0), then ``out = clamp(requantize(acc) + zp_out, act_min, act_max)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tinymlaas_ci.ml.cgen import ir
from tinymlaas_ci.ml.cgen.fixedpoint import requantize

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = ["run_graph", "run_op"]


def _out(v: np.ndarray, op: ir.Op, zp: int) -> np.ndarray:
    import numpy as np

    return np.clip(v + zp, op.act_min, op.act_max).astype(np.int8)


def _windows(x: np.ndarray, kh: int, kw: int, sh: int, sw: int, oh: int, ow: int) -> np.ndarray:
    """``(C, OH, OW, KH, KW)`` view of the padded ``(C, H, W)`` array."""
    import numpy as np

    view = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))
    return view[:, : (oh - 1) * sh + 1 : sh, : (ow - 1) * sw + 1 : sw]


def _conv(op: ir.Conv, x: np.ndarray, tin: ir.QTensor, tout: ir.QTensor) -> np.ndarray:
    import numpy as np

    _c, _h, _w = op.in_shape
    oc, icg, kh, kw = op.weight.shape
    _, oh, ow = op.out_shape
    pt, pl, pb, pr = op.pads
    xs = np.pad(x.astype(np.int64) - tin.zero_point, ((0, 0), (pt, pb), (pl, pr)))
    win = _windows(xs, kh, kw, op.stride[0], op.stride[1], oh, ow)  # C, OH, OW, KH, KW
    ocg = oc // op.groups
    w = op.weight.astype(np.int64)
    acc = np.empty((oc, oh, ow), np.int64)
    for g in range(op.groups):
        xg = win[g * icg : (g + 1) * icg]  # icg, OH, OW, KH, KW
        wg = w[g * ocg : (g + 1) * ocg]  # ocg, icg, KH, KW
        acc[g * ocg : (g + 1) * ocg] = np.einsum("cyxij,ocij->oyx", xg, wg)
    acc += op.bias.astype(np.int64)[:, None, None]
    v = requantize(acc, op.multiplier[:, None, None], op.shift[:, None, None])
    return _out(v, op, tout.zero_point)


def _fc(op: ir.FullyConnected, x: np.ndarray, tin: ir.QTensor, tout: ir.QTensor) -> np.ndarray:
    import numpy as np

    acc = op.weight.astype(np.int64) @ (x.reshape(-1).astype(np.int64) - tin.zero_point) + op.bias
    return _out(requantize(acc, op.multiplier, op.shift), op, tout.zero_point)


def _add(op: ir.Add, a: np.ndarray, b: np.ndarray, ta: ir.QTensor, tb: ir.QTensor, tout: ir.QTensor) -> np.ndarray:
    import numpy as np

    xa = (a.astype(np.int64) - ta.zero_point) << op.left_shift
    xb = (b.astype(np.int64) - tb.zero_point) << op.left_shift
    sa = requantize(xa, op.in_multiplier[0], op.in_shift[0])
    sb = requantize(xb, op.in_multiplier[1], op.in_shift[1])
    return _out(requantize(sa + sb, op.out_multiplier, op.out_shift), op, tout.zero_point)


def _maxpool(op: ir.MaxPool, x: np.ndarray, tin: ir.QTensor, tout: ir.QTensor) -> np.ndarray:
    import numpy as np

    pt, pl, pb, pr = op.pads
    xs = np.pad(x.astype(np.int64), ((0, 0), (pt, pb), (pl, pr)), constant_values=-(1 << 40))
    _, oh, ow = op.out_shape
    m = _windows(xs, *op.kernel, *op.stride, oh, ow).max(axis=(3, 4))
    if op.rescale is None:
        return np.clip(m, op.act_min, op.act_max).astype(np.int8)
    return _out(requantize(m - tin.zero_point, *op.rescale), op, tout.zero_point)


def _avgpool(op: ir.AvgPool, x: np.ndarray, tin: ir.QTensor, tout: ir.QTensor) -> np.ndarray:
    import numpy as np

    pt, pl, pb, pr = op.pads
    _, oh, ow = op.out_shape
    kh, kw = op.kernel
    xs = np.pad(x.astype(np.int64) - tin.zero_point, ((0, 0), (pt, pb), (pl, pr)))
    total = _windows(xs, kh, kw, *op.stride, oh, ow).sum(axis=(3, 4))
    if op.count_include_pad:
        count = np.full((oh, ow), kh * kw, np.int64)
    else:
        ones = np.pad(np.ones(op.in_shape[1:], np.int64), ((pt, pb), (pl, pr)))
        count = _windows(ones[None], kh, kw, *op.stride, oh, ow)[0].sum(axis=(2, 3))
    v = requantize(total, op.multiplier[count - 1][None], op.shift[count - 1][None])
    return _out(v, op, tout.zero_point)


def _concat(op: ir.Concat, xs: list[np.ndarray], tins: list[ir.QTensor], tout: ir.QTensor) -> np.ndarray:
    import numpy as np

    parts = []
    for x, t, rescale in zip(xs, tins, op.rescale, strict=True):
        if rescale is None:
            parts.append(np.clip(x.astype(np.int64), op.act_min, op.act_max))
        else:
            parts.append(
                np.clip(
                    requantize(x.astype(np.int64) - t.zero_point, *rescale) + tout.zero_point, op.act_min, op.act_max
                )
            )
    return np.concatenate(parts, axis=op.axis).astype(np.int8)


def run_op(op: ir.Op, inputs: list[np.ndarray], graph: ir.Graph) -> np.ndarray:
    """Output of one operator for int8 ``inputs`` shaped like its input tensors."""
    import numpy as np

    tins = [graph.tensors[n] for n in op.inputs]
    tout = graph.tensors[op.output]
    if isinstance(op, ir.Conv):
        return _conv(op, inputs[0], tins[0], tout)
    if isinstance(op, ir.FullyConnected):
        return _fc(op, inputs[0], tins[0], tout)
    if isinstance(op, ir.Add):
        return _add(op, inputs[0], inputs[1], tins[0], tins[1], tout)
    if isinstance(op, ir.MaxPool):
        return _maxpool(op, inputs[0], tins[0], tout)
    if isinstance(op, ir.AvgPool):
        return _avgpool(op, inputs[0], tins[0], tout)
    if isinstance(op, ir.Concat):
        return _concat(op, inputs, tins, tout)
    if isinstance(op, ir.Requantize):
        v = requantize(inputs[0].astype(np.int64) - tins[0].zero_point, op.multiplier, op.shift)
        return _out(v, op, tout.zero_point).reshape(tout.shape)
    if isinstance(op, ir.Reshape):
        return inputs[0].reshape(tout.shape)
    raise TypeError(f"no reference for {type(op).__name__}")  # pragma: no cover


def run_graph(graph: ir.Graph, x: np.ndarray) -> np.ndarray:
    """The int8 output of ``graph`` for one int8 input sample (any shape with the right size)."""
    import numpy as np

    values = {graph.input: np.asarray(x, dtype=np.int8).reshape(graph.tensors[graph.input].shape)}
    for op in graph.ops:
        values[op.output] = run_op(op, [values[n] for n in op.inputs], graph)
    return values[graph.output].reshape(-1)
