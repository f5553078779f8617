"""A recorded verdict stays a verdict: a committed result that failed its gates is reported as
``gates-failed`` by ``plan``, ``run`` and the pull-request comment until its spec changes, and
``tinymlaas run`` exits non-zero for it."""

from __future__ import annotations

import json
from pathlib import Path

from tinymlaas_ci.cli.main import main
from tinymlaas_ci.plan import plan
from tinymlaas_ci.spec.repo import load_repo

from .conftest import RUN

GATED = RUN + "gates:\n  min_accuracy: 0.99\n"


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _record(root: Path, run_id: str, status: str) -> None:
    """Commit a result for the current spec of ``run_id`` (what a finished run writes)."""
    planned = next(r for r in plan(load_repo(root)).runs if r.id == run_id)
    passed = status != "gates-failed"
    result = {
        "schema": 1,
        "status": status,
        "run": {"project": planned.project, "name": planned.name, "spec_hash": planned.spec_hash},
        "gates": [{"gate": "min_accuracy", "limit": 0.99, "value": 0.5, "passed": passed, "message": "accuracy"}],
    }
    _write(root, planned.result_path, json.dumps(result))


def test_plan_keeps_a_recorded_gate_failure_until_the_spec_changes(repo: Path):
    _write(repo, "runs/p/a.yaml", GATED)
    _write(repo, "runs/p/b.yaml", RUN)
    _record(repo, "p/a", "gates-failed")
    _record(repo, "p/b", "succeeded")
    status = {r.id: r.status for r in plan(load_repo(repo)).runs}
    assert status == {"p/a": "gates-failed", "p/b": "up-to-date"}
    data = plan(load_repo(repo)).to_json()
    assert data["summary"]["gates-failed"] == 1
    assert data["matrix"] == {"include": []}, "a recorded verdict is not measured again unless forced"

    # Editing the gate re-judges the run: it is pending again.
    _write(repo, "runs/p/a.yaml", RUN + "gates:\n  min_accuracy: 0.4\n")
    status = {r.id: r.status for r in plan(load_repo(repo)).runs}
    assert status == {"p/a": "changed", "p/b": "up-to-date"}


def test_run_and_plan_commands_report_the_recorded_verdict_on_every_call(repo: Path, capsys, tmp_path: Path):
    _write(repo, "runs/p/a.yaml", GATED)
    _write(repo, "runs/p/b.yaml", RUN)
    _record(repo, "p/a", "gates-failed")
    _record(repo, "p/b", "succeeded")
    for _ in range(2):  # the second call must say the same as the first
        code = main(["-C", str(repo), "run", "--work-dir", str(tmp_path / "work"), "--json", str(tmp_path / "o.json")])
        err = capsys.readouterr().err
        assert code == 1
        assert "1 up-to-date, 1 gates-failed" in err
        assert "gates failed: p/a" in err
        outcomes = {o["run"]: o["status"] for o in json.loads((tmp_path / "o.json").read_text())["outcomes"]}
        assert outcomes == {"p/a": "gates-failed", "p/b": "up-to-date"}
    assert not (tmp_path / "work" / "p").exists(), "nothing was measured again"

    assert main(["-C", str(repo), "run", "--select", "p/b", "--work-dir", str(tmp_path / "work")]) == 0
    capsys.readouterr()

    assert main(["-C", str(repo), "plan"]) == 0
    out = capsys.readouterr().out
    assert "p/a" in out and "gates-failed" in out
    assert "1 with failed gates (recorded)" in out
    assert main(["-C", str(repo), "plan", "--pending", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["runs"] == []


def test_pr_comment_shows_a_red_cross_for_a_recorded_gate_failure(repo: Path):
    from tinymlaas_ci.gitops.pr_comment import pr_comment

    _write(repo, "runs/p/a.yaml", GATED)
    _write(repo, "runs/p/b.yaml", RUN)
    _record(repo, "p/a", "gates-failed")
    _record(repo, "p/b", "succeeded")
    text = pr_comment(repo, None)
    lines = text.splitlines()
    row_a = next(line for line in lines if line.startswith("| `p/a`"))
    row_b = next(line for line in lines if line.startswith("| `p/b`"))
    assert "❌ gates failed" in row_a and "✅" not in row_a
    assert "✅ up to date" in row_b
    assert "1 with failed gates" in text
