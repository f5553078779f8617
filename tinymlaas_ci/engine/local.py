"""The local executor: a stage is a process on this machine.

It needs no Docker and is the embedded default. Stages run in a long-lived stage worker
(:mod:`tinymlaas_ci.engine.worker`), one per ``tinymlaas run`` and ``--jobs`` slot, which
imports PyTorch and ONNX Runtime once and forks a fresh process per stage; the stage processes
end with the runner, however it ends.

It cannot sandbox: a pickled model is unpickled with this user's rights, so the engine warns
once per run when a run loads one. What it can do, it does: a stage gets the environment of
the runner without its secrets (:func:`stage_environment`); ``HF_TOKEN`` reaches only the
stages that download, and the SMTP credentials none.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from tinymlaas_ci.engine.executor import ExecOutcome, LineSink, StageCall, builtin_argv
from tinymlaas_ci.errors import ExecutorError, TinymlError
from tinymlaas_ci.stages.contract import ERROR_FILE, error_record, write_error

__all__ = ["SECRET_ENV", "LocalExecutor", "is_secret", "stage_environment"]

SECRET_ENV = re.compile(r"TOKEN|PASSWORD|PASSWD|SECRET|CREDENTIAL|API_?KEY|PRIVATE_KEY|^SMTP_|_SMTP_", re.IGNORECASE)
"""Names of environment variables no stage gets unless the engine passes them on purpose
(``HF_TOKEN`` to the stages that download): tokens, passwords, keys, and every SMTP setting."""


def is_secret(name: str) -> bool:
    """Whether an environment variable is kept from the stages (see :data:`SECRET_ENV`)."""
    return bool(SECRET_ENV.search(name))


def stage_environment(extra: dict[str, str] | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a local stage: the runner's (``base``, default ``os.environ``) without
    its secrets, plus what the engine passes to this stage (``extra``: ``HF_TOKEN`` and the Hub
    settings for a stage that downloads)."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if not is_secret(k)}
    if not (extra or {}).get("HF_TOKEN"):
        # huggingface_hub also reads a token saved by 'huggingface-cli login'; a stage that
        # does not download has no use for it.
        env["HF_HUB_DISABLE_IMPLICIT_TOKEN"] = "1"
    env.update(extra or {})
    return env


def _use_worker() -> bool:
    return hasattr(os, "fork") and os.environ.get("TINYMLAAS_STAGE_WORKER", "1") != "0"


class LocalExecutor:
    """Runs stages on this machine, in stage workers (one per thread that runs stages)."""

    name = "local"
    reports_pid = True
    """:meth:`run` calls ``on_start`` with the stage's process id (the engine records it)."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._workers: list = []
        self._lock = threading.Lock()

    def _worker(self):
        from tinymlaas_ci.engine.worker import StageWorker

        worker = getattr(self._local, "worker", None)
        if worker is None:
            worker = StageWorker(stage_environment())
            self._local.worker = worker
            with self._lock:
                self._workers.append(worker)
        return worker

    def close(self) -> None:
        """End the stage workers (each exits once its stdin closes)."""
        with self._lock:
            workers, self._workers = self._workers, []
        for worker in workers:
            worker.close()

    def run(
        self,
        call: StageCall,
        volume: Path,
        repo: Path,
        sink: LineSink,
        on_start: Callable[[int], None] | None = None,
    ) -> ExecOutcome:
        env = stage_environment(call.env)
        env["PYTHONUNBUFFERED"] = "1"
        env["TINYMLAAS_SANDBOXED"] = "0"
        env["TINYMLAAS_RUN_DIR"] = str(volume)
        env["TINYMLAAS_STAGE"] = call.stage
        if not _use_worker():
            return self._subprocess(call, volume, repo, sink, env, on_start)
        from tinymlaas_ci.engine.worker import NotStarted, WorkerDied

        request = {
            "builtin": call.builtin,
            "argv": None if call.builtin else builtin_argv(call, str(volume), python=sys.executable),
            "volume": str(volume),
            "name": call.stage,
            "cwd": str(repo),
            "env": env,
        }
        try:
            returncode = self._worker().run(request, sink, on_start)
        except WorkerDied as exc:
            sink(f"error: {exc}")
            write_error(
                volume / call.stage,
                error_record(
                    call.stage,
                    TinymlError(str(exc), hint="the next stage gets a new worker; run again to retry this one"),
                    type_="WorkerDied",
                ),
            )
            return ExecOutcome(returncode=-1, executor=self.name)
        except NotStarted as exc:
            raise ExecutorError(
                f"cannot start stage {call.stage!r}: {request['argv'][0]}: {exc}",
                hint="check the stage's command in the pipeline file",
            ) from None
        except OSError as exc:
            raise ExecutorError(
                f"cannot start the stage worker for {call.stage!r}: {exc.strerror or exc}",
                hint="check that this Python can run 'python -m tinymlaas_ci.engine.worker'",
            ) from exc
        if returncode < 0 and not (volume / call.stage / ERROR_FILE).exists():
            name = _signal_name(-returncode)
            write_error(
                volume / call.stage,
                error_record(
                    call.stage,
                    TinymlError(
                        f"the stage process was killed by {name}",
                        hint="SIGKILL often means the machine ran out of memory; see the log",
                    ),
                    type_="Killed",
                ),
            )
        return ExecOutcome(returncode=returncode, executor=self.name)

    def _subprocess(self, call, volume, repo, sink, env, on_start) -> ExecOutcome:
        """Without a worker (no ``fork`` here, or ``TINYMLAAS_STAGE_WORKER=0``): one process per stage."""
        argv = builtin_argv(call, str(volume), python=sys.executable)
        try:
            proc = subprocess.Popen(
                argv,
                cwd=repo,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                errors="replace",
                bufsize=1,
                start_new_session=True,  # so an interrupt can stop the stage's whole process group
            )
        except OSError as exc:
            raise ExecutorError(
                f"cannot start stage {call.stage!r}: {argv[0]}: {exc.strerror}",
                hint="check the stage's command in the pipeline file",
            ) from exc
        if on_start is not None:
            on_start(proc.pid)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                sink(line.rstrip("\n"))
            returncode = proc.wait()
        except BaseException:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)
            raise
        return ExecOutcome(returncode=returncode, executor=self.name)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
