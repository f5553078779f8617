"""``tinymlaas status`` after Ctrl-C: stages in pipeline order, ``interrupted`` where it was,
and a run state that agrees with its stages (never ``succeeded`` next to a failed stage)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from tests.ops.conftest import cli
from tinymlaas_ci.engine.volume import RunVolume, StageStatus

RUN = "schema: 1\nmodel: {upload: uploads/m.onnx}\ndataset: {upload: uploads/d.zip}\n"


def _repo(root: Path) -> Path:
    (root / "devices").mkdir(parents=True)
    (root / "devices" / "host.yaml").write_text("schema: 1\nkind: local\n")
    (root / "uploads").mkdir()
    (root / "uploads" / "m.onnx").write_bytes(b"x")
    (root / "uploads" / "d.zip").write_bytes(b"y")
    (root / "runs" / "p").mkdir(parents=True)
    (root / "runs" / "p" / "a.yaml").write_text(RUN)
    return root


def _volume(work: Path, compile_status: str, returncode: int | None) -> RunVolume:
    volume = RunVolume(work, "p", "a").create()
    # An earlier attempt succeeded and left its result in the volume.
    (volume.root / "result.json").write_text(json.dumps({"status": "succeeded", "stages": []}))
    # The stages started out of order by time (a resumed run re-did compile after infer's old record).
    records = [
        StageStatus(stage="infer", status="generated", started_at="2026-01-01T00:00:01Z", duration_s=1.0),
        StageStatus(stage="fetch", status="generated", started_at="2026-01-01T00:00:05Z", duration_s=0.5),
        StageStatus(stage="compile", status=compile_status, started_at="2026-01-01T00:00:06Z", returncode=returncode),
    ]
    for record in records:
        volume.stage_dir(record.stage).mkdir(parents=True, exist_ok=True)
        volume.write_status(record)
    return volume


def test_ctrl_c_in_compile_shows_interrupted_in_pipeline_order(tmp_path):
    root = _repo(tmp_path / "repo")
    _volume(root / ".work", "failed", -signal.SIGINT)
    proc = cli("status", "--work-dir", str(root / ".work"), "--format", "json", cwd=root)
    assert proc.returncode == 0, proc.stderr
    [row] = json.loads(proc.stdout)
    assert [(s["stage"], s["status"]) for s in row["stages"]] == [
        ("fetch", "generated"),
        ("compile", "interrupted"),
        ("install", "pending"),
        ("infer", "generated"),
    ]
    assert row["result"] == "interrupted"
    text = cli("status", "--work-dir", str(root / ".work"), cwd=root).stdout
    assert "succeeded" not in text
    assert text.split()[1] == "interrupted"
    assert text.index("fetch:") < text.index("compile:") < text.index("install:") < text.index("infer:")


def test_a_failed_stage_makes_the_run_failed_whatever_an_old_result_says(tmp_path):
    root = _repo(tmp_path / "repo")
    _volume(root / ".work", "failed", 1)
    [row] = json.loads(cli("status", "--work-dir", str(root / ".work"), "--format", "json", cwd=root).stdout)
    assert row["result"] == "failed"
    assert ("compile", "failed") in [(s["stage"], s["status"]) for s in row["stages"]]


def test_status_works_when_the_specs_do_not(tmp_path):
    root = _repo(tmp_path / "repo")
    _volume(root / ".work", "failed", 1)
    (root / "runs" / "p" / "a.yaml").write_text("schema: 1\nmodel: [broken\n")
    [row] = json.loads(cli("status", "--work-dir", str(root / ".work"), "--format", "json", cwd=root).stdout)
    assert [s["stage"] for s in row["stages"]] == ["fetch", "compile", "infer"]  # built-in order


def test_ctrl_c_in_the_runner_marks_the_stage_it_stopped(tmp_path):
    """The runner marks the stage it was in as failed with no exit code when Ctrl-C stops it."""
    root = _repo(tmp_path / "repo")
    _volume(root / ".work", "failed", None)
    [row] = json.loads(cli("status", "--work-dir", str(root / ".work"), "--format", "json", cwd=root).stdout)
    assert ("compile", "interrupted") in [(s["stage"], s["status"]) for s in row["stages"]]
    assert row["result"] == "interrupted"


def test_real_ctrl_c_during_a_stage(tmp_path):
    """A finished run, edited and run again, stopped by Ctrl-C (SIGINT to its process group) in
    its first stage: status says interrupted there, and never succeeded for the run."""
    import os
    import subprocess
    import sys
    import time

    from tests.engine.fakerepo import make_repo

    root = make_repo(tmp_path / "fake", sleep=0.0)
    work = str(root / ".work")
    assert cli("run", "--work-dir", work, cwd=root).returncode == 0
    pipe = root / "pipelines/fake.yaml"
    pipe.write_text(pipe.read_text().replace("sleep: 0.0", "sleep: 30"))
    marker = root / ".work/p/r1/prepare/started"
    marker.unlink(missing_ok=True)
    stderr = tmp_path / "runner.stderr"
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tinymlaas_ci", "-C", str(root), "run", "--work-dir", work],
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
            # Ctrl-C's default action, whatever this process inherited: a shell starts background
            # jobs (a CI script run with '&') with SIGINT ignored, and Python keeps it ignored.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            # A runner that does not stop is made to print where each of its threads is.
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        )
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        proc.wait(timeout=30)
        raise AssertionError("the runner did not stop within 60 s of Ctrl-C:\n" + stderr.read_text()[-6000:]) from None
    assert code != 0
    [row] = json.loads(cli("status", "--work-dir", work, "--format", "json", cwd=root).stdout)
    stages = [(s["stage"], s["status"]) for s in row["stages"]]
    assert [s for s, _ in stages] == ["prepare", "install", "infer"]
    assert stages[0] == ("prepare", "interrupted"), stages
    assert row["result"] == "interrupted"
