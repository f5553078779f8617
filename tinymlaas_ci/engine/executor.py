"""The executor interface: run one stage of one run against its run volume.

Executors differ only in *where* the stage process runs (a subprocess here, a container on a
Docker engine); the stage contract (see :mod:`tinymlaas_ci.stages.contract`) is the same.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tinymlaas_ci.spec.models import SshEndpoint

__all__ = ["ExecOutcome", "Executor", "LineSink", "StageCall", "builtin_argv"]

LineSink = Callable[[str], None]
"""Receives each line the stage prints (stdout and stderr merged), without the newline."""


@dataclass(frozen=True)
class StageCall:
    """Everything an executor needs to run one stage."""

    run_id: str
    """``<project>/<run>``."""
    stage: str
    """The stage's name in the pipeline (its folder in the run volume)."""
    builtin: str | None
    """``fetch``/``compile``/``install``/``infer``, or None for a user's own stage."""
    command: tuple[str, ...] | None
    """A user stage's command; ``{run}`` stands for the run volume path."""
    image: str | None
    """Docker image (name:tag) the stage runs in; None means the executor's default stage image."""
    network: bool = False
    """Whether the stage may reach the network."""
    memory_mb: int | None = None
    cpus: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment (e.g. HF_TOKEN for fetch). Never logged."""
    docker_host: str | None = None
    """Run on this Docker engine instead of the default one (a ``docker`` device)."""
    ssh: SshEndpoint | None = None
    """The ``ssh:`` section of an ``ssh`` device, for the SSH executor."""
    device: str | None = None
    """The device's name, for messages."""
    withheld: tuple[str, ...] = ()
    """Paths relative to the run volume that this stage may not read: the evaluation data,
    hidden from every stage but install and infer (:data:`tinymlaas_ci.stages.contract.GRADING_STAGES`)."""
    withheld_repo: tuple[str, ...] = ()
    """Paths relative to the repository hidden the same way: the run's dataset upload."""


@dataclass(frozen=True)
class ExecOutcome:
    returncode: int
    executor: str
    image: str | None = None
    image_digest: str | None = None
    oom_killed: bool = False


class Executor(Protocol):
    name: str

    def run(self, call: StageCall, volume: Path, repo: Path, sink: LineSink) -> ExecOutcome:
        """Run the stage to completion. ``volume`` is the run volume on this machine; ``repo`` the
        repository root (read-only for the stage). Must not raise for a stage that fails: return
        its exit code. Raises :class:`~tinymlaas_ci.errors.ExecutorError` when the executor itself
        cannot work (no engine, missing image)."""
        ...


def builtin_argv(call: StageCall, volume: str, python: str | None = None) -> list[str]:
    """The command line of a stage, with ``{run}`` replaced by ``volume``."""
    if call.builtin is not None:
        return [python or sys.executable, "-m", f"tinymlaas_ci.stages.{call.builtin}", volume, "--name", call.stage]
    assert call.command is not None
    argv = [part.replace("{run}", volume) for part in call.command]
    if python and argv[0] in ("python", "python3"):
        # The same interpreter as the runner, so a stage sees the packages the runner sees.
        argv[0] = python
    return argv
