"""The pull-request comment and the job summary, on real result files in a real git repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.gitops.conftest import git, identity, result_dict, write_result_file
from tinymlaas_ci.errors import UsageError
from tinymlaas_ci.gitops.job_summary import job_summary
from tinymlaas_ci.gitops.pr_comment import MARKER, MAX_COMMENT, pr_comment
from tinymlaas_ci.plan import plan
from tinymlaas_ci.results.outcomes import read_outcomes
from tinymlaas_ci.spec.repo import load_repo

DEVICE = """schema: 1
kind: local
arch: amd64
runner: [self-hosted, tinymlaas, host]
"""
RUN = """schema: 1
name: cnn-static-int8
description: Static int8 PTQ of the digits CNN
model:
  upload: uploads/digits-cnn/model.pkl
  format: pytorch
  input_shape: [1, 8, 8]
dataset:
  upload: uploads/digits/dataset.zip
compression:
  quantization: static-int8
  calibration_samples: 256
device: host
gates:
  min_accuracy: 0.95
  max_accuracy_drop: 0.01
  max_latency_p95_ms: 0.05
  max_model_bytes: 64000
"""


def _spec_and_hash(root: Path, run_id: str = "digits/cnn-static-int8") -> tuple[dict, str]:
    repo = load_repo(root)
    assert not repo.problems, repo.problems
    planned = {r.id: r for r in plan(repo).runs}[run_id]
    return planned.spec.model_dump(mode="json", by_alias=True, exclude={"matrix"}), planned.spec_hash


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository on ``main`` with one run and its committed result (up to date)."""
    root = tmp_path / "models"
    root.mkdir()
    git(root, "init", "--quiet", "--initial-branch=main")
    identity(root)
    (root / "devices").mkdir()
    (root / "devices" / "host.yaml").write_text(DEVICE)
    (root / "runs" / "digits").mkdir(parents=True)
    (root / "runs" / "digits" / "cnn.yaml").write_text(RUN)
    for rel, data in (
        ("uploads/digits-cnn/model.pkl", b"model"),
        ("uploads/digits/dataset.zip", b"PK\x05\x06" + bytes(18)),
    ):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    spec, digest = _spec_and_hash(root)
    write_result_file(
        root,
        result_dict(
            accuracy=0.9500,
            p50=0.0190,
            size=49_800,
            peak=41.5,
            baseline_accuracy=0.975,
            spec=spec,
            spec_hash=digest,
            created_at="2025-03-04T10:00:00Z",
        ),
    )
    git(root, "add", "-A")
    git(root, "commit", "--quiet", "-m", "digits: static int8 with its result")
    return root


# -- the pull-request comment -------------------------------------------------------------------------


def test_pr_comment_shows_spec_changes_and_committed_metrics(repo):
    git(repo, "checkout", "--quiet", "-b", "pr")
    text = (repo / "runs" / "digits" / "cnn.yaml").read_text()
    text = text.replace("calibration_samples: 256", "calibration_samples: 128").replace(
        "min_accuracy: 0.95", "min_accuracy: 0.96"
    )
    (repo / "runs" / "digits" / "cnn.yaml").write_text(text)
    git(repo, "commit", "--quiet", "-am", "fewer calibration samples")

    md = pr_comment(repo, "main")
    assert md.startswith(MARKER + "\n")
    assert "### ✅ Specs are valid" in md
    assert "| `digits/cnn-static-int8` | `host` | self-hosted, tinymlaas, host | ✏️ changed |" in md
    assert "### Against `main` (" in md
    # The base result's metrics, as committed.
    assert "Committed result (❌ gates failed, 2025-03-04T10:00:00Z):" in md
    assert "| 0.9500 | 0.019 | 0.02128 | 49,800 | 41.5 |" in md
    assert "❌ max\\_accuracy\\_drop: measured 0.025 fails the limit 0.01" in md
    # Field-level spec diff: exactly the two fields that changed.
    assert "| `compression.calibration_samples` | `256` | `128` |" in md
    assert "| `gates.min_accuracy` | `0.95` | `0.96` |" in md
    rows = md.split("| field | before | after |\n|---|---|---|\n")[1].strip().splitlines()
    assert len(rows) == 2


def test_pr_comment_for_an_unchanged_run_shows_no_diff(repo):
    md = pr_comment(repo, "main")
    assert "Nothing would run after merge: every run is up to date." in md
    # The base result failed its gates and the spec is unchanged: the verdict stands.
    assert "| `digits/cnn-static-int8` | `host` | ❌ gates failed (recorded) |" in md
    assert "up-to-date run(s)" not in md
    assert "### Against" not in md


def test_pr_comment_new_run_and_a_changed_upload(repo):
    git(repo, "checkout", "--quiet", "-b", "pr")
    (repo / "uploads" / "digits-cnn" / "model.pkl").write_bytes(b"retrained model")
    (repo / "runs" / "digits" / "fp16.yaml").write_text(
        RUN.replace("cnn-static-int8", "cnn-fp16").replace("quantization: static-int8", "quantization: fp16")
    )
    git(repo, "add", "-A")
    git(repo, "commit", "--quiet", "-m", "retrain; add fp16")
    md = pr_comment(repo, "main")
    assert "| `digits/cnn-fp16` | `host` | self-hosted, tinymlaas, host | 🆕 new |" in md
    assert "| `digits/cnn-static-int8` | `host` | self-hosted, tinymlaas, host | ✏️ changed |" in md
    assert "The spec itself is unchanged: its device, pipeline or an uploaded file changed." in md


def test_pr_comment_shows_every_validation_error_and_plans_the_rest(repo):
    git(repo, "checkout", "--quiet", "-b", "pr")
    (repo / "runs" / "digits" / "broken.yaml").write_text(
        "schema: 1\nmodel:\n  upload: uploads/digits-cnn/model.pkl\n  formatt: pytorch\n"
        "dataset: {upload: uploads/digits/dataset.zip}\ndevice: rpi4\n"
    )
    (repo / "runs" / "digits" / "evil.yaml").write_text(
        'schema: 1\nname: evil\ndescription: "<img src=x onerror=alert(1)> | ![x](http://e) ' + MARKER + '"\n'
        "model: {upload: uploads/digits-cnn/model.pkl}\ndataset: {upload: uploads/digits/dataset.zip}\n"
        'device: "<b>nope</b>"\n'
    )
    md = pr_comment(repo, "main")
    assert "### ❌ " in md and " problems in 2 files" in md
    assert "| `runs/digits/broken.yaml:4:3` |" in md
    assert "formatt" in md
    assert "&lt;b&gt;nope&lt;/b&gt;" in md
    # Repository text cannot inject HTML, or a second marker that the sticky update would match.
    assert "<b>" not in md and "<img" not in md
    assert md.count(MARKER) == 1
    # The valid run is still planned.
    assert "`digits/cnn-static-int8`" in md


def test_report_pr_command_exits_0_on_invalid_specs_and_writes_the_file(repo, tmp_path):
    (repo / "devices" / "bad.yaml").write_text("schema: 1\nkind: telepathy\n")
    out = tmp_path / "report.md"
    proc = subprocess.run(
        [sys.executable, "-m", "tinymlaas_ci", "-C", str(repo), "report", "pr", "--base", "main", "--out", str(out)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    md = out.read_text()
    assert md.startswith(MARKER) and "telepathy" in md and "devices/bad.yaml" in md


def test_pr_comment_without_the_base_says_so(repo):
    md = pr_comment(repo, "origin/main")
    assert "Base `origin/main` was not found in this clone" in md


def test_pr_comment_is_cut_to_fit_a_github_comment(repo):
    for i in range(400):
        (repo / "runs" / "digits" / f"broken-{i:03d}.yaml").write_text(
            "schema: 1\nmodell: x\n" + "".join(f"extra_{j}: {'y' * 200}\n" for j in range(3))
        )
    md = pr_comment(repo, "main")
    assert len(md) <= MAX_COMMENT + 200
    assert "… and " in md  # past 100 problems the list points to the command


# -- the job summary ----------------------------------------------------------------------------------


def _rerun(repo: Path, **metrics) -> str:
    """Write a newer result of the run, as 'tinymlaas run' would, and return its path."""
    spec, digest = _spec_and_hash(repo)
    return write_result_file(
        repo,
        result_dict(spec=spec, spec_hash=digest, created_at="2025-03-05T09:30:00Z", baseline_accuracy=0.975, **metrics),
    )


def _outcomes(tmp_path: Path, rel: str, status: str) -> Path:
    path = tmp_path / "outcomes" / "host.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "schema": 1,
                "outcomes": [
                    {
                        "run": "digits/cnn-static-int8",
                        "status": status,
                        "result": rel,
                        "failed_stage": None,
                        "message": None,
                        "log": None,
                    },
                    {
                        "run": "digits/cnn-fp16",
                        "status": "failed",
                        "result": None,
                        "failed_stage": "compile",
                        "message": "fp16 conversion failed: <unsupported op> | Loop",
                        "log": "/work/digits/cnn-fp16/compile/log.txt",
                    },
                ],
            }
        )
    )
    return path


def _check_diff(md: str) -> None:
    assert "Against the previous result (2025-03-04T10:00:00Z):" in md
    # Changed: accuracy up (better), p50 down (better), peak memory up (worse).
    assert "| accuracy | 0.9500 | 0.9700 | ↑ +2.1% (🟢 better) |" in md
    assert "| accuracy drop | 0.0250 | 0.0050 | ↓ -80.0% (🟢 better) |" in md
    assert "| latency p50 (ms) | 0.019 | 0.0171 | ↓ -10.0% (🟢 better) |" in md
    assert "| peak memory (MiB) | 41.5 | 45.65 | ↑ +10.0% (🔴 worse) |" in md
    # Unchanged metrics are not listed.
    assert "model size (bytes)" not in md and "gzip size" not in md and "load time" not in md
    # Gate verdicts, with the one that flipped.
    assert "| `max_accuracy_drop` | 0.01 | 0.005 | ✅ passed (was ❌) |" in md
    assert "| `min_accuracy` | 0.95 | 0.97 | ✅ passed |" in md
    assert "| `max_model_bytes` | 6.4e+04 | 4.98e+04 | ✅ passed |" in md


def test_summary_before_and_after_the_results_commit(repo, tmp_path):
    rel = _rerun(repo, accuracy=0.97, p50=0.0171, size=49_800, peak=45.65)
    outcomes = read_outcomes(_outcomes(tmp_path, rel, "succeeded").parent)
    md = job_summary(repo, outcomes)
    assert md.startswith("## TinyMLaaS-CI results")
    assert (
        "| `digits/cnn-static-int8` | ✅ succeeded | 0.9700 | 0.0171 | 0.01915 | 49,800 | 45.65 | ✅ ✅ ✅ ✅ |" in md
    )
    _check_diff(md)
    assert "❌ failed at stage `compile`: fp16 conversion failed: &lt;unsupported op&gt; \\| Loop" in md
    assert "[Actions run](https://github.com/example/models/actions/runs/9001)" in md

    # After 'results commit' HEAD holds the new result: the summary still compares with the one before.
    git(repo, "add", rel)
    git(repo, "commit", "--quiet", "-m", "results: digits/cnn-static-int8")
    assert job_summary(repo, outcomes) == md


def test_summary_with_an_explicit_base(repo, tmp_path):
    base = git(repo, "rev-parse", "HEAD").strip()
    rel = _rerun(repo, accuracy=0.97, p50=0.0171, size=49_800, peak=45.65)
    git(repo, "commit", "--quiet", "-am", "results")
    md = job_summary(repo, read_outcomes(_outcomes(tmp_path, rel, "succeeded")), base)
    _check_diff(md)
    same = job_summary(repo, read_outcomes(_outcomes(tmp_path, rel, "succeeded")), "HEAD")
    assert "No metric changed against the previous result (2025-03-05T09:30:00Z)." in same
    with pytest.raises(UsageError, match="--base nope: no such commit"):
        job_summary(repo, [], "nope")


def test_summary_without_outcomes_finds_changed_results(repo):
    _rerun(repo, accuracy=0.95, p50=0.0190, size=40_000, peak=41.5)
    md = job_summary(repo)
    assert "| model size (bytes) | 49,800 | 40,000 | ↓ -19.7% (🟢 better) |" in md
    assert "| compression ratio | 3.07 | 3.83 | ↑ +24.5% (🟢 better) |" in md
    assert "| accuracy | 0." not in md
    assert "| `max_accuracy_drop` | 0.01 | 0.025 | ❌ failed |" in md


def test_summary_of_a_first_result(repo, tmp_path):
    spec, digest = _spec_and_hash(repo)
    rel = write_result_file(repo, result_dict(name="cnn-new", spec=spec, spec_hash=digest))
    md = job_summary(repo)
    assert "### `digits/cnn-new`" in md and "First result of this run: nothing to compare with." in md
    assert rel in git(repo, "status", "--porcelain", "--untracked-files=all")


def test_report_summary_appends_to_the_step_summary(repo, tmp_path):
    rel = _rerun(repo, accuracy=0.97, p50=0.0171, size=49_800, peak=45.65)
    outcomes = _outcomes(tmp_path, rel, "succeeded")
    summary = tmp_path / "step_summary.md"
    summary.write_text("## earlier step\n")
    env = {**os.environ, "GITHUB_STEP_SUMMARY": str(summary)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tinymlaas_ci",
            "-C",
            str(repo),
            "report",
            "summary",
            "--outcomes",
            str(outcomes.parent),
        ],
        check=False,
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    text = summary.read_text()
    assert text.startswith("## earlier step\n## TinyMLaaS-CI results")
    _check_diff(text)


def test_outcomes_that_are_not_outcomes_are_refused(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"runs": []}')
    with pytest.raises(UsageError, match="has no 'outcomes' list"):
        read_outcomes(bad)
    with pytest.raises(UsageError, match="no such file or folder"):
        read_outcomes(tmp_path / "missing.json")


def test_pr_comment_never_mentions_anyone(repo):
    """Names, descriptions and messages from the repository cannot ping people or teams."""
    git(repo, "checkout", "--quiet", "-b", "pr")
    (repo / "runs" / "digits" / "ping.yaml").write_text(
        RUN.replace("name: cnn-static-int8", "name: cnn-ping").replace(
            "uploads/digits/dataset.zip", "uploads/@octocat/dataset.zip"
        )
    )
    (repo / "runs" / "digits" / "bad.yaml").write_text(
        "schema: 1\nmodel: {upload: uploads/digits-cnn/model.pkl}\ndataset: {upload: uploads/digits/dataset.zip}\n"
        "device: '@org/everyone'\n"
    )
    (repo / "uploads" / "@octocat").mkdir()
    (repo / "uploads" / "@octocat" / "dataset.zip").write_bytes(b"PK\x05\x06" + bytes(18))
    git(repo, "add", "-A")
    git(repo, "commit", "--quiet", "-m", "mentions")
    md = pr_comment(repo, "main")
    assert "@\u200boctocat" in md and "@\u200borg/everyone" in md
    # Every @ in the comment is followed by the zero-width space.
    assert md.count("@") == md.count("@\u200b") > 0


def test_pr_comment_says_what_each_new_or_changed_run_is(repo):
    git(repo, "checkout", "--quiet", "-b", "pr")
    (repo / "runs" / "digits" / "hub.yaml").write_text(
        "schema: 1\nname: hub-pruned\nmodel:\n  huggingface: owner/digits-cnn\n  revision: v2\n  file: model.pkl\n"
        "dataset:\n  huggingface: owner/digits\n  split: validation\n"
        "compression:\n  quantization: dynamic-int8\n  pruning: {sparsity: 0.5}\n"
        "device: host\ngates: {min_accuracy: 0.9, max_latency_p95_ms: 2.5}\n"
    )
    git(repo, "add", "-A")
    git(repo, "commit", "--quiet", "-m", "a Hub run")
    md = pr_comment(repo, "main")
    assert "| run | device | runner | status | what |" in md
    row = next(line for line in md.splitlines() if line.startswith("| `digits/hub-pruned` |"))
    assert row.endswith(
        # The @ of a revision gets the zero-width space too: "@v2" could be somebody's name.
        "| 🆕 new | model hf:owner/digits-cnn@\u200bv2 · data hf:owner/digits@\u200bmain (validation) · "
        "dynamic-int8, 50% pruned · gates min\\_accuracy ≥ 0.9, max\\_latency\\_p95\\_ms ≤ 2.5 |"
    )
    # An unchanged run is listed without it, with its recorded verdict (its result failed a gate).
    assert "| `digits/cnn-static-int8` | `host` | ❌ gates failed (recorded) |\n" in md


def test_report_aliases_and_github_commands_write_the_same(repo):
    def run(*args):
        proc = subprocess.run(
            [sys.executable, "-m", "tinymlaas_ci", "-C", str(repo), *args],
            check=False,
            capture_output=True,
            text=True,
            env={k: v for k, v in os.environ.items() if k != "GITHUB_STEP_SUMMARY"},
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert run("github", "pr-comment", "--base", "main") == run("report", "pr", "--base", "main")
    assert run("github", "job-summary") == run("report", "summary")
    commands = [line.split()[0] for line in run("--help").splitlines() if line.startswith("    ") and line[4] != " "]
    assert "github" in commands and "report" not in commands  # the alias stays out of --help


def test_outcomes_are_read_by_one_rule_for_a_file_and_a_folder(tmp_path):
    """The job summary and notify read --outcomes the same way (tinymlaas_ci.results.outcomes)."""
    from tinymlaas_ci.results.outcomes import Outcome, write_outcomes

    # As actions/download-artifact lays them out: one folder per artifact, other files beside.
    folder = tmp_path / "outcomes"
    write_outcomes(folder / "outcomes-host" / "host.json", [Outcome(run="digits/a", status="succeeded")])
    write_outcomes(
        folder / "outcomes-rpi4" / "rpi4.json",
        [Outcome(run="digits/b", status="failed", failed_stage="compile", message="boom")],
    )
    (folder / "outcomes-rpi4" / "digits-b-result.json").write_text('{"schema": 1, "run": {}}')
    (folder / "notes.json").write_text("not json at all")
    written = json.loads((folder / "outcomes-host" / "host.json").read_text())
    assert written["schema"] == 1 and written["outcomes"][0]["run"] == "digits/a"

    outcomes = read_outcomes(folder)
    assert [(o.run, o.status, o.failed_stage) for o in outcomes] == [
        ("digits/a", "succeeded", None),
        ("digits/b", "failed", "compile"),
    ]
    assert read_outcomes(folder / "outcomes-host" / "host.json") == outcomes[:1]

    # A file that claims to be an outcomes file must be a valid one, in a folder too.
    (folder / "outcomes-x").mkdir()
    (folder / "outcomes-x" / "x.json").write_text('{"schema": 2, "outcomes": []}')
    with pytest.raises(UsageError, match=r"x\.json: not a valid outcomes file \(schema 1\): schema"):
        read_outcomes(folder)
    (folder / "outcomes-x" / "x.json").write_text('{"schema": 1, "outcomes": [{"run": "no-slash", "status": "ok"}]}')
    with pytest.raises(UsageError, match=r"outcomes\.0\.run"):
        read_outcomes(folder)
    # A folder with no outcomes file at all is a mistake.
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "other.json").write_text("{}")
    with pytest.raises(UsageError, match="the folder holds no outcomes file"):
        read_outcomes(empty)


def test_notify_reads_a_nested_outcomes_folder(tmp_path):
    """notify finds the outcomes of a folder of artifact folders, as the job summary does."""
    from tinymlaas_ci.notify.runs import collect_reports
    from tinymlaas_ci.results.outcomes import Outcome, write_outcomes

    root = tmp_path / "repo"
    result = result_dict(spec={"notify": ["ml@example.com"], "gates": {}}, spec_hash="0" * 64)
    rel = write_result_file(root, result)
    write_outcomes(
        tmp_path / "out" / "outcomes-host" / "host.json",
        [Outcome(run="digits/cnn-static-int8", status="succeeded", result=rel)],
    )
    reports, notes = collect_reports(root, read_outcomes(tmp_path / "out"), env={})
    assert [(r.run_id, r.recipients) for r in reports] == [("digits/cnn-static-int8", ["ml@example.com"])] and not notes
