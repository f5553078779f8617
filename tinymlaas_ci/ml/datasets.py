"""Datasets: ImageFolder trees and parquet tables, converted to one ``dataset.npz``.

Every later stage reads the same simple file: ``x_train, y_train, x_val, y_val, x_test,
y_test`` (float32 ``N,C,H,W`` or ``N,*shape``; int64 labels) and ``labels`` (str, index order).
Absent splits are empty arrays with the right trailing shape, so readers never special-case.

Layouts understood:

* **ImageFolder** ``{train,val,test}/<label>/<file>``: PNG/JPEG/BMP decoded with Pillow
  (grayscale -> ``(1,H,W)``, colour -> ``(3,H,W)``, float32 / 255) or ``.npy`` (one array per
  sample, used as-is as float32). Labels are the sorted folder names across all splits.
* **parquet** (Hugging Face style): ``data/<split>-*.parquet``, ``<split>/*.parquet``,
  ``<config>/<split>/*.parquet`` or ``<split>.parquet``, with an image column (encoded image
  bytes, a ``{"bytes": ...}`` struct, or a numeric list/array) and a label column. Label names
  come from the Hugging Face metadata in the parquet schema when present, else ``"0".."N-1"``.

A single wrapper folder around the layout (as archives often have) is tolerated. ``validation``,
``valid`` and ``dev`` are read as ``val``.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinymlaas_ci.errors import SourceError
from tinymlaas_ci.fs import atomic_write_bytes

__all__ = [
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "DatasetSummary",
    "canonical_split",
    "convert_dataset",
    "detect_format",
    "find_dataset_root",
    "load_imagefolder",
    "load_npz",
    "load_parquet",
    "write_npz",
]

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
_ALIASES = {
    "validation": "val",
    "valid": "val",
    "dev": "val",
    "testing": "test",
    "training": "train",
}
_SHARD = re.compile(r"^(?P<split>[A-Za-z]+)(?:[-_.].*)?$")


@dataclass(frozen=True)
class DatasetSummary:
    """What :func:`convert_dataset` found and wrote."""

    format: str
    """``imagefolder`` or ``parquet``."""
    splits: dict[str, int]
    """Samples per split (all of ``train``, ``val``, ``test``; 0 when absent)."""
    labels: list[str]
    """Class labels in index order."""
    sample_shape: tuple[int, ...]
    """Shape of one sample, e.g. ``(1, 8, 8)``."""
    root: str = ""
    """The folder the layout was found in, relative to the folder given."""
    ignored: list[str] = field(default_factory=list)
    """Top-level entries that are not part of the layout (README, other folders)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "splits": dict(self.splits),
            "labels": list(self.labels),
            "sample_shape": list(self.sample_shape),
            "root": self.root,
            "ignored": list(self.ignored),
        }


def canonical_split(name: str) -> str:
    """``validation``/``valid``/``dev`` -> ``val``; other names unchanged (lower-cased)."""
    low = name.lower()
    return _ALIASES.get(low, low)


def _error(message: str, where: Path | str, hint: str) -> SourceError:
    return SourceError(message, source=str(where), hint=hint)


def _visible(entries: Iterable[Path]) -> list[Path]:
    # Hidden entries are tool bookkeeping (.git, .cache of huggingface_hub, macOS's __MACOSX).
    return sorted(p for p in entries if not p.name.startswith(".") and p.name != "__MACOSX")


def _has_layout(folder: Path) -> bool:
    dirs = [p for p in _visible(folder.iterdir()) if p.is_dir()]
    if any(canonical_split(p.name) in SPLITS for p in dirs):
        return True
    return any(p.suffix == ".parquet" for p in _visible(folder.iterdir()) if p.is_file())


def find_dataset_root(folder: str | os.PathLike) -> Path:
    """The folder holding the layout: ``folder`` itself, or its single wrapper sub-folder."""
    folder = Path(folder)
    current = folder
    for _ in range(3):  # a wrapper or two is common (archive name, then "dataset/")
        if _has_layout(current):
            return current
        entries = _visible(current.iterdir())
        if len(entries) == 1 and entries[0].is_dir():
            current = entries[0]
            continue
        break
    return folder


def _parquet_files(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX")
        out.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(".parquet") and not f.startswith("."))
    return out


def detect_format(folder: str | os.PathLike) -> str:
    """``parquet`` when the tree holds parquet files, ``imagefolder`` when it has split folders.

    Raises :class:`SourceError` describing what was found otherwise.
    """
    root = find_dataset_root(folder)
    if _parquet_files(root):
        return "parquet"
    dirs = [p for p in _visible(root.iterdir()) if p.is_dir()]
    if any(canonical_split(p.name) in SPLITS for p in dirs):
        return "imagefolder"
    found = ", ".join(p.name + ("/" if p.is_dir() else "") for p in _visible(root.iterdir())[:20]) or "nothing"
    raise _error(
        f"dataset at {Path(folder).name!r} has no known layout (found: {found})",
        folder,
        "use ImageFolder folders train/, val/, test/ each holding <label>/<file>, or parquet files",
    )


# -- images -----------------------------------------------------------------------------------


def _image_array(data: bytes | Path, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data) as img:
            img.load()
            mode = img.mode
            if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
                arr = np.asarray(img, dtype=np.float32) / 65535.0
                return arr[None, :, :]
            if mode in ("1", "L", "LA"):
                img = img.convert("L")  # alpha carries no class information; drop it
            elif mode != "RGB":
                img = img.convert("RGB")  # palette, RGBA, CMYK, YCbCr -> plain RGB
            arr = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise _error(
            f"{where} is not a readable image ({exc})",
            where,
            "re-encode it as PNG or remove it from the dataset",
        ) from exc
    if arr.ndim == 2:
        return arr[None, :, :]
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def _npy_array(path: Path, where: str) -> np.ndarray:
    try:
        return np.asarray(np.load(path, allow_pickle=False), dtype=np.float32)
    except (ValueError, OSError) as exc:
        raise _error(
            f"{where} is not a readable .npy array ({exc})",
            where,
            "save each sample with numpy.save (no pickled objects)",
        ) from exc


class _Stack:
    """Collects samples of one shape; names the first odd file."""

    def __init__(self) -> None:
        self.shape: tuple[int, ...] | None = None
        self.first: str | None = None
        self.x: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
        self.y: dict[str, list[int]] = {s: [] for s in SPLITS}

    def add(self, split: str, sample: np.ndarray, label: int, where: str) -> None:
        if self.shape is None:
            self.shape, self.first = tuple(sample.shape), where
        elif tuple(sample.shape) != self.shape:
            raise _error(
                f"{where} has shape {tuple(sample.shape)} but the dataset's samples have shape {self.shape} "
                f"(first seen in {self.first})",
                where,
                "all samples must share one size and colour mode; resize or convert the odd files",
            )
        self.x[split].append(sample)
        self.y[split].append(label)

    def arrays(self) -> dict[str, np.ndarray]:
        shape = self.shape or (0,)
        out: dict[str, np.ndarray] = {}
        for s in SPLITS:
            xs = self.x[s]
            out[f"x_{s}"] = np.stack(xs).astype(np.float32, copy=False) if xs else np.zeros((0, *shape), np.float32)
            out[f"y_{s}"] = np.asarray(self.y[s], dtype=np.int64)
        return out


def load_imagefolder(
    folder: str | os.PathLike, *, log: Callable[[str], None] | None = None
) -> tuple[dict[str, np.ndarray], list[str], list[str]]:
    """Read an ImageFolder tree. Returns ``(arrays, labels, ignored_entries)``.

    ``arrays`` has ``x_<split>``/``y_<split>`` for every split of :data:`SPLITS`.
    """
    root = find_dataset_root(folder)
    split_dirs: dict[str, Path] = {}
    ignored: list[str] = []
    for entry in _visible(root.iterdir()):
        split = canonical_split(entry.name)
        if entry.is_dir() and split in SPLITS:
            if split in split_dirs:
                raise _error(
                    f"dataset has two folders for split {split!r}: {split_dirs[split].name}/ and {entry.name}/",
                    entry,
                    "keep one folder per split",
                )
            split_dirs[split] = entry
        else:
            ignored.append(entry.name)
    if not split_dirs:
        raise _error(
            f"no train/, val/ or test/ folder in {Path(folder).name!r}",
            folder,
            "use the ImageFolder layout {train,val,test}/<label>/<file>",
        )
    label_set: set[str] = set()
    for split_dir in split_dirs.values():
        for entry in _visible(split_dir.iterdir()):
            if not entry.is_dir():
                raise _error(
                    f"{entry.relative_to(root).as_posix()} is a file directly in a split folder",
                    entry,
                    "put each sample in a folder named after its label: <split>/<label>/<file>",
                )
            label_set.add(entry.name)
    labels = sorted(label_set)
    index = {name: i for i, name in enumerate(labels)}
    stack = _Stack()
    for split, split_dir in sorted(split_dirs.items(), key=lambda kv: SPLITS.index(kv[0])):
        for label_dir in _visible(split_dir.iterdir()):
            for path in _visible(label_dir.rglob("*")):
                if path.is_dir():
                    continue
                where = path.relative_to(root).as_posix()
                suffix = path.suffix.lower()
                if suffix in IMAGE_EXTENSIONS:
                    sample = _image_array(path, where)
                elif suffix == ".npy":
                    sample = _npy_array(path, where)
                else:
                    raise _error(
                        f"{where} is not an image (.png, .jpg, .jpeg, .bmp) or a .npy array",
                        path,
                        "remove it from the dataset or convert it",
                    )
                stack.add(split, sample, index[label_dir.name], where)
        if log is not None:
            log(f"read {len(stack.y[split])} samples of split {split!r}")
    return stack.arrays(), labels, ignored


# -- parquet ----------------------------------------------------------------------------------


def _parquet_split(path: Path, root: Path) -> str:
    rel = path.relative_to(root)
    for part in reversed(rel.parts[:-1]):
        split = canonical_split(part)
        if split in SPLITS:
            return split
    m = _SHARD.match(path.stem)
    if m and canonical_split(m.group("split")) in SPLITS:
        return canonical_split(m.group("split"))
    raise _error(
        f"cannot tell the split of {rel.as_posix()}",
        path,
        "name parquet files data/<split>-*.parquet, <split>/*.parquet or <split>.parquet "
        "with split train, validation or test",
    )


def _hf_label_names(schema: Any, label_column: str) -> list[str] | None:
    meta = schema.metadata or {}
    raw = meta.get(b"huggingface")
    if not raw:
        return None
    try:
        info = json.loads(raw)
        feature = info.get("info", {}).get("features", {}).get(label_column, {})
        names = feature.get("names")
    except (ValueError, AttributeError):
        return None
    if isinstance(names, list) and all(isinstance(n, str) for n in names):
        return names
    return None


def _cell_array(value: Any, where: str, sample_shape: tuple[int, ...] | None) -> np.ndarray:
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return _image_array(value["bytes"], where)
        raise _error(
            f"{where}: image struct has no 'bytes' (only a path: {value.get('path')!r})",
            where,
            "embed the image bytes in the parquet file (datasets: cast_column(..., Image(decode=True)) "
            "then push_to_hub embeds them)",
        )
    if isinstance(value, (bytes, bytearray)):
        return _image_array(bytes(value), where)
    if value is None:
        raise _error(f"{where}: the image is missing (null)", where, "drop rows without an image")
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise _error(
            f"{where}: cannot read the image column as numbers or image bytes ({exc})",
            where,
            "store encoded images (PNG bytes) or numeric arrays",
        ) from exc
    if arr.ndim == 1 and sample_shape and int(np.prod(sample_shape)) == arr.size:
        arr = arr.reshape(sample_shape)
    elif arr.ndim == 2:
        arr = arr[None, :, :]  # one channel, like a grayscale image
    return arr


def load_parquet(
    folder: str | os.PathLike,
    *,
    image_column: str = "image",
    label_column: str = "label",
    sample_shape: Iterable[int] | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Read Hugging Face style parquet files. Returns ``(arrays, labels)``.

    ``sample_shape`` reshapes flat numeric rows (e.g. the model's input shape).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = find_dataset_root(folder)
    files = _parquet_files(root)
    if not files:
        raise _error(f"no parquet files in {Path(folder).name!r}", folder, "add <split>.parquet files")
    shape = tuple(int(d) for d in sample_shape) if sample_shape else None
    names_meta: list[str] | None = None
    raw_labels: dict[str, list[Any]] = {s: [] for s in SPLITS}
    stack = _Stack()
    string_labels = False
    for path in files:
        split = _parquet_split(path, root)
        rel = path.relative_to(root).as_posix()
        try:
            schema = pq.read_schema(path)
        except (pa.ArrowException, OSError) as exc:
            raise _error(f"{rel} is not a readable parquet file ({exc})", path, "re-create the file") from exc
        missing = [c for c in (image_column, label_column) if c not in schema.names]
        if missing:
            raise _error(
                f"{rel} has no column {missing[0]!r} (columns: {', '.join(schema.names)})",
                path,
                "set dataset.image_column and dataset.label_column in the run spec",
            )
        names_meta = names_meta or _hf_label_names(schema, label_column)
        label_type = schema.field(label_column).type
        if pa.types.is_string(label_type) or pa.types.is_large_string(label_type):
            string_labels = True
        elif not pa.types.is_integer(label_type):
            raise _error(
                f"{rel}: label column {label_column!r} has type {label_type}, not integers",
                path,
                "store class indices (int) in the label column",
            )
        pf = pq.ParquetFile(path)
        row = 0
        for batch in pf.iter_batches(columns=[image_column, label_column], batch_size=1024):
            images = batch.column(0).to_pylist()
            labels = batch.column(1).to_pylist()
            for image, label in zip(images, labels, strict=True):
                where = f"{rel} row {row}"
                if label is None:
                    raise _error(f"{where}: the label is missing (null)", path, "drop rows without a label")
                stack.add(split, _cell_array(image, where, shape), 0, where)
                raw_labels[split].append(label)
                row += 1
        if log is not None:
            log(f"read {row} rows of split {split!r} from {rel}")
    if string_labels:
        labels = sorted({str(v) for vs in raw_labels.values() for v in vs})
        index = {name: i for i, name in enumerate(labels)}
        for s in SPLITS:
            stack.y[s] = [index[str(v)] for v in raw_labels[s]]
    else:
        for s in SPLITS:
            stack.y[s] = [int(v) for v in raw_labels[s]]
        top = max((max(v) for v in stack.y.values() if v), default=-1)
        if min((min(v) for v in stack.y.values() if v), default=0) < 0:
            raise _error("the label column holds negative values", root, "labels are class indices 0..N-1")
        if names_meta is not None and top < len(names_meta):
            labels = list(names_meta)
        else:
            labels = [str(i) for i in range(top + 1)]
    return stack.arrays(), labels


# -- output -----------------------------------------------------------------------------------


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray], labels: list[str]) -> None:
    """Write ``arrays`` and ``labels`` (as a str array, loadable without pickle) atomically."""
    buf = io.BytesIO()
    np.savez(buf, labels=np.asarray(labels, dtype=str), **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_npz(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``dataset.npz``: the six arrays plus ``labels`` as a list of str."""
    with np.load(path, allow_pickle=False) as data:
        out: dict[str, Any] = {k: data[k] for k in data.files}
    out["labels"] = [str(x) for x in out.get("labels", [])]
    return out


def convert_dataset(
    folder: str | os.PathLike,
    out_npz: str | os.PathLike,
    *,
    format: str = "auto",
    image_column: str = "image",
    label_column: str = "label",
    sample_shape: Iterable[int] | None = None,
    log: Callable[[str], None] | None = None,
) -> DatasetSummary:
    """Read the dataset in ``folder`` (ImageFolder or parquet) and write ``out_npz``.

    Raises :class:`SourceError` naming the file and saying what to fix when the layout, a
    file, or a sample's shape is wrong.
    """
    folder = Path(folder)
    fmt = detect_format(folder) if format in ("auto", None) else str(format)
    root = find_dataset_root(folder)
    ignored: list[str] = []
    if fmt == "imagefolder":
        arrays, labels, ignored = load_imagefolder(folder, log=log)
    elif fmt == "parquet":
        arrays, labels = load_parquet(
            folder,
            image_column=image_column,
            label_column=label_column,
            sample_shape=sample_shape,
            log=log,
        )
    else:
        raise _error(f"unknown dataset format {fmt!r}", folder, "use auto, imagefolder or parquet")
    splits = {s: int(arrays[f"y_{s}"].shape[0]) for s in SPLITS}
    if not any(splits.values()):
        raise _error(
            f"dataset in {folder.name!r} holds no samples",
            folder,
            "add samples to the split folders",
        )
    write_npz(out_npz, arrays, labels)
    sample_shape_out = tuple(int(d) for d in next(arrays[f"x_{s}"] for s in SPLITS if splits[s]).shape[1:])
    rel_root = root.relative_to(folder).as_posix() if root != folder else ""
    return DatasetSummary(
        format=fmt,
        splits=splits,
        labels=labels,
        sample_shape=sample_shape_out,
        root=rel_root,
        ignored=ignored,
    )
