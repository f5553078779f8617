"""The shared stage cache: outputs of a stage, by cache key, for every run of the work dir.

A stage's cache key (its plan key, the digests of its inputs, the identity of the code or
image that runs it) says everything its outputs depend on, so a stage that another run already
generated under the same key need not run again: a sweep of 50 runs that share a model and a
dataset fetches them once. The cache lives in ``<work dir>/.cache/``:

``<key[:2]>/<key>/entry.json``
    what the entry holds: the stage, the run that generated it, when, and the sha256 and size
    of every file;
``<key[:2]>/<key>/files/``
    a copy of the stage's folder (everything but its ``status.json`` and ``stage.json``).

It is safe under concurrency and ``kill -9``: an entry is written into a temporary folder and
renamed into place in one step, so an entry either exists whole or not at all; a lock per key
makes a second run that needs the same stage wait for the first and then reuse its outputs;
and every file is checked against its recorded sha256 while it is copied back, so an entry
that was changed (or a disk that lost bytes) is thrown away and the stage runs again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinymlaas_ci.engine.locks import file_lock
from tinymlaas_ci.errors import LockTimeout
from tinymlaas_ci.fs import atomic_write_json
from tinymlaas_ci.hostinfo import process_alive

__all__ = ["CACHE_DIR", "CacheEntry", "StageCache"]

CACHE_DIR = ".cache"
"""The cache's folder inside the work dir (run volumes are ``<project>/<run>``; names never
start with a dot)."""
_SCHEMA = 1
_RUN_SPECIFIC = frozenset({"status.json", "stage.json"})
_CHUNK = 1 << 20


@dataclass(frozen=True)
class CacheEntry:
    """One stage's outputs in the cache."""

    key: str
    path: Path
    stage: str
    run: str
    """The run that generated it (``project/run``)."""
    created_at: str
    files: dict[str, dict[str, Any]]
    """Path inside the stage folder -> ``{"sha256", "bytes"}``."""
    record: dict[str, Any]
    """What the generating stage's status said: duration, executor, image."""

    @property
    def bytes(self) -> int:
        """The size of the entry's files."""
        return sum(int(f.get("bytes") or 0) for f in self.files.values())

    @property
    def last_used(self) -> float:
        """When a run last stored or reused the entry (seconds since the epoch)."""
        try:
            return (self.path / "entry.json").stat().st_mtime
        except OSError:
            return 0.0


class StageCache:
    """The cache of one work dir."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _entry_dir(self, key: str) -> Path:
        return self.root / key[:2] / key

    @contextmanager
    def claim(self, key: str, *, what: str, timeout: float | None, on_wait: Callable[[str], None]) -> Iterator[None]:
        """Hold the key: a second run needing the same stage waits here, then finds it cached."""
        with file_lock(self.root / "locks" / f"{key}.lock", what=what, timeout=timeout, on_wait=on_wait):
            yield

    def lookup(self, key: str, stage: str) -> CacheEntry | None:
        """The entry for ``key``, or None when there is none (or it cannot be read)."""
        path = self._entry_dir(key)
        try:
            meta = json.loads((path / "entry.json").read_text())
        except (OSError, ValueError):
            return None
        return self._entry(key, stage, path, meta)

    @staticmethod
    def _entry(key: str, stage: str, path: Path, meta: Any) -> CacheEntry | None:
        if not isinstance(meta, dict) or meta.get("schema") != _SCHEMA or meta.get("key") != key:
            return None
        if meta.get("stage") != stage or not isinstance(meta.get("files"), dict):
            return None
        return CacheEntry(
            key=key,
            path=path,
            stage=stage,
            run=str(meta.get("run")),
            created_at=str(meta.get("created_at")),
            files=meta["files"],
            record=meta.get("record") or {},
        )

    def restore(self, entry: CacheEntry, stage_dir: Path) -> bool:
        """Copy the entry into an empty ``stage_dir``, checking every file's sha256 on the way.
        A mismatch or a missing file discards the entry and returns False (the caller runs the
        stage instead)."""
        src_root = entry.path / "files"
        try:
            for rel, meta in sorted(entry.files.items()):
                if _unsafe(rel):
                    raise ValueError(rel)
                dest = stage_dir / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                digest, size = _copy_hashing(src_root / rel, dest)
                if digest != meta.get("sha256") or size != meta.get("bytes"):
                    raise ValueError(rel)
            with suppress(OSError):
                os.utime(entry.path / "entry.json")  # last used now: prune keeps what is in use
        except (OSError, ValueError):
            self.discard(entry.key)
            for child in stage_dir.iterdir():
                if child.name not in _RUN_SPECIFIC:
                    _remove(child)
            return False
        return True

    def store(
        self, key: str, stage: str, stage_dir: Path, *, run: str, created_at: str, record: dict[str, Any], artifacts
    ) -> bool:
        """Copy a generated stage's folder into the cache under ``key``. Does nothing when the
        entry exists already (another run stored it first), when the folder holds links, or
        when an artifact is not the file its recorded sha256 says; returns whether it stored."""
        final = self._entry_dir(key)
        if (final / "entry.json").exists():
            return False
        tmp = self.root / "tmp" / f"{os.getpid()}-{uuid.uuid4().hex}"
        try:
            files_dir = tmp / "files"
            files: dict[str, dict[str, Any]] = {}
            for path in sorted(stage_dir.rglob("*")):
                rel = path.relative_to(stage_dir).as_posix()
                if path.is_symlink():
                    return False  # what a link points to is not part of the stage's outputs
                if path.is_dir() or rel in _RUN_SPECIFIC:
                    continue
                dest = files_dir / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                digest, size = _copy_hashing(path, dest)
                files[rel] = {"sha256": digest, "bytes": size}
            prefix = stage_dir.name + "/"
            for art in artifacts:
                rel = art.path[len(prefix) :] if art.path.startswith(prefix) else None
                if rel is None or files.get(rel, {}).get("sha256") != art.sha256:
                    return False  # outputs outside the stage folder, or not what outputs.json says
            atomic_write_json(
                tmp / "entry.json",
                {
                    "schema": _SCHEMA,
                    "key": key,
                    "stage": stage,
                    "run": run,
                    "created_at": created_at,
                    "record": record,
                    "files": files,
                },
            )
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(tmp, final)  # one step: the entry is whole or absent
            except OSError:
                return False  # another process stored the same key first
            return True
        except OSError:
            return False
        finally:
            if tmp.exists():
                _remove(tmp)

    def discard(self, key: str) -> None:
        """Remove an entry (renamed away first, so no reader sees half of it)."""
        path = self._entry_dir(key)
        if not path.exists():
            return
        trash = self.root / "tmp" / f"discard-{uuid.uuid4().hex}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        with suppress(OSError):
            os.rename(path, trash)
            _remove(trash)

    def entries(self) -> list[CacheEntry]:
        """Every readable entry, least recently used first."""
        found = []
        if self.root.is_dir():
            for path in self.root.glob("??/*/entry.json"):
                try:
                    meta = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue
                if isinstance(meta, dict):
                    entry = self._entry(path.parent.name, str(meta.get("stage")), path.parent, meta)
                    if entry is not None:
                        found.append(entry)
        return sorted(found, key=lambda e: e.last_used)

    def prune(
        self,
        *,
        older_than_s: float | None = None,
        max_bytes: int | None = None,
        now: float | None = None,
        dry_run: bool = False,
    ) -> tuple[list[CacheEntry], list[CacheEntry]]:
        """Remove entries not used for ``older_than_s`` seconds, then the least recently used
        ones until the rest fit in ``max_bytes``; returns ``(removed, kept)`` (with ``dry_run``:
        what would be removed, and nothing is).

        An entry whose key a running stage holds (:meth:`claim`) is kept. Removing an entry never
        changes a result: a run that needs it again runs its stage again.
        """
        now = time.time() if now is None else now
        entries = self.entries()
        total = sum(e.bytes for e in entries)
        removed, kept = [], []
        for entry in entries:  # least recently used first
            stale = older_than_s is not None and now - entry.last_used > older_than_s
            too_big = max_bytes is not None and total > max_bytes
            if (stale or too_big) and (dry_run or self._discard_unclaimed(entry.key)):
                removed.append(entry)
                total -= entry.bytes
            else:
                kept.append(entry)
        if not dry_run:
            self.sweep_temporary()
        return removed, kept

    def _discard_unclaimed(self, key: str) -> bool:
        try:
            with file_lock(self.root / "locks" / f"{key}.lock", what=f"cache entry {key[:12]}", timeout=0):
                self.discard(key)
        except LockTimeout:
            return False
        return True

    def sweep_temporary(self, older_than_s: float = 3600.0) -> None:
        """Remove temporary folders left by processes that were killed mid-write."""
        tmp = self.root / "tmp"
        if not tmp.is_dir():
            return
        now = time.time()
        for child in tmp.iterdir():
            with suppress(OSError):
                pid = child.name.split("-", 1)[0]
                dead = pid.isdigit() and not process_alive(int(pid))
                if dead or now - child.stat().st_mtime > older_than_s:
                    _remove(child)


def _unsafe(rel: str) -> bool:
    return rel.startswith("/") or any(part in ("", "..") for part in rel.split("/"))


def _copy_hashing(src: Path, dest: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        while chunk := fin.read(_CHUNK):
            h.update(chunk)
            fout.write(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _remove(path: Path) -> None:
    def writable(func, p, _exc):  # a finished stage's files may be read-only
        with suppress(OSError):
            os.chmod(os.path.dirname(p), 0o755)
            os.chmod(p, 0o755)
            func(p)

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, onerror=writable)
    else:
        with suppress(OSError):
            path.unlink()
