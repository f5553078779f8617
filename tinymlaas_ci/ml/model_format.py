"""Model-format detection: the one function that tells a model file's format.

Light on purpose: the fetch stage records the format without importing torch or onnx, and the
compile stage asks the same function, so both always agree. Detection reads the extension and
a few bytes (zip member names, the pickle protocol byte, the ONNX protobuf header).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from tinymlaas_ci.errors import SourceError

__all__ = ["FORMATS", "detect_model_format"]

FORMATS = ("pytorch", "safetensors", "torchscript", "exported-program", "onnx")
"""Formats a run spec's ``model.format`` may name (besides ``auto``)."""
_PICKLE_SUFFIXES = {".pkl", ".pickle", ".pt", ".pth", ".bin", ""}
_HINT = (
    "set model.format in the run spec to one of pytorch, safetensors, torchscript, exported-program, onnx "
    "(or name the file .onnx, .pt2, .safetensors, .pt, .pth, .bin or .pkl)"
)


def detect_model_format(path: str | os.PathLike, declared: object = "auto") -> str:
    """The format of the model file at ``path``: one of :data:`FORMATS`.

    ``declared`` (the run spec's ``model.format``, a string or the enum) wins unless it is
    ``auto``; then the file decides: a zip archive by its members (``torch.export.save``,
    ``torch.jit.save`` or ``torch.save``), a pickle by its protocol byte, ONNX by its extension
    or its protobuf header.
    """
    declared = getattr(declared, "value", declared) or "auto"
    path = Path(path)
    if declared != "auto":
        if declared not in FORMATS:
            raise SourceError(f"unknown model format {declared!r}", source=path.name, hint=_HINT)
        return str(declared)
    if not path.is_file():
        raise SourceError(f"model file {path} does not exist", source=path.name, hint="re-run the fetch stage")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix == ".pt2":
        return "exported-program"
    if suffix == ".safetensors":
        return "safetensors"
    if zipfile.is_zipfile(path):
        fmt = _zip_format(path)
        if fmt is not None:
            return fmt
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head[:1] == b"\x80" and suffix in _PICKLE_SUFFIXES:
        return "pytorch"  # a legacy (non-zip) torch.save or a plain pickle
    if _looks_like_onnx(head):
        return "onnx"
    if _looks_like_safetensors(head, path):
        return "safetensors"
    raise SourceError(
        f"cannot tell the format of model file {path.name!r}: not a torch archive, pickle, or ONNX file",
        source=path.name,
        hint=_HINT,
    )


def _zip_format(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except zipfile.BadZipFile:
        return None
    if any("serialized_exported_program" in n or n.endswith("archive_format") for n in names):
        return "exported-program"
    # torch.jit.save writes constants.pkl and the generated code/; torch.save does not.
    parts = {p for n in names for p in n.split("/")[:2]}
    if "code" in parts and any(n.endswith("constants.pkl") for n in names):
        return "torchscript"
    if any(n.endswith("data.pkl") for n in names):
        return "pytorch"
    return None


def _looks_like_onnx(head: bytes) -> bool:
    # A serialized ModelProto starts with field 1 (ir_version, a varint: tag 0x08) and a small
    # version number; pickles, zips and text files never do.
    return len(head) >= 2 and head[0] == 0x08 and 1 <= head[1] <= 64


def _looks_like_safetensors(head: bytes, path: Path) -> bool:
    # safetensors: an 8-byte little-endian header length, then the JSON header itself.
    if len(head) < 9 or head[8:9] != b"{":
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= path.stat().st_size - 8
