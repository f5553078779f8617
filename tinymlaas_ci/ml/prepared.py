"""The dataset as the model sees it: label order, preprocessing, and fail-fast checks.

:func:`prepare_data` decides, right after the model is loaded and before anything slow:

* the label order (the model's output order): ``dataset.labels`` (applied by fetch), else the
  model's own metadata (``id2label``, a Learner's vocab), else the dataset's class names; class
  names that are not integers and come from nothing but sorted folder names get a loud warning;
* the preprocessing plan (:mod:`.preprocess`) and the input layout (NCHW or NHWC);
* that one preprocessed sample fits the model's input, naming both shapes and the fix.

:func:`preflight` then runs a first batch: the output width must match the labels and every
output must be finite. :class:`PreparedData` hands calibration, fine-tuning and the install
stage exactly the same preprocessed samples and remapped labels.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinymlaas_ci.errors import TinymlError
from tinymlaas_ci.ml.datasets import SPLITS, SplitReader, label_mapping, load_npz_meta
from tinymlaas_ci.ml.preprocess import apply_preprocess, detect_layout, resolve_preprocess

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = ["ASSUMED_ORDER_WARNING", "PreparedData", "preflight", "prepare_data"]

log = logging.getLogger(__name__)

ASSUMED_ORDER_WARNING = (
    "WARNING: the label order is ASSUMED to be the sorted class-folder names {names}: nothing "
    "else says which model output is which class. If the model was trained with another order, "
    "accuracy is wrong. Set dataset.labels to the model's output order to make this explicit."
)


@dataclass
class PreparedData:
    """A ``dataset.npz`` with the label order and preprocessing decided."""

    npz: Path
    plan: dict[str, Any]
    """The resolved preprocessing (see :func:`tinymlaas_ci.ml.preprocess.resolve_preprocess`)."""
    labels: list[str]
    """Label names by model output index."""
    label_source: str
    """Where the label order came from."""
    label_map: list[int] | None = None
    """Dataset class index -> model output index (``None``: the same)."""
    dataset_labels: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def x(self, split: str) -> SplitReader:
        """The split's samples, preprocessed slice by slice as they are read."""
        return SplitReader(self.npz, f"x_{split}", transform=self.transform)

    def transform(self, raw: np.ndarray) -> np.ndarray:
        return apply_preprocess(raw, self.plan)

    def first_batch(self, n: int) -> tuple[np.ndarray, str]:
        """Up to ``n`` preprocessed samples for a pre-flight check, and the split they come from:
        the first split that has any (the test split last), else one all-zero sample of the
        stored sample shape (``"zero"``) — the compile stage's copy of the dataset has no
        evaluation samples, and may have no others."""
        import numpy as np

        split = next((s for s in ("val", "train", "test") if self.sizes.get(s)), None)
        if split is not None:
            return self.x(split)[0 : min(n, self.sizes[split])], split
        reader = SplitReader(self.npz, f"x_{_stored_split(self.npz)}")
        return self.transform(np.zeros((1, *reader.sample_shape), dtype=reader.dtype)), "zero"

    def y(self, split: str) -> np.ndarray:
        """The split's labels as model output indices."""
        import numpy as np

        y = SplitReader(self.npz, f"y_{split}").materialize().astype(np.int64)
        if self.label_map is not None and len(y):
            y = np.asarray(self.label_map, dtype=np.int64)[y]
        return y

    def arrays(self, splits: Sequence[str] = SPLITS, *, limit: dict[str, int] | None = None, seed: int = 0):
        """``x_<split>``/``y_<split>`` arrays, preprocessed; ``limit`` caps a split to a seeded
        random subset (calibration needs only a few hundred samples)."""
        import numpy as np

        out: dict[str, Any] = {"labels": list(self.labels)}
        for s in splits:
            reader, y = self.x(s), self.y(s)
            n = (limit or {}).get(s)
            if n is not None and n < len(reader):
                idx = np.sort(np.random.default_rng(seed).permutation(len(reader))[:n])
                out[f"x_{s}"], out[f"y_{s}"] = reader.take(idx).materialize(), y[idx]
            else:
                out[f"x_{s}"], out[f"y_{s}"] = reader.materialize(), y
        return out

    def record(self) -> dict[str, Any]:
        """What the result records: plan, labels and where they came from."""
        return {
            "preprocess": {k: v for k, v in self.plan.items()},
            "labels": list(self.labels),
            "label_source": self.label_source,
            "label_map": list(self.label_map) if self.label_map is not None else None,
            "input_layout": self.plan.get("layout", "nchw"),
        }


def prepare_data(
    npz: str | os.PathLike,
    *,
    meta: Any | None,
    spec_preprocess: Any | None,
    model_shape: Sequence[int] | None,
    declared_layout: Any | None = None,
    log_fn: Callable[[str], None] = lambda _m: None,
) -> tuple[PreparedData, tuple[int, ...]]:
    """Decide labels and preprocessing for the dataset at ``npz``; returns it with the input shape.

    Raises :class:`TinymlError` when a preprocessed sample cannot fit ``model_shape``.
    """
    import numpy as np

    npz = Path(npz)
    info = load_npz_meta(npz)
    names, source = info["labels"], info["label_source"] or "index"
    sizes = info["sizes"]
    labels, label_map, label_source = list(names), None, source
    warnings: list[str] = []
    model_labels = getattr(meta, "labels", None)
    if model_labels and source != "dataset.labels":
        mapping = label_mapping(names, model_labels)
        if mapping is None:
            raise TinymlError(
                f"the model's labels ({meta.label_source}: {list(model_labels)[:10]}) do not name the dataset's "
                f"classes {names[:10]}",
                hint="set dataset.labels to the model's output order, using the dataset's class names",
            )
        labels, label_map, label_source = list(model_labels), mapping, str(meta.label_source)
        if mapping == list(range(len(names))):
            label_map = None
    elif source.startswith(("folders (sorted", "label names (sorted")):
        warnings.append(ASSUMED_ORDER_WARNING.format(names=names[:10] + (["..."] if len(names) > 10 else [])))
    first_split = next((s for s in SPLITS if sizes.get(s)), None)
    if first_split is not None:
        raw = SplitReader(npz, f"x_{first_split}").raw(0, 1)
    else:
        # Only the evaluation split has samples, and this copy of the dataset withholds it
        # (compile's): the preprocessing is decided on a zero sample of the stored shape and dtype.
        stored = _stored_split(npz)
        if stored is None:
            raise TinymlError("the dataset holds no samples", hint="re-run the fetch stage")
        reader = SplitReader(npz, f"x_{stored}")
        raw = np.zeros((1, *reader.sample_shape), dtype=reader.dtype)
    meta_pre = dict(getattr(meta, "preprocess", None) or {})
    plan = resolve_preprocess(spec_preprocess, meta_pre, dtype=raw.dtype)
    sample = apply_preprocess(raw, plan)[0]
    shape = tuple(int(d) for d in sample.shape)
    if model_shape is None:
        model_shape = getattr(meta, "input_shape", None)
    if model_shape is not None:
        model_shape = tuple(int(d) for d in model_shape)
        layout = detect_layout(model_shape, shape, declared_layout)
        if layout == "nhwc" and len(shape) == 3:
            shape = (shape[1], shape[2], shape[0])
        if shape != model_shape:
            if int(np.prod(shape)) == int(np.prod(model_shape)) and (len(shape) == 1 or len(model_shape) == 1):
                plan["reshape"] = list(model_shape)
                shape = model_shape
            else:
                raise TinymlError(
                    f"the dataset's samples have shape {list(shape)} after preprocessing, but the model takes "
                    f"{list(model_shape)}",
                    hint=_shape_hint(shape, model_shape),
                )
        plan["layout"] = layout
    else:
        plan["layout"] = str(getattr(declared_layout, "value", declared_layout) or "nchw")
    prepared = PreparedData(
        npz=npz,
        plan=plan,
        labels=labels,
        label_source=label_source,
        label_map=label_map,
        dataset_labels=list(names),
        sizes=sizes,
        warnings=warnings,
    )
    for w in warnings:
        log_fn(w)
        log.warning(w)
    log_fn(
        f"labels ({label_source}): {labels[:10]}{' ...' if len(labels) > 10 else ''}; preprocessing "
        + ", ".join(f"{k}={plan[k]}" for k in ("channels", "resize", "scale", "mean", "std", "layout") if plan.get(k))
    )
    return prepared, shape


def _stored_split(npz: Path) -> str | None:
    # The first split whose samples array is stored (with or without rows).
    import zipfile

    with zipfile.ZipFile(npz) as zf:
        names = set(zf.namelist())
    return next((s for s in SPLITS if f"x_{s}.npy" in names), None)


def _shape_hint(shape: tuple[int, ...], model_shape: tuple[int, ...]) -> str:
    if len(shape) == 3 and len(model_shape) == 3:
        c, h, w = shape
        channels = {model_shape[0], model_shape[2]} & {1, 3}
        hints = []
        if (h, w) != tuple(model_shape[1:]) and (h, w) != tuple(model_shape[:2]):
            size = list(model_shape[1:]) if model_shape[0] in (1, 3) else list(model_shape[:2])
            hints.append(f"set dataset.preprocess.resize: {size}")
        if c not in channels and channels:
            hints.append(f"set dataset.preprocess.channels: {sorted(channels)[0]}")
        if model_shape[-1] in (1, 3) and model_shape[0] not in (1, 3):
            hints.append("set model.input_layout: nhwc")
        if hints:
            return "; ".join(hints)
    return "check model.input_shape, or convert the dataset to the model's input shape (dataset.preprocess)"


def preflight(run: Callable[[np.ndarray], np.ndarray], prepared: PreparedData, *, batch: int = 8) -> dict[str, Any]:
    """Run a first batch: the output width must match the labels, every output be finite."""
    import numpy as np

    x, split = prepared.first_batch(batch)
    try:
        out = np.asarray(run(x))
    except TinymlError:
        raise
    except Exception as exc:
        raise TinymlError(
            f"the model fails on a first batch of shape {list(x.shape)}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}",
            hint="check model.input_shape and dataset.preprocess against what the model expects",
        ) from exc
    if out.ndim != 2:
        raise TinymlError(
            f"the model returns shape {list(out.shape)} for a batch of {len(x)}; classification needs [batch, classes]",
            hint="export a model whose output is one logit per class",
        )
    width = int(out.shape[1])
    n = len(prepared.labels)
    if width != n:
        if all(label.isdigit() for label in prepared.labels) and width > n and prepared.label_map is None:
            prepared.labels = [str(i) for i in range(width)]
        else:
            raise TinymlError(
                f"the model has {width} outputs, but there are {n} labels ({prepared.label_source}: "
                f"{prepared.labels[:10]})",
                hint="the last layer needs one output per class: set dataset.labels to the model's "
                f"{width} classes in output order, or use a dataset with the model's classes",
            )
    if not np.isfinite(out).all():
        bad = int((~np.isfinite(out)).any(axis=1).sum())
        raise TinymlError(
            f"the model gives NaN or Inf outputs for {bad} of the first {len(x)} {split} samples",
            hint="check the preprocessing (dataset.preprocess scale/mean/std) and the weights; a model "
            "with non-finite outputs cannot be scored",
        )
    return {"outputs": width, "checked_samples": len(x), "split": split}
