"""The first hour's wall, end to end: a real run misses its gate and exits 1; running again
still exits 1 and says ``gates-failed`` (not "up to date"), as does the plan, until the spec
changes."""

from __future__ import annotations

import json

from tests.ops.conftest import cli


def test_a_missed_gate_stays_missed_on_every_run(tmp_path):
    repo = tmp_path / "adopter"
    assert cli("init", str(repo), cwd=tmp_path).returncode == 0
    spec = repo / "runs/example/digits-int8.yaml"
    text = spec.read_text().replace("min_accuracy: 0.9", "min_accuracy: 0.9999")
    text = text.replace(
        "measure: {warmup: 20, min_iterations: 200, min_seconds: 0.5}",
        "measure: {warmup: 2, min_iterations: 20, min_seconds: 0.05}",
    )
    spec.write_text(text)
    work = str(tmp_path / "work")

    first = cli("run", "--work-dir", work, cwd=repo, timeout=600)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "1 run: 1 gates-failed" in first.stderr
    result = json.loads((repo / "runs/example/results/digits-int8.json").read_text())
    assert result["status"] == "gates-failed"

    again = cli("run", "--work-dir", work, cwd=repo, timeout=600)
    assert again.returncode == 1, again.stdout + again.stderr
    assert "1 run: 1 gates-failed" in again.stderr and "up-to-date" not in again.stderr
    plan = cli("plan", "--format", "json", cwd=repo)
    assert json.loads(plan.stdout)["runs"][0]["status"] == "gates-failed"
    markdown = cli("plan", "--format", "markdown", cwd=repo).stdout
    assert "❌ gates failed (recorded)" in markdown and "✅" not in markdown

    # A changed gate re-judges the run (its stages are reused): now it passes.
    spec.write_text(text.replace("min_accuracy: 0.9999", "min_accuracy: 0.5"))
    assert json.loads(cli("plan", "--format", "json", cwd=repo).stdout)["runs"][0]["status"] == "changed"
    third = cli("run", "--work-dir", work, cwd=repo, timeout=600)
    assert third.returncode == 0, third.stdout + third.stderr
    assert json.loads(cli("plan", "--format", "json", cwd=repo).stdout)["runs"][0]["status"] == "up-to-date"
