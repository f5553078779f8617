"""The outcomes file: what one ``tinymlaas run --json FILE`` did, run by run.

A device job writes it; the publish job downloads one per device and hands them to
``tinymlaas github job-summary --outcomes`` and ``tinymlaas notify --outcomes``. Both read it
with :func:`read_outcomes`, so both accept the same things:

- a file: it must be an outcomes file (``schema: 1`` and an ``outcomes`` list);
- a folder: every ``*.json`` below it, in subfolders too (``actions/download-artifact`` puts
  each artifact in a folder of its own). JSON files without an ``outcomes`` key are passed
  over (an artifact may hold other files); one with that key must be a valid outcomes file;
  a folder with no outcomes file at all is an error.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tinymlaas_ci.errors import UsageError
from tinymlaas_ci.fs import atomic_write_json

__all__ = ["OUTCOMES_SCHEMA", "Outcome", "OutcomeStatus", "OutcomesFile", "read_outcomes", "write_outcomes"]

OUTCOMES_SCHEMA = 1

OutcomeStatus = Literal["succeeded", "gates-failed", "failed", "up-to-date", "not-run"]

_HINT = "pass the file written by 'tinymlaas run --json FILE', or a folder of them"


class Outcome(BaseModel):
    """What happened to one run."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    run: str = Field(pattern=r"^[^/]+/[^/]+$")
    """The run's id, ``<project>/<name>``."""
    status: OutcomeStatus
    """``succeeded``, ``gates-failed``, ``failed``, ``up-to-date`` or ``not-run`` (an earlier
    run on the same device failed)."""
    result: str | None = None
    """The result file written, relative to the repository root; None when none was."""
    failed_stage: str | None = None
    """The stage that failed, for a failed run."""
    message: str | None = None
    """Why it failed, for a failed run."""
    log: str | None = None
    """The failed stage's log on the runner machine."""

    @property
    def project(self) -> str:
        return self.run.split("/", 1)[0]

    @property
    def name(self) -> str:
        return self.run.split("/", 1)[1]


class OutcomesFile(BaseModel):
    """The file ``tinymlaas run --json FILE`` writes."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, use_attribute_docstrings=True)

    schema_: Literal[1] = Field(default=OUTCOMES_SCHEMA, alias="schema")
    """Version of this file format. Always ``1``."""
    outcomes: list[Outcome]
    """One entry per planned run, in the order they ran."""


def write_outcomes(path: str | Path, outcomes: Iterable[Outcome]) -> None:
    """Write an outcomes file atomically, with sorted keys."""
    data = OutcomesFile(outcomes=list(outcomes)).model_dump(mode="json", by_alias=True)
    atomic_write_json(Path(path), data)


def _read_file(path: Path, *, in_folder: bool) -> list[Outcome] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        if in_folder:
            return None  # not JSON at all: another file of the artifact
        raise UsageError(f"{path}: not a JSON file: {exc}", hint=_HINT) from exc
    if not isinstance(data, dict) or "outcomes" not in data:
        if in_folder:
            return None
        raise UsageError(f"{path}: has no 'outcomes' list: not an outcomes file", hint=_HINT)
    try:
        return OutcomesFile.model_validate(data).outcomes
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "(top level)"
        raise UsageError(
            f"{path}: not a valid outcomes file (schema {OUTCOMES_SCHEMA}): {where}: {first.get('msg')}",
            hint="it is written by 'tinymlaas run --json FILE' of the same tinymlaas version",
        ) from exc


def read_outcomes(path: str | Path) -> list[Outcome]:
    """The outcomes in ``path``, a file or a folder searched recursively (rules above)."""
    path = Path(path)
    if path.is_dir():
        read = [_read_file(f, in_folder=True) for f in sorted(path.rglob("*.json")) if f.is_file()]
        files = [outcomes for outcomes in read if outcomes is not None]
        if not files:
            raise UsageError(f"--outcomes {path}: the folder holds no outcomes file", hint=_HINT)
        return [outcome for outcomes in files for outcome in outcomes]
    if path.is_file():
        return _read_file(path, in_folder=False) or []
    raise UsageError(f"--outcomes {path}: no such file or folder", hint=_HINT)
