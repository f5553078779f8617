"""Where result files live in an adopter's repository, and how one is read.

A run's result is ``runs/<project>/results/<name>.json``, relative to the repository root,
with forward slashes (it is also a path in git). Everything that names, finds or parses a
result file asks this module: the plan, the repository loader, the runner, the commit, the
pull-request comment, the job summary, the emails and the website.

This module imports only the result model, so the spec layer may use its path functions too.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pydantic import ValidationError

from tinymlaas_ci.errors import TinymlError
from tinymlaas_ci.results.models import Result

__all__ = [
    "RESULT_GLOB",
    "RESULT_PATH",
    "parse_result",
    "parse_result_path",
    "read_result",
    "result_file",
    "result_path",
]

RESULT_GLOB = "runs/*/results/*.json"
"""Every result file, as a glob relative to the repository root (also a git pathspec)."""
RESULT_PATH = re.compile(r"^runs/(?P<project>[^/]+)/results/(?P<name>[^/]+)\.json$")
"""A result file's path relative to the repository root; the groups are the run's identity."""


def result_path(project: str, name: str) -> str:
    """The result file of run ``project/name``, relative to the repository root."""
    return f"runs/{project}/results/{name}.json"


def result_file(root: str | Path, project: str, name: str) -> Path:
    """The result file of run ``project/name`` in the repository at ``root``."""
    return Path(root) / result_path(project, name)


def parse_result_path(rel: str) -> tuple[str, str] | None:
    """``(project, name)`` of a result path relative to the root, or None when it is not one."""
    m = RESULT_PATH.match(rel)
    return (m["project"], m["name"]) if m else None


def parse_result(data: bytes | str) -> Result:
    """Parse a result file's content.

    Raises ``ValueError``: ``json.JSONDecodeError`` when it is not JSON, ``UnicodeDecodeError``
    when it is not UTF-8, a ``ValidationError`` when it is JSON but not a result.
    """
    obj = json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    return Result.model_validate(obj)


def read_result(path: str | Path) -> Result:
    """Read the result file at ``path``; a missing, unreadable or invalid file is a
    :class:`~tinymlaas_ci.errors.TinymlError` that names it."""
    try:
        return parse_result(Path(path).read_bytes())
    except (OSError, ValueError, ValidationError) as exc:
        raise TinymlError(
            f"{path}: not a valid result file: {exc}",
            hint="result files are written by 'tinymlaas run'; restore it from git",
        ) from exc
