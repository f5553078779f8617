"""Rules of the workflow files that the scenarios cannot show on their own, each with act
showing why it matters."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from tests.workflows.conftest import ROOT

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def _load(path):
    data = yaml.safe_load(path.read_text())
    data["on"] = data.pop(True, data.get("on"))
    return data


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_every_step_runs_with_pipefail(path):
    """``shell: bash`` is ``bash -e -o pipefail``; with no shell named, GitHub runs ``bash -e``
    and a failing command before a pipe goes unnoticed."""
    wf = _load(path)
    steps = [s for job in wf["jobs"].values() for s in job.get("steps", []) if "run" in s]
    if not steps:
        return
    assert wf.get("defaults", {}).get("run", {}).get("shell") == "bash", f"{path.name}: no defaults.run.shell: bash"
    for job_id, job in wf["jobs"].items():
        assert job.get("defaults", {}).get("run", {}).get("shell", "bash") == "bash", job_id
        for step in job.get("steps", []):
            assert step.get("shell", "bash") == "bash", f"{path.name}:{job_id}: {step.get('name')}"


def test_act_fails_a_broken_pipe_only_with_shell_bash(act_bin, tmp_path):
    """act runs steps the way GitHub does, so the rule above is about real behaviour."""
    repo = tmp_path / "repo"
    (repo / ".github" / "workflows").mkdir(parents=True)
    (repo / ".github" / "workflows" / "pipe.yml").write_text(
        "on: push\njobs:\n"
        "  unnamed:\n    runs-on: ubuntu-latest\n    steps:\n      - run: git ls-files --no-such-flag | sort\n"
        "  bash:\n    runs-on: ubuntu-latest\n    defaults: {run: {shell: bash}}\n"
        "    steps:\n      - run: git ls-files --no-such-flag | sort\n"
    )
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "remote", "add", "origin", "https://github.com/acme/pipe.git"], check=True)
    proc = subprocess.run(
        [act_bin, "push", "-C", str(repo), "-P", "ubuntu-latest=-self-hosted", "--action-cache-path",
         str(tmp_path / "cache"), "--log-prefix-job-id"],
        capture_output=True, text=True, check=False, timeout=120,
        env={"PATH": subprocess.os.environ["PATH"], "HOME": str(tmp_path), "DOCKER_HOST": "unix:///nonexistent"},
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert "[unnamed] 🏁  Job succeeded" in log, log
    assert "[bash] 🏁  Job failed" in log, log


def test_quarto_is_set_up_only_when_a_post_needs_it():
    steps = _load(ROOT / ".github" / "workflows" / "site.yml")["jobs"]["build"]["steps"]
    [quarto] = [s for s in steps if s.get("uses", "").startswith("quarto-dev/")]
    assert quarto.get("if") == "hashFiles('site/**/*.qmd', 'site/**/*.ipynb') != ''"
