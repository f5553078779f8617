"""The stage contract, seen from inside a stage.

The same for the local executor, for Docker, and for stages users write themselves:

* the run volume is mounted at ``/run`` (a plain directory for the local executor);
* the stage reads ``/run/<stage>/stage.json`` (its parameters and resolved inputs);
* it writes only under ``/run/<stage>/``;
* on success it writes ``/run/<stage>/outputs.json`` and exits 0;
* on failure it exits non-zero and ``/run/<stage>/error.json`` says why.

``stage.json``::

    {"schema": 1, "stage": "compile", "builtin": "compile",
     "run": {"project": "digits", "name": "cnn-int8"},
     "params": {...},                      # stage parameters from the plan
     "spec": {...},                        # the expanded run spec
     "device": {...},                      # the device spec
     "inputs": {"fetch": {...outputs.json of fetch...}}}

``outputs.json``::

    {"schema": 1, "stage": "compile",
     "artifacts": {"model": {"path": "compile/model.onnx", "sha256": "...", "bytes": 1234}},
     "metrics": {...}, "records": {...}}

Artifact paths are relative to the run volume, so they mean the same in every executor.
This module imports nothing heavy: stages import torch or onnxruntime themselves, lazily.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinymlaas_ci.errors import TinymlError
from tinymlaas_ci.fs import atomic_write_json, is_within, sha256_file

__all__ = ["CONTRACT_SCHEMA", "ERROR_FILE", "OUTPUTS_FILE", "STAGE_FILE", "StageContext", "stage_main"]

CONTRACT_SCHEMA = 1
STAGE_FILE = "stage.json"
OUTPUTS_FILE = "outputs.json"
ERROR_FILE = "error.json"


@dataclass
class StageContext:
    """What a stage gets: its folder, parameters and upstream outputs."""

    volume: Path
    name: str
    config: dict[str, Any]
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    records: dict[str, Any] = field(default_factory=dict)

    @property
    def dir(self) -> Path:
        return self.volume / self.name

    @property
    def params(self) -> dict[str, Any]:
        return self.config.get("params", {})

    @property
    def spec(self) -> dict[str, Any]:
        return self.config.get("spec", {})

    @property
    def device(self) -> dict[str, Any]:
        return self.config.get("device", {})

    @property
    def inputs(self) -> dict[str, dict[str, Any]]:
        return self.config.get("inputs", {})

    def upstream(self, builtin: str) -> dict[str, Any]:
        """Outputs of the upstream stage that is (or is named) ``builtin``."""
        for name, outputs in self.inputs.items():
            if name == builtin or outputs.get("builtin") == builtin:
                return outputs
        raise TinymlError(
            f"stage {self.name!r} needs the outputs of a {builtin!r} stage, but none was given",
            hint="check the pipeline's 'needs'",
        )

    def input_path(self, builtin: str, artifact: str) -> Path:
        """Path of an upstream artifact, checked to lie inside the run volume."""
        outputs = self.upstream(builtin)
        try:
            rel = outputs["artifacts"][artifact]["path"]
        except KeyError:
            raise TinymlError(f"upstream stage {builtin!r} produced no artifact {artifact!r}") from None
        path = self.volume / rel
        if not is_within(path, self.volume):
            raise TinymlError(f"artifact path {rel!r} escapes the run volume")
        return path

    def path(self, *parts: str) -> Path:
        """A path inside this stage's own folder (the only place it may write)."""
        path = self.dir.joinpath(*parts)
        if not is_within(path, self.dir):
            raise TinymlError(f"stage {self.name!r} may only write under its own folder, not {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def add_artifact(self, key: str, path: Path) -> dict[str, Any]:
        """Record a file this stage wrote as an output artifact (with its sha256 and size)."""
        path = Path(path)
        if not is_within(path, self.dir):
            raise TinymlError(f"artifact {path} is outside the stage folder {self.dir}")
        record = {
            "path": path.resolve().relative_to(self.volume.resolve()).as_posix(),
            "sha256": sha256_file(path),
            "bytes": path.stat().st_size,
        }
        self.artifacts[key] = record
        return record

    def log(self, message: str) -> None:
        print(f"[{self.name}] {message}", flush=True)

    def outputs(self) -> dict[str, Any]:
        return {
            "schema": CONTRACT_SCHEMA,
            "stage": self.name,
            "builtin": self.config.get("builtin"),
            "artifacts": self.artifacts,
            "metrics": self.metrics,
            "records": self.records,
        }


def _write_error(stage_dir: Path, name: str, exc: BaseException) -> None:
    record = {
        "schema": CONTRACT_SCHEMA,
        "stage": name,
        "type": type(exc).__name__,
        "message": getattr(exc, "message", None) or str(exc) or type(exc).__name__,
        "hint": getattr(exc, "hint", None),
    }
    if not isinstance(exc, TinymlError):
        record["traceback"] = "".join(traceback.format_exception(exc))[-4000:]
    try:
        atomic_write_json(stage_dir / ERROR_FILE, record)
    except OSError:
        pass


def stage_main(builtin: str, body: Callable[[StageContext], None], argv: list[str] | None = None) -> int:
    """Entry point of a stage: ``python -m tinymlaas_ci.stages.<builtin> VOLUME [--name NAME]``."""
    parser = argparse.ArgumentParser(prog=f"tinymlaas_ci.stages.{builtin}")
    parser.add_argument("volume", type=Path, help="the run volume (mounted at /run in containers)")
    parser.add_argument("--name", default=builtin, help="the stage's name in the pipeline")
    args = parser.parse_args(argv)
    volume = args.volume.resolve()
    stage_dir = volume / args.name
    try:
        config = json.loads((stage_dir / STAGE_FILE).read_text())
    except (OSError, ValueError) as exc:
        print(f"error: cannot read {stage_dir / STAGE_FILE}: {exc}", file=sys.stderr)
        stage_dir.mkdir(parents=True, exist_ok=True)
        _write_error(stage_dir, args.name, exc)
        return 2
    ctx = StageContext(volume=volume, name=args.name, config=config)
    started = time.perf_counter()
    try:
        body(ctx)
        atomic_write_json(stage_dir / OUTPUTS_FILE, ctx.outputs())
    except BaseException as exc:  # the contract: every failure leaves error.json
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            raise
        _write_error(stage_dir, args.name, exc)
        if isinstance(exc, TinymlError):
            print(f"error: {exc}", file=sys.stderr)
        else:
            traceback.print_exc()
        return 1
    ctx.log(f"done in {time.perf_counter() - started:.2f}s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run a stage module, e.g. python -m tinymlaas_ci.stages.fetch VOLUME")
