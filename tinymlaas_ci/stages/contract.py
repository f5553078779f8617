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

Each file has one pydantic model here (:class:`StageConfig`, :class:`StageOutputs`,
:class:`ErrorRecord`) and one reader and one writer; a built-in stage sees its run as the
typed :class:`~tinymlaas_ci.spec.models.RunSpec` (``ctx.run``) and its device as the device
model (``ctx.device``), so no stage restates a default. Stages of users' own may read the same
files as plain JSON.
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
from pathlib import Path, PurePosixPath
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tinymlaas_ci.errors import IntegrityError, TinymlError, os_error
from tinymlaas_ci.fs import atomic_write_json, is_within, sha256_file
from tinymlaas_ci.spec.models import DeviceSpec, DockerDevice, LocalDevice, McuDevice, RunSpec, Runtime, SshDevice

__all__ = [
    "CONTRACT_SCHEMA",
    "ERROR_FILE",
    "GRADING_STAGES",
    "OUTPUTS_FILE",
    "STAGE_FILE",
    "Artifact",
    "ErrorRecord",
    "RunRef",
    "StageConfig",
    "StageContext",
    "StageOutputs",
    "error_record",
    "fit_dataset",
    "read_error",
    "read_outputs",
    "read_stage_config",
    "stage_main",
    "verify_artifact",
    "write_error",
    "write_outputs",
    "write_stage_config",
]

CONTRACT_SCHEMA = 1
STAGE_FILE = "stage.json"
OUTPUTS_FILE = "outputs.json"
ERROR_FILE = "error.json"

Device = LocalDevice | DockerDevice | SshDevice | McuDevice
_M = TypeVar("_M", bound=BaseModel)


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Artifact(_File):
    """A file a stage produced. The path is relative to the run volume, so it means the same
    in every executor."""

    path: str
    """Path relative to the run volume, e.g. ``compile/model.onnx``."""
    sha256: str
    """sha256 of the file's bytes."""
    bytes: int = Field(ge=0)
    """Size of the file."""


class StageOutputs(_File):
    """``outputs.json``: written by a stage that succeeded, read by the engine (cache, result)
    and, through ``stage.json``'s ``inputs``, by the stages that need it."""

    schema_: Literal[1] = Field(default=CONTRACT_SCHEMA, alias="schema")
    """Version of this file format."""
    stage: str
    """The stage's name in the pipeline."""
    builtin: str | None = None
    """``fetch``/``compile``/``install``/``infer`` for a built-in stage, else None."""
    artifacts: dict[str, Artifact] = Field(default_factory=dict)
    """Files the stage produced, by key (``model``, ``dataset``, ``bundle``...)."""
    metrics: dict[str, Any] = Field(default_factory=dict)
    """Measurements (the infer stage's fit :class:`tinymlaas_ci.results.models.Metrics`)."""
    records: dict[str, Any] = Field(default_factory=dict)
    """Facts for the result and for later stages (what was fetched, how it was compressed...)."""
    withheld: list[str] = Field(default_factory=list)
    """Paths (relative to the run volume; files or folders) that hold the evaluation data: only
    the stages that grade the model (:data:`GRADING_STAGES`) may read them. The Docker executor
    hides them from every other stage, so a model's code cannot read what it is graded on."""


GRADING_STAGES = frozenset({"install", "infer"})
"""Built-in stages that read the evaluation data. No model code runs in them: they load the
compiled model (ONNX, TorchScript, generated C) and the evaluation split."""


class ErrorRecord(_File):
    """``error.json``: why a stage failed. Written by the stage (or, when the stage could not,
    by the executor or the engine); read by the engine for the run's error and its log line.
    Only ``message`` is required, so a stage of one's own can write just that (and a hint)."""

    schema_: Literal[1] = Field(default=CONTRACT_SCHEMA, alias="schema")
    """Version of this file format."""
    stage: str | None = None
    """The stage's name in the pipeline."""
    type: str | None = None
    """The exception type (``OutOfMemory`` for a stage the kernel killed)."""
    message: str
    """What failed."""
    hint: str | None = None
    """What to do about it."""
    traceback: str | None = None
    """The end of the traceback of an unexpected exception."""


class RunRef(_File):
    """Which run a stage belongs to."""

    project: str
    name: str


class StageConfig(_File):
    """``stage.json``: written by the engine before a stage runs, read by the stage.

    User stages may read it as plain JSON; its shape is the contract (see the module docstring).
    """

    schema_: Literal[1] = Field(default=CONTRACT_SCHEMA, alias="schema")
    """Version of this file format."""
    stage: str
    """The stage's name in the pipeline (its folder in the run volume)."""
    builtin: str | None = None
    """Which built-in stage this is, or None for a user's own."""
    run: RunRef
    """The run's project and name."""
    repo: str = "."
    """The repository root as the stage sees it (``/repo`` in a container)."""
    params: dict[str, Any] = Field(default_factory=dict)
    """The stage's parameters from the pipeline."""
    spec: RunSpec
    """The expanded run spec, every default filled in."""
    device: DeviceSpec
    """The device spec."""
    inputs: dict[str, StageOutputs] = Field(default_factory=dict)
    """The outputs of the stages this one needs, and of the stages those need, by stage name,
    as the engine read them when each finished. A stage checks every artifact it reads against
    the sha256 recorded here."""


def _write(path: Path, model: BaseModel, *, exclude_none: bool = False) -> None:
    atomic_write_json(path, model.model_dump(mode="json", by_alias=True, exclude_none=exclude_none))


def _read(path: Path, model: type[_M]) -> _M:
    try:
        return model.model_validate(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:  # ValidationError is a ValueError
        raise TinymlError(f"cannot read {path}: {_short(exc)}", hint="re-run the stage that writes it") from exc


def _short(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"{where}: {first['msg']}" + (f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else "")
    return str(exc)


def write_stage_config(stage_dir: Path, config: StageConfig) -> None:
    """Write ``stage.json`` (the engine does, before the stage runs)."""
    _write(stage_dir / STAGE_FILE, config)


def read_stage_config(stage_dir: Path) -> StageConfig:
    """Read ``stage.json`` (a stage does, first thing)."""
    return _read(stage_dir / STAGE_FILE, StageConfig)


def write_outputs(stage_dir: Path, outputs: StageOutputs) -> None:
    """Write ``outputs.json`` (a stage that succeeded does, last thing)."""
    _write(stage_dir / OUTPUTS_FILE, outputs)


def read_outputs(stage_dir: Path) -> StageOutputs:
    """Read ``outputs.json``; raises :class:`TinymlError` when it is missing or malformed."""
    return _read(stage_dir / OUTPUTS_FILE, StageOutputs)


def write_error(stage_dir: Path, record: ErrorRecord) -> None:
    """Write ``error.json``. Best effort: a stage that cannot write it still fails by its exit code."""
    try:
        stage_dir.mkdir(parents=True, exist_ok=True)
        _write(stage_dir / ERROR_FILE, record, exclude_none=True)
    except OSError:
        pass


def read_error(stage_dir: Path) -> ErrorRecord | None:
    """Read ``error.json``, or None when there is none (or it is not one)."""
    try:
        return _read(stage_dir / ERROR_FILE, ErrorRecord)
    except TinymlError:
        return None


def error_record(stage: str, exc: BaseException, *, type_: str | None = None) -> ErrorRecord:
    """The error record of ``exc``: a :class:`TinymlError` says what and how to fix it; anything
    else also keeps the end of its traceback. A raw :class:`OSError` (disk full, name too long,
    permission denied) is told with its path and a hint (:func:`~tinymlaas_ci.errors.os_error`)."""
    told: BaseException = os_error(exc) if isinstance(exc, OSError) and not isinstance(exc, TinymlError) else exc
    return ErrorRecord(
        stage=stage,
        type=type_ or type(exc).__name__,
        message=getattr(told, "message", None) or str(told) or type(exc).__name__,
        hint=getattr(told, "hint", None),
        traceback=None if isinstance(exc, TinymlError) else "".join(traceback.format_exception(exc))[-4000:],
    )


def verify_artifact(volume: Path, art: Artifact, *, owner: str, key: str | None = None) -> Path:
    """Check that the file of ``art`` still has the recorded size and sha256; returns its path.

    ``owner`` is the stage that produced it, for the message. A file that changed after its
    stage finished means something rewrote it (a model's code under the local executor, a
    leftover process, a hand edit): nothing may use it, since results computed from it would
    not describe the recorded inputs.
    """
    path = volume / art.path
    what = f"artifact {key!r} of stage {owner!r}" if key else f"an output of stage {owner!r}"
    if not is_within(path, volume):
        raise IntegrityError(f"{what} names {art.path!r}, which is outside the run volume", path=art.path)
    try:
        if path.is_symlink() or not path.is_file():
            raise IntegrityError(
                f"input {art.path} ({what}) is missing or not a regular file",
                path=art.path,
                hint=f"re-run the run with --force so that stage {owner!r} produces it again",
            )
        size = path.stat().st_size
        digest = sha256_file(path) if size == art.bytes else None
    except OSError as exc:
        raise os_error(exc, path=path, doing=f"checking input {art.path}") from exc
    if size != art.bytes or digest != art.sha256:
        found = f"{size} bytes" if size != art.bytes else f"sha256 {digest}"
        recorded = f"{art.bytes} bytes" if size != art.bytes else f"sha256 {art.sha256}"
        raise IntegrityError(
            f"input {art.path} ({what}) changed after stage {owner!r} finished: it has {found}, "
            f"but {recorded} was recorded; refusing to use it",
            path=art.path,
            hint="something rewrote a finished stage's output (a model's code can, under the local executor, "
            "which cannot sandbox); re-run with --force, and use --executor docker for models you do not trust",
        )
    return path


def fit_dataset(ctx: StageContext) -> Path:
    """The fetch stage's dataset for a stage that must not see the evaluation split: its
    ``fit_dataset`` artifact (every split but the evaluation one), or, from a fetch stage of one's
    own that withholds nothing, its ``dataset``."""
    fetch = ctx.upstream("fetch")
    if "fit_dataset" in fetch.artifacts:
        return ctx.input_path("fetch", "fit_dataset")
    return ctx.input_path("fetch", "dataset")


def _under(rel: str, roots: list[str]) -> bool:
    path = PurePosixPath(rel)
    return any(path == PurePosixPath(r) or PurePosixPath(r) in path.parents for r in roots)


@dataclass
class StageContext:
    """What a stage gets: its folder, its typed ``stage.json`` and what it records."""

    volume: Path
    name: str
    config: StageConfig
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    records: dict[str, Any] = field(default_factory=dict)
    withheld: list[str] = field(default_factory=list)
    _verified: set[str] = field(default_factory=set, repr=False)

    @property
    def dir(self) -> Path:
        return self.volume / self.name

    @property
    def run(self) -> RunSpec:
        """The run spec, with every default filled in (``ctx.run.measure.warmup``...)."""
        return self.config.spec

    @property
    def device(self) -> Device:
        """The device spec (``LocalDevice``, ``DockerDevice`` or ``SshDevice``)."""
        return self.config.device

    @property
    def runtime(self) -> Runtime:
        """The runtime the model is deployed for: the spec's, or for ``runtime: auto`` the one
        the upstream compile stage chose (its ``compression.runtime`` record; ``onnxruntime``
        when a compile stage of the user's own records none)."""
        declared = self.run.runtime
        if declared is not Runtime.auto:
            return declared
        if self.config.builtin == "compile" or not self.has_upstream("compile"):
            raise TinymlError(
                f"stage {self.name!r} needs the compile stage's choice of runtime (the spec says runtime: auto), "
                "but it has no compile stage upstream",
                hint="add 'compile' to the stage's needs in the pipeline, or set the runtime in the spec",
            )
        chosen = (self.upstream("compile").records.get("compression") or {}).get("runtime")
        try:
            runtime = Runtime(chosen or Runtime.onnxruntime.value)
            if runtime is Runtime.auto:
                raise ValueError(chosen)
            return runtime
        except ValueError:
            raise TinymlError(
                f"the compile stage recorded runtime {chosen!r}, which is not a runtime",
                hint="a compile stage records compression.runtime as one of: onnxruntime, pytorch, c",
            ) from None

    @property
    def params(self) -> dict[str, Any]:
        return self.config.params

    @property
    def inputs(self) -> dict[str, StageOutputs]:
        return self.config.inputs

    @property
    def repo(self) -> Path:
        """The repository root."""
        return Path(self.config.repo).resolve()

    def has_upstream(self, builtin: str) -> bool:
        """Whether the pipeline gives this stage the outputs of a ``builtin`` stage."""
        return any(name == builtin or out.builtin == builtin for name, out in self.inputs.items())

    def upstream(self, builtin: str) -> StageOutputs:
        """Outputs of the upstream stage that is (or is named) ``builtin``."""
        for name, outputs in self.inputs.items():
            if name == builtin or outputs.builtin == builtin:
                return outputs
        raise TinymlError(
            f"stage {self.name!r} needs the outputs of a {builtin!r} stage, but none was given",
            hint="check the pipeline's 'needs'",
        )

    def volume_path(self, rel: str) -> Path:
        """A path named relative to the run volume, checked to lie inside it. When it is an
        artifact of an input stage, its recorded sha256 is checked too (:meth:`verify_input`)."""
        path = self.volume / rel
        if not is_within(path, self.volume):
            raise TinymlError(f"artifact path {rel!r} escapes the run volume")
        wanted = PurePosixPath(rel).as_posix()
        for name, outputs in self.inputs.items():
            if any(PurePosixPath(a.path).as_posix() == wanted for a in outputs.artifacts.values()):
                self.verify_input(name)
        return path

    def input_path(self, builtin: str, artifact: str) -> Path:
        """Path of an upstream artifact, checked to lie inside the run volume and to have the
        sha256 its stage recorded: every artifact of that stage is checked the first time one
        is asked for (a bundle's files are read together), so a file rewritten after its stage
        finished fails this stage with a message naming the file."""
        outputs = self.upstream(builtin)
        art = outputs.artifacts.get(artifact)
        if art is None:
            raise TinymlError(f"upstream stage {builtin!r} produced no artifact {artifact!r}")
        if not self.sees_evaluation_data and _under(art.path, outputs.withheld):
            raise TinymlError(
                f"stage {self.name!r} may not read {art.path}: it holds the evaluation data, which only the "
                f"{' and '.join(sorted(GRADING_STAGES))} stages read, so that no model's code can see what it is "
                "graded on",
                hint="read the 'fit_dataset' artifact instead (every split but the evaluation one)",
            )
        path = self.volume_path(art.path)
        self.verify_input(outputs.stage)
        return path

    def verify_input(self, stage: str) -> None:
        """Check every artifact of input stage ``stage`` against its recorded size and sha256
        (once per stage); raises :class:`~tinymlaas_ci.errors.IntegrityError` naming the file."""
        if stage in self._verified:
            return
        outputs = self.inputs.get(stage)
        if outputs is None:
            outputs = next((o for o in self.inputs.values() if o.stage == stage), None)
        if outputs is None:
            raise TinymlError(f"stage {self.name!r} has no input stage {stage!r}")
        for key, art in outputs.artifacts.items():
            if not self.sees_evaluation_data and _under(art.path, outputs.withheld):
                continue  # hidden from this stage (an empty placeholder under Docker)
            verify_artifact(self.volume, art, owner=outputs.stage, key=key)
        self._verified.add(stage)

    @property
    def sees_evaluation_data(self) -> bool:
        """Whether this stage may read the evaluation data (:data:`GRADING_STAGES` only)."""
        return self.config.builtin in GRADING_STAGES

    def withhold(self, path: Path) -> None:
        """Mark a file or folder of this stage as evaluation data (:attr:`StageOutputs.withheld`)."""
        path = Path(path)
        if not is_within(path, self.dir):
            raise TinymlError(f"withheld path {path} is outside the stage folder {self.dir}")
        rel = path.resolve().relative_to(self.volume.resolve()).as_posix()
        if rel not in self.withheld:
            self.withheld.append(rel)

    def verify_inputs(self) -> None:
        """Check every artifact of every input stage (:meth:`verify_input`)."""
        for name in self.inputs:
            self.verify_input(name)

    def path(self, *parts: str) -> Path:
        """A path inside this stage's own folder (the only place it may write)."""
        path = self.dir.joinpath(*parts)
        if not is_within(path, self.dir):
            raise TinymlError(f"stage {self.name!r} may only write under its own folder, not {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def add_artifact(self, key: str, path: Path) -> Artifact:
        """Record a file this stage wrote as an output artifact (with its sha256 and size)."""
        path = Path(path)
        if not is_within(path, self.dir):
            raise TinymlError(f"artifact {path} is outside the stage folder {self.dir}")
        record = Artifact(
            path=path.resolve().relative_to(self.volume.resolve()).as_posix(),
            sha256=sha256_file(path),
            bytes=path.stat().st_size,
        )
        self.artifacts[key] = record
        return record

    def log(self, message: str) -> None:
        print(f"[{self.name}] {message}", flush=True)

    def outputs(self) -> StageOutputs:
        return StageOutputs(
            stage=self.name,
            builtin=self.config.builtin,
            artifacts=self.artifacts,
            metrics=self.metrics,
            records=self.records,
            withheld=self.withheld,
        )


def stage_main(builtin: str, body: Callable[[StageContext], None], argv: list[str] | None = None) -> int:
    """Entry point of a stage: ``python -m tinymlaas_ci.stages.<builtin> VOLUME [--name NAME]``."""
    parser = argparse.ArgumentParser(prog=f"tinymlaas_ci.stages.{builtin}")
    parser.add_argument("volume", type=Path, help="the run volume (mounted at /run in containers)")
    parser.add_argument("--name", default=builtin, help="the stage's name in the pipeline")
    args = parser.parse_args(argv)
    volume = args.volume.resolve()
    stage_dir = volume / args.name
    try:
        config = read_stage_config(stage_dir)
    except TinymlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        write_error(stage_dir, error_record(args.name, exc))
        return 2
    ctx = StageContext(volume=volume, name=args.name, config=config)
    started = time.perf_counter()
    try:
        body(ctx)
        write_outputs(stage_dir, ctx.outputs())
    except BaseException as exc:  # the contract: every failure leaves error.json
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            raise
        write_error(stage_dir, error_record(args.name, exc))
        if isinstance(exc, TinymlError):
            print(f"error: {exc}", file=sys.stderr)
        else:
            traceback.print_exc()
        return 1
    ctx.log(f"done in {time.perf_counter() - started:.2f}s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run a stage module, e.g. python -m tinymlaas_ci.stages.fetch VOLUME")
