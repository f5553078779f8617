"""Datasets: ImageFolder trees, parquet and CSV tables, numpy arrays, converted to one ``dataset.npz``.

Every later stage reads the same simple file: ``x_train, y_train, x_val, y_val, x_test,
y_test`` (raw samples ``N,C,H,W`` or ``N,*shape``: ``uint8`` for 8-bit images, ``uint16`` for
16-bit ones, else float32; int64 labels), ``labels`` (str, index order) and ``label_source``.
Absent splits are empty arrays with the right trailing shape, so readers never special-case.
Raw values are turned into model inputs by :mod:`tinymlaas_ci.ml.preprocess` (default scale
``1/255`` for 8-bit images) in every stage the same way; :class:`SplitReader` streams one split
without loading the others.

Layouts understood:

* **ImageFolder** ``{train,val,test}/<label>/<file>``: PNG/JPEG/BMP decoded with Pillow
  (grayscale -> ``(1,H,W)``, colour -> ``(3,H,W)``), ``.npy`` (one array per sample, float32) or
  ``.bin`` (raw little-endian float32, the original TinyMLaaS tensors; shaped like the model
  input). Labels are the folder names across all splits: integers in numeric order, other
  names sorted (with a warning that the order is assumed). Each image's header is checked
  against a pixel budget (:data:`MAX_IMAGE_PIXELS`, :data:`MAX_DATASET_PIXELS`) before decoding.
* **parquet** (Hugging Face style): ``data/<split>-*.parquet``, ``<split>/*.parquet``,
  ``<config>/<split>/*.parquet`` or ``<split>.parquet``, with an image column (encoded image
  bytes, a ``{"bytes": ...}`` struct, or a numeric list/array) and a label column. Label names
  come from the ClassLabel names in the parquet schema metadata or the README's
  ``dataset_info``, else ``"0".."N-1"``.
* **CSV**: ``<split>.csv`` (or ``data/<split>-*.csv``), or one file with a ``split_column``; a
  label column and numeric feature columns (or a column per time step).
* **numpy**: ``<split>.npz`` holding ``x`` and ``y``; one ``.npz`` with ``x_<split>``/``y_<split>``
  (or ``x``, ``y`` and ``split``); or ``x_<split>.npy`` + ``y_<split>.npy``. An optional ``labels``
  array names the classes.

A single wrapper folder around the layout (as archives often have) is tolerated. ``validation``,
``valid`` and ``dev`` are read as ``val``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinymlaas_ci.errors import SourceError
from tinymlaas_ci.fs import atomic_write_bytes

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_DATASET_PIXELS",
    "MAX_IMAGE_PIXELS",
    "SPLITS",
    "DatasetSummary",
    "SplitReader",
    "canonical_split",
    "convert_dataset",
    "detect_format",
    "find_dataset_root",
    "folder_label_order",
    "label_mapping",
    "load_imagefolder",
    "load_npz",
    "load_npz_meta",
    "load_parquet",
    "write_npz",
    "write_without_split",
]

log_ = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
MAX_IMAGE_PIXELS = int(os.environ.get("TINYMLAAS_MAX_IMAGE_PIXELS", 40_000_000))
"""Largest image (width x height) decoded; checked from the header, before decoding."""
MAX_DATASET_PIXELS = int(os.environ.get("TINYMLAAS_MAX_DATASET_PIXELS", 2_000_000_000))
"""Largest total of pixels over all images of a dataset; checked from the headers."""
_ALIASES = {
    "validation": "val",
    "valid": "val",
    "dev": "val",
    "testing": "test",
    "training": "train",
}
_SHARD = re.compile(r"^(?P<split>[A-Za-z]+)(?:[-_.].*)?$")
_INT = re.compile(r"^-?\d+$")


@dataclass(frozen=True)
class DatasetSummary:
    """What :func:`convert_dataset` found and wrote."""

    format: str
    """``imagefolder``, ``parquet``, ``csv`` or ``numpy``."""
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
    label_source: str = "index"
    """Where the label order came from: ``dataset.labels``, ``folders (integers)``, ``folders
    (sorted names, assumed)``, ``parquet ClassLabel``, ``README dataset_info``, ``file`` or ``index``."""
    dtype: str = "float32"
    """Type of the stored raw samples (``uint8`` for 8-bit images)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "splits": dict(self.splits),
            "labels": list(self.labels),
            "sample_shape": list(self.sample_shape),
            "root": self.root,
            "ignored": list(self.ignored),
            "label_source": self.label_source,
            "dtype": self.dtype,
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


def _table_files(root: Path, suffixes: tuple[str, ...]) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX")
        out.extend(
            Path(dirpath) / f for f in sorted(filenames) if f.lower().endswith(suffixes) and not f.startswith(".")
        )
    return out


def _parquet_files(root: Path) -> list[Path]:
    return _table_files(root, (".parquet",))


def _has_layout(folder: Path) -> bool:
    entries = _visible(folder.iterdir())
    if any(canonical_split(p.name) in SPLITS for p in entries if p.is_dir()):
        return True
    return any(p.suffix.lower() in (".parquet", ".csv", ".npz", ".npy") for p in entries if p.is_file())


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


def detect_format(folder: str | os.PathLike) -> str:
    """``parquet``, ``csv`` or ``numpy`` when the tree holds such files, ``imagefolder`` when it
    has split folders of samples.

    Raises :class:`SourceError` describing what was found otherwise.
    """
    root = find_dataset_root(folder)
    if _parquet_files(root):
        return "parquet"
    if _table_files(root, (".csv",)):
        return "csv"
    top = [p for p in _visible(root.iterdir())]
    if any(p.is_file() and p.suffix.lower() in (".npz", ".npy") for p in top):
        return "numpy"
    dirs = [p for p in top if p.is_dir()]
    split_dirs = [p for p in dirs if canonical_split(p.name) in SPLITS]
    if split_dirs:
        inner = [q for d in split_dirs for q in _visible(d.iterdir())]
        if inner and all(q.is_file() and q.suffix.lower() in (".npz", ".npy") for q in inner):
            return "numpy"
        return "imagefolder"
    found = ", ".join(p.name + ("/" if p.is_dir() else "") for p in top[:20]) or "nothing"
    raise _error(
        f"dataset at {Path(folder).name!r} has no known layout (found: {found})",
        folder,
        "use ImageFolder folders train/, val/, test/ each holding <label>/<file>, parquet or CSV files "
        "named after their split, or .npz files with x and y",
    )


def folder_label_order(names: Iterable[str]) -> tuple[list[str], str]:
    """Label order from class-folder names: integers in numeric order (folder ``3`` is class 3),
    else sorted names, which is only an assumption (torchvision's ImageFolder convention)."""
    names = set(names)
    if names and all(_INT.match(n) for n in names):
        return sorted(names, key=lambda n: (int(n), n)), "folders (integers)"
    return sorted(names), "folders (sorted names, assumed)"


# -- images -----------------------------------------------------------------------------------


class _PixelBudget:
    """Counts decoded pixels; refuses an image or a dataset past its budget, from the header."""

    def __init__(self) -> None:
        self.total = 0

    def check(self, size: tuple[int, int], where: str) -> None:
        w, h = size
        if w * h > MAX_IMAGE_PIXELS:
            raise _error(
                f"{where} declares {w}x{h} pixels, more than the limit of {MAX_IMAGE_PIXELS} pixels per image",
                where,
                "resize the image before adding it to the dataset (a header this large is also how "
                "decompression bombs look); the limit is TINYMLAAS_MAX_IMAGE_PIXELS",
            )
        self.total += w * h
        if self.total > MAX_DATASET_PIXELS:
            raise _error(
                f"the dataset's images exceed {MAX_DATASET_PIXELS} pixels in total (reached at {where})",
                where,
                "use fewer or smaller images; the limit is TINYMLAAS_MAX_DATASET_PIXELS",
            )


_BUDGET = _PixelBudget()


def _image_array(
    data: bytes | Path,
    where: str,
    *,
    budget: _PixelBudget | None = None,
    resize: Sequence[int] | None = None,
    channels: int | None = None,
) -> np.ndarray:
    """Decode one image to raw ``C,H,W`` (``uint8``; ``uint16`` for 16-bit grey)."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    budget = budget or _PixelBudget()
    old_limit = Image.MAX_IMAGE_PIXELS
    try:
        # Pillow's own bomb check would raise its own error first: ours names the file and limit.
        Image.MAX_IMAGE_PIXELS = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img_ctx = Image.open(io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data)
        with img_ctx as img:
            budget.check(img.size, where)
            img.load()
            mode = img.mode
            if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
                arr = np.asarray(img, dtype=np.uint16)
            else:
                if channels == 1 or (channels is None and mode in ("1", "L", "LA")):
                    img = img.convert("L")  # alpha carries no class information; drop it
                elif mode != "RGB":
                    img = img.convert("RGB")  # palette, RGBA, CMYK, YCbCr -> plain RGB
                if resize:
                    img = img.resize((int(resize[1]), int(resize[0])), Image.Resampling.BILINEAR)
                arr = np.asarray(img, dtype=np.uint8)
    except SourceError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise _error(
            f"{where} is not a readable image ({exc})",
            where,
            "re-encode it as PNG or remove it from the dataset",
        ) from exc
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit
    if arr.ndim == 2:
        return arr[None, :, :]
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def _npy_array(path: Path, where: str) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise _error(
            f"{where} is not a readable .npy array ({exc})",
            where,
            "save each sample with numpy.save (no pickled objects)",
        ) from exc
    if arr.dtype in (np.uint8, np.uint16):
        return arr
    return np.asarray(arr, dtype=np.float32)


def _bin_array(path: Path, where: str, shape: tuple[int, ...] | None) -> np.ndarray:
    # The original TinyMLaaS wrote each test sample as raw little-endian float32 values.
    raw = path.read_bytes()
    if len(raw) % 4:
        raise _error(
            f"{where} has {len(raw)} bytes, not a whole number of float32 values",
            where,
            ".bin samples are raw little-endian float32 tensors (numpy: x.astype('<f4').tofile(path))",
        )
    arr = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if shape and int(np.prod(shape)) == arr.size:
        return arr.reshape(shape)
    if shape:
        raise _error(
            f"{where} holds {arr.size} float32 values, but the model input {list(shape)} needs {int(np.prod(shape))}",
            where,
            "set model.input_shape to the shape of one sample, or re-export the tensors",
        )
    return arr


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
                "all samples must share one size and colour mode; resize or convert the odd files "
                "(or set dataset.preprocess.resize and channels)",
            )
        self.x[split].append(sample)
        self.y[split].append(label)

    def dtype(self) -> np.dtype:
        kinds = {a.dtype for xs in self.x.values() for a in xs}
        return kinds.pop() if len(kinds) == 1 else np.dtype(np.float32)

    def arrays(self) -> dict[str, np.ndarray]:
        shape = self.shape or (0,)
        dtype = self.dtype()
        out: dict[str, np.ndarray] = {}
        for s in SPLITS:
            xs = self.x[s]
            out[f"x_{s}"] = np.stack(xs).astype(dtype, copy=False) if xs else np.zeros((0, *shape), dtype)
            out[f"y_{s}"] = np.asarray(self.y[s], dtype=np.int64)
        return out


def load_imagefolder(
    folder: str | os.PathLike,
    *,
    log: Callable[[str], None] | None = None,
    sample_shape: Iterable[int] | None = None,
    resize: Sequence[int] | None = None,
    channels: int | None = None,
    with_source: bool = False,
) -> tuple[Any, ...]:
    """Read an ImageFolder tree. Returns ``(arrays, labels, ignored_entries)`` (and the label
    source with ``with_source``).

    ``arrays`` has ``x_<split>``/``y_<split>`` for every split of :data:`SPLITS`. ``resize`` and
    ``channels`` convert images as they are decoded, so images of mixed sizes can be read.
    """
    root = find_dataset_root(folder)
    split_dirs: dict[str, Path] = {}
    ignored: list[str] = []
    shape = tuple(int(d) for d in sample_shape) if sample_shape else None
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
    labels, source = folder_label_order(label_set)
    index = {name: i for i, name in enumerate(labels)}
    stack = _Stack()
    budget = _PixelBudget()
    for split, split_dir in sorted(split_dirs.items(), key=lambda kv: SPLITS.index(kv[0])):
        for label_dir in _visible(split_dir.iterdir()):
            for path in _visible(label_dir.rglob("*")):
                if path.is_dir():
                    continue
                where = path.relative_to(root).as_posix()
                suffix = path.suffix.lower()
                if suffix in IMAGE_EXTENSIONS:
                    sample = _image_array(path, where, budget=budget, resize=resize, channels=channels)
                elif suffix == ".npy":
                    sample = _npy_array(path, where)
                elif suffix == ".bin":
                    sample = _bin_array(path, where, shape)
                else:
                    raise _error(
                        f"{where} is not an image (.png, .jpg, .jpeg, .bmp), a .npy array or a float32 .bin tensor",
                        path,
                        "remove it from the dataset or convert it",
                    )
                stack.add(split, sample, index[label_dir.name], where)
        if log is not None:
            log(f"read {len(stack.y[split])} samples of split {split!r}")
    if with_source:
        return stack.arrays(), labels, ignored, source
    return stack.arrays(), labels, ignored


# -- parquet ----------------------------------------------------------------------------------


def _file_split(path: Path, root: Path, hint: str) -> str:
    rel = path.relative_to(root)
    for part in reversed(rel.parts[:-1]):
        split = canonical_split(part)
        if split in SPLITS:
            return split
    m = _SHARD.match(path.stem)
    if m and canonical_split(m.group("split")) in SPLITS:
        return canonical_split(m.group("split"))
    raise _error(f"cannot tell the split of {rel.as_posix()}", path, hint)


def _parquet_split(path: Path, root: Path) -> str:
    return _file_split(
        path,
        root,
        "name parquet files data/<split>-*.parquet, <split>/*.parquet or <split>.parquet "
        "with split train, validation or test, or set dataset.split_column",
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


def _readme_label_names(root: Path, label_column: str) -> list[str] | None:
    """ClassLabel names from a Hub dataset card's ``dataset_info`` (the YAML front matter)."""
    import yaml

    for folder in (root, *root.parents[:2]):
        readme = folder / "README.md"
        if readme.is_file():
            break
    else:
        return None
    text = readme.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return None
    front = text.split("---", 2)[1] if text.count("---") >= 2 else ""
    try:
        card = yaml.safe_load(front) or {}
    except yaml.YAMLError:
        return None
    infos = card.get("dataset_info") if isinstance(card, dict) else None
    for info in infos if isinstance(infos, list) else [infos]:
        if not isinstance(info, dict):
            continue
        for feature in info.get("features") or []:
            if not isinstance(feature, dict) or feature.get("name") != label_column:
                continue
            names = ((feature.get("dtype") or {}) if isinstance(feature.get("dtype"), dict) else {}).get(
                "class_label", {}
            )
            names = (names or {}).get("names") if isinstance(names, dict) else None
            if isinstance(names, dict):
                try:
                    return [str(names[k]) for k in sorted(names, key=lambda k: int(k))]
                except (TypeError, ValueError):
                    return None
            if isinstance(names, list):
                return [str(n) for n in names]
    return None


def _cell_array(
    value: Any, where: str, sample_shape: tuple[int, ...] | None, budget: _PixelBudget, image_args: dict
) -> np.ndarray:
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return _image_array(value["bytes"], where, budget=budget, **image_args)
        raise _error(
            f"{where}: image struct has no 'bytes' (only a path: {value.get('path')!r})",
            where,
            "embed the image bytes in the parquet file (datasets: cast_column(..., Image(decode=True)) "
            "then push_to_hub embeds them)",
        )
    if isinstance(value, (bytes, bytearray)):
        return _image_array(bytes(value), where, budget=budget, **image_args)
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


def _index_labels(
    raw: dict[str, list[Any]], string_labels: bool, names: list[str] | None, where: Path
) -> tuple[dict[str, list[int]], list[str], str]:
    """Class indices per split, label names and their source, from raw label cells."""
    if string_labels:
        found = {str(v) for vs in raw.values() for v in vs}
        if names and found <= set(names):
            labels, source = list(names), "file"
        else:
            labels, source = folder_label_order(found)
            source = source.replace("folders", "label names")
        index = {name: i for i, name in enumerate(labels)}
        return {s: [index[str(v)] for v in raw[s]] for s in SPLITS}, labels, source
    ys = {s: [int(v) for v in raw[s]] for s in SPLITS}
    if min((min(v) for v in ys.values() if v), default=0) < 0:
        raise _error("the label column holds negative values", where, "labels are class indices 0..N-1")
    top = max((max(v) for v in ys.values() if v), default=-1)
    if names is not None and top < len(names):
        return ys, list(names), "file"
    return ys, [str(i) for i in range(top + 1)], "index"


def load_parquet(
    folder: str | os.PathLike,
    *,
    image_column: str = "image",
    label_column: str = "label",
    split_column: str | None = None,
    sample_shape: Iterable[int] | None = None,
    resize: Sequence[int] | None = None,
    channels: int | None = None,
    log: Callable[[str], None] | None = None,
    with_source: bool = False,
) -> tuple[Any, ...]:
    """Read Hugging Face style parquet files. Returns ``(arrays, labels)`` (and the label source
    with ``with_source``).

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
    budget = _PixelBudget()
    image_args = {"resize": resize, "channels": channels}
    string_labels = False
    for path in files:
        rel = path.relative_to(root).as_posix()
        split = None if split_column else _parquet_split(path, root)
        try:
            schema = pq.read_schema(path)
        except (pa.ArrowException, OSError) as exc:
            raise _error(f"{rel} is not a readable parquet file ({exc})", path, "re-create the file") from exc
        wanted = [image_column, label_column] + ([split_column] if split_column else [])
        missing = [c for c in wanted if c not in schema.names]
        if missing:
            raise _error(
                f"{rel} has no column {missing[0]!r} (columns: {', '.join(schema.names)})",
                path,
                "set dataset.image_column, dataset.label_column (and dataset.split_column) in the run spec",
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
        for batch in pf.iter_batches(columns=wanted, batch_size=1024):
            images = batch.column(0).to_pylist()
            labels = batch.column(1).to_pylist()
            splits = batch.column(2).to_pylist() if split_column else [split] * len(images)
            for image, label, row_split in zip(images, labels, splits, strict=True):
                where = f"{rel} row {row}"
                if label is None:
                    raise _error(f"{where}: the label is missing (null)", path, "drop rows without a label")
                s = _row_split(row_split, where, path)
                stack.add(s, _cell_array(image, where, shape, budget, image_args), 0, where)
                raw_labels[s].append(label)
                row += 1
        if log is not None:
            log(f"read {row} rows" + (f" of split {split!r}" if split else "") + f" from {rel}")
    names_source = "parquet ClassLabel" if names_meta else None
    if names_meta is None:
        names_meta = _readme_label_names(root, label_column)
        names_source = "README dataset_info" if names_meta else None
    ys, labels, source = _index_labels(raw_labels, string_labels, names_meta, root)
    if source == "file":
        source = names_source or source
    stack.y = ys
    if with_source:
        return stack.arrays(), labels, source
    return stack.arrays(), labels


def _row_split(value: Any, where: str, path: Path) -> str:
    split = canonical_split(str(value)) if value is not None else ""
    if split not in SPLITS:
        raise _error(
            f"{where}: split {value!r} is not train, val or test",
            path,
            "the split column holds train, validation (val) or test",
        )
    return split


# -- CSV --------------------------------------------------------------------------------------


def load_csv(
    folder: str | os.PathLike,
    *,
    label_column: str = "label",
    split_column: str | None = None,
    sample_shape: Iterable[int] | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[dict[str, np.ndarray], list[str], str]:
    """Read CSV tables: a label column and numeric feature columns (or one column per time
    step), split by file name (``<split>.csv``) or a ``split_column``. Returns
    ``(arrays, labels, label_source)``."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    root = find_dataset_root(folder)
    files = _table_files(root, (".csv",))
    shape = tuple(int(d) for d in sample_shape) if sample_shape else None
    xs: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    raw: dict[str, list[Any]] = {s: [] for s in SPLITS}
    features: list[str] | None = None
    string_labels = False
    for path in files:
        rel = path.relative_to(root).as_posix()
        try:
            table = pcsv.read_csv(path)
        except (pa.ArrowException, OSError) as exc:
            raise _error(f"{rel} is not a readable CSV file ({exc})", path, "write it with a header row") from exc
        if label_column not in table.column_names:
            raise _error(
                f"{rel} has no label column {label_column!r} (columns: {', '.join(table.column_names[:12])})",
                path,
                "set dataset.label_column to the column holding the labels",
            )
        if split_column and split_column not in table.column_names:
            raise _error(f"{rel} has no split column {split_column!r}", path, "set dataset.split_column")
        cols = [c for c in table.column_names if c not in (label_column, split_column)]
        if features is None:
            features = cols
        elif cols != features:
            raise _error(
                f"{rel} has columns {cols[:6]}... unlike the first file's {features[:6]}...",
                path,
                "all CSV files of a dataset have the same feature columns",
            )
        bad = [c for c in cols if not (pa.types.is_integer(table[c].type) or pa.types.is_floating(table[c].type))]
        if bad:
            raise _error(
                f"{rel}: column {bad[0]!r} is not numeric ({table[bad[0]].type})",
                path,
                "feature columns hold numbers; drop text columns or name the label column (dataset.label_column)",
            )
        x = np.stack([table[c].to_numpy(zero_copy_only=False).astype(np.float32) for c in cols], axis=1)
        if np.isnan(x).any():
            row = int(np.argwhere(np.isnan(x))[0][0])
            raise _error(f"{rel} row {row}: a feature is empty or NaN", path, "fill or drop rows with missing values")
        if shape and int(np.prod(shape)) == x.shape[1]:
            x = x.reshape((len(x), *shape))
        labels_col = table[label_column]
        if pa.types.is_string(labels_col.type) or pa.types.is_large_string(labels_col.type):
            string_labels = True
        elif not pa.types.is_integer(labels_col.type):
            raise _error(
                f"{rel}: label column {label_column!r} has type {labels_col.type}",
                path,
                "labels are class indices (integers) or class names",
            )
        labels = labels_col.to_pylist()
        if split_column:
            splits = [_row_split(v, f"{rel} row {i}", path) for i, v in enumerate(table[split_column].to_pylist())]
        else:
            splits = [
                _file_split(path, root, "name CSV files <split>.csv (train, val, test), or set dataset.split_column")
            ] * len(labels)
        for s in SPLITS:
            idx = [i for i, v in enumerate(splits) if v == s]
            if idx:
                xs[s].append(x[idx])
                raw[s].extend(labels[i] for i in idx)
        if log is not None:
            log(f"read {len(labels)} rows of {len(cols)} features from {rel}")
    ys, label_names, source = _index_labels(raw, string_labels, None, root)
    sample = next((a.shape[1:] for v in xs.values() for a in v), (0,))
    arrays: dict[str, np.ndarray] = {}
    for s in SPLITS:
        arrays[f"x_{s}"] = np.concatenate(xs[s]) if xs[s] else np.zeros((0, *sample), np.float32)
        arrays[f"y_{s}"] = np.asarray(ys[s], dtype=np.int64)
    return arrays, label_names, source


# -- numpy ------------------------------------------------------------------------------------

_X_KEYS = ("x", "X", "inputs", "features", "data")
_Y_KEYS = ("y", "Y", "labels", "targets", "label")


def _pick(arrays: dict[str, np.ndarray], keys: tuple[str, ...], where: str, what: str) -> np.ndarray:
    for k in keys:
        if k in arrays and not (what == "labels" and arrays[k].dtype.kind in "US"):
            return arrays[k]
    raise _error(
        f"{where} has no {what} array (found: {', '.join(sorted(arrays)) or 'nothing'})",
        where,
        "store the samples as 'x' and the class indices as 'y' (numpy.savez(path, x=..., y=...))",
    )


def _read_np(path: Path) -> dict[str, np.ndarray]:
    try:
        if path.suffix.lower() == ".npy":
            return {path.stem: np.load(path, allow_pickle=False)}
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (ValueError, OSError) as exc:
        raise _error(f"{path.name} is not a readable numpy file ({exc})", path, "save it with numpy.save(z)") from exc


def load_numpy(
    folder: str | os.PathLike, *, log: Callable[[str], None] | None = None
) -> tuple[dict[str, np.ndarray], list[str], str]:
    """Read ``.npz``/``.npy`` datasets (see the module docstring). Returns ``(arrays, labels, label_source)``."""
    root = find_dataset_root(folder)
    files = [p for p in _table_files(root, (".npz", ".npy"))]
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {s: [] for s in SPLITS}
    names: list[str] | None = None
    npy: dict[str, dict[str, np.ndarray]] = {}
    for path in files:
        rel = path.relative_to(root).as_posix()
        arrays = _read_np(path)
        if "labels" in arrays and arrays["labels"].dtype.kind in "US":
            names = [str(v) for v in arrays.pop("labels")]
        if path.suffix.lower() == ".npy":
            m = re.match(r"^(?P<k>[xXyY])(?:[_-](?P<split>\w+))?$", path.stem)
            split = canonical_split(m.group("split")) if m and m.group("split") else None
            if m and split is None:
                try:
                    split = _file_split(path, root, "")
                except SourceError:
                    split = None
            if not m or split not in SPLITS:
                raise _error(
                    f"{rel}: cannot tell what this array is",
                    path,
                    "name .npy files x_<split>.npy and y_<split>.npy, or <split>/x.npy and <split>/y.npy",
                )
            npy.setdefault(split, {})[m.group("k").lower()] = arrays[path.stem]
            continue
        per_split = {canonical_split(k[2:]): k for k in arrays if re.match(r"^[xX]_\w+$", k)}
        if per_split:
            for split, key in per_split.items():
                if split in SPLITS:
                    ykey = "y_" + key[2:] if "y_" + key[2:] in arrays else "Y_" + key[2:]
                    parts[split].append((arrays[key], _pick(arrays, (ykey,), rel, "labels")))
        elif "split" in arrays:
            x, y = _pick(arrays, _X_KEYS, rel, "samples"), _pick(arrays, _Y_KEYS, rel, "labels")
            col = [_row_split(v, f"{rel} row {i}", path) for i, v in enumerate(arrays["split"].tolist())]
            for s in SPLITS:
                idx = [i for i, v in enumerate(col) if v == s]
                if idx:
                    parts[s].append((x[idx], y[idx]))
        else:
            split = _file_split(path, root, "name .npz files <split>.npz, or store x_<split>/y_<split> arrays")
            parts[split].append((_pick(arrays, _X_KEYS, rel, "samples"), _pick(arrays, _Y_KEYS, rel, "labels")))
        if log is not None:
            log(f"read {rel}")
    for split, xy in npy.items():
        if "x" not in xy or "y" not in xy:
            raise _error(f"split {split!r} has only {', '.join(xy)}.npy", root, "give both x and y arrays")
        parts[split].append((xy["x"], xy["y"]))
    shape = None
    out: dict[str, np.ndarray] = {}
    raw: dict[str, list[Any]] = {s: [] for s in SPLITS}
    for s in SPLITS:
        xs = []
        for x, y in parts[s]:
            if len(x) != len(y):
                raise _error(f"split {s!r}: {len(x)} samples but {len(y)} labels", root, "give one label per sample")
            if shape is None:
                shape = x.shape[1:]
            elif x.shape[1:] != shape:
                raise _error(
                    f"split {s!r} has samples of shape {x.shape[1:]}, others {shape}", root, "use one sample shape"
                )
            xs.append(x if x.dtype in (np.uint8, np.uint16) else x.astype(np.float32))
            raw[s].extend(y.tolist())
        out[f"x_{s}"] = np.concatenate(xs) if xs else None
    string_labels = any(isinstance(v, str) for vs in raw.values() for v in vs)
    ys, labels, source = _index_labels(raw, string_labels, names, root)
    dtype = next((v.dtype for v in out.values() if v is not None), np.float32)
    for s in SPLITS:
        if out[f"x_{s}"] is None:
            out[f"x_{s}"] = np.zeros((0, *(shape or (0,))), dtype)
        out[f"y_{s}"] = np.asarray(ys[s], dtype=np.int64)
    return out, labels, source


# -- output -----------------------------------------------------------------------------------


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray], labels: list[str], **extra: Any) -> None:
    """Write ``arrays`` and ``labels`` (as a str array, loadable without pickle) atomically.

    The file is an uncompressed zip, so :class:`SplitReader` can read one split in pieces.
    """
    buf = io.BytesIO()
    more = {k: np.asarray(v, dtype=str) for k, v in extra.items()}
    np.savez(buf, labels=np.asarray(labels, dtype=str), **more, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def write_without_split(src: str | os.PathLike, dst: str | os.PathLike, split: str) -> dict[str, int]:
    """Copy the ``dataset.npz`` at ``src`` to ``dst`` with split ``split`` emptied; returns the
    split sizes of the copy.

    The copy keeps every other member byte for byte (labels, label source, the other splits)
    and holds ``x_<split>`` / ``y_<split>`` with no rows but their sample shape and dtype, so
    its readers find the arrays they expect. It is what the stages that must not see the
    evaluation data (compile, where a model's own code runs) get instead of the whole file.
    """
    import shutil

    src, dst = Path(src), Path(dst)
    dropped = {f"x_{split}.npy", f"y_{split}.npy"}
    partial = dst.with_name(f".{dst.name}.partial")
    try:
        with zipfile.ZipFile(src) as zin, zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED, allowZip64=True) as zout:
            for info in zin.infolist():
                if info.filename in dropped:
                    reader = SplitReader(src, info.filename[: -len(".npy")])
                    member = io.BytesIO()
                    np.save(member, np.zeros((0, *reader.sample_shape), dtype=reader.dtype), allow_pickle=False)
                    zout.writestr(info.filename, member.getvalue())
                    continue
                # Streamed member by member: a large train split is never held in memory.
                with zin.open(info) as fh, zout.open(zipfile.ZipInfo(info.filename), "w", force_zip64=True) as out:
                    shutil.copyfileobj(fh, out, 1 << 20)
        os.chmod(partial, 0o644)
        os.replace(partial, dst)
    finally:
        partial.unlink(missing_ok=True)
    return load_npz_meta(dst)["sizes"]


def load_npz(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``dataset.npz``: the six arrays plus ``labels`` as a list of str."""
    with np.load(path, allow_pickle=False) as data:
        out: dict[str, Any] = {k: data[k] for k in data.files}
    out["labels"] = [str(x) for x in out.get("labels", [])]
    if "label_source" in out:
        out["label_source"] = str(out["label_source"])
    return out


def load_npz_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Labels, label source and split sizes of a ``dataset.npz``, without reading any samples."""
    path = Path(path)
    with np.load(path, allow_pickle=False) as data:
        labels = [str(v) for v in data["labels"]] if "labels" in data.files else []
        source = str(data["label_source"]) if "label_source" in data.files else None
    sizes = {}
    for s in SPLITS:
        try:
            sizes[s] = len(SplitReader(path, f"y_{s}"))
        except SourceError:
            sizes[s] = 0
    return {"labels": labels, "label_source": source, "sizes": sizes}


class SplitReader:
    """One array of an ``.npz`` file, read in row ranges without loading the rest of the file.

    ``np.savez`` stores members uncompressed, so rows are read at their offset; a compressed
    member is read whole once (it cannot be sliced). ``transform`` (e.g. the preprocessing)
    is applied to every slice returned.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        key: str,
        *,
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
        rows: np.ndarray | None = None,
    ) -> None:
        self.path = Path(path)
        self.key = key
        self.transform = transform
        self._whole: np.ndarray | None = None
        with zipfile.ZipFile(self.path) as zf:
            try:
                info = zf.getinfo(f"{key}.npy")
            except KeyError as exc:
                raise _error(f"{self.path.name} has no array {key!r}", self.path, "re-run the fetch stage") from exc
            with zf.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                read_header = (
                    np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                )
                shape, fortran, dtype = read_header(fh)
                header_len = fh.tell()
            stored = info.compress_type == zipfile.ZIP_STORED and not fortran and not dtype.hasobject
        self.shape = tuple(shape)
        self.dtype = dtype
        self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * dtype.itemsize
        self._offset = None
        if stored:
            with open(self.path, "rb") as raw:
                raw.seek(info.header_offset)
                local = raw.read(30)
                name_len = int.from_bytes(local[26:28], "little")
                extra_len = int.from_bytes(local[28:30], "little")
            self._offset = info.header_offset + 30 + name_len + extra_len + header_len
        self._rows = rows

    def __len__(self) -> int:
        return len(self._rows) if self._rows is not None else int(self.shape[0])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.shape[1:]

    def _read(self, start: int, stop: int) -> np.ndarray:
        if self._offset is None:
            if self._whole is None:
                with np.load(self.path, allow_pickle=False) as npz:
                    self._whole = npz[self.key]
            return self._whole[start:stop]
        count = max(0, stop - start)
        with open(self.path, "rb") as fh:
            fh.seek(self._offset + start * self._row_bytes)
            buf = fh.read(count * self._row_bytes)
        return np.frombuffer(buf, dtype=self.dtype).reshape((count, *self.shape[1:])).copy()

    def raw(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as stored, without the transform."""
        n = len(self)
        start, stop = max(0, start), min(n, stop)
        if self._rows is None:
            return self._read(start, stop)
        picked = self._rows[start:stop]
        return np.concatenate([self._read(int(i), int(i) + 1) for i in picked]) if len(picked) else self._read(0, 0)

    def __getitem__(self, item: slice) -> np.ndarray:
        if not isinstance(item, slice) or item.step not in (None, 1):
            raise TypeError("SplitReader takes contiguous slices")
        start, stop, _ = item.indices(len(self))
        out = self.raw(start, stop)
        return self.transform(out) if self.transform is not None else out

    def take(self, rows: np.ndarray) -> SplitReader:
        """A reader of the given rows (sorted indices) of this array."""
        return SplitReader(self.path, self.key, transform=self.transform, rows=np.asarray(rows, dtype=np.int64))

    def materialize(self) -> np.ndarray:
        """All rows, transformed: for the small arrays that fine-tuning or calibration need whole."""
        return self[0 : len(self)]


def convert_dataset(
    folder: str | os.PathLike,
    out_npz: str | os.PathLike,
    *,
    format: str = "auto",
    image_column: str = "image",
    label_column: str = "label",
    split_column: str | None = None,
    sample_shape: Iterable[int] | None = None,
    resize: Sequence[int] | None = None,
    channels: int | None = None,
    labels: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> DatasetSummary:
    """Read the dataset in ``folder`` and write ``out_npz``.

    ``labels`` (the run spec's ``dataset.labels``) fixes the label order: the dataset's own
    label names are mapped onto it by name (or, when they are integers, by value).
    Raises :class:`SourceError` naming the file and saying what to fix when the layout, a
    file, or a sample's shape is wrong.
    """
    folder = Path(folder)
    fmt = detect_format(folder) if format in ("auto", None) else str(format)
    root = find_dataset_root(folder)
    ignored: list[str] = []
    if fmt == "imagefolder":
        arrays, names, ignored, source = load_imagefolder(
            folder, log=log, sample_shape=sample_shape, resize=resize, channels=channels, with_source=True
        )
    elif fmt == "parquet":
        arrays, names, source = load_parquet(
            folder,
            image_column=image_column,
            label_column=label_column,
            split_column=split_column,
            sample_shape=sample_shape,
            resize=resize,
            channels=channels,
            log=log,
            with_source=True,
        )
    elif fmt == "csv":
        arrays, names, source = load_csv(
            folder, label_column=label_column, split_column=split_column, sample_shape=sample_shape, log=log
        )
    elif fmt == "numpy":
        arrays, names, source = load_numpy(folder, log=log)
    else:
        raise _error(f"unknown dataset format {fmt!r}", folder, "use auto, imagefolder, parquet, csv or numpy")
    if labels:
        arrays, names = _onto_labels(arrays, names, list(labels), folder)
        source = "dataset.labels"
    splits = {s: int(arrays[f"y_{s}"].shape[0]) for s in SPLITS}
    if not any(splits.values()):
        raise _error(
            f"dataset in {folder.name!r} holds no samples",
            folder,
            "add samples to the split folders",
        )
    write_npz(out_npz, arrays, names, label_source=source)
    first = next(arrays[f"x_{s}"] for s in SPLITS if splits[s])
    sample_shape_out = tuple(int(d) for d in first.shape[1:])
    rel_root = root.relative_to(folder).as_posix() if root != folder else ""
    return DatasetSummary(
        format=fmt,
        splits=splits,
        labels=names,
        sample_shape=sample_shape_out,
        root=rel_root,
        ignored=ignored,
        label_source=source,
        dtype=str(first.dtype),
    )


def label_mapping(dataset_labels: Sequence[str], model_labels: Sequence[str]) -> list[int] | None:
    """Dataset class index -> model output index, or ``None`` when the names do not match.

    By name (exact, then case-insensitive); integer dataset names map by value.
    """
    model_labels = [str(v) for v in model_labels]
    pos = {name: i for i, name in enumerate(model_labels)}
    if all(n in pos for n in dataset_labels):
        return [pos[n] for n in dataset_labels]
    low = {name.lower(): i for i, name in enumerate(model_labels)}
    if len(low) == len(model_labels) and all(n.lower() in low for n in dataset_labels):
        return [low[n.lower()] for n in dataset_labels]
    if all(_INT.match(n) and 0 <= int(n) < len(model_labels) for n in dataset_labels):
        return [int(n) for n in dataset_labels]
    return None


def _onto_labels(
    arrays: dict[str, np.ndarray], names: list[str], labels: list[str], where: Path
) -> tuple[dict[str, np.ndarray], list[str]]:
    mapping = label_mapping(names, labels)
    if mapping is None:
        missing = [n for n in names if n not in labels]
        raise _error(
            f"dataset.labels {labels[:10]} does not name the dataset's classes {missing[:10]}",
            where,
            "list every class of the dataset in dataset.labels, in the model's output order",
        )
    table = np.asarray(mapping, dtype=np.int64)
    out = dict(arrays)
    for s in SPLITS:
        y = arrays[f"y_{s}"]
        out[f"y_{s}"] = table[y] if len(y) else y
    return out, labels
