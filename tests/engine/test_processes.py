"""Several real ``tinymlaas run`` processes: device locks, run locks, and kill -9 mid-stage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.engine.fakerepo import make_repo


def _start(root: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tinymlaas_ci", "-C", str(root), "run", "--work-dir", str(root / ".work"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _interval(root: Path, run: str, stage: str) -> tuple[float, float]:
    m = json.loads((root / f".work/p/{run}/{stage}/outputs.json").read_text())["metrics"]
    return m["started"], m["finished"]


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def test_two_runs_on_one_device_take_turns(tmp_path):
    root = make_repo(tmp_path, sleep=1.0, runs={"a": {}, "b": {"quantization": "fp16"}})
    procs = [_start(root, "--select", "p/a"), _start(root, "--select", "p/b")]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    for stage in ("install", "infer"):
        assert not _overlap(_interval(root, "a", stage), _interval(root, "b", stage)), f"{stage} ran twice at once"
    # The device stages of one run happened while the other waited: one process said so.
    assert any("waiting for device 'host'" in o for o in outs), outs


def test_runs_on_different_devices_overlap(tmp_path):
    root = make_repo(
        tmp_path,
        devices=("d1", "d2"),
        sleep=1.5,
        runs={"a": {"device": "d1"}, "b": {"device": "d2", "quantization": "fp16"}},
    )
    procs = [_start(root, "--select", "p/a"), _start(root, "--select", "p/b")]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert _overlap(_interval(root, "a", "infer"), _interval(root, "b", "infer"))


def test_a_busy_run_times_out_cleanly(tmp_path):
    root = make_repo(tmp_path, sleep=2.0)
    first = _start(root)
    deadline = time.monotonic() + 30
    while not (root / ".work/p/r1/prepare/started").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    second = _start(root, "--lock-timeout", "0.3")
    out = second.communicate(timeout=60)[0]
    assert second.returncode == 1
    assert "timed out after 0.3s waiting for run p/r1" in out
    assert "hint:" in out
    first.communicate(timeout=120)
    assert first.returncode == 0


def _result_facts(root: Path) -> dict:
    result = json.loads((root / "runs/p/results/r1.json").read_text())
    return {
        "spec_hash": result["run"]["spec_hash"],
        "status": result["status"],
        "keys": [s["cache_key"] for s in result["stages"]],
        "data": {s: (root / f".work/p/r1/{s}/data.txt").read_text() for s in ("prepare", "install", "infer")},
    }


def test_kill_9_mid_stage_then_rerun_matches_an_uninterrupted_run(tmp_path):
    clean = make_repo(tmp_path / "clean", sleep=0.5)
    proc = _start(clean)
    proc.communicate(timeout=120)
    assert proc.returncode == 0
    expected = _result_facts(clean)

    root = make_repo(tmp_path / "crash", sleep=0.5)
    pipe = root / "pipelines/fake.yaml"
    pipe.write_text(
        pipe.read_text().replace(
            "{sleep: 0.5, fail_if_exists: fail-install}", "{sleep: 30, fail_if_exists: fail-install}"
        )
    )
    proc = _start(root)
    deadline = time.monotonic() + 60
    while not (root / ".work/p/r1/install/started").exists():
        assert time.monotonic() < deadline, proc.stdout.read() if proc.poll() is not None else "no progress"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    status = json.loads((root / ".work/p/r1/install/status.json").read_text())
    assert status["status"] == "running"  # what the crash left behind
    assert not (root / ".work/p/r1/install/outputs.json").exists()

    # Same pipeline as the clean repo again; the re-run must redo install, reuse prepare.
    pipe.write_text(
        pipe.read_text().replace(
            "{sleep: 30, fail_if_exists: fail-install}", "{sleep: 0.5, fail_if_exists: fail-install}"
        )
    )
    proc = _start(root)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out
    assert "prepare: cached" in out
    assert int((root / ".count-prepare").read_text()) == 1
    got = _result_facts(root)
    assert got["data"] == expected["data"]
    assert got["status"] == expected["status"] == "succeeded"
    assert got["keys"] == expected["keys"]
