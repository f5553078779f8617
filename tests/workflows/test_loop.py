"""This repository's four workflows executed by act, end to end, against a stand-in GitHub.

The scenarios share one remote and run in order, as a repository's life does: a pull request
with a broken spec, then fixed; its sticky comment; merge; the per-device jobs; publishing; the
site; re-runs. Every assertion is on what the run left behind: the remote's git log and files,
the comment bodies in the REST stand-in, the job summaries, the deployed site.

The runs are tiny (the digits CNN, a few inference iterations, the local executor on devices
whose file says ``executor: local``), so one workflow run takes seconds, not minutes.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest

from tests.workflows.conftest import project_tree
from tests.workflows.github import GitHub, PullRequest

pytestmark = pytest.mark.slow

MARKER = "<!-- tinymlaas-report -->"
BOARDS = ("board-a", "board-b", "board-c")


def device_file(name: str) -> str:
    return (
        "schema: 1\nkind: local\n"
        f"description: {name}, on a runner without Docker\n"
        "executor: local\n"
        f"runner: [self-hosted, tinymlaas, {name}]\n"
    )


def run_spec(device: str, quantization: str = "none", pipeline: str | None = None, extra: str = "") -> str:
    return (
        "schema: 1\n"
        f"description: The digits CNN on {device}\n"
        "model:\n  upload: uploads/digits-cnn/model.pkl\n  format: pytorch\n  input_shape: [1, 8, 8]\n"
        "dataset:\n  upload: uploads/digits/dataset.zip\n  split: test\n"
        f"compression:\n  quantization: {quantization}\n  calibration_samples: 32\n"
        f"device: {device}\n" + (f"pipeline: {pipeline}\n" if pipeline else "") + "runtime: onnxruntime\n"
        "measure: {warmup: 2, min_iterations: 20, min_seconds: 0}\n"
        "gates:\n  min_accuracy: 0.5\n" + extra
    )


BROKEN = """schema: 1
description: A spec with two mistakes
model:
  upload: uploads/digits-cnn/model.pkl
  format: pytorch
  input_shape: [1, 8, 8]
dataset:
  upload: uploads/digits/missing.zip
  split: test
compression: {quantization: none}
device: "@octocat"
"""

# A stage that fails while the board is unplugged: a flag file in the runner's home.
PROBE = """import json, pathlib, sys
run, stage = pathlib.Path(sys.argv[1]), sys.argv[2]
flag = pathlib.Path.home() / "board-b-offline"
if flag.exists():
    sys.exit(f"board-b does not answer ({flag} exists)")
out = {"schema": 1, "stage": stage, "artifacts": {}, "metrics": {}, "records": {}}
(run / stage / "outputs.json").write_text(json.dumps(out))
print("board-b answers")
"""
PROBED = """schema: 1
description: The default pipeline, with a check that the board answers before install
stages:
  - {name: fetch, builtin: fetch, network: true}
  - {name: compile, builtin: compile, needs: [fetch]}
  - {name: probe, command: [python3, pipelines/stages/probe.py, "{run}", probe], needs: [compile]}
  - {name: install, builtin: install, needs: [compile, probe]}
  - {name: infer, builtin: infer, needs: [install]}
"""


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


class Loop:
    """What the scenarios share: the stand-in GitHub and the pull request."""

    def __init__(self, gh: GitHub):
        self.gh = gh
        tree = {k: v for k, v in project_tree().items() if not k.startswith(("runs/", "devices/"))}
        for board in BOARDS:
            tree[f"devices/{board}.yaml"] = device_file(board).encode()
        self.seed = gh.remote.commit("main", tree, "This repository, with three boards and no runs yet")
        self.pr: PullRequest | None = None
        self.checks = []
        self.bodies: list[str] = []


@pytest.fixture(scope="module")
def loop(github) -> Loop:
    return Loop(github)


def _deploys(gh: GitHub) -> list[int]:
    log = gh.pages.parent / "deploys.log"
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def _comment_bodies(gh: GitHub, number: int) -> list[str]:
    return [c.body for c in gh.api.comments(number)]


def _result(gh: GitHub, run: str, ref: str = "main") -> dict | None:
    project, name = run.split("/")
    text = gh.remote.show(ref, f"runs/{project}/results/{name}.json")
    return json.loads(text) if text else None


# -- pull request ---------------------------------------------------------------------------------


def test_a_broken_spec_fails_the_check_with_annotations_and_a_comment(loop):
    gh = loop.gh
    loop.pr = gh.remote.open_pr(
        1,
        "add-demo-runs",
        {"runs/demo/a.yaml": run_spec("board-a"), "runs/demo/broken.yaml": BROKEN},
        "Add the demo runs",
    )
    check = gh.run_pr_check(loop.pr)
    loop.checks.append(check)
    assert check.returncode != 0, check.report()
    assert check.failed("check"), check.report()
    errors = [a for a in check.annotations() if a.get("file") == "runs/demo/broken.yaml"]
    lines = sorted(int(a["line"]) for a in errors)
    assert lines == sorted([line_of(BROKEN, "missing.zip"), line_of(BROKEN, "@octocat")]), errors
    assert not [a for a in check.annotations() if a.get("file") == "runs/demo/a.yaml"]
    # The report is written and handed over even though validation failed.
    assert "runs/demo/broken.yaml" in check.summaries["check"]

    comment = gh.run_pr_comment(check, loop.pr)
    assert comment.returncode == 0, comment.report()
    comments = gh.api.comments(1)
    assert len(comments) == 1 and comments[0].user["login"] == "github-actions[bot]"
    body = comments[0].body
    assert body.startswith(MARKER)
    assert f"runs/demo/broken.yaml:{line_of(BROKEN, 'missing.zip')}" in body
    assert "demo/a" in body
    loop.bodies.append(body)


def test_values_from_specs_do_not_ping_anyone(loop):
    """The broken spec names device "@octocat": the comment quotes it with the @ neutralised."""
    body = loop.bodies[0]
    assert "octocat" in body
    assert "@octocat" not in body and "@\u200boctocat" in body


def test_fixing_the_pull_request_updates_the_same_comment(loop):
    gh = loop.gh
    first = gh.api.comments(1)[0]
    loop.pr = gh.remote.push_to_pr(
        1,
        {
            "runs/demo/broken.yaml": None,
            "runs/demo/b.yaml": run_spec("board-b", "static-int8"),
            "runs/demo/c.yaml": run_spec("board-c"),
        },
        "Fix the demo runs",
    )
    check = gh.run_pr_check(loop.pr)
    loop.checks.append(check)
    assert check.returncode == 0, check.report()
    assert not check.annotations()
    comment = gh.run_pr_comment(check, loop.pr)
    assert comment.returncode == 0, comment.report()
    comments = gh.api.comments(1)
    assert [c.id for c in comments] == [first.id], "the comment is updated in place, not posted again"
    body = comments[0].body
    assert "broken.yaml" not in body
    for run in ("demo/a", "demo/b", "demo/c"):
        assert run in body
    assert ("PATCH", f"/repos/acme/widgets/issues/comments/{first.id}") in {(m, p) for m, p, _ in gh.api.state.requests}
    loop.bodies.append(body)


def test_a_new_runs_row_says_what_it_is(loop):
    """A reviewer sees model, dataset, compression and gates of a new run on one line."""
    body = loop.bodies[1]
    row = next(line for line in body.splitlines() if "demo/b" in line)
    for what in ("uploads/digits-cnn/model.pkl", "uploads/digits/dataset.zip", "static-int8", "0.5"):
        assert what in row, row


def test_a_stale_check_and_a_closed_pull_request_get_no_comment(loop):
    gh = loop.gh
    stale = loop.checks[0]  # ran for the first head; the pull request has moved on
    before = _comment_bodies(gh, 1)
    run = gh.run_pr_comment(stale, loop.pr)
    assert run.returncode == 0, run.report()
    assert not run.step_ran("Create or update the sticky comment"), run.report()
    assert "newer than the checked" in run.log
    assert _comment_bodies(gh, 1) == before

    other = gh.remote.open_pr(2, "closed-idea", {"runs/demo/idea.yaml": run_spec("board-a")}, "An idea")
    check = gh.run_pr_check(other)
    assert check.returncode == 0, check.report()
    other.state = "closed"
    run = gh.run_pr_comment(check, other)
    assert run.returncode == 0, run.report()
    assert not run.step_ran("Create or update the sticky comment"), run.report()
    assert gh.api.comments(2) == []


@pytest.mark.parametrize(
    ("number", "why"),
    [("1\n<!-- -->", "does not hold a pull-request number"), ("1", "but the check ran for")],
    ids=["not-a-number", "another-pull-request"],
)
def test_a_forged_pr_number_is_refused(loop, number, why):
    """Pull-request code wrote the artifact: it may name any pull request."""
    gh = loop.gh
    evil = gh.remote.pulls.get(3) or gh.remote.open_pr(3, "evil", {"README.md": "mine\n"}, "Innocent change")
    run_id = gh.next_run_id()
    report = gh.artifacts / str(run_id) / "tinymlaas-pr-report"
    report.mkdir(parents=True)
    (report / "pr-number.txt").write_text(number)
    (report / "report.md").write_text(f"{MARKER}\nSomething @everyone should click\n")
    before = {n: _comment_bodies(gh, n) for n in (1, 3)}
    check = type("Check", (), {"run_id": run_id, "returncode": 0, "head_sha": evil.head})()
    run = gh.run_pr_comment(check, evil)
    assert run.returncode != 0, run.report()
    assert why in run.log and "refused" in run.log
    assert not run.step_ran("Create or update the sticky comment")
    assert {n: _comment_bodies(gh, n) for n in (1, 3)} == before


# -- after merge ----------------------------------------------------------------------------------


def test_merge_runs_every_device_publishes_one_commit_and_deploys_the_site(loop):
    gh = loop.gh
    before = gh.remote.sha("main")
    merge = gh.remote.merge_pr(1)
    run = gh.run_push(before, merge)
    assert run.returncode == 0, run.report()
    for job in ("plan", "publish", "build", "deploy"):
        assert run.succeeded(job), f"{job}:\n{run.report()}"
    assert sum("🏁  Job succeeded" in line for line in run.job_lines("run")) == 3
    log = gh.remote.log("main", "%an|%s")
    assert log[0] == "github-actions[bot]|results: demo/a, demo/b, demo/c", log[:3]
    assert gh.remote.log("main", "%H")[1] == merge
    for run_id, board in (("demo/a", "board-a"), ("demo/b", "board-b"), ("demo/c", "board-c")):
        result = _result(gh, run_id)
        assert result["status"] == "succeeded" and result["device"]["name"] == board, result
        assert result["metrics"]["accuracy"] > 0.5
    # The plan summary lists the three runs; the publish summary reports them.
    assert all(r in run.summaries["plan"] for r in ("demo/a", "demo/b", "demo/c"))
    assert "demo/b" in run.summaries["publish"]
    # The site was built from the results commit and deployed: a page per run.
    assert _deploys(gh).count(run.run_id) == 1
    for name, board in (("a", "board-a"), ("b", "board-b"), ("c", "board-c")):
        page = gh.pages / "projects" / "demo" / "runs" / f"{name}.html"
        assert page.is_file() and board in page.read_text(), name
    # No .qmd or .ipynb post: the Quarto setup is skipped (nothing downloaded for nothing).
    quarto = gh.root / "quarto-setups.log"
    assert not quarto.exists() or str(run.run_id) not in quarto.read_text()


def test_an_unchanged_rerun_does_nothing(loop):
    gh = loop.gh
    before = gh.remote.log("main", "%H")
    # select "*": a glob for tinymlaas, not for the shell (bash would expand it to file names).
    run = gh.run_dispatch(inputs={"select": "*", "force": False})
    assert run.returncode == 0, run.report()
    assert run.succeeded("plan"), run.report()
    assert "jobs=0" in run.log
    for job in ("run", "publish", "build", "deploy"):
        assert not run.ran(job), job
    assert gh.remote.log("main", "%H") == before


def test_forced_dispatches_race_to_publish_and_lose_nothing(loop):
    """Three forced dispatches, one run each: ``force: true`` re-runs an up-to-date run, the
    three publishers race for ``main`` and every result lands. One device's runner is
    compromised: its artifact cannot put anything but result files into the publishing checkout
    (which holds the write token)."""
    gh = loop.gh
    before = gh.remote.sha("main")
    old = {r: _result(gh, r)["created_at"] for r in ("demo/a", "demo/b", "demo/c")}
    run_ids = {name: gh.next_run_id() for name in old}
    planted = gh.artifacts / str(run_ids["demo/a"]) / "results-board-z"
    marker = gh.root / "hook-ran"
    hook = f"#!/bin/sh\necho \"$(git config --get-regexp 'http.*extraheader')\" > {marker}\n"
    for rel, text in {
        ".git/hooks/post-commit": hook,
        ".git/hooks/pre-push": hook,
        "README.md": "replaced by a runner\n",
        "pipelines/default.yaml": "schema: 1\n",
    }.items():
        (planted / rel).parent.mkdir(parents=True, exist_ok=True)
        (planted / rel).write_text(text)
        (planted / rel).chmod(0o755)
    readme = gh.remote.show("main", "README.md")
    runs: dict[str, object] = {}

    def dispatch(name: str) -> None:
        runs[name] = gh.run_dispatch(inputs={"select": name, "force": True}, run_id=run_ids[name])

    threads = [threading.Thread(target=dispatch, args=(name,)) for name in old]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for run in runs.values():
        assert run.returncode == 0, run.report()
        assert re.search(r"jobs=1\b", run.log), run.report()
        assert run.succeeded("publish") and run.succeeded("deploy"), run.report()
    subjects = gh.remote.log(f"{before}..main", "%s")
    assert sorted(subjects) == ["results: demo/a", "results: demo/b", "results: demo/c"], subjects
    for name, created in old.items():
        assert _result(gh, name)["created_at"] > created, name
    assert sorted(_deploys(gh)[-3:]) == sorted(run_ids.values())
    # The planted files stayed in the artifact.
    assert gh.remote.show("main", "README.md") == readme
    assert not marker.exists(), "a hook from an artifact ran in the publishing checkout"
    assert "ignored .git/hooks/post-commit" in runs["demo/a"].log


def test_a_rerun_of_a_failed_job_publishes_the_rerun(loop):
    gh = loop.gh
    offline = gh.home / "board-b-offline"
    before = gh.remote.sha("main")
    pr = gh.remote.open_pr(
        4,
        "probed-run",
        {
            "runs/demo/d.yaml": run_spec("board-b", pipeline="probed"),
            "pipelines/probed.yaml": PROBED,
            "pipelines/stages/probe.py": PROBE,
            "site/docs/research/posts/probe-notes.qmd": "---\ntitle: Probe notes\n---\n\nWhat the probe checks.\n",
        },
        "A run that checks its board first",
    )
    merge = gh.remote.merge_pr(pr.number)
    offline.write_text("unplugged\n")
    first = gh.run_push(before, merge)
    assert first.failed("run"), first.report()
    assert _result(gh, "demo/d") is None
    offline.unlink()
    # "Re-run failed jobs": the same workflow run, attempt 2.
    second = gh.run_push(before, merge, run_id=first.run_id, attempt=2)
    assert second.returncode == 0, second.report()
    assert second.succeeded("publish"), second.report()
    result = _result(gh, "demo/d")
    assert result is not None and result["status"] == "succeeded", gh.remote.log("main")[:3]
    assert gh.remote.log("main", "%s")[0] == "results: demo/d"
    # The repository now has a .qmd post: the site build sets up Quarto.
    assert f"{second.run_id} build" in (gh.root / "quarto-setups.log").read_text()


def test_a_protected_branch_fails_at_once_with_the_servers_reason(loop):
    gh = loop.gh
    before = gh.remote.log("main", "%H")
    gh.remote.protect("main")
    try:
        run = gh.run_dispatch(inputs={"select": "demo/c", "force": True})
    finally:
        gh.remote.protect("main", on=False)
    assert run.failed("publish"), run.report()
    assert "GH006: Protected branch update failed for refs/heads/main" in run.log
    assert "kept moving" not in run.log
    assert "protected branch" in run.log and "--branch" in run.log
    assert not run.ran("build") and not run.ran("deploy")
    assert gh.remote.log("main", "%H") == before


# -- who may start device jobs ---------------------------------------------------------------------


def test_device_jobs_start_only_for_trusted_events(loop, tmp_path):
    gh = loop.gh
    gh.api.state.permissions["mallory"] = "read"
    refused = gh.run_dispatch(inputs={"select": "demo/a", "force": True}, actor="mallory")
    assert refused.failed("plan"), refused.report()
    assert "mallory has read access" in refused.log
    assert not refused.ran("run") and not refused.ran("publish")

    # A pull request that adds its own trigger to run.yml: the plan job refuses the event.
    workflow = Path(gh.root) / "act" / "run-with-pr.yml"
    workflow.parent.mkdir(parents=True, exist_ok=True)
    text = (Path(__file__).resolve().parents[2] / ".github" / "workflows" / "run.yml").read_text()
    workflow.write_text(text.replace("on:\n  push:", "on:\n  pull_request:\n  push:", 1))
    pr = gh.remote.open_pr(5, "fork-idea", {"runs/demo/e.yaml": run_spec("board-a")}, "From a fork")
    run = gh.act(
        "pull_request", "run.yml", gh.pull_request_event(pr), sha=gh.remote.merge_ref(5), branch=None,
        workflow_file=workflow, actor="mallory",
    )  # fmt: skip
    assert run.failed("plan"), run.report()
    assert "the pull_request event never starts device jobs" in run.log
    assert not run.ran("run")
