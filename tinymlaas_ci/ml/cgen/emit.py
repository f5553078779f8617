"""Write ``model.h``, ``model.c`` and ``kernels.h`` for an integer IR graph.

``model.h`` is the fixed interface a firmware or host program compiles against::

    #define TINYML_INPUT_SIZE  <int8 elements in one input sample>
    #define TINYML_OUTPUT_SIZE <int8 elements in one output>
    #define TINYML_ARENA_SIZE  <bytes>
    extern const float tinyml_input_scale;  extern const int tinyml_input_zero_point;
    extern const float tinyml_output_scale; extern const int tinyml_output_zero_point;
    extern const unsigned long tinyml_macs;
    extern const unsigned long tinyml_weights_bytes;
    int tinyml_model_run(const int8_t *input, int8_t *output);   /* 0 on success */

plus ``tinyml_kernel_path`` (which kernel path the build selected: ``portable``, ``dsp``,
``mve``, ``avx512vnni`` or ``avx2``). ``model.c`` holds every weight, bias and requantization
constant as a ``static const`` array (flash on a microcontroller; the extra arrays of the AVX-512
path sit behind ``#if`` and never reach an Arm build, and a convolution's weights are emitted
twice behind ``#if``: row pairs interleaved for the Arm DSP path, plain rows for the others, so
each build holds one copy; a depthwise convolution's likewise, in groups of four channels for
the DSP path), one static arena laid out by
:mod:`tinymlaas_ci.ml.cgen.arena`, and ``tinyml_model_run``: one kernel call per operator, plus a
layout change where an image tensor enters or leaves channels-last storage (the model input,
the output, a Flatten/Reshape of an image). The first operator reads the caller's input buffer
when no layout change is needed, and the last one writes straight into the caller's output
buffer, so neither takes arena space.

:func:`layout` turns the IR into these calls (:class:`Step`) over physical buffers: a Reshape
between tensors stored alike is an alias (no code, no memory), and each call's scratch (the
im2col columns of a convolution, its rows of sums and its output stage's constants:
``6 * K + 20 * OC`` bytes, ``K`` rounded up to 4; see :mod:`tinymlaas_ci.ml.cgen.csource`) is a
buffer live during that call. The layer structs are compact (int16 shapes, int8 shifts), and
each carries the ``fast`` flag of the DSP path's output stage (:func:`_fast_output`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from math import prod
from typing import TYPE_CHECKING

from tinymlaas_ci.errors import TinymlError
from tinymlaas_ci.ml.cgen import ir
from tinymlaas_ci.ml.cgen.arena import Buffer, Plan, plan

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = ["Layout", "emit", "layout"]

INPUT, OUTPUT = "<input>", "<output>"


def transposed(t: ir.QTensor) -> bool:
    """Whether the channels-last storage of ``t`` differs from its NCHW order (C > 1 and H * W > 1)."""
    return len(t.shape) == 3 and t.shape[0] > 1 and t.shape[1] * t.shape[2] > 1


@dataclass
class Step:
    """One call in ``tinyml_model_run``: an IR operator or a layout change, over physical buffers."""

    kind: str  # "op", "to_hwc", "to_chw", "relayout" or "copy"
    reads: list[str]
    writes: str
    op: ir.Op | None = None
    tensor: ir.QTensor | None = None
    target: ir.QTensor | None = None
    scratch: int = 0


@dataclass(frozen=True)
class Layout:
    """Where every tensor lives (a physical buffer), the calls in order, and the arena plan."""

    buffer: dict[str, str]
    steps: list[Step]
    buffers: list[Buffer]
    plan: Plan


def layout(graph: ir.Graph) -> Layout:
    """The calls of ``tinyml_model_run`` and the arena plan over their buffers and scratch.

    Image tensors are stored channels-last; the input is transposed in from NCHW and the output
    back out when their two orders differ. A Reshape between tensors stored the same way is an
    alias; otherwise it becomes a layout change. The last operator writes into the caller's
    output buffer directly when it can.
    """
    sizes: dict[str, int] = {}
    buf: dict[str, str] = {}
    steps: list[Step] = []
    tin = graph.tensors[graph.input]
    if transposed(tin):
        buf[graph.input] = "input.hwc"
        sizes["input.hwc"] = tin.size
        steps.append(Step("to_hwc", [INPUT], "input.hwc", tensor=tin))
    else:
        buf[graph.input] = INPUT
    for op in graph.ops:
        x, y = graph.tensors[op.inputs[0]], graph.tensors[op.output]
        if isinstance(op, ir.Reshape) and not transposed(x) and not transposed(y):
            buf[op.output] = buf[op.inputs[0]]
            continue
        buf[op.output] = op.output
        sizes[op.output] = y.size
        if isinstance(op, ir.Reshape):
            scratch = x.size if transposed(x) and transposed(y) else 0
            steps.append(Step("relayout", [buf[x.name]], op.output, op=op, tensor=x, target=y, scratch=scratch))
        else:
            steps.append(Step("op", [buf[n] for n in op.inputs], op.output, op=op, scratch=_scratch_bytes(op)))
    tout = graph.tensors[graph.output]
    last = buf[graph.output]
    if transposed(tout):
        steps.append(Step("to_chw", [last], OUTPUT, tensor=tout))
    elif last == INPUT:
        steps.append(Step("copy", [INPUT], OUTPUT, tensor=tout))
    else:
        for step in steps:
            step.reads = [OUTPUT if r == last else r for r in step.reads]
            if step.writes == last:
                step.writes = OUTPUT
        buf = {k: (OUTPUT if v == last else v) for k, v in buf.items()}
    first: dict[str, int] = {}
    end: dict[str, int] = {}
    for i, step in enumerate(steps):
        first.setdefault(step.writes, i)
        end[step.writes] = max(end.get(step.writes, i), i)
        for r in step.reads:
            end[r] = max(end.get(r, i), i)
    buffers = [Buffer(b, sizes[b], first[b], end[b]) for b in first if b not in (INPUT, OUTPUT)]
    buffers += [Buffer(f"scratch{i}", st.scratch, i, i) for i, st in enumerate(steps) if st.scratch]
    return Layout(buf, steps, buffers, plan(buffers))


def _scratch_bytes(op: ir.Op) -> int:
    # The Arm DSP path's output stage keeps 12 bytes of constants per output channel.
    if isinstance(op, ir.Conv) and op.depthwise:
        # A pixel's int32 sums (the MVE path writes whole blocks of 16) and the constants.
        return 16 * op.weight.shape[0] + 64
    if isinstance(op, ir.Conv):
        # The DSP path's two int8 im2col columns, their int16 widening, two rows of int32 sums and
        # the constants; the others use the first K4 bytes.
        return 6 * ((int(prod(op.weight.shape[1:])) + 3) // 4 * 4) + 20 * op.weight.shape[0]
    if isinstance(op, ir.FullyConnected):
        return 12 * op.weight.shape[0]
    return 0


def _ident(text: str) -> str:
    return re.sub(r"\*/", "* /", text)


def _array(ctype: str, name: str, values: np.ndarray) -> str:
    flat = [str(int(v)) for v in values.reshape(-1).tolist()]
    lines = [", ".join(flat[i : i + 24]) for i in range(0, len(flat), 24)]
    body = ",\n    ".join(lines)
    return f"static const {ctype} {name}[{len(flat)}] = {{\n    {body}\n}};\n"


def _float(v: float) -> str:
    return f"{float(v):.9g}f"


def _model_h(graph: ir.Graph, lay: Layout) -> str:
    tin, tout = graph.tensors[graph.input], graph.tensors[graph.output]
    return f"""/* Generated by TinyMLaaS-CI from {_ident(graph.meta.get("source", "model.onnx"))}. Do not edit. */
#ifndef TINYML_MODEL_H
#define TINYML_MODEL_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {{
#endif

#define TINYML_INPUT_SIZE  {tin.size} /* int8 elements in one input sample, shape {list(tin.shape)} */
#define TINYML_OUTPUT_SIZE {tout.size} /* int8 elements in one output, shape {list(tout.shape)} */
#define TINYML_ARENA_SIZE  {lay.plan.size} /* bytes of the static tensor arena */

extern const float tinyml_input_scale;
extern const int tinyml_input_zero_point;
extern const float tinyml_output_scale;
extern const int tinyml_output_zero_point;
extern const unsigned long tinyml_macs;         /* multiply-accumulates per inference */
extern const unsigned long tinyml_weights_bytes; /* int8 weights + int32 biases */
extern const char tinyml_kernel_path[];         /* "portable", "dsp", "mve" or "avx2" */

/* Run one inference: input is the quantized sample (NCHW), output the quantized logits. */
int tinyml_model_run(const int8_t *input, int8_t *output);

#ifdef __cplusplus
}}
#endif

#endif /* TINYML_MODEL_H */
"""


def _effective_bias(op: ir.Conv | ir.FullyConnected, in_zp: int) -> np.ndarray:
    import numpy as np

    rows = op.weight.reshape(op.weight.shape[0], -1).astype(np.int64).sum(axis=1)
    bias = op.bias.astype(np.int64) - in_zp * rows
    if np.any(np.abs(bias) >= 1 << 31):
        raise TinymlError(
            f"node {op.name!r} ({op.onnx_op}): the zero-point-corrected bias overflows int32",
            hint="re-quantize the model; its bias or input zero point is out of the usual range",
        )
    return bias


def _wsum(tag: str, op: ir.Conv | ir.FullyConnected) -> str:
    import numpy as np

    rows = 128 * op.weight.reshape(op.weight.shape[0], -1).astype(np.int64).sum(axis=1)
    return "#if defined(TINYML_USE_VNNI)\n" + _array("int32_t", f"{tag}_ws", rows) + "#endif\n"


def _shifts(op: ir.Conv | ir.FullyConnected) -> np.ndarray:
    """The shifts as int8; a zero multiplier's (its outputs are the zero point) as -1, as
    the fast output stage expects."""
    import numpy as np

    return np.where(op.multiplier == 0, -1, op.shift)


def _fast_output(op: ir.Conv | ir.FullyConnected) -> bool:
    """Whether the Arm DSP path's fast output stage is exact for this layer (``tinyml_oq_t.fast``):
    multipliers 0 or normalized, shifts in [-21, -1]."""
    import numpy as np

    m, s = op.multiplier.astype(np.int64), _shifts(op)
    return bool(np.all((m == 0) | (m >= 1 << 30)) and np.all((s >= -21) & (s <= -1)))


def _conv_weights(op: ir.Conv) -> np.ndarray:
    """``[OC][KH][KW][IC/groups]``: the im2col order of channels-last input."""
    return op.weight.transpose(0, 2, 3, 1)


def _dsp_pairs(w: np.ndarray, groups: int) -> np.ndarray:
    """Rows ``[OC][K]`` in the Arm DSP path's order: in each group, row pairs interleaved.

    A pair ``(o, o + 1)`` takes its ``2 K`` bytes (where the two rows were) as one 4-byte word
    of each row per 4 values, then the last ``K % 4`` values of each row; an odd last row of a
    group stays as it is. One pointer then streams both rows of a pair.
    """
    import numpy as np

    oc, k = w.shape
    ocg, k4 = oc // groups, k // 4 * 4
    out = w.copy()
    for g in range(groups):
        for o in range(g * ocg, (g + 1) * ocg - 1, 2):
            pair = w[o : o + 2]
            words = pair[:, :k4].reshape(2, k4 // 4, 4).transpose(1, 0, 2).reshape(-1)
            out[o : o + 2] = np.concatenate([words, pair[:, k4:].reshape(-1)]).reshape(2, k)
    return out


def _conv_weight_arrays(tag: str, op: ir.Conv) -> str:
    if op.depthwise:
        # [KH][KW][OC]: the channels of one tap contiguous, as the depthwise kernel reads them.
        w = op.weight[:, 0].transpose(1, 2, 0)
        oc, kh, kw = op.weight.shape[0], op.weight.shape[2], op.weight.shape[3]
        if oc % 4 or oc != op.in_shape[0]:
            return _array("int8_t", f"{tag}_w", w)
        # The Arm DSP path takes four channels at a time: [OC / 4][KH][KW][4].
        groups = w.reshape(kh, kw, oc // 4, 4).transpose(2, 0, 1, 3)
        return (
            "#if defined(TINYML_USE_DSP)\n"
            + _array("int8_t", f"{tag}_w", groups)
            + "#else\n"
            + _array("int8_t", f"{tag}_w", w)
            + "#endif\n"
        )
    w = _conv_weights(op)
    rows = w.reshape(w.shape[0], -1)
    return (
        "#if defined(TINYML_USE_DSP)\n"
        + _array("int8_t", f"{tag}_w", _dsp_pairs(rows, op.groups))
        + "#else\n"
        + _array("int8_t", f"{tag}_w", rows)
        + "#endif\n"
    )


def _op_code(op: ir.Op, tag: str, graph: ir.Graph, ptr, scratch: str | None) -> tuple[str, str]:
    """Declarations and the call for one IR operator."""
    x = graph.tensors[op.inputs[0]]
    y = graph.tensors[op.output]
    decls = [f"/* {tag}: {op.onnx_op} {_ident(op.name)} -> {list(y.shape)} */\n"]
    clamp = f"{op.act_min}, {op.act_max}"
    oq = ""
    if isinstance(op, (ir.Conv, ir.FullyConnected)):
        oq = f"{{{tag}_m, {tag}_s, {y.zero_point}, {clamp}, {int(_fast_output(op))}}}"
    if isinstance(op, ir.Conv):
        decls.append(_conv_weight_arrays(tag, op))
        # Depthwise kernels subtract the input zero point themselves (padding then adds nothing).
        bias = op.bias if op.depthwise else _effective_bias(op, x.zero_point)
        decls.append(_array("int32_t", f"{tag}_b", bias))
        if not op.depthwise:
            decls.append(_wsum(tag, op))
            decls.append(_vnni_weights(tag, op))
        decls.append(_array("int32_t", f"{tag}_m", op.multiplier))
        decls.append(_array("int8_t", f"{tag}_s", _shifts(op)))
        c, h, w = op.in_shape
        oc, oh, ow = op.out_shape
        _, _, kh, kw = op.weight.shape
        geometry = [c, h, w, oc, oh, ow, kh, kw, *op.stride, op.pads[0], op.pads[1], op.groups, x.zero_point]
        if max(abs(v) for v in geometry) > 32767:
            raise TinymlError(
                f"node {op.name!r} ({op.onnx_op}): a dimension above 32767 does not fit the C kernels",
                hint="split the layer or use a smaller input",
            )
        vnni = "0, 0" if op.depthwise else f"{tag}_ws, {tag}_wq"
        decls.append(
            f"static const tinyml_conv_t {tag} = {{{oq}, {tag}_w, {tag}_b, "
            f"{', '.join(str(v) for v in geometry)} TINYML_VNNI_FIELDS({vnni})}};\n\n"
        )
        if op.depthwise:
            call = f"    tinyml_depthwise_s8(&{tag}, {ptr(0)}, {ptr(-1)}, {scratch});"
        else:
            call = f"    tinyml_conv_s8(&{tag}, {ptr(0)}, {ptr(-1)}, {scratch});"
    elif isinstance(op, ir.FullyConnected):
        decls.append(_array("int8_t", f"{tag}_w", op.weight))
        decls.append(_array("int32_t", f"{tag}_b", _effective_bias(op, x.zero_point)))
        decls.append(_wsum(tag, op))
        decls.append(_array("int32_t", f"{tag}_m", op.multiplier))
        decls.append(_array("int8_t", f"{tag}_s", _shifts(op)))
        n_out, n_in = op.weight.shape
        decls.append(
            f"static const tinyml_fc_t {tag} = {{{oq}, {tag}_w, {tag}_b, {n_in}, {n_out} "
            f"TINYML_VNNI_FIELDS({tag}_ws)}};\n\n"
        )
        call = f"    tinyml_fc_s8(&{tag}, {ptr(0)}, {ptr(-1)}, {scratch});"
    elif isinstance(op, ir.Add):
        b = graph.tensors[op.inputs[1]]
        decls.append(
            f"static const tinyml_add_t {tag} = {{{y.size}, {x.zero_point}, {b.zero_point}, {y.zero_point}, "
            f"{op.left_shift}, {clamp}, {op.in_multiplier[0]}, {op.in_shift[0]}, {op.in_multiplier[1]}, "
            f"{op.in_shift[1]}, {op.out_multiplier}, {op.out_shift}}};\n\n"
        )
        call = f"    tinyml_add_s8(&{tag}, {ptr(0)}, {ptr(1)}, {ptr(-1)});"
    elif isinstance(op, (ir.MaxPool, ir.AvgPool)):
        include = 0
        if isinstance(op, ir.AvgPool):
            decls.append(_array("int32_t", f"{tag}_m", op.multiplier))
            decls.append(_array("int32_t", f"{tag}_s", op.shift))
            rescale, tables, fn = 0, f"{tag}_m, {tag}_s", "tinyml_avgpool_s8"
            include = int(op.count_include_pad)
        else:
            fn = "tinyml_maxpool_s8"
            if op.rescale is None:
                rescale, tables = 0, "0, 0"
            else:
                decls.append(f"static const int32_t {tag}_m[1] = {{{op.rescale[0]}}};\n")
                decls.append(f"static const int32_t {tag}_s[1] = {{{op.rescale[1]}}};\n")
                rescale, tables = 1, f"{tag}_m, {tag}_s"
        c, h, w = op.in_shape
        _, oh, ow = op.out_shape
        decls.append(
            f"static const tinyml_pool_t {tag} = {{{c}, {h}, {w}, {oh}, {ow}, {op.kernel[0]}, {op.kernel[1]}, "
            f"{op.stride[0]}, {op.stride[1]}, {op.pads[0]}, {op.pads[1]}, {x.zero_point}, {y.zero_point}, "
            f"{clamp}, {include}, {rescale}, {tables}}};\n\n"
        )
        call = f"    {fn}(&{tag}, {ptr(0)}, {ptr(-1)});"
    elif isinstance(op, ir.Requantize):
        call = (
            f"    tinyml_requantize_s8({y.size}, {ptr(0)}, {ptr(-1)}, {x.zero_point}, {y.zero_point}, "
            f"{op.multiplier}, {op.shift}, {clamp});"
        )
    elif isinstance(op, ir.Concat):
        # Positions in storage order: channels-last (H, W, C) for images.
        def phys(shape: tuple[int, ...]) -> tuple[int, ...]:
            return (shape[1], shape[2], shape[0]) if len(shape) == 3 else shape

        axis = {0: 2, 1: 0, 2: 1}[op.axis] if len(y.shape) == 3 else op.axis
        outer = int(prod(phys(y.shape)[:axis]))
        total = int(prod(phys(y.shape)[axis:]))
        lines = [f"    for (o = 0; o < {outer}; o++) {{ /* {tag}: Concat {_ident(op.name)} */"]
        offset = 0
        for j, (name, rescale) in enumerate(zip(op.inputs, op.rescale, strict=True)):
            t = graph.tensors[name]
            inner = int(prod(phys(t.shape)[axis:]))
            src, dst = f"{ptr(j)} + o * {inner}", f"{ptr(-1)} + o * {total} + {offset}"
            if rescale is None:
                lines.append(f"        tinyml_clamp_copy_s8({inner}, {src}, {dst}, {clamp});")
            else:
                lines.append(
                    f"        tinyml_requantize_s8({inner}, {src}, {dst}, {t.zero_point}, {y.zero_point}, "
                    f"{rescale[0]}, {rescale[1]}, {clamp});"
                )
            offset += inner
        lines.append("    }")
        call = "\n".join(lines)
    else:  # pragma: no cover - every IR operator is handled above
        raise TypeError(type(op).__name__)
    return "".join(decls), call


def _vnni_stride(op: ir.Conv) -> int:
    """The channel stride of the VNNI kernel's padded input, as ``tinyml_vnni_stride`` computes it:
    3 or more input channels, not a multiple of 4, without groups, are padded to a multiple of 4."""
    c = op.in_shape[0]
    return (c + 3) // 4 * 4 if op.groups == 1 and c % 4 and c >= 3 else c


def _vnni_weights(tag: str, op: ir.Conv) -> str:
    """The weights interleaved for the AVX-512 VNNI convolution, as ``tinyml_conv_vnni`` reads them.

    Per group, the column of ``K`` bytes (zero weights for padded input channels, see
    :func:`_vnni_stride`) in 4-byte words, each word as ``[OCg rounded up to 16][4]``. A group of
    at most 16 channels whose column segments (kernel rows when the kernel reads them in place,
    else the whole column) are an even number of words takes its words in pairs
    (``tinyml_vnni_tile_pairs``): a pair is laid out as channels 0-7 then 8-15, each channel's
    two words side by side.
    """
    import numpy as np

    groups = op.groups
    w = _conv_weights(op)  # OC, KH, KW, IC/G
    _, kh, kw, icg = w.shape
    cs = _vnni_stride(op) if groups == 1 else icg
    w = np.pad(w, ((0, 0), (0, 0), (0, 0), (0, cs - icg)))
    ocg = op.weight.shape[0] // groups
    ocp = (ocg + 15) // 16 * 16
    direct = groups == 1 and kw * cs % 4 == 0
    # Segments of the column: kernel rows read in place, or the whole column.
    segments = w.reshape(groups, ocg, kh, kw * cs) if direct else w.reshape(groups, ocg, 1, -1)
    words = -(-segments.shape[3] // 4)
    padded = np.zeros((groups, ocp, segments.shape[2], words * 4), np.int8)
    padded[:, :ocg, :, : segments.shape[3]] = segments
    kq = segments.shape[2] * words
    if ocp == 16 and words % 2 == 0:
        inter = padded.reshape(groups, 2, 8, kq // 2, 2, 4).transpose(0, 3, 1, 2, 4, 5)
    else:
        inter = padded.reshape(groups, ocp, kq, 4).transpose(0, 2, 1, 3)
    return "#if defined(TINYML_USE_VNNI)\n" + _array("int8_t", f"{tag}_wq", inter) + "#endif\n"


def _model_c(graph: ir.Graph, lay: Layout) -> str:
    tin, tout = graph.tensors[graph.input], graph.tensors[graph.output]

    def where(b: str) -> str:
        if b == INPUT:
            return "input"
        if b == OUTPUT:
            return "output"
        return f"(arena + {lay.plan.offsets[b]})"

    decls: list[str] = []
    calls: list[str] = []
    for i, step in enumerate(lay.steps):
        scratch = f"(arena + {lay.plan.offsets[f'scratch{i}']})" if step.scratch else None

        def ptr(j: int, step: Step = step) -> str:
            return where(step.writes) if j == -1 else where(step.reads[j])

        if step.kind == "op":
            d, call = _op_code(step.op, f"l{i}", graph, ptr, scratch)
            decls.append(d)
            calls.append(call)
        elif step.kind in ("to_hwc", "to_chw"):
            c, h, w = step.tensor.shape
            fn = "tinyml_chw_to_hwc" if step.kind == "to_hwc" else "tinyml_hwc_to_chw"
            calls.append(f"    {fn}({c}, {h * w}, {ptr(0)}, {ptr(-1)}); /* {step.kind} {list(step.tensor.shape)} */")
        elif step.kind == "relayout":
            x, y = step.tensor, step.target
            what = f"/* {step.op.onnx_op} {_ident(step.op.name)}: {list(x.shape)} -> {list(y.shape)} */"
            if transposed(x) and transposed(y):
                c, h, w = x.shape
                c2, h2, w2 = y.shape
                calls.append(f"    tinyml_hwc_to_chw({c}, {h * w}, {ptr(0)}, {scratch}); {what}")
                calls.append(f"    tinyml_chw_to_hwc({c2}, {h2 * w2}, {scratch}, {ptr(-1)});")
            elif transposed(x):
                c, h, w = x.shape
                calls.append(f"    tinyml_hwc_to_chw({c}, {h * w}, {ptr(0)}, {ptr(-1)}); {what}")
            else:
                c2, h2, w2 = y.shape
                calls.append(f"    tinyml_chw_to_hwc({c2}, {h2 * w2}, {ptr(0)}, {ptr(-1)}); {what}")
        elif step.kind == "copy":
            calls.append(f"    memcpy(output, input, {tout.size});")
    needs_o = any(isinstance(op, ir.Concat) for op in graph.ops)
    source = _ident(graph.meta.get("source", "model.onnx"))
    head = f"""/* Generated by TinyMLaaS-CI from {source}: {len(graph.ops)} operators,
 * {graph.macs} MACs, {graph.weights_bytes} bytes of weights and biases, {lay.plan.size} bytes of arena.
 * Activations are stored channels-last; input and output are NCHW. Do not edit. */
#include "model.h"
#include "kernels.h"

const float tinyml_input_scale = {_float(tin.scale)};
const int tinyml_input_zero_point = {tin.zero_point};
const float tinyml_output_scale = {_float(tout.scale)};
const int tinyml_output_zero_point = {tout.zero_point};
const unsigned long tinyml_macs = {graph.macs}UL;
const unsigned long tinyml_weights_bytes = {graph.weights_bytes}UL;
const char tinyml_kernel_path[] = TINYML_PATH_NAME;

#if defined(__GNUC__)
#define TINYML_ALIGNED __attribute__((aligned(16)))
#else
#define TINYML_ALIGNED
#endif
static uint8_t tinyml_arena[TINYML_ARENA_SIZE > 0 ? TINYML_ARENA_SIZE : 1] TINYML_ALIGNED;

"""
    body = "\n".join(calls)
    local = "    int32_t o;\n" if needs_o else ""
    run = (
        "int tinyml_model_run(const int8_t *input, int8_t *output) {\n"
        f"    int8_t *arena = (int8_t *)tinyml_arena;\n{local}"
        "    (void)arena;\n"
        f"{body}\n"
        "    return 0;\n}\n"
    )
    return head + "".join(decls) + run


def emit(graph: ir.Graph) -> tuple[dict[str, str], Layout]:
    """The generated files by name (``model.h``, ``model.c``, ``kernels.h``) and the memory layout."""
    from tinymlaas_ci.ml.cgen.csource import KERNELS_H

    lay = layout(graph)
    return {"model.h": _model_h(graph, lay), "model.c": _model_c(graph, lay), "kernels.h": KERNELS_H}, lay
