"""The local executor: a stage is a subprocess on this machine.

It needs no Docker and is the embedded default. It cannot sandbox: a pickled model is
unpickled with this user's rights, so the engine warns once per run when a run loads one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tinymlaas_ci.engine.executor import ExecOutcome, LineSink, StageCall, builtin_argv
from tinymlaas_ci.errors import ExecutorError

__all__ = ["LocalExecutor"]


class LocalExecutor:
    name = "local"

    def run(self, call: StageCall, volume: Path, repo: Path, sink: LineSink) -> ExecOutcome:
        argv = builtin_argv(call, str(volume), python=sys.executable)
        env = dict(os.environ)
        env.update(call.env)
        env["PYTHONUNBUFFERED"] = "1"
        env["TINYMLAAS_SANDBOXED"] = "0"
        env["TINYMLAAS_RUN_DIR"] = str(volume)
        env["TINYMLAAS_STAGE"] = call.stage
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
