"""The error types of TinyMLaaS-CI.

There is one root, :class:`TinymlError`. Every error says what failed, where, and how to fix
it; the subclasses carry that data (file positions, run, stage, device) so that the CLI and the
workflows can print it in the form their reader needs. Errors from vendors (Docker, the Hub,
ONNX, git) are wrapped once, at the module that calls them, with ``raise ... from exc``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = [
    "ArchiveError",
    "DeviceError",
    "ExecutorError",
    "GitError",
    "LockTimeout",
    "NotifyError",
    "Problem",
    "SourceError",
    "SpecError",
    "TinymlError",
    "UsageError",
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


class GitError(TinymlError):
    """A git operation failed."""


class NotifyError(TinymlError):
    """A notification could not be sent. Never changes a run's result."""
