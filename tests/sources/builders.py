"""Small dataset and archive builders shared by the sources and fetch-stage tests."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


def digit_pixels(seed: int, shape=(8, 8)) -> np.ndarray:
    """Deterministic 8x8 "digit" with values 0..16, stored as round(v * 255 / 16)."""
    rng = np.random.default_rng(seed)
    v = rng.integers(0, 17, size=shape)
    return np.round(v * 255 / 16).astype(np.uint8)


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    mode = "L" if pixels.ndim == 2 else "RGB"
    Image.fromarray(pixels, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def imagefolder_files(counts: dict[str, dict[str, int]], prefix: str = "") -> dict[str, bytes]:
    """``{"train": {"0": 3, "1": 2}, ...}`` -> {relative path: PNG bytes}, deterministic."""
    files: dict[str, bytes] = {}
    seed = 0
    for split, labels in counts.items():
        for label, n in labels.items():
            for i in range(n):
                seed += 1
                files[f"{prefix}{split}/{label}/{i:03d}.png"] = png_bytes(digit_pixels(seed))
    return files


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def parquet_bytes(
    images: list,
    labels: list[int],
    names: list[str] | None = None,
    image_column: str = "image",
    label_column: str = "label",
) -> bytes:
    """A Hugging Face style parquet table (image structs with bytes, or numeric lists)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({image_column: images, label_column: pa.array(labels, type=pa.int64())})
    if names is not None:
        meta = {
            "info": {
                "features": {
                    image_column: {"_type": "Image"},
                    label_column: {"_type": "ClassLabel", "names": names},
                }
            }
        }
        table = table.replace_schema_metadata({b"huggingface": json.dumps(meta).encode()})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()
