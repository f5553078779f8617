"""Execute a plan: each run's stages in order, with cache, resume, locks and status records.

Cheapest check first: a run whose committed result has the planned spec hash is up to date
and costs nothing. Otherwise each stage's cache key (its plan key, the digests of the outputs
it reads, and the identity of the code or image that runs it) decides whether it runs again.
A stage's folder is emptied before it runs and its outputs are trusted only when its status
says ``generated`` with the same key and its artifacts are unchanged on disk, so a crash or
``kill -9`` mid-stage leaves nothing that a later run would mistake for a result.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinymlaas_ci import __version__
from tinymlaas_ci.engine.cache import CACHE_DIR, StageCache
from tinymlaas_ci.engine.executor import ExecOutcome, Executor, StageCall
from tinymlaas_ci.engine.locks import file_lock
from tinymlaas_ci.engine.progress import Progress
from tinymlaas_ci.engine.volume import LOG_FILE, ArtifactStat, RunVolume, StageStatus, default_work_dir, now_iso
from tinymlaas_ci.errors import TinymlError
from tinymlaas_ci.fs import canonical_json
from tinymlaas_ci.git import git_output
from tinymlaas_ci.plan import Plan, PlannedRun, PlannedStage
from tinymlaas_ci.results.build import build_result
from tinymlaas_ci.results.io import write_result
from tinymlaas_ci.results.layout import result_file
from tinymlaas_ci.results.models import Result
from tinymlaas_ci.spec.repo import Repo
from tinymlaas_ci.stages.contract import (
    GRADING_STAGES,
    OUTPUTS_FILE,
    RunRef,
    StageConfig,
    StageOutputs,
    error_record,
    read_error,
    read_outputs,
    verify_artifact,
    write_error,
    write_stage_config,
)

__all__ = [
    "DEVICE_STAGES",
    "PASSED_ENV",
    "Engine",
    "RunOptions",
    "RunOutcome",
    "code_digest",
    "seal_stage",
    "stage_modules",
]

DEVICE_STAGES = ("install", "infer")
"""Stages that use the device (the built-in ones, or a user's stage with one of these names):
one at a time per device, across processes."""

PASSED_ENV = ("HF_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "HUGGING_FACE_HUB_TOKEN")
"""Environment passed to stages that may use the network (fetch). Values are never logged."""


@dataclass
class RunOptions:
    executor: str = "local"
    force: bool = False
    keep_going: bool = False
    lock_timeout: float | None = None
    work_dir: Path | None = None
    write_results: bool = True
    jobs: int = 1
    """How many runs execute at once (their stages in parallel; device locks still hold)."""
    shared_cache: bool = True
    """Reuse a stage that another run of the work dir generated under the same cache key."""


@dataclass
class RunOutcome:
    run_id: str
    status: str
    """``succeeded``, ``gates-failed``, ``failed``, ``up-to-date`` or ``not-run``."""
    result_path: str | None = None
    failed_stage: str | None = None
    message: str | None = None
    log: str | None = None
    result: Result | None = None
    stages: list[dict[str, Any]] = field(default_factory=list)


_CODE_DIGEST: str | None = None
_STAGE_ROOT = "tinymlaas_ci.stages"


def stage_modules() -> list[str]:
    """Every ``tinymlaas_ci`` module a stage can run: the stage modules and, transitively,
    whatever they import, lazy imports inside functions included (read with :mod:`ast`, not
    imported)."""
    pkg = Path(__file__).resolve().parent.parent
    seen: set[str] = set()
    todo = [_STAGE_ROOT + "." + p.stem for p in sorted((pkg / "stages").glob("*.py")) if p.stem != "__init__"]
    while todo:
        name = todo.pop()
        path = _module_path(pkg, name)
        if name in seen or path is None:
            continue
        seen.add(name)
        parent = name.rpartition(".")[0]  # importing a module runs its packages' __init__ too
        if parent:
            todo.append(parent)
        todo.extend(_imports(path, name))
    return sorted(seen)


def _module_path(pkg: Path, name: str) -> Path | None:
    if name != "tinymlaas_ci" and not name.startswith("tinymlaas_ci."):
        return None
    parts = name.split(".")[1:]
    if not parts:
        return pkg / "__init__.py"
    for path in (pkg.joinpath(*parts[:-1], parts[-1] + ".py"), pkg.joinpath(*parts, "__init__.py")):
        if path.is_file():
            return path
    return None


def _imports(path: Path, name: str) -> list[str]:
    is_pkg = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                parts = name.split(".")[: len(name.split(".")) - node.level + (1 if is_pkg else 0)]
                base = ".".join(parts + ([base] if base else []))
            found.append(base)
            found += [f"{base}.{alias.name}" for alias in node.names]  # "from pkg import module"
    return [f for f in found if f == "tinymlaas_ci" or f.startswith("tinymlaas_ci.")]


def code_digest() -> str:
    """Identity of the stage code run by the local executor: the package version plus a hash
    of every module a stage can import (:func:`stage_modules`), so an edited checkout never
    reuses stale outputs."""
    global _CODE_DIGEST
    if _CODE_DIGEST is None:
        pkg = Path(__file__).resolve().parent.parent
        h = hashlib.sha256(__version__.encode())
        for name in stage_modules():
            path = _module_path(pkg, name)
            h.update(name.encode() + b"\0")
            h.update(path.read_bytes())
        _CODE_DIGEST = "local:" + h.hexdigest()[:16]
    return _CODE_DIGEST


def seal_stage(stage_dir: Path) -> None:
    """Make a finished stage's folder read-only to every later stage.

    Every file loses its write bits; folders lose group and other write. When the runner is
    root, everything is given back to it, so a sandboxed stage (another uid) can neither write
    nor replace a file of an earlier stage. A stage running as the runner's own user could undo
    modes, which is why the Docker executor also mounts upstream folders read-only and every
    stage checks the sha256 of what it reads. Symbolic links are neither followed nor changed.
    """
    uid, gid = os.getuid(), os.getgid()
    for root, dirs, files in os.walk(stage_dir):
        folder = Path(root)
        for path in (folder, *(folder / n for n in files), *(folder / n for n in dirs)):
            try:
                st = path.lstat()
                if stat.S_ISLNK(st.st_mode):
                    continue
                if uid == 0 and (st.st_uid, st.st_gid) != (uid, gid):
                    os.lchown(path, uid, gid)
                mode = stat.S_IMODE(st.st_mode)
                want = mode & ~(stat.S_IWGRP | stat.S_IWOTH)
                if not stat.S_ISDIR(st.st_mode):
                    want &= ~stat.S_IWUSR
                if want != mode:
                    os.chmod(path, want)
            except FileNotFoundError:
                continue


def _digest(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj, indent=None).encode()).hexdigest()


def _spec_commit(root: Path, source: str) -> str | None:
    """The last commit that changed the spec file, or None outside git."""
    out = git_output(root, "log", "-1", "--format=%H", "--", source, timeout=30)
    return out.decode().strip() or None if out else None


class Engine:
    """Runs plans. ``executors`` maps an executor name to an object with the
    :class:`~tinymlaas_ci.engine.executor.Executor` interface (the seam tests use)."""

    def __init__(
        self,
        repo: Repo,
        options: RunOptions | None = None,
        progress: Progress | None = None,
        executors: dict[str, Executor] | None = None,
    ):
        self.repo = repo
        self.options = options or RunOptions()
        self.progress = progress or Progress()
        self.work_dir = (self.options.work_dir or default_work_dir(repo.root)).resolve()
        self.lock_dir = self.work_dir.parent / "locks"
        self._executors = dict(executors or {})
        self._executors_lock = threading.Lock()
        self._warned_sandbox = False
        self.cache = StageCache(self.work_dir / CACHE_DIR)

    # -- executors -----------------------------------------------------------------------------
    def executor(self, name: str) -> Executor:
        with self._executors_lock:
            return self._make_executor(name)

    def _make_executor(self, name: str) -> Executor:
        if name not in self._executors:
            if name == "local":
                from tinymlaas_ci.engine.local import LocalExecutor

                self._executors[name] = LocalExecutor()
            elif name == "docker":
                from tinymlaas_ci.engine.docker import DockerExecutor

                self._executors[name] = DockerExecutor()
            elif name == "ssh":
                from tinymlaas_ci.engine.ssh import SshExecutor

                self._executors[name] = SshExecutor()
            else:
                raise TinymlError(f"unknown executor {name!r}", hint="use 'local' or 'docker'")
        return self._executors[name]

    def _identity(self, executor: Executor, call: StageCall) -> str:
        identity = getattr(executor, "identity", None)
        if identity is not None:
            return identity(call)
        return code_digest()

    # -- plan ----------------------------------------------------------------------------------
    def execute(self, plan: Plan) -> list[RunOutcome]:
        """Execute every run of ``plan``, ``options.jobs`` at a time; outcomes in plan order.
        Without ``keep_going``, a failed run stops the runs that have not started yet."""
        self.cache.sweep_temporary()
        stopped = threading.Event()

        def one(run: PlannedRun) -> RunOutcome:
            if stopped.is_set():
                return RunOutcome(run.id, "not-run", message="not run: an earlier run failed (use --keep-going)")
            if run.status == "up-to-date" and not self.options.force:
                self.progress.message(f"= {run.id}: up to date ({run.result_path})")
                return RunOutcome(run.id, "up-to-date", result_path=run.result_path)
            if run.status == "gates-failed" and not self.options.force:
                # The committed result of this very spec failed its gates: that verdict stands.
                message = (
                    f"recorded result {run.result_path} failed its gates; change the spec, or --force to measure again"
                )
                self.progress.message(f"= {run.id}: gates failed in its recorded result ({run.result_path})")
                return RunOutcome(run.id, "gates-failed", result_path=run.result_path, message=message)
            outcome = self.execute_run(run)
            if outcome.status == "failed" and not self.options.keep_going:
                stopped.set()
            return outcome

        try:
            jobs = max(1, min(self.options.jobs, len(plan.runs)))
            if jobs == 1:
                return [one(run) for run in plan.runs]
            self.progress.parallel = True
            with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="tinymlaas-run") as pool:
                return list(pool.map(one, plan.runs))
        finally:
            self.close()

    def close(self) -> None:
        """End what the executors keep running between stages (the local stage workers)."""
        with self._executors_lock:
            executors = list(self._executors.values())
        for executor in executors:
            close = getattr(executor, "close", None)
            if close is not None:
                close()

    # -- one run -------------------------------------------------------------------------------
    def execute_run(self, run: PlannedRun) -> RunOutcome:
        volume = RunVolume(self.work_dir, run.project, run.name).create()
        with file_lock(
            volume.root / ".lock",
            what=f"run {run.id}",
            timeout=self.options.lock_timeout,
            on_wait=self.progress.message,
        ):
            return self._execute_run(run, volume)

    def _execute_run(self, run: PlannedRun, volume: RunVolume) -> RunOutcome:
        device = self.repo.devices[run.device]
        outputs: dict[str, StageOutputs] = {}
        records: list[dict[str, Any]] = []
        error: dict[str, Any] | None = None
        failed: PlannedStage | None = None
        log_path: str | None = None
        for stage in run.stages:
            if failed is not None:
                records.append({"name": stage.name, "status": "pending"})
                self.progress.stage_finished(run.id, stage.name, "skipped", None, f"{failed.name} failed")
                continue
            record, out = self._stage(run, device, volume, stage, outputs)
            busy = record.pop("error", None)
            records.append(record)
            if out is None:
                failed = stage
                err = error_record(stage.name, busy) if busy else read_error(volume.stage_dir(stage.name))
                message = err.message if err else f"exited with code {record.get('returncode')}"
                if err and err.hint:
                    message += f" (hint: {err.hint})"
                log_path = str(volume.stage_dir(stage.name) / LOG_FILE)
                error = {"stage": stage.name, "message": message}
            else:
                outputs[stage.name] = out
        builtin = {
            s.builtin: outputs[s.name].model_dump(mode="json", by_alias=True)
            for s in run.stages
            if s.builtin and s.name in outputs
        }
        return self._finish(run, volume, builtin, records, error, log_path)

    def _stage(
        self, run: PlannedRun, device, volume: RunVolume, stage: PlannedStage, outputs: dict[str, StageOutputs]
    ) -> tuple[dict[str, Any], StageOutputs | None]:
        opts = self.options
        upstream = {n: outputs[n] for n in stage.needs if n in outputs}
        executor_name = self._executor_name(device, stage)
        call = self._call(run, device, stage, outputs)
        executor = self.executor(executor_name)
        upstream_digests = {n: {k: a.sha256 for k, a in o.artifacts.items()} for n, o in upstream.items()}
        try:
            identity = self._identity(executor, call)
        except TinymlError as exc:  # no engine, missing image, unreachable board: this stage fails
            self.progress.stage_finished(run.id, stage.name, "failed", None, str(exc).splitlines()[0])
            self._write_error(volume, stage.name, exc)
            return self._record(volume, stage, "failed"), None
        key = _digest({"plan": stage.key, "upstream": upstream_digests, "executor": identity})

        previous = volume.status(stage.name)
        if not opts.force and previous.status == "generated" and previous.cache_key == key:
            out = self._outputs(volume, stage.name)
            if out is not None and self._intact(volume, previous) and self._as_recorded(out, previous):
                seal_stage(volume.stage_dir(stage.name))
                previous.cache_hit = True
                self.progress.stage_finished(run.id, stage.name, "cached", None, f"key {key[:8]}")
                return self._record_from(previous, cache_hit=True), out

        busy = self._owned_by_live_process(volume, stage, previous)
        if busy is not None:
            # Its folder is not written to, error.json included: the message travels in the record.
            self.progress.stage_finished(run.id, stage.name, "failed", None, busy.message.splitlines()[0])
            return {**self._record_from(previous, cache_hit=False), "status": "failed", "error": busy}, None

        if not self._shares_cache(device, stage):
            return self._locked_run_stage(run, device, volume, stage, outputs, call, executor, key)
        with self.cache.claim(
            key,
            what=f"stage {stage.name!r} of another run with the same inputs",
            timeout=opts.lock_timeout,
            on_wait=self.progress.message,
        ):
            if not opts.force:
                hit = self._from_shared_cache(run, volume, stage, key)
                if hit is not None:
                    return hit
            record, out = self._locked_run_stage(run, device, volume, stage, outputs, call, executor, key)
            if out is not None:
                status = volume.status(stage.name)
                self.cache.store(
                    key,
                    stage.name,
                    volume.stage_dir(stage.name),
                    run=run.id,
                    created_at=status.finished_at or now_iso(),
                    record={
                        "duration_s": status.duration_s,
                        "executor": status.executor,
                        "image": status.image,
                        "image_digest": status.image_digest,
                    },
                    artifacts=list(out.artifacts.values()),
                )
            return record, out

    def _locked_run_stage(self, run, device, volume, stage, outputs: dict[str, StageOutputs], call, executor, key):
        opts = self.options
        lock = nullcontext()
        if (stage.builtin or stage.name) in DEVICE_STAGES:
            lock = file_lock(
                self.lock_dir / f"device-{run.device}.lock",
                what=f"device {run.device!r}",
                timeout=opts.lock_timeout,
                on_wait=self.progress.message,
            )
        inputs = self._inputs(run, stage, outputs)
        if stage.builtin is None:
            # A stage of one's own reads stage.json as plain JSON and cannot be trusted to check
            # what it reads; the engine checks its inputs for it.
            try:
                for out in inputs.values():
                    for name, art in out.artifacts.items():
                        verify_artifact(volume.root, art, owner=out.stage, key=name)
            except TinymlError as exc:
                self.progress.stage_finished(run.id, stage.name, "failed", None, str(exc).splitlines()[0])
                volume.reset_stage(stage.name)
                self._write_error(volume, stage.name, exc)
                return self._record(volume, stage, "failed"), None
        with lock:
            return self._run_stage(run, device, volume, stage, inputs, call, executor, key)

    # -- shared cache and folder ownership -----------------------------------------------------
    @staticmethod
    def _shares_cache(device, stage: PlannedStage) -> bool:
        """Install and infer on a remote device describe state held on that device (a folder
        on the board, named after the run), not only in the stage folder: those stay per run."""
        return device.kind == "local" or (stage.builtin or stage.name) not in DEVICE_STAGES

    def _from_shared_cache(
        self, run: PlannedRun, volume: RunVolume, stage: PlannedStage, key: str
    ) -> tuple[dict[str, Any], StageOutputs] | None:
        entry = self.cache.lookup(key, stage.name)
        if entry is None:
            return None
        started, clock = now_iso(), time.monotonic()
        stage_dir = volume.reset_stage(stage.name)
        if not self.cache.restore(entry, stage_dir):
            self.progress.message(
                f"  {run.id} {stage.name}: the cached outputs from {entry.run} changed on disk; running it again"
            )
            return None
        out = self._outputs(volume, stage.name)
        if out is None:
            self.cache.discard(key)
            return None
        with open(stage_dir / LOG_FILE, "a", encoding="utf-8") as log:
            log.write(f"(outputs reused from the shared stage cache: entry {key[:16]}, generated by {entry.run})\n")
        status = StageStatus(
            stage=stage.name,
            status="generated",
            started_at=started,
            finished_at=now_iso(),
            duration_s=round(time.monotonic() - clock, 3),
            cache_key=key,
            cache_hit=True,
            cache_entry=key,
            cache_from=entry.run,
            executor=entry.record.get("executor"),
            image=entry.record.get("image"),
            image_digest=entry.record.get("image_digest"),
            artifacts=self._stat_artifacts(volume, out),
        )
        volume.write_status(status)
        seal_stage(stage_dir)  # as read-only to later stages as outputs generated here
        self.progress.stage_finished(run.id, stage.name, "cached", None, f"from {entry.run}, key {key[:8]}")
        return self._record_from(status, cache_hit=True), out

    @staticmethod
    def _owned_by_live_process(volume: RunVolume, stage: PlannedStage, previous: StageStatus) -> TinymlError | None:
        """A stage left ``running`` by a runner that died may still have its process alive (on a
        system without parent-death signals, or one that escaped its process group): its
        folder is not emptied under it. Waits a moment (a dying stage takes milliseconds)."""
        from tinymlaas_ci.engine.worker import process_alive

        if previous.status != "running" or previous.stage_pid is None:
            return None
        deadline = time.monotonic() + 3.0
        while process_alive(previous.stage_pid, previous.stage_started):
            if time.monotonic() >= deadline:
                return TinymlError(
                    f"stage {stage.name!r} of {volume.project}/{volume.name} is still being run by process "
                    f"{previous.stage_pid}, left by an earlier 'tinymlaas run' that ended; its folder "
                    f"{volume.stage_dir(stage.name)} is not touched while it lives",
                    hint=f"wait for it to end, or stop it: kill -- -{previous.stage_pid}",
                )
            time.sleep(0.1)
        return None

    def _run_stage(
        self,
        run,
        device,
        volume: RunVolume,
        stage: PlannedStage,
        upstream,
        call: StageCall,
        executor: Executor,
        key: str,
    ):
        stage_dir = volume.reset_stage(stage.name)
        in_container = executor.name != "local"
        config = StageConfig(
            stage=stage.name,
            builtin=stage.builtin,
            run=RunRef(project=run.project, name=run.name),
            repo="/repo" if in_container else str(self.repo.root),
            params=stage.params,
            spec=run.spec,
            device=device,
            inputs=upstream,
        )
        write_stage_config(stage_dir, config)
        status = StageStatus(
            stage=stage.name,
            status="running",
            started_at=now_iso(),
            cache_key=key,
            executor=executor.name,
            pid=os.getpid(),
        )
        volume.write_status(status)
        if (
            stage.builtin == "compile"
            and run.spec.model.format.value in ("auto", "pytorch")
            and not in_container
            and not self._warned_sandbox
        ):
            self._warned_sandbox = True
            self.progress.message(
                "warning: the local executor cannot sandbox stages; a pickled PyTorch model runs "
                "code with your rights when loaded: it can read and change any file you can (SSH "
                "keys, saved tokens such as ~/.cache/huggingface/token, this repository) and use the "
                "network. Secrets in the environment are kept from it (HF_TOKEN reaches only the "
                "stages that download, SMTP settings no stage). Use --executor docker for models "
                "you do not trust."
            )
        self.progress.stage_started(run.id, stage.name)
        started = time.monotonic()
        log_file = open(stage_dir / LOG_FILE, "w", encoding="utf-8", errors="replace")  # noqa: SIM115 (closed below)
        secrets = [v for k, v in call.env.items() if v and ("TOKEN" in k or "PASSWORD" in k)]

        def sink(line: str) -> None:
            for s in secrets:  # a stage that echoes a secret must not leak it into logs
                line = line.replace(s, "***")
            log_file.write(line + "\n")
            log_file.flush()
            self.progress.stage_line(run.id, stage.name, line)

        def on_start(pid: int) -> None:
            from tinymlaas_ci.engine.worker import process_start_time

            status.stage_pid = pid
            status.stage_started = process_start_time(pid)
            volume.write_status(status)

        extra = {"on_start": on_start} if getattr(executor, "reports_pid", False) else {}
        try:
            outcome = executor.run(call, volume.root, self.repo.root, sink, **extra)
        except TinymlError as exc:  # the executor could not run it (engine, board, copy failed)
            outcome = ExecOutcome(returncode=-1, executor=executor.name)
            sink(f"error: {exc}")
            self._write_error(volume, stage.name, exc)
        except BaseException:
            status.status = "failed"
            status.finished_at = now_iso()
            volume.write_status(status)
            raise
        finally:
            log_file.close()
        seconds = time.monotonic() - started
        out, bad_outputs = None, None
        if outcome.returncode == 0:
            try:
                out = read_outputs(stage_dir)
            except TinymlError as exc:
                bad_outputs = exc
        status.finished_at = now_iso()
        status.duration_s = round(seconds, 3)
        status.returncode = outcome.returncode
        status.image = outcome.image
        status.image_digest = outcome.image_digest
        if out is not None:
            status.status = "generated"
            status.artifacts = self._stat_artifacts(volume, out)
        else:
            status.status = "failed"
            if outcome.returncode == 0:
                missing = not (stage_dir / OUTPUTS_FILE).exists()
                self._write_error(
                    volume,
                    stage.name,
                    TinymlError("the stage exited 0 but wrote no outputs.json")
                    if missing
                    else TinymlError(
                        f"the stage wrote an invalid outputs.json: {bad_outputs}",
                        hint="see the stage contract: docs/guide/custom-stages.md",
                    ),
                )
            elif read_error(stage_dir) is None:  # the executor reports an OOM kill itself
                self._write_error(
                    volume,
                    stage.name,
                    TinymlError(
                        f"exited with code {outcome.returncode} without writing error.json",
                        hint=f"see the log: {stage_dir / LOG_FILE}",
                    ),
                )
        volume.write_status(status)
        if out is not None:
            seal_stage(stage_dir)
        note = ""
        if out is None:
            err = read_error(stage_dir)
            note = err.message.splitlines()[0][:200] if err and err.message else ""
        self.progress.stage_finished(run.id, stage.name, status.status, seconds, note)
        return self._record_from(status, cache_hit=False), out

    # -- helpers -------------------------------------------------------------------------------
    def _executor_name(self, device, stage: PlannedStage) -> str:
        """Where a stage runs. On a ``docker`` device, install runs on the runner (it builds the
        inference image on the device's engine) and infer runs in that image on that engine; on
        an ``ssh`` device, install runs on the runner (it copies the bundle to the board) and
        infer runs on the board; on an ``mcu`` device, install and infer run on the runner, where
        the board is emulated or attached; whatever executor the other stages use."""
        if device.kind == "mcu" and stage.builtin in ("install", "infer"):
            return "local"
        if device.kind in ("docker", "ssh") and stage.builtin == "install":
            return "local"
        if device.kind == "docker" and stage.builtin == "infer":
            return "docker"
        if device.kind == "ssh" and stage.builtin == "infer":
            return "ssh"
        return self.options.executor

    def _call(self, run: PlannedRun, device, stage: PlannedStage, outputs: dict[str, StageOutputs]) -> StageCall:
        spec = run.spec
        env = {}
        if stage.network:
            env = {k: os.environ[k] for k in PASSED_ENV if os.environ.get(k)}
        memory = spec.resources.memory_mb or device.memory_mb
        cpus = spec.resources.cpus or device.cpus
        image, docker_host = stage.image, None
        if image:
            from tinymlaas_ci.engine.images import folder_image, user_image_tag

            folder = folder_image(self.repo.root, image)
            if folder is not None:
                image = user_image_tag(folder)  # built by 'tinymlaas images build'
        if device.kind == "docker" and stage.builtin == "infer":
            installed = next(
                (outputs[n] for n in stage.needs if n in outputs and outputs[n].builtin == "install"), None
            )
            image = (installed.records.get("image") if installed else None) or image
            docker_host = device.docker.host
        return StageCall(
            run_id=run.id,
            stage=stage.name,
            builtin=stage.builtin,
            command=stage.command,
            image=image,
            network=stage.network,
            memory_mb=memory,
            cpus=cpus,
            env=env,
            docker_host=docker_host,
            ssh=device.ssh if device.kind == "ssh" else None,
            device=device.name,
            **self._withheld(run, stage, outputs),
        )

    def _withheld(self, run: PlannedRun, stage: PlannedStage, outputs: dict[str, StageOutputs]) -> dict:
        """What a stage may not read: for every stage but the grading ones, the evaluation data
        earlier stages withheld, and (for every stage but fetch, which reads it) the run's
        dataset upload in the repository."""
        if stage.builtin in GRADING_STAGES or stage.builtin == "fetch":
            return {}
        volume = tuple(dict.fromkeys(p for out in outputs.values() for p in out.withheld))
        repo: tuple[str, ...] = ()
        upload = run.spec.dataset.upload
        if upload:
            try:
                rel = (self.repo.root / upload).resolve().relative_to(self.repo.root.resolve())
                if (self.repo.root / rel).exists():
                    repo = (rel.as_posix(),)
            except (OSError, ValueError):
                pass  # outside the repository: fetch has refused it already
        return {"withheld": volume, "withheld_repo": repo}

    @staticmethod
    def _stat_artifacts(volume: RunVolume, out: StageOutputs) -> dict[str, ArtifactStat]:
        stats = {}
        for art in out.artifacts.values():
            try:
                st = (volume.root / art.path).stat()
            except OSError:
                continue
            stats[art.path] = ArtifactStat(size=st.st_size, mtime_ns=st.st_mtime_ns, sha256=art.sha256)
        return stats

    @staticmethod
    def _outputs(volume: RunVolume, stage: str) -> StageOutputs | None:
        try:
            return read_outputs(volume.stage_dir(stage))
        except TinymlError:
            return None

    @staticmethod
    def _intact(volume: RunVolume, status: StageStatus) -> bool:
        for rel, recorded in status.artifacts.items():
            try:
                st = (volume.root / rel).stat()
            except OSError:
                return False
            if st.st_size != recorded.size or st.st_mtime_ns != recorded.mtime_ns:
                return False
        return True

    @staticmethod
    def _as_recorded(out: StageOutputs, status: StageStatus) -> bool:
        """The outputs.json of a cached stage lists the artifacts, with the sha256, that its
        status recorded when the stage finished: an edited outputs.json is not reused."""
        listed = {a.path: a.sha256 for a in out.artifacts.values()}
        recorded = {rel: st.sha256 for rel, st in status.artifacts.items()}
        return listed == recorded

    @staticmethod
    def _inputs(run: PlannedRun, stage: PlannedStage, outputs: dict[str, StageOutputs]) -> dict[str, StageOutputs]:
        """The outputs a stage is given: those of the stages it needs, then of the stages those
        need, and so on. So the install stage knows the fetch stage's recorded dataset digest and
        never has to take the compile stage's (model-controlled) word for it."""
        by_name = {s.name: s for s in run.stages}
        order: list[str] = []
        todo = list(stage.needs)
        while todo:
            name = todo.pop(0)
            if name in order or name not in by_name:
                continue
            order.append(name)
            todo.extend(by_name[name].needs)
        return {n: outputs[n] for n in order if n in outputs}

    @staticmethod
    def _write_error(volume: RunVolume, stage: str, exc: TinymlError) -> None:
        write_error(volume.stage_dir(stage), error_record(stage, exc))

    def _record(self, volume: RunVolume, stage: PlannedStage, status: str) -> dict[str, Any]:
        st = volume.status(stage.name)
        st.status = status  # type: ignore[assignment]
        volume.write_status(st)
        return self._record_from(st, cache_hit=False)

    @staticmethod
    def _record_from(st: StageStatus, *, cache_hit: bool) -> dict[str, Any]:
        return {
            "name": st.stage,
            "status": st.status,
            "started_at": st.started_at,
            "finished_at": st.finished_at,
            "duration_s": st.duration_s,
            "cache_key": st.cache_key,
            "cache_hit": cache_hit,
            "executor": st.executor,
            "image": st.image,
            "image_digest": st.image_digest,
        }

    def _finish(self, run: PlannedRun, volume: RunVolume, outputs, records, error, log_path) -> RunOutcome:
        root = self.repo.root
        identity = {
            "project": run.project,
            "name": run.name,
            "spec_file": run.source,
            "spec_hash": run.spec_hash,
            "spec_commit": (git_output(root, "log", "-1", "--format=%H", "--", run.source, timeout=30) or b"")
            .decode()
            .strip()
            or None,
            "pipeline": run.pipeline,
            "matrix": run.matrix,
        }
        if os.environ.get("GITHUB_RUN_ID") and os.environ.get("GITHUB_REPOSITORY"):
            server = os.environ.get("GITHUB_SERVER_URL", "https://github.com")
            identity["actions_run_url"] = (
                f"{server}/{os.environ['GITHUB_REPOSITORY']}/actions/runs/{os.environ['GITHUB_RUN_ID']}"
            )
        result = build_result(
            run=identity,
            spec=run.spec.model_dump(mode="json", by_alias=True, exclude={"matrix"}),
            gates=run.spec.gates,
            outputs=outputs,
            stages=records,
            created_at=now_iso(),
            error=error,
            tools={"tinymlaas_ci": __version__},
        )
        write_result(volume.root / "result.json", result)
        rel = None
        if result.status != "failed" and self.options.write_results:
            path = result_file(root, run.project, run.name)
            rel = path.relative_to(root).as_posix()
            if path.exists():
                try:
                    old = json.loads(path.read_text()).get("run", {}).get("spec_hash")
                except (OSError, ValueError):
                    old = None
                if old and old != run.spec_hash:
                    self.progress.message(
                        f"  replacing {rel}: its spec changed ({old[:8]} -> {run.spec_hash[:8]}); "
                        "the old result stays in git history"
                    )
            write_result(path, result)
        failed_gates = [g for g in result.gates if not g.passed]
        if result.status == "succeeded" and result.metrics is not None:
            m = result.metrics
            self.progress.message(
                f"✓ {run.id}: accuracy {m.accuracy:.4f}, p50 {m.latency_ms.p50:.4f} ms, "
                f"{m.model_size_bytes:,} bytes -> {rel or volume.root / 'result.json'}"
            )
        elif result.status == "succeeded":
            self.progress.message(f"✓ {run.id}: done -> {rel or volume.root / 'result.json'}")
        elif result.status == "gates-failed":
            for g in failed_gates:
                self.progress.message(f"✗ {run.id}: gate {g.message}")
        else:
            self.progress.message(
                f"✗ {run.id}: {error['stage'] if error else '?'} failed: {error['message'] if error else ''}"
            )
        return RunOutcome(
            run_id=run.id,
            status=result.status,
            result_path=rel,
            failed_stage=error["stage"] if error else None,
            message="; ".join(g.message for g in failed_gates) if failed_gates else (error or {}).get("message"),
            log=log_path,
            result=result,
            stages=records,
        )
