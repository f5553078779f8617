"""Preprocessing: how a dataset's raw samples become model inputs.

The dataset file keeps samples raw (8-bit images as ``uint8`` ``N,C,H,W``), and one resolved
plan (a plain dict, :func:`resolve_preprocess`) says what to do with them, in this order:

1. ``channels``: 1 -> 3 repeats the grey channel; 3 -> 1 takes ITU-R 601 luma;
2. ``resize``: bilinear to ``[H, W]`` (half-pixel centres, like ``F.interpolate(align_corners=False)``);
3. ``scale``: multiply (default ``1/255`` for ``uint8``, ``1/65535`` for ``uint16``, else ``1``);
4. ``mean``/``std``: ``(x - mean) / std`` per channel;
5. ``layout``: ``nhwc`` moves channels last for Keras/TF-style models;
6. ``reshape``: flat samples (CSV rows, ``.bin`` tensors) take the model's input shape.

:func:`apply_preprocess` is the only implementation used by calibration, fine-tuning and
inference; the exported bundle's standalone ``infer.py`` carries a numpy-only copy that a test
keeps identical. The plan is recorded in the result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tinymlaas_ci.errors import TinymlError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = ["apply_preprocess", "default_scale", "detect_layout", "resize_bilinear", "resolve_preprocess"]

_LUMA = (0.299, 0.587, 0.114)


def default_scale(dtype: Any) -> float:
    """The ``scale`` used when neither the spec nor the model says: by the stored sample type."""
    import numpy as np

    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return 1.0 / 255.0
    if dtype == np.uint16:
        return 1.0 / 65535.0
    return 1.0


def resolve_preprocess(
    spec: Any | None,
    model_meta: Mapping[str, Any] | None,
    *,
    dtype: Any,
    layout: str = "nchw",
) -> dict[str, Any]:
    """The plan: each field from the run spec (``dataset.preprocess``), else the model's
    metadata (``mean``, ``std``, ``resize``, ``channels`` published with it), else the default.

    ``source`` says where each field came from (``spec``, ``model`` or ``default``).
    """
    spec_d = {}
    if spec is not None:
        spec_d = spec.model_dump() if hasattr(spec, "model_dump") else dict(spec)
    meta = dict(model_meta or {})
    plan: dict[str, Any] = {}
    source: dict[str, str] = {}
    for key in ("channels", "resize", "scale", "mean", "std"):
        if spec_d.get(key) is not None:
            plan[key], source[key] = spec_d[key], "spec"
        elif meta.get(key) is not None:
            plan[key], source[key] = meta[key], "model"
        else:
            plan[key], source[key] = None, "default"
    if plan["scale"] is None:
        plan["scale"] = default_scale(dtype)
    if (plan["mean"] is None) != (plan["std"] is None):
        # One without the other is a half-specified normalisation: complete it neutrally.
        if plan["mean"] is None:
            plan["mean"] = [0.0] * len(plan["std"])
        else:
            plan["std"] = [1.0] * len(plan["mean"])
    plan["scale"] = float(plan["scale"])
    for key in ("mean", "std"):
        if plan[key] is not None:
            plan[key] = [float(v) for v in plan[key]]
    if plan["resize"] is not None:
        plan["resize"] = [int(v) for v in plan["resize"]]
    if plan["channels"] is not None:
        plan["channels"] = int(plan["channels"])
    plan["layout"] = layout
    plan["source"] = source
    return plan


def resize_bilinear(x: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Bilinear resize of ``N,C,H,W`` float32 to ``size`` (half-pixel centres, no antialiasing)."""
    import numpy as np

    out_h, out_w = int(size[0]), int(size[1])
    in_h, in_w = x.shape[-2], x.shape[-1]
    if (in_h, in_w) == (out_h, out_w):
        return x

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        pos = np.clip(pos, 0, n_in - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (pos - lo).astype(np.float32)

    y0, y1, wy = axis(in_h, out_h)
    x0, x1, wx = axis(in_w, out_w)
    rows = x[..., y0, :] * (1 - wy)[:, None] + x[..., y1, :] * wy[:, None]
    return np.ascontiguousarray(rows[..., x0] * (1 - wx) + rows[..., x1] * wx, dtype=np.float32)


def apply_preprocess(x: np.ndarray, plan: Mapping[str, Any] | None) -> np.ndarray:
    """Raw samples (a batch, ``N,...``) -> float32 model inputs, following ``plan``."""
    import numpy as np

    plan = plan or {}
    dtype = x.dtype
    out = np.asarray(x, dtype=np.float32)
    image = out.ndim == 4
    channels = plan.get("channels")
    if channels and image and out.shape[1] != channels:
        if channels == 3 and out.shape[1] == 1:
            out = np.repeat(out, 3, axis=1)
        elif channels == 1 and out.shape[1] in (3, 4):
            luma = np.asarray(_LUMA, dtype=np.float32)[None, :, None, None]
            out = (out[:, :3] * luma).sum(axis=1, keepdims=True, dtype=np.float32)
        else:
            raise TinymlError(
                f"cannot convert samples with {out.shape[1]} channels to {channels}",
                hint="dataset.preprocess.channels converts between 1 (grey) and 3 (RGB) channels",
            )
    elif channels == 3 and image and out.shape[1] == 4:
        out = out[:, :3]
    resize = plan.get("resize")
    if resize and image:
        out = resize_bilinear(out, resize)
    scale = plan.get("scale")
    if scale is None:
        scale = default_scale(dtype)
    if scale != 1.0:
        out = out * np.float32(scale)
    mean, std = plan.get("mean"), plan.get("std")
    if mean is not None and std is not None:
        shape = (1, -1) + (1,) * (out.ndim - 2) if out.ndim >= 2 else (-1,)
        m = np.asarray(mean, dtype=np.float32)
        s = np.asarray(std, dtype=np.float32)
        if m.size > 1 and out.ndim >= 2 and out.shape[1] != m.size:
            raise TinymlError(
                f"dataset.preprocess.mean has {m.size} values but the samples have {out.shape[1]} channels",
                hint="give one mean and std per channel (or one value for all), or set dataset.preprocess.channels",
            )
        if m.size > 1:
            m, s = m.reshape(shape), s.reshape(shape)
        out = (out - m) / s
    if plan.get("layout") == "nhwc" and image:
        out = out.transpose(0, 2, 3, 1)
    if plan.get("reshape"):
        out = out.reshape((len(out), *plan["reshape"]))
    return np.ascontiguousarray(out, dtype=np.float32)


def detect_layout(model_shape: Sequence[int] | None, sample_shape: Sequence[int], declared: str | None) -> str:
    """``nhwc`` when the model wants channels last: its input is the (preprocessed) sample shape
    ``C,H,W`` as ``H,W,C``; ``declared`` (``model.input_layout``) wins."""
    if declared:
        return str(getattr(declared, "value", declared))
    if model_shape is None or len(sample_shape) != 3:
        return "nchw"
    c, h, w = (int(d) for d in sample_shape)
    if tuple(model_shape) == (c, h, w):
        return "nchw"
    if tuple(model_shape) == (h, w, c):
        return "nhwc"
    return "nchw"
