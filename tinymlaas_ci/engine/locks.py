"""Inter-process locks: one run at a time per run volume, one install/infer at a time per device."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tinymlaas_ci.errors import LockTimeout

__all__ = ["file_lock"]


@contextmanager
def file_lock(
    path: Path,
    *,
    what: str,
    timeout: float | None = None,
    on_wait: Callable[[str], None] | None = None,
    poll: float = 0.1,
) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path``. Waits (telling ``on_wait`` once) up to
    ``timeout`` seconds (None: forever), then raises :class:`LockTimeout`.

    ``flock`` locks die with their process, so a ``kill -9`` never leaves a stale lock.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told and on_wait is not None:
                    holder = _holder(fd)
                    on_wait(f"waiting for {what}" + (f" (held by process {holder})" if holder else ""))
                    told = True
                if deadline is not None and time.monotonic() >= deadline:
                    raise LockTimeout(
                        f"timed out after {timeout:g}s waiting for {what}",
                        hint="another 'tinymlaas run' is using it; wait for it, or raise --lock-timeout",
                    ) from None
                time.sleep(poll)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _holder(fd: int) -> str | None:
    try:
        return os.pread(fd, 32, 0).decode().strip() or None
    except OSError:
        return None
