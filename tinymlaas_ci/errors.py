"""The error types of TinyMLaaS-CI.

There is one root, :class:`TinymlError`. Every error says what failed, where, and how to fix
it; the subclasses carry that data (file positions, run, stage, device) so that the CLI and the
workflows can print it in the form their reader needs. Errors from vendors (Docker, the Hub,
ONNX, git) are wrapped once, at the module that calls them, with ``raise ... from exc``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = [
    "ArchiveError",
    "DeviceError",
    "ExecutorError",
    "FileSystemError",
    "GitError",
    "IntegrityError",
    "LockTimeout",
    "NotifyError",
    "Problem",
    "SourceError",
    "SpecError",
    "TinymlError",
    "UsageError",
    "os_error",
    "os_errors",
]

_MAX_MESSAGE = 2000


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
"""Terminal colour and cursor codes. Vendor messages carry them (the ONNX exporter colours its
errors); in error.json, a result file, an email or a web page they are only noise."""


def _bounded(text: str, limit: int = _MAX_MESSAGE) -> str:
    text = _ANSI.sub("", str(text))
    return text if len(text) <= limit else text[: limit - 15] + " ... (truncated)"


class TinymlError(Exception):
    """Root of every error this package raises on purpose.

    ``hint`` says what the user can do next; the CLI prints it under the message.
    """

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = _bounded(message)
        self.hint = hint
        super().__init__(self.message)

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class UsageError(TinymlError, ValueError):
    """The command line was wrong (exit code 2)."""

    exit_code = 2


@dataclass(frozen=True, order=True)
class Problem:
    """One problem in one file, at a 1-based line and column (0 when unknown)."""

    path: str
    line: int
    column: int
    message: str
    hint: str | None = field(default=None, compare=False)

    def format(self) -> str:
        where = self.path
        if self.line:
            where += f":{self.line}:{self.column or 1}"
        text = f"{where}: {self.message}"
        if self.hint:
            text += f" ({self.hint})"
        return text

    def as_dict(self) -> dict:
        return {
            "path": self.path,
            "line": self.line,
            "column": self.column,
            "message": self.message,
            "hint": self.hint,
        }


class SpecError(TinymlError, ValueError):
    """One or more spec files are invalid. Carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems)
        count = len(self.problems)
        head = "\n".join(p.format() for p in self.problems[:50])
        more = f"\n... and {count - 50} more" if count > 50 else ""
        noun = "problem" if count == 1 else "problems"
        super().__init__(f"{count} {noun} in spec files:\n{head}{more}")


class SourceError(TinymlError):
    """A model or dataset could not be fetched (Hub repo, revision, file, or an upload)."""

    def __init__(self, message: str, *, source: str | None = None, hint: str | None = None):
        self.source = source
        super().__init__(message, hint=hint)


class ArchiveError(SourceError, ValueError):
    """An archive was refused: unsafe member, too large, or not a supported layout."""


class ExecutorError(TinymlError):
    """The executor itself failed: no Docker engine, missing image, container killed."""


class DeviceError(TinymlError):
    """A device is unknown, unreachable, or not ready."""

    def __init__(self, message: str, *, device: str | None = None, hint: str | None = None):
        self.device = device
        super().__init__(f"device {device!r}: {message}" if device else message, hint=hint)


class LockTimeout(TinymlError, TimeoutError):
    """A device lock was not acquired in time."""


class IntegrityError(TinymlError):
    """A file is not what was recorded: an artifact changed after its stage finished, or a
    download differs from the hash its source announced."""

    def __init__(self, message: str, *, path: str | None = None, hint: str | None = None):
        self.path = path
        super().__init__(message, hint=hint)


class GitError(TinymlError):
    """A git operation failed."""


class NotifyError(TinymlError):
    """A notification could not be sent. Never changes a run's result."""


class FileSystemError(TinymlError, OSError):
    """A file could not be written, read or created. Names the path and says what to do.

    Also an :class:`OSError` with the original ``errno``, so callers that test for one still can.
    """

    def __init__(self, message: str, *, path: str | None = None, errno_: int | None = None, hint: str | None = None):
        self.path = path
        TinymlError.__init__(self, message, hint=hint)
        self.errno = errno_
        self.filename = path

    def __str__(self) -> str:
        return TinymlError.__str__(self)


_NAME_MAX = 255


def _open_file_in(exc: BaseException) -> str | None:
    """The file a failed ``write`` was writing to. ``write`` and ``flush`` raise an OSError that
    names no file (``[Errno 28] No space left on device``); the file object is a local variable
    of one of the frames the exception passed through, innermost first."""
    import io

    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for value in list(frame.f_locals.values()):
            if isinstance(value, io.IOBase):
                name = getattr(value, "name", None)
                if isinstance(name, (str, bytes)) and name:
                    return os.fsdecode(name)
    return None


def _longest_part(path: str) -> tuple[str, int]:
    parts = [p for p in path.replace("\\", "/").split("/") if p]
    part = max(parts, key=lambda p: len(p.encode("utf-8", "surrogateescape")), default="")
    return part, len(part.encode("utf-8", "surrogateescape"))


def _shown(path: str, limit: int = 160) -> str:
    return path if len(path) <= limit else f"{path[:70]}...{path[-70:]} ({len(path)} characters)"


def os_error(exc: OSError, *, path: str | os.PathLike | None = None, doing: str | None = None) -> FileSystemError:
    """The :class:`FileSystemError` for an :class:`OSError`: what failed, on which path, and a hint.

    ``path`` is used when the exception names none; ``doing`` says what was being done
    ("extracting member 'a/b' of archive 'x.zip'"). Used wherever files are written or extracted,
    so that "[Errno 28] No space left on device" becomes a message a user can act on.
    """
    if isinstance(exc, FileSystemError):
        return exc
    where = exc.filename if exc.filename is not None else path
    if where is None:
        where = _open_file_in(exc)
    where = os.fsdecode(where) if where is not None else None
    shown = _shown(where) if where is not None else "a file"
    code = exc.errno
    reason = exc.strerror or str(exc) or type(exc).__name__
    hint: str | None
    if code == errno.ENAMETOOLONG:
        _part, size = _longest_part(where or "")
        reason = "the file name is too long"
        if size > _NAME_MAX:
            reason += f" (one part is {size} bytes; file systems allow {_NAME_MAX})"
        else:
            reason += f" (the whole path is {len((where or '').encode('utf-8', 'surrogateescape'))} bytes)"
        hint = "rename the file or folder to a shorter name (at most 255 bytes per part), or use a shorter work folder"
    elif code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        reason = "no space left on the device" if code == errno.ENOSPC else "the disk quota is exhausted"
        hint = (
            "free space on the file system that holds this path (see 'df -h'), or point TINYMLAAS_WORK_DIR "
            "at a larger one; 'tinymlaas' keeps run folders under .tinymlaas/work"
        )
    elif code == errno.EFBIG:
        reason = "the file is larger than this process may write (a file size limit, ulimit -f, or the file system's)"
        hint = "raise the file size limit (ulimit -f) or use a file system that allows larger files"
    elif code in (errno.EACCES, errno.EPERM):
        reason = "permission denied"
        hint = (
            "check who owns the path and its folder and their modes (ls -ld); the user that runs "
            "tinymlaas needs to write there"
        )
    elif code == errno.EROFS:
        reason = "the file system is read-only"
        hint = "write to a writable folder (set TINYMLAAS_WORK_DIR), or remount the file system read-write"
    elif code in (errno.EMFILE, errno.ENFILE):
        reason = "too many open files"
        hint = "raise the open-file limit (ulimit -n), or close other programs"
    elif code == errno.ENOENT:
        reason = "no such file or folder"
        hint = "check that the path exists and is spelled as in the spec"
    elif code == errno.ENOTDIR:
        reason = "a part of the path is a file, not a folder"
        hint = "rename the file that is in the way, or change the path"
    elif code == errno.EISDIR:
        reason = "it is a folder, not a file"
        hint = "name a file, not a folder"
    elif code == errno.EEXIST:
        reason = "it already exists"
        hint = "remove it, or choose another name"
    elif code == errno.ELOOP:
        reason = "it is a symbolic link (or a loop of them), which is not followed"
        hint = "replace the link with the file itself"
    elif code == errno.EIO:
        reason = "an input/output error (the disk or the network file system failed)"
        hint = "check the disk ('dmesg') and retry"
    else:
        hint = "check the path, its permissions and the free space"
    message = f"{doing} failed at {shown}: {reason}" if doing else f"{shown}: {reason}"
    return FileSystemError(message, path=where, errno_=code, hint=hint)


@contextlib.contextmanager
def os_errors(path: str | os.PathLike | None = None, doing: str | None = None) -> Iterator[None]:
    """Turn an :class:`OSError` raised inside into :func:`os_error`'s :class:`FileSystemError`."""
    try:
        yield
    except FileSystemError:
        raise
    except OSError as exc:
        raise os_error(exc, path=path, doing=doing) from exc
