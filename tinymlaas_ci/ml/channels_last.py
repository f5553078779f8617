"""Prepare an fp32 ONNX graph so ONNX Runtime's channels-last int8 kernels need no Transposes.

ONNX Runtime runs a quantized convolution (``QLinearConv``) and the pooling after it in NHWC
(channels-last) order on CPU. The model's tensors are NCHW, so its optimizer puts a
``Transpose`` where the graph enters the channels-last part and one where it leaves it. On a
small model each is a kernel call of its own, about as long as a small layer: the digits CNN's
int8 graph runs 10 kernels against the fp32 graph's 7, and two of the ten are such Transposes.

Two rewrites remove them without changing a single output value. Each inserts a Transpose that
is the exact inverse of the one ONNX Runtime will add, so its optimizer cancels the pair:

* **Input with one channel** (``N x 1 x H x W`` feeding only Convs): ``N x 1 x H x W`` and
  ``N x H x W x 1`` are the same bytes, so the input is reshaped to NHWC and transposed back to
  NCHW; the Transpose cancels against ONNX Runtime's, the free Reshape stays.
* **Flatten before a fully connected layer** (a 4-D ``N x C x H x W`` tensor, ``Flatten`` or a
  ``Reshape`` to ``N x CHW``, then a ``Gemm``/``MatMul`` with a constant weight): the tensor is
  transposed to NHWC before the flatten and the weight's rows are permuted to the NHWC order of
  the same values; the inserted Transpose cancels against ONNX Runtime's.

:func:`prepare` only rewrites; whether the rewrite paid off is decided on the graph ONNX
Runtime really runs (:func:`surviving`): an inserted Transpose that is still there after
optimization means the pair did not cancel, and the caller keeps the model unprepared.
"""

from __future__ import annotations

import os

__all__ = ["MARK", "prepare", "surviving"]

MARK = "__tinymlaas_channels_last"
"""Suffix of the names of every node :func:`prepare` inserts."""

_NCHW_PRODUCERS = {
    "Conv",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Relu",
    "Clip",
    "Add",
    "BatchNormalization",
}


def prepare(src: str | os.PathLike, dst: str | os.PathLike) -> list[str]:
    """Write ``src`` with the channels-last rewrites to ``dst``; returns one line per rewrite.

    Returns an empty list (and writes nothing) when no rewrite applies.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper, shape_inference

    model = onnx.load(str(src))
    try:
        model = shape_inference.infer_shapes(model)
    except Exception:  # a graph ONNX cannot infer keeps its annotated shapes only
        pass
    graph = model.graph
    shapes = {v.name: _dims(v) for v in (*graph.value_info, *graph.input, *graph.output)}
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    producers = {out: node for node in graph.node for out in node.output}
    done: list[str] = []
    head = []

    for inp in graph.input:
        dims = shapes.get(inp.name)
        users = consumers.get(inp.name, [])
        if inp.name in inits or not dims or len(dims) != 4 or dims[1] != 1 or None in dims[2:]:
            continue
        if not users or any(u.op_type != "Conv" for u in users):
            continue
        shape_name = f"{inp.name}{MARK}_shape"
        graph.initializer.append(numpy_helper.from_array(np.array([0, dims[2], dims[3], 1], np.int64), shape_name))
        nhwc, nchw = f"{inp.name}{MARK}_nhwc", f"{inp.name}{MARK}_nchw"
        head += [
            helper.make_node("Reshape", [inp.name, shape_name], [nhwc], name=f"{inp.name}{MARK}_reshape"),
            helper.make_node("Transpose", [nhwc], [nchw], perm=[0, 3, 1, 2], name=f"{inp.name}{MARK}_to_nchw"),
        ]
        for user in users:
            user.input[:] = [nchw if name == inp.name else name for name in user.input]
        done.append(f"input {inp.name!r} (1 channel): reshaped to NHWC instead of transposed")

    for node in list(graph.node):
        rewrite = _flatten_site(node, shapes, inits, consumers, producers)
        if rewrite is None:
            continue
        fc, (c, h, w), trans_b = rewrite
        weight = numpy_helper.to_array(inits[fc.input[1]])
        if trans_b:  # [out, C*H*W]
            permuted = weight.reshape(weight.shape[0], c, h, w).transpose(0, 2, 3, 1).reshape(weight.shape[0], -1)
        else:  # [C*H*W, out]
            permuted = weight.reshape(c, h, w, weight.shape[1]).transpose(1, 2, 0, 3).reshape(-1, weight.shape[1])
        inits[fc.input[1]].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(permuted), fc.input[1]))
        nhwc = f"{node.input[0]}{MARK}_nhwc"
        transpose = helper.make_node("Transpose", [node.input[0]], [nhwc], perm=[0, 2, 3, 1], name=f"{node.name}{MARK}")
        node.input[0] = nhwc
        graph.node.insert(list(graph.node).index(node), transpose)
        done.append(f"{node.op_type} {node.name!r} before {fc.op_type} {fc.name!r}: flattened in NHWC order")

    if not done:
        return []
    for i, node in enumerate(head):
        graph.node.insert(i, node)
    onnx.save(model, str(dst))
    return done


def surviving(optimized) -> list[str]:
    """Names of the Transposes :func:`prepare` inserted that ONNX Runtime's optimizer did not
    cancel, in an optimized graph (``onnx.ModelProto``)."""
    return [n.name for n in optimized.graph.node if n.op_type == "Transpose" and MARK in n.name]


def _dims(value) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]


def _flatten_site(node, shapes, inits, consumers, producers):
    # Flatten(axis=1) or Reshape to [N, C*H*W] of a 4-D NCHW activation, consumed only by a
    # Gemm/MatMul whose weight is a constant: ((that node), (C, H, W), weight transposed).
    if node.op_type not in ("Flatten", "Reshape") or len(node.input) < 1:
        return None
    dims = shapes.get(node.input[0])
    if not dims or len(dims) != 4 or None in dims[1:]:
        return None
    c, h, w = dims[1:]
    if node.op_type == "Flatten":
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if axis != 1:
            return None
    else:
        out = shapes.get(node.output[0])
        if not out or len(out) != 2 or out[1] != c * h * w:
            return None
    producer = producers.get(node.input[0])
    if producer is None or producer.op_type not in _NCHW_PRODUCERS:
        return None
    users = consumers.get(node.output[0], [])
    if len(users) != 1:
        return None
    fc = users[0]
    if fc.op_type not in ("Gemm", "MatMul") or fc.input[0] != node.output[0] or fc.input[1] not in inits:
        return None
    trans_a = next((a.i for a in fc.attribute if a.name == "transA"), 0)
    trans_b = next((a.i for a in fc.attribute if a.name == "transB"), 0) if fc.op_type == "Gemm" else 0
    weight_dims = list(inits[fc.input[1]].dims)
    if trans_a or len(weight_dims) != 2 or weight_dims[1 if trans_b else 0] != c * h * w:
        return None
    return fc, (c, h, w), bool(trans_b)
