"""The job matrix the Run workflow reads from ``tinymlaas plan --format json``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tinymlaas_ci", *args], cwd=cwd, capture_output=True, text=True)


@pytest.fixture
def repo(tmp_path) -> Path:
    dest = tmp_path / "repo"
    assert _cli("init", str(dest), cwd=tmp_path).returncode == 0
    (dest / "devices" / "bench.yaml").write_text(
        "schema: 1\nkind: local\nexecutor: local\nrunner: [self-hosted, bench]\n"
    )
    spec = (dest / "runs" / "example" / "digits-int8.yaml").read_text()
    (dest / "runs" / "example" / "on-bench.yaml").write_text(spec.replace("device: host", "device: bench"))
    # digits-int8 has a result made from its current spec: up to date.
    plan = json.loads(_cli("plan", "--format", "json", cwd=dest).stdout)
    done = next(r for r in plan["runs"] if r["id"] == "example/digits-int8")
    results = dest / "runs" / "example" / "results"
    results.mkdir()
    (results / "digits-int8.json").write_text(json.dumps({"run": {"spec_hash": done["spec_hash"]}}))
    return dest


def _matrix(repo: Path, *args: str) -> list[dict]:
    proc = _cli("plan", "--format", "json", *args, cwd=repo)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["matrix"]["include"]


def test_pending_leaves_up_to_date_runs_out(repo):
    assert [(d["device"], d["runs"]) for d in _matrix(repo, "--pending")] == [("bench", ["example/on-bench"])]


def test_force_puts_up_to_date_runs_in_the_matrix(repo):
    """A forced dispatch of an up-to-date run must get a job for it."""
    assert _matrix(repo, "--pending", "--select", "example/digits-int8") == []
    forced = _matrix(repo, "--force", "--select", "example/digits-int8")
    assert [(d["device"], d["runs"]) for d in forced] == [("host", ["example/digits-int8"])]
    everything = _matrix(repo, "--force")
    assert sorted((d["device"], tuple(d["runs"])) for d in everything) == [
        ("bench", ("example/on-bench",)),
        ("host", ("example/digits-int8",)),
    ]


def test_each_job_says_its_devices_executor(repo):
    executors = {d["device"]: d["executor"] for d in _matrix(repo, "--force")}
    assert executors == {"bench": "local", "host": "docker"}


def test_the_executor_does_not_change_whether_a_run_is_up_to_date(repo):
    host = repo / "devices" / "host.yaml"
    host.write_text(host.read_text() + "executor: local\n")
    plan = json.loads(_cli("plan", "--format", "json", cwd=repo).stdout)
    assert {r["id"]: r["status"] for r in plan["runs"]}["example/digits-int8"] == "up-to-date"
