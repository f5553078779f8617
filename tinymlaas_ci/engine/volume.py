"""Run volumes and status records.

A run volume is one folder per run (``.tinymlaas/work/<project>/<run>/`` by default) holding a
folder per stage: ``stage.json`` in, ``outputs.json`` / ``error.json`` out, ``log.txt``, and
``status.json`` — the record the studio kept in its database: ``pending`` -> ``running`` ->
``generated`` or ``failed``, with times, cache key and executor.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tinymlaas_ci.errors import TinymlError
from tinymlaas_ci.fs import atomic_write_json, is_within

__all__ = ["LOG_FILE", "STATUS_FILE", "ArtifactStat", "RunVolume", "StageStatus", "default_work_dir", "now_iso"]

STATUS_FILE = "status.json"
LOG_FILE = "log.txt"
Status = Literal["pending", "running", "generated", "failed"]


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def default_work_dir(repo_root: Path) -> Path:
    env = os.environ.get("TINYMLAAS_WORK_DIR")
    return Path(env).resolve() if env else repo_root / ".tinymlaas" / "work"


class ArtifactStat(BaseModel):
    """What an output file looked like when its stage finished."""

    model_config = ConfigDict(extra="forbid")

    size: int
    mtime_ns: int
    sha256: str | None = None


class StageStatus(BaseModel):
    """``status.json`` of a stage: written and read by the engine only (:meth:`RunVolume.status`,
    :meth:`RunVolume.write_status`); ``tinymlaas run --status`` shows it."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    schema_: Literal[1] = Field(default=1, alias="schema")
    """Version of this file format."""
    stage: str
    """The stage's name in the pipeline."""
    status: Status = "pending"
    """``pending`` -> ``running`` -> ``generated`` or ``failed``."""
    started_at: str | None = None
    finished_at: str | None = None
    duration_s: float | None = None
    cache_key: str | None = None
    """The key the outputs were produced under; equal key and intact artifacts mean a cache hit."""
    cache_hit: bool = False
    cache_entry: str | None = None
    """When the outputs were copied from the shared stage cache: the entry's key."""
    cache_from: str | None = None
    """When the outputs were copied from the shared stage cache: the run that generated them."""
    executor: str | None = None
    image: str | None = None
    image_digest: str | None = None
    returncode: int | None = None
    pid: int | None = None
    """The runner process that ran the stage (a ``running`` stage whose runner is gone crashed)."""
    stage_pid: int | None = None
    """The stage's own process (the leader of its process group), while it runs."""
    stage_started: int | None = None
    """That process's start time (clock ticks since boot), which tells it apart from a later
    process that got the same id."""
    artifacts: dict[str, ArtifactStat] = Field(default_factory=dict)
    """path -> size, mtime and sha256 of the outputs when the stage finished: a cheap stat
    check tells whether they are still what the stage produced."""


class RunVolume:
    """The folder of one run."""

    def __init__(self, work_dir: Path, project: str, name: str):
        self.root = (work_dir / project / name).resolve()
        self.project = project
        self.name = name

    def create(self) -> RunVolume:
        self.root.mkdir(parents=True, exist_ok=True)
        return self

    def stage_dir(self, stage: str) -> Path:
        path = self.root / stage
        if not is_within(path, self.root):
            raise TinymlError(f"stage name {stage!r} escapes the run volume")
        return path

    def status(self, stage: str) -> StageStatus:
        path = self.stage_dir(stage) / STATUS_FILE
        try:
            return StageStatus.model_validate(json.loads(path.read_text()))
        except (OSError, ValueError, ValidationError):
            return StageStatus(stage=stage)  # none yet, or unreadable: the stage runs again

    def write_status(self, status: StageStatus) -> None:
        atomic_write_json(self.stage_dir(status.stage) / STATUS_FILE, status.model_dump(mode="json", by_alias=True))

    def reset_stage(self, stage: str) -> Path:
        """Empty a stage's folder before it runs, so nothing half-written survives a crash."""
        path = self.stage_dir(stage)
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    def read_json(self, stage: str, filename: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.stage_dir(stage) / filename).read_text())
        except (OSError, ValueError):
            return None
