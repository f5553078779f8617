"""Writing result files (their paths and reading them: :mod:`tinymlaas_ci.results.layout`)."""

from __future__ import annotations

from pathlib import Path

from tinymlaas_ci.fs import atomic_write_json
from tinymlaas_ci.results.layout import read_result
from tinymlaas_ci.results.models import Result

__all__ = ["read_result", "write_result"]


def write_result(path: Path, result: Result) -> None:
    """Write atomically, sorted keys, so git diffs of results stay readable."""
    atomic_write_json(path, result.to_json_dict())
