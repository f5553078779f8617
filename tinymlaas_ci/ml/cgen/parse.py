"""Read a static-int8 ONNX model in QDQ form into the integer IR (:mod:`tinymlaas_ci.ml.cgen.ir`).

The QDQ form (ONNX Runtime's ``quantize_static`` with ``QuantFormat.QDQ``) keeps the float
operators and surrounds them with ``QuantizeLinear`` / ``DequantizeLinear`` pairs:

* an activation is an int8 tensor between a ``QuantizeLinear`` and the ``DequantizeLinear``\\ s
  that feed its consumers; the Q node's scale and zero point are the tensor's quantization;
* a weight is an int8 initializer behind a ``DequantizeLinear`` (per-channel scales on the
  output-channel axis, zero points 0); a bias an int32 initializer behind one, at scale
  ``s_in * s_w``;
* a float operator reads dequantized tensors and its float output is quantized by the next
  ``QuantizeLinear``. A Relu or Clip between the operator and that Q node (ONNX Runtime removes
  most of them, folding them into the output range) is fused into the operator's output clamp.

Every node is checked before anything is produced: an operator outside the supported set, or
an attribute the kernels do not implement, raises :class:`TinymlError` naming the node.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinymlaas_ci.errors import TinymlError
from tinymlaas_ci.ml.cgen import ir
from tinymlaas_ci.ml.cgen.fixedpoint import quantize_multiplier

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import onnx

__all__ = ["SUPPORTED_OPS", "load_graph", "parse_model"]

SUPPORTED_OPS = (
    "Conv",
    "Gemm",
    "MatMul",
    "Add",
    "Relu",
    "Clip",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Reshape",
    "Flatten",
    "Concat",
)
_HINT_OPS = "the C generator supports " + ", ".join(SUPPORTED_OPS) + " between QuantizeLinear/DequantizeLinear pairs"
# A product of two int8 values is at most 2**14; keep every int32 accumulator clear of overflow.
_ACC_LIMIT = (1 << 31) - 1


def load_graph(path: str | os.PathLike) -> ir.Graph:
    """Load the QDQ ONNX model at ``path`` and parse it (see :func:`parse_model`)."""
    import onnx

    path = Path(path)
    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise TinymlError(
            f"cannot read ONNX model {path}: {type(exc).__name__}: {exc}",
            hint="the C generator needs the static-int8 model.onnx the compile stage writes",
        ) from exc
    return parse_model(model, source=path.name)


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _where(node: onnx.NodeProto) -> str:
    return f"node {node.name or '(unnamed)'!r} ({node.op_type})"


class _Parser:
    def __init__(self, model: onnx.ModelProto, source: str) -> None:
        import onnx

        self.source = source
        self.graph = model.graph
        self.init: dict[str, np.ndarray] = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type == "Constant":
                value = _attrs(node).get("value")
                if value is not None:
                    self.init[node.output[0]] = onnx.numpy_helper.to_array(value)
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in model.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.tensors: dict[str, ir.QTensor] = {}
        self.act_dq: dict[str, str] = {}  # DequantizeLinear output -> quantized tensor name
        self.const_dq: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, int]] = {}
        self.pending: dict[str, dict[str, Any]] = {}  # float output -> op waiting for its Q node
        self.ops: list[ir.Op] = []

    # ------------------------------------------------------------------ helpers

    def fail(self, node: onnx.NodeProto, why: str, hint: str = _HINT_OPS) -> TinymlError:
        return TinymlError(f"{self.source}: {_where(node)}: {why}", hint=hint)

    def scalar(self, node: onnx.NodeProto, name: str) -> np.ndarray:
        if name not in self.init:
            raise self.fail(
                node, f"input {name!r} must be a constant", hint="re-export the model with constant folding"
            )
        return self.init[name]

    def qparams(self, node: onnx.NodeProto) -> tuple[float, int]:
        import numpy as np

        scale = np.asarray(self.scalar(node, node.input[1]), dtype=np.float64)
        zp = self.init.get(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.uint8)
        if np.asarray(zp).dtype != np.int8:
            raise self.fail(
                node,
                f"activations are quantized to {np.asarray(zp).dtype}, the C kernels need int8",
                hint="quantize with int8 activations (tinymlaas_ci.ml.cgen.quantize_qdq)",
            )
        if scale.size != 1 or np.asarray(zp).size != 1:
            raise self.fail(node, "activations must have one scale and zero point per tensor")
        return float(scale.reshape(())), int(np.asarray(zp).reshape(()))

    def act(self, node: onnx.NodeProto, name: str) -> ir.QTensor:
        if name in self.act_dq:
            return self.tensors[self.act_dq[name]]
        if name in self.pending:
            raise self.fail(node, f"input {name!r} is a float tensor that is never quantized")
        raise self.fail(node, f"input {name!r} is not a dequantized int8 activation")

    def weight(self, node: onnx.NodeProto, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        if name not in self.const_dq:
            raise self.fail(node, f"input {name!r} is not a quantized constant (DequantizeLinear of an initializer)")
        return self.const_dq[name]

    # ------------------------------------------------------------------ main walk

    def run(self) -> ir.Graph:
        inputs = [i for i in self.graph.input if i.name not in self.init]
        if len(inputs) != 1 or len(self.graph.output) != 1:
            raise TinymlError(
                f"{self.source}: the C generator needs one input and one output, "
                f"the model has {len(inputs)} and {len(self.graph.output)}",
                hint="export a model with a single input tensor and a single logits output",
            )
        graph_in = inputs[0]
        dims = [d.dim_value if d.HasField("dim_value") else None for d in graph_in.type.tensor_type.shape.dim]
        if len(dims) < 2 or any(d is None or d <= 0 for d in dims[1:]):
            raise TinymlError(
                f"{self.source}: input {graph_in.name!r} has shape {dims}; the C generator needs fixed sizes "
                "after the batch axis",
                hint="export the model with a fixed input shape (only the batch axis may be dynamic)",
            )
        sample_shape = tuple(int(d) for d in dims[1:])
        quant_in = None
        float_views: dict[str, tuple[onnx.NodeProto, tuple[int, ...]]] = {}

        # Checked first, in one pass, so that nothing is produced for an unsupported model.
        for node in self.graph.node:
            if node.op_type in ("QuantizeLinear", "DequantizeLinear", "Constant") or node.op_type in SUPPORTED_OPS:
                continue
            raise self.fail(node, f"operator {node.op_type} is not supported by the C generator")

        for node in self.graph.node:
            op = node.op_type
            if op == "Constant":
                continue
            if op == "DequantizeLinear":
                self.dequantize(node)
            elif op == "QuantizeLinear":
                src = node.input[0]
                scale, zp = self.qparams(node)
                out = node.output[0]
                if src == graph_in.name:
                    self.tensors[out] = ir.QTensor(out, sample_shape, scale, zp)
                    quant_in = out
                elif src in float_views:
                    # The input is reshaped before it is quantized; quantizing commutes with it.
                    quant_in = out + ".input"
                    self.tensors[quant_in] = ir.QTensor(quant_in, sample_shape, scale, zp)
                    self.tensors[out] = ir.QTensor(out, float_views[src][1], scale, zp)
                    self.ops.append(
                        ir.Reshape(float_views[src][0].name or "Reshape", float_views[src][0].op_type, [quant_in], out)
                    )
                elif src in self.pending:
                    self.finish(node, self.pending.pop(src), out, scale, zp)
                else:
                    raise self.fail(node, f"quantizes {src!r}, which no supported operator produces")
            elif op in ("Reshape", "Flatten") and node.input[0] in (graph_in.name, *float_views) and not self.tensors:
                src = node.input[0]
                shape = sample_shape if src == graph_in.name else float_views[src][1]
                float_views[node.output[0]] = (node, self.reshaped(node, shape))
            elif op in ("Relu", "Clip") and node.input[0] in self.pending:
                lo, hi = self.clip_range(node)
                spec = self.pending.pop(node.input[0])
                spec["lo"], spec["hi"] = max(spec["lo"], lo), min(spec["hi"], hi)
                self.pending[node.output[0]] = spec
            else:
                self.pending[node.output[0]] = self.start(node)
        if quant_in is None:
            raise TinymlError(
                f"{self.source}: the model input is not quantized: this is not a static-int8 QDQ model",
                hint="compile with quantization static-int8 (QDQ format, int8 activations)",
            )
        for name, spec in self.pending.items():
            raise self.fail(spec["node"], f"its output {name!r} is never quantized")
        out_name = self.graph.output[0].name
        if out_name not in self.act_dq:
            raise TinymlError(
                f"{self.source}: the model output {out_name!r} is not a dequantized int8 tensor",
                hint="compile with quantization static-int8 so that the logits are quantized",
            )
        graph = ir.Graph(self.tensors, self.ops, quant_in, self.act_dq[out_name], meta={"source": self.source})
        _fuse_clamps(graph)
        _check_accumulators(graph)
        return graph

    def dequantize(self, node: onnx.NodeProto) -> None:
        import numpy as np

        src = node.input[0]
        if src in self.init:
            q = self.init[src]
            scale = np.asarray(self.scalar(node, node.input[1]), dtype=np.float64)
            zp = (
                np.asarray(self.init[node.input[2]])
                if len(node.input) > 2 and node.input[2]
                else np.zeros(scale.shape, q.dtype)
            )
            axis = int(_attrs(node).get("axis", 1))
            self.const_dq[node.output[0]] = (q, scale, zp, axis)
        elif src in self.tensors:
            self.act_dq[node.output[0]] = src
        else:
            raise self.fail(node, f"dequantizes {src!r}, which is neither a constant nor a quantized activation")

    def clip_range(self, node: onnx.NodeProto) -> tuple[float, float]:
        import numpy as np

        if node.op_type == "Relu":
            return 0.0, math.inf
        attrs = _attrs(node)
        lo, hi = float(attrs.get("min", -math.inf)), float(attrs.get("max", math.inf))
        if len(node.input) > 1 and node.input[1]:
            lo = float(np.asarray(self.scalar(node, node.input[1])).reshape(()))
        if len(node.input) > 2 and node.input[2]:
            hi = float(np.asarray(self.scalar(node, node.input[2])).reshape(()))
        return lo, hi

    # ------------------------------------------------------------------ operators

    def start(self, node: onnx.NodeProto) -> dict[str, Any]:
        """Check a float operator and record what it needs until its output's Q node is seen."""
        spec: dict[str, Any] = {"node": node, "lo": -math.inf, "hi": math.inf, "attrs": _attrs(node)}
        op = node.op_type
        attrs = spec["attrs"]
        if op in ("Conv", "MaxPool", "AveragePool", "GlobalAveragePool"):
            x = self.act(node, node.input[0])
            if len(x.shape) != 3:
                raise self.fail(node, f"needs a (C, H, W) input, got shape {x.shape}")
            if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
                raise self.fail(node, "auto_pad SAME is not supported", hint="export the model with explicit pads")
            if any(d != 1 for d in attrs.get("dilations", [1, 1])):
                raise self.fail(node, f"dilations {attrs['dilations']} are not supported (only 1)")
            if int(attrs.get("ceil_mode", 0)):
                raise self.fail(node, "ceil_mode 1 is not supported", hint="use ceil_mode 0 (floor)")
            spec["x"] = x
        if op == "Conv":
            w, ws, wzp, _axis = self.weight(node, node.input[1])
            if w.ndim != 4:
                raise self.fail(node, f"needs 2-D convolution weights, got {w.ndim - 2}-D")
            self.check_weights(node, w, ws, wzp, w.shape[0])
            spec["w"], spec["ws"] = w, ws
        elif op in ("Gemm", "MatMul"):
            x = self.act(node, node.input[0])
            w, ws, wzp, _axis = self.weight(node, node.input[1])
            if op == "Gemm":
                if (
                    int(attrs.get("transA", 0))
                    or float(attrs.get("alpha", 1.0)) != 1.0
                    or float(attrs.get("beta", 1.0)) != 1.0
                ):
                    raise self.fail(node, "only Gemm with transA=0, alpha=1, beta=1 is supported")
                trans_b = bool(int(attrs.get("transB", 0)))
            else:
                trans_b = False
            if w.ndim != 2:
                raise self.fail(node, f"needs a 2-D weight matrix, got shape {w.shape}")
            w = w if trans_b else w.T
            if x.size != w.shape[1] or (len(x.shape) != 1 and op == "Gemm"):
                raise self.fail(node, f"input shape {x.shape} does not match weights {w.shape}")
            if op == "MatMul" and len(x.shape) != 1:
                raise self.fail(node, f"MatMul needs a flat (N,) input per sample, got {x.shape}")
            self.check_weights(node, w, ws, wzp, w.shape[0])
            spec.update(x=x, w=w, ws=ws)
        elif op == "Add":
            a, b = self.act(node, node.input[0]), self.act(node, node.input[1])
            if a.shape != b.shape:
                raise self.fail(node, f"inputs of shapes {a.shape} and {b.shape}: broadcasting is not supported")
            spec.update(a=a, b=b)
        elif op in ("Reshape", "Flatten"):
            x = self.act(node, node.input[0])
            spec.update(x=x, shape=self.reshaped(node, x.shape))
        elif op == "Concat":
            xs = [self.act(node, n) for n in node.input]
            rank = len(xs[0].shape)
            axis = int(attrs.get("axis", 1))
            axis = axis + rank + 1 if axis < 0 else axis
            if axis == 0:
                raise self.fail(node, "Concat along the batch axis is not supported")
            axis -= 1
            for x in xs:
                if len(x.shape) != rank or any(x.shape[i] != xs[0].shape[i] for i in range(rank) if i != axis):
                    raise self.fail(
                        node, f"inputs of shapes {[t.shape for t in xs]} cannot be concatenated on axis {axis + 1}"
                    )
            spec.update(xs=xs, axis=axis)
        elif op in ("Relu", "Clip"):
            spec["x"] = self.act(node, node.input[0])
            spec["lo"], spec["hi"] = self.clip_range(node)
        return spec

    def reshaped(self, node: onnx.NodeProto, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The sample shape after a Reshape or Flatten of a ``shape`` sample (batch kept)."""
        size = math.prod(shape)
        if node.op_type == "Flatten":
            axis = int(_attrs(node).get("axis", 1))
            if axis != 1:
                raise self.fail(node, f"Flatten axis {axis} is not supported (only 1, keeping the batch)")
            return (size,)
        target = [int(v) for v in self.scalar(node, node.input[1]).reshape(-1)]
        if not target or target[0] not in (0, 1, -1):
            raise self.fail(node, f"Reshape to {target} changes the batch axis")
        rest = [shape[i - 1] if v == 0 else v for i, v in enumerate(target) if i > 0]
        if rest.count(-1) > 1:
            raise self.fail(node, f"Reshape to {target} has more than one -1")
        if -1 in rest:
            known = math.prod(v for v in rest if v != -1)
            rest[rest.index(-1)] = size // max(known, 1)
        if math.prod(rest) != size:
            raise self.fail(node, f"Reshape of {shape} to {target} changes the number of elements")
        return tuple(rest)

    def check_weights(self, node, w, ws, wzp, channels: int) -> None:
        import numpy as np

        if w.dtype != np.int8:
            raise self.fail(
                node, f"weights are {w.dtype}, the C kernels need int8", hint="quantize with int8 weights (QInt8)"
            )
        if np.any(np.asarray(wzp) != 0):
            raise self.fail(
                node,
                "weights are asymmetric (non-zero zero points)",
                hint="quantize with symmetric weights (extra_options WeightSymmetric: True)",
            )
        if ws.size not in (1, channels):
            raise self.fail(node, f"{ws.size} weight scales for {channels} output channels")

    def bias(self, node, name: str | None, s_in: float, ws: np.ndarray, channels: int) -> np.ndarray:
        import numpy as np

        want = s_in * np.broadcast_to(ws.reshape(-1), (channels,))
        if not name:
            return np.zeros(channels, np.int32)
        if name in self.const_dq:
            q, scale, zp, _axis = self.const_dq[name]
            real = (q.astype(np.float64) - zp) * np.broadcast_to(scale.reshape(-1), q.shape)
        elif name in self.init:
            real = self.init[name].astype(np.float64)
        else:
            raise self.fail(node, f"bias {name!r} must be a constant")
        real = real.reshape(-1)
        if real.size != channels:
            raise self.fail(node, f"bias has {real.size} values for {channels} output channels")
        if name in self.const_dq and q.dtype == np.int32 and np.allclose(scale.reshape(-1), want, rtol=1e-5, atol=0):
            return q.reshape(-1).astype(np.int32)
        return np.clip(np.round(real / want), -(2**31), 2**31 - 1).astype(np.int32)

    def finish(self, qnode, spec: dict[str, Any], out: str, scale: float, zp: int) -> None:
        """The operator's output Q node is known: compute its integer parameters and append it."""
        import numpy as np

        node = spec["node"]
        op, attrs = node.op_type, spec["attrs"]
        act_min = -128 if spec["lo"] == -math.inf else max(-128, zp + int(np.round(spec["lo"] / scale)))
        act_max = 127 if spec["hi"] == math.inf else min(127, zp + int(np.round(spec["hi"] / scale)))
        if act_min > act_max:
            raise self.fail(node, f"its output clamp [{spec['lo']}, {spec['hi']}] is empty at scale {scale}")
        common = {"name": node.name or f"{op}_{len(self.ops)}", "onnx_op": op, "output": out}
        clamp = {"act_min": act_min, "act_max": act_max}

        def per_channel(s_in: float, ws: np.ndarray, channels: int) -> tuple[np.ndarray, np.ndarray]:
            factors = s_in * np.broadcast_to(ws.reshape(-1), (channels,)) / scale
            pairs = [quantize_multiplier(f) for f in factors]
            return np.array([p[0] for p in pairs], np.int32), np.array([p[1] for p in pairs], np.int32)

        if op == "Conv":
            x, w, ws = spec["x"], spec["w"], spec["ws"]
            c, h, wd = x.shape
            oc, icg, kh, kw = w.shape
            groups = int(attrs.get("group", 1))
            if c != icg * groups or oc % groups:
                raise self.fail(node, f"{c} input channels, weights {w.shape} and group {groups} do not match")
            kshape = tuple(attrs.get("kernel_shape", (kh, kw)))
            if kshape != (kh, kw):
                raise self.fail(node, f"kernel_shape {kshape} does not match weights {w.shape}")
            sh, sw = (int(v) for v in attrs.get("strides", (1, 1)))
            pt, pl, pb, pr = (int(v) for v in attrs.get("pads", (0, 0, 0, 0)))
            oh, ow = (h + pt + pb - kh) // sh + 1, (wd + pl + pr - kw) // sw + 1
            if oh <= 0 or ow <= 0:
                raise self.fail(node, f"output would be empty for input {x.shape}")
            bias = self.bias(node, node.input[2] if len(node.input) > 2 else None, x.scale, ws, oc)
            m, s = per_channel(x.scale, ws, oc)
            self.tensors[out] = ir.QTensor(out, (oc, oh, ow), scale, zp)
            self.ops.append(
                ir.Conv(
                    **common,
                    inputs=[x.name],
                    **clamp,
                    weight=np.ascontiguousarray(w),
                    bias=bias,
                    multiplier=m,
                    shift=s,
                    stride=(sh, sw),
                    pads=(pt, pl, pb, pr),
                    groups=groups,
                    in_shape=(c, h, wd),
                    out_shape=(oc, oh, ow),
                )
            )
        elif op in ("Gemm", "MatMul"):
            x, w, ws = spec["x"], spec["w"], spec["ws"]
            n_out = w.shape[0]
            bias = self.bias(node, node.input[2] if op == "Gemm" and len(node.input) > 2 else None, x.scale, ws, n_out)
            m, s = per_channel(x.scale, ws, n_out)
            self.tensors[out] = ir.QTensor(out, (n_out,), scale, zp)
            self.ops.append(
                ir.FullyConnected(
                    **common,
                    inputs=[x.name],
                    **clamp,
                    weight=np.ascontiguousarray(w),
                    bias=bias,
                    multiplier=m,
                    shift=s,
                )
            )
        elif op == "Add":
            a, b = spec["a"], spec["b"]
            left = 20
            twice = 2 * max(a.scale, b.scale)
            ma, sa = quantize_multiplier(a.scale / twice)
            mb, sb = quantize_multiplier(b.scale / twice)
            mo, so = quantize_multiplier(twice / ((1 << left) * scale))
            self.tensors[out] = ir.QTensor(out, a.shape, scale, zp)
            self.ops.append(
                ir.Add(
                    **common,
                    inputs=[a.name, b.name],
                    **clamp,
                    left_shift=left,
                    in_multiplier=(ma, mb),
                    in_shift=(sa, sb),
                    out_multiplier=mo,
                    out_shift=so,
                )
            )
        elif op in ("MaxPool", "AveragePool", "GlobalAveragePool"):
            x = spec["x"]
            c, h, wd = x.shape
            if op == "GlobalAveragePool":
                kh, kw, sh, sw, pads = h, wd, 1, 1, (0, 0, 0, 0)
            else:
                kh, kw = (int(v) for v in attrs["kernel_shape"])
                sh, sw = (int(v) for v in attrs.get("strides", (1, 1)))
                pads = tuple(int(v) for v in attrs.get("pads", (0, 0, 0, 0)))
            pt, pl, pb, pr = pads
            if max(pt, pb) >= kh or max(pl, pr) >= kw:
                raise self.fail(node, f"pads {pads} as large as the kernel {(kh, kw)} are not supported")
            oh, ow = (h + pt + pb - kh) // sh + 1, (wd + pl + pr - kw) // sw + 1
            if oh <= 0 or ow <= 0:
                raise self.fail(node, f"output would be empty for input {x.shape}")
            self.tensors[out] = ir.QTensor(out, (c, oh, ow), scale, zp)
            geo = {
                "kernel": (kh, kw),
                "stride": (sh, sw),
                "pads": (pt, pl, pb, pr),
                "in_shape": (c, h, wd),
                "out_shape": (c, oh, ow),
            }
            if op == "MaxPool":
                if int(attrs.get("storage_order", 0)):
                    raise self.fail(node, "storage_order 1 is not supported")
                if len(node.output) > 1 and node.output[1]:
                    raise self.fail(node, "the Indices output is not supported")
                same = x.scale == scale and x.zero_point == zp
                rescale = None if same else quantize_multiplier(x.scale / scale)
                self.ops.append(ir.MaxPool(**common, inputs=[x.name], **clamp, **geo, rescale=rescale))
            else:
                include = bool(int(attrs.get("count_include_pad", 0)))
                pairs = [quantize_multiplier(x.scale / (scale * n)) for n in range(1, kh * kw + 1)]
                self.ops.append(
                    ir.AvgPool(
                        **common,
                        inputs=[x.name],
                        **clamp,
                        **geo,
                        count_include_pad=include,
                        multiplier=np.array([p[0] for p in pairs], np.int32),
                        shift=np.array([p[1] for p in pairs], np.int32),
                    )
                )
        elif op in ("Reshape", "Flatten"):
            x = spec["x"]
            self.tensors[out] = ir.QTensor(out, spec["shape"], scale, zp)
            if x.scale == scale and x.zero_point == zp and (act_min, act_max) == (-128, 127):
                self.ops.append(ir.Reshape(**common, inputs=[x.name]))
            else:
                m, s = quantize_multiplier(x.scale / scale)
                self.ops.append(ir.Requantize(**common, inputs=[x.name], **clamp, multiplier=m, shift=s))
        elif op == "Concat":
            xs, axis = spec["xs"], spec["axis"]
            shape = list(xs[0].shape)
            shape[axis] = sum(t.shape[axis] for t in xs)
            rescale = [
                None if (t.scale == scale and t.zero_point == zp) else quantize_multiplier(t.scale / scale) for t in xs
            ]
            self.tensors[out] = ir.QTensor(out, tuple(shape), scale, zp)
            self.ops.append(ir.Concat(**common, inputs=[t.name for t in xs], **clamp, axis=axis, rescale=rescale))
        elif op in ("Relu", "Clip"):
            x = spec["x"]
            m, s = quantize_multiplier(x.scale / scale)
            self.tensors[out] = ir.QTensor(out, x.shape, scale, zp)
            self.ops.append(ir.Requantize(**common, inputs=[x.name], **clamp, multiplier=m, shift=s))
        else:  # pragma: no cover - start() admits only the operators above
            raise self.fail(node, f"operator {op} is not supported by the C generator")


def _fuse_clamps(graph: ir.Graph) -> None:
    """Fold a Relu/Clip :class:`ir.Requantize` with unchanged scale into the operator before it."""
    fusable = (ir.Conv, ir.FullyConnected, ir.Add, ir.AvgPool, ir.MaxPool, ir.Concat)
    changed = True
    while changed:
        changed = False
        for i, op in enumerate(graph.ops):
            if not isinstance(op, ir.Requantize) or op.onnx_op not in ("Relu", "Clip"):
                continue
            src, dst = graph.tensors[op.inputs[0]], graph.tensors[op.output]
            prod = next((p for p in graph.ops if p.output == src.name), None)
            if (
                prod is None
                or not isinstance(prod, fusable)
                or (src.scale, src.zero_point) != (dst.scale, dst.zero_point)
                or len(graph.consumers(src.name)) != 1
                or src.name == graph.output
            ):
                continue
            prod.act_min, prod.act_max = max(prod.act_min, op.act_min), min(prod.act_max, op.act_max)
            prod.output = dst.name
            del graph.tensors[src.name]
            del graph.ops[i]
            changed = True
            break


def _check_accumulators(graph: ir.Graph) -> None:
    import numpy as np

    for op in graph.ops:
        if isinstance(op, (ir.Conv, ir.FullyConnected)):
            k = int(np.prod(op.weight.shape[1:]))
            bound = k * 128 * 255 + int(np.max(np.abs(op.bias.astype(np.int64)), initial=0))
            if bound > _ACC_LIMIT:
                raise TinymlError(
                    f"node {op.name!r} ({op.onnx_op}): {k} products per output could overflow the int32 accumulator",
                    hint="split the layer; the C kernels accumulate in int32",
                )


def parse_model(model: onnx.ModelProto, *, source: str = "model.onnx") -> ir.Graph:
    """The integer IR of a static-int8 QDQ ``model``; raises :class:`TinymlError` for what it cannot run."""
    return _Parser(model, source).run()
