"""Small filesystem helpers used by every layer: atomic writes, hashing, safe paths."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from tinymlaas_ci.errors import os_error

__all__ = [
    "FILE_MODE",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "canonical_json",
    "is_within",
    "sha256_bytes",
    "sha256_file",
]


FILE_MODE = 0o644
"""Mode of the files this package writes for others to read (results, site pages, outcomes),
before the process umask is applied: the same as ``open(path, "w")`` gives."""


def _umask() -> int:
    # Linux tells the umask without changing it; elsewhere os.umask must set it to read it,
    # and it is set back at once (to a value no more permissive than the usual 022 meanwhile).
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, mode: int = FILE_MODE) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half.

    The bytes go to a temporary file in the same directory, are flushed to disk, and then
    replace ``path`` with :func:`os.replace`. The file gets ``mode`` minus the umask (0644 under
    the usual umask 022), like a file written with ``open``; a temporary file alone would be
    0600 and unreadable by a web server or another user.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise os_error(exc, path=path, doing=f"writing {path.name}") from exc
    try:
        os.fchmod(fd, mode & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            # The temporary name means nothing to the reader: the error names the real path.
            exc.filename = str(path)
            raise os_error(exc, path=path, doing=f"writing {path.name}") from exc
        raise


def atomic_write_text(path: str | os.PathLike, text: str, *, mode: int = FILE_MODE) -> None:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def canonical_json(obj: Any, *, indent: int | None = 2) -> str:
    """Deterministic JSON: sorted keys, stable separators, trailing newline when indented."""
    if indent is None:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return json.dumps(obj, sort_keys=True, indent=indent, ensure_ascii=False) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any, *, mode: int = FILE_MODE) -> None:
    """:func:`atomic_write_text` of :func:`canonical_json` of ``obj``."""
    atomic_write_text(path, canonical_json(obj), mode=mode)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def is_within(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """True when ``path`` (symlinks resolved) lies inside ``root`` (symlinks resolved)."""
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
    except ValueError:
        return False
    return True
