"""Reading and writing result files."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from tinymlaas_ci.errors import TinymlError
from tinymlaas_ci.fs import atomic_write_json
from tinymlaas_ci.results.models import Result

__all__ = ["read_result", "result_path", "write_result"]


def result_path(root: Path, project: str, name: str) -> Path:
    return root / "runs" / project / "results" / f"{name}.json"


def write_result(path: Path, result: Result) -> None:
    """Write atomically, sorted keys, so git diffs of results stay readable."""
    atomic_write_json(path, result.to_json_dict())


def read_result(path: Path) -> Result:
    try:
        return Result.model_validate(json.loads(Path(path).read_text()))
    except (OSError, ValueError, ValidationError) as exc:
        raise TinymlError(
            f"{path}: not a valid result file: {exc}",
            hint="result files are written by 'tinymlaas run'; restore it from git",
        ) from exc
