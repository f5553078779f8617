"""The local executor's stage worker against real processes: stages die with their runner,
a dead worker fails its stage cleanly and is replaced, a folder owned by a live process is
left alone, and secrets reach only the stages that need them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.engine.fakerepo import make_repo
from tinymlaas_ci.engine.worker import process_alive, process_start_time

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux's")

# A stage that records its environment, starts a child of its own, then waits.
PROBE = textwrap.dedent(
    """
    import hashlib, json, os, subprocess, sys, time
    from pathlib import Path

    run, name = Path(sys.argv[1]), sys.argv[2]
    folder = run / name
    config = json.loads((folder / "stage.json").read_text())
    params, repo = config["params"], Path(config["repo"])
    (folder / "env.json").write_text(json.dumps(dict(os.environ)))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    (folder / "pids.json").write_text(json.dumps({"stage": os.getpid(), "child": child.pid, "parent": os.getppid()}))
    print(f"{name} waiting", flush=True)
    deadline = time.time() + float(params.get("sleep", 0))
    while time.time() < deadline and not (repo / "fast").exists():
        time.sleep(0.05)
    child.kill()
    data = folder / "data.txt"
    data.write_text(name)
    art = {"path": f"{name}/data.txt", "sha256": hashlib.sha256(name.encode()).hexdigest(), "bytes": len(name)}
    (folder / "outputs.json").write_text(json.dumps({"schema": 1, "stage": name, "artifacts": {"data": art}}))
    """
)


def _probe_repo(root: Path, *, sleep: float = 0.0, runs=("r1",)) -> Path:
    make_repo(root, runs={r: {"quantization": q} for r, q in zip(runs, ("none", "fp16", "static-int8"))})
    (root / "pipelines/stages/probe.py").write_text(PROBE)
    (root / "pipelines/fake.yaml").write_text(
        "schema: 1\nstages:\n"
        "  - name: download\n    command: [python, pipelines/stages/probe.py, '{run}', download]\n"
        "    network: true\n"
        f"  - name: work\n    command: [python, pipelines/stages/probe.py, '{{run}}', work]\n"
        f"    needs: [download]\n    params: {{sleep: {sleep}}}\n"
    )
    return root


def _start(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tinymlaas_ci", "-C", str(root), "run", "--work-dir", str(root / ".work"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    time.sleep(0.1)  # written in one go, but let the writer finish
    return json.loads(path.read_text())


def _gone_within(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(process_alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def test_kill_9_of_the_runner_ends_the_stage_and_its_children(tmp_path):
    root = _probe_repo(tmp_path, sleep=120)
    runner = _start(root)
    pids = _wait_for(root / ".work/p/r1/work/pids.json", runner)
    worker = pids["parent"]
    assert worker != runner.pid, "the stage runs in the worker, not in the runner"
    assert all(process_alive(p) for p in (pids["stage"], pids["child"], worker))
    runner.send_signal(signal.SIGKILL)  # the runner only: its process group is not touched
    runner.wait(timeout=10)
    assert _gone_within([pids["stage"], pids["child"], worker], 2.0), "a stage process outlived its runner"
    status = json.loads((root / ".work/p/r1/work/status.json").read_text())
    assert status["status"] == "running" and status["stage_pid"] == pids["stage"]

    # The re-run sees the owner is gone and redoes the stage from an empty folder.
    (root / "fast").write_text("")
    rerun = _start(root)
    out = rerun.communicate(timeout=120)[0]
    assert rerun.returncode == 0, out
    assert "download: cached" in out


def test_a_rerun_leaves_a_folder_owned_by_a_live_process_alone(tmp_path):
    root = _probe_repo(tmp_path)
    first = _start(root)
    out = first.communicate(timeout=120)[0]
    assert first.returncode == 0, out
    (root / "runs/p/results/r1.json").unlink()
    # What a runner that died leaves when its stage process survives (no parent-death signal
    # where it ran, or a process that left its group): a 'running' record naming a live process.
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    try:
        status_file = root / ".work/p/r1/work/status.json"
        status = json.loads(status_file.read_text())
        status.update(status="running", stage_pid=orphan.pid, stage_started=process_start_time(orphan.pid))
        status_file.write_text(json.dumps(status))
        (root / ".work/p/r1/work/marker").write_text("the orphan's")
        proc = _start(root)
        out = proc.communicate(timeout=120)[0]
        assert proc.returncode == 1, out
        assert f"still being run by process {orphan.pid}" in out
        assert f"kill -- -{orphan.pid}" in out
        assert (root / ".work/p/r1/work/marker").read_text() == "the orphan's", "the folder was touched"
    finally:
        orphan.kill()
        orphan.wait()
    proc = _start(root)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out
    assert not (root / ".work/p/r1/work/marker").exists()


def test_a_killed_worker_fails_its_stage_cleanly_and_is_replaced(tmp_path):
    root = _probe_repo(tmp_path, sleep=120, runs=("r1", "r2"))
    proc = _start(root, "--keep-going")
    pids = _wait_for(root / ".work/p/r1/work/pids.json", proc)
    worker = pids["parent"]
    os.kill(worker, signal.SIGKILL)
    assert _gone_within([pids["stage"], pids["child"]], 2.0), "the stage outlived its worker"
    (root / "fast").write_text("")  # r2 runs in a new worker; let it finish quickly
    pids2 = _wait_for(root / ".work/p/r2/work/pids.json", proc)
    assert pids2["parent"] != worker
    out = proc.communicate(timeout=180)[0]
    error = json.loads((root / ".work/p/r1/work/error.json").read_text())
    assert error["type"] == "WorkerDied"
    assert "the stage worker process was killed by signal 9 while running the stage" in error["message"]
    assert "failed: p/r1 at stage work: the stage worker process was killed by signal 9" in out
    assert json.loads((root / ".work/p/r1/work/status.json").read_text())["status"] == "failed"


def test_secrets_reach_only_the_stages_that_need_them(tmp_path):
    root = _probe_repo(tmp_path)
    secrets = {
        "HF_TOKEN": "hf_secret_value",
        "TINYMLAAS_SMTP_PASSWORD": "smtp-secret",
        "TINYMLAAS_SMTP_USER": "mailer",
        "GITHUB_TOKEN": "ghs_secret",
        "SOME_API_KEY": "k",
    }
    proc = _start(root, env={**secrets, "HF_ENDPOINT": "http://127.0.0.1:9", "PLAIN_SETTING": "kept"})
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out
    download = json.loads((root / ".work/p/r1/download/env.json").read_text())
    work = json.loads((root / ".work/p/r1/work/env.json").read_text())
    # The stage that may use the network gets the Hub token and endpoint, and nothing else secret.
    assert download["HF_TOKEN"] == "hf_secret_value" and download["HF_ENDPOINT"] == "http://127.0.0.1:9"
    assert not {"TINYMLAAS_SMTP_PASSWORD", "TINYMLAAS_SMTP_USER", "GITHUB_TOKEN", "SOME_API_KEY"} & set(download)
    # Every other stage gets none, not even a token saved on disk by huggingface-cli.
    assert not set(secrets) & set(work)
    assert work["HF_HUB_DISABLE_IMPLICIT_TOKEN"] == "1"
    assert work["PLAIN_SETTING"] == download["PLAIN_SETTING"] == "kept"
    for name in ("download", "work"):
        log = (root / f".work/p/r1/{name}/log.txt").read_text()
        assert "secret" not in log
