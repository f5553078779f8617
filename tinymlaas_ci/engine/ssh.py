"""The SSH executor: run a stage on a Linux board (an ``ssh`` device).

The board keeps a copy of the run's folder under its ``work_dir``. Before the stage runs, its
``stage.json`` and every artifact of the stages it needs are copied there; the stage runs with
the board's Python (``python -m tinymlaas_ci.stages.<stage>``); then its folder is copied back,
so the run volume on the runner holds the same files as with any other executor.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from tinymlaas_ci.devices.ssh import SshTarget
from tinymlaas_ci.engine.executor import ExecOutcome, LineSink, StageCall
from tinymlaas_ci.errors import ExecutorError
from tinymlaas_ci.stages.contract import STAGE_FILE

__all__ = ["SshExecutor"]


class SshExecutor:
    name = "ssh"

    def _target(self, call: StageCall) -> SshTarget:
        if not call.ssh:
            raise ExecutorError(f"stage {call.stage!r} of {call.run_id} was sent to the SSH executor without a board")
        return SshTarget(call.ssh, device=call.device)

    def identity(self, call: StageCall) -> str:
        """The board and the version of the package that runs the stage there."""
        target = self._target(call)
        facts = target.probe()
        return f"ssh:{target.label}:tinymlaas_ci-{facts.get('tinymlaas_ci')}:onnxruntime-{facts.get('onnxruntime')}"

    def run(self, call: StageCall, volume: Path, repo: Path, sink: LineSink) -> ExecOutcome:
        if call.builtin is None:
            raise ExecutorError(f"stage {call.stage!r}: only built-in stages run on an ssh device")
        target = self._target(call)
        remote = f"{target.work_dir}/work/{call.run_id}"
        stage_dir = volume / call.stage
        config = json.loads((stage_dir / STAGE_FILE).read_text())
        files = [f"{call.stage}/{STAGE_FILE}"]
        for outputs in (config.get("inputs") or {}).values():
            for artifact in (outputs.get("artifacts") or {}).values():
                files.append(artifact["path"])
        q_remote, q_stage = shlex.quote(remote), shlex.quote(f"{remote}/{call.stage}")
        target.run(f"rm -rf {q_stage} && mkdir -p {q_remote}", doing="preparing the run folder")
        target.put(volume, files, remote, doing=f"copying the inputs of {call.stage!r}")
        sink(f"copied {len(files)} files to {target.label}:{remote}")
        command = (
            f"cd {q_remote} && TINYMLAAS_SANDBOXED=0 PYTHONUNBUFFERED=1 "
            f"{shlex.quote(target.python)} -m tinymlaas_ci.stages.{call.builtin} . --name {shlex.quote(call.stage)}"
        )
        returncode = target.run(command, sink, doing=f"running {call.stage!r}")
        target.get(f"{remote}/{call.stage}", stage_dir, doing=f"copying the outputs of {call.stage!r} back")
        return ExecOutcome(returncode=returncode, executor=self.name, image=None, image_digest=None)
