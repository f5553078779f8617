"""``tinymlaas results commit`` against a real bare repository.

Pushers are real subprocesses started at the same time; afterwards the remote must hold every
result, each in a commit that names its run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.gitops.conftest import git, result_dict, tinymlaas, write_result_file
from tinymlaas_ci.errors import GitError, TinymlError, UsageError
from tinymlaas_ci.gitops.commit import changed_result_files, commit_message, commit_results


def _remote_file(bare: Path, rel: str) -> dict | None:
    proc = __import__("subprocess").run(["git", "-C", str(bare), "show", f"main:{rel}"], capture_output=True, text=True)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


_BARRIER_HOOK = """#!/bin/sh
# Hold every first push until all pushers are ready, so that they really collide.
touch "{barrier}/$$"
while [ "$(ls "{barrier}" | wc -l)" -lt {n} ]; do sleep 0.02; done
"""


@pytest.mark.parametrize("pushers", [4])
def test_concurrent_pushers_lose_no_result(tmp_path, bare_remote, make_clone, pushers):
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    clones = []
    for i in range(pushers):
        clone = make_clone(f"job{i}")
        hook = clone / ".git" / "hooks" / "pre-push"
        hook.write_text(_BARRIER_HOOK.format(barrier=barrier, n=pushers))
        hook.chmod(0o755)
        write_result_file(
            clone,
            result_dict(
                name=f"cnn-{i}",
                accuracy=0.95 + i / 100,
                baseline_accuracy=0.95 + i / 100,
                created_at=f"2025-03-04T10:00:0{i}Z",
            ),
        )
        clones.append(clone)
    procs = [tinymlaas("-C", str(c), "results", "commit", "--backoff", "0.05", "--retries", "10") for c in clones]
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err
        assert "committed 1 result file(s)" in out and "pushed" in out, out

    # All pushed at once: one won each round, so the others had to rebase and retry.
    retried = [int(out.split("after ")[1].split()[0]) for out, _ in outputs if "after " in out]
    assert len(retried) >= pushers - 1 and sum(retried) >= 2 * (pushers - 1)

    log = git(bare_remote, "log", "--format=%H", "main").split()
    assert len(log) == pushers + 1  # the seed plus one commit per pusher, none merged away
    for i in range(pushers):
        rel = f"runs/digits/results/cnn-{i}.json"
        assert _remote_file(bare_remote, rel)["metrics"]["accuracy"] == pytest.approx(0.95 + i / 100)
        # Exactly one commit touched this result, and its message names the run.
        commits = git(bare_remote, "log", "--format=%H", "main", "--", rel).split()
        assert len(commits) == 1
        message = git(bare_remote, "log", "-1", "--format=%B", commits[0])
        assert f"digits/cnn-{i}" in message.splitlines()[0]
        assert f"- digits/cnn-{i}: succeeded, accuracy {0.95 + i / 100:.4f}" in message


def test_one_commit_lists_every_run_and_only_result_files(bare_remote, make_clone):
    clone = make_clone("a")
    for mode, acc in (("none", 0.975), ("fp16", 0.975), ("dynamic-int8", 0.9722)):
        write_result_file(clone, result_dict(name=f"cnn-{mode}", accuracy=acc, baseline_accuracy=0.975))
    (clone / "runs" / "digits" / "cnn.yaml").write_text("schema: 1\n# edited by hand\n")
    (clone / "notes.txt").write_text("not a result\n")
    (clone / "runs" / "digits" / "results" / "README.json.bak").write_text("{}")

    outcome = commit_results(clone, backoff=0)
    assert outcome.pushed and outcome.attempts == 1
    assert outcome.runs == ["digits/cnn-dynamic-int8", "digits/cnn-fp16", "digits/cnn-none"]
    files = git(bare_remote, "show", "--name-only", "--format=", "main").split()
    assert files == [f"runs/digits/results/cnn-{m}.json" for m in ("dynamic-int8", "fp16", "none")]
    subject, _, body = git(bare_remote, "log", "-1", "--format=%B", "main").partition("\n\n")
    assert subject == "results: digits/cnn-dynamic-int8, digits/cnn-fp16, digits/cnn-none"
    assert "- digits/cnn-dynamic-int8: succeeded, accuracy 0.9722" in body
    # The hand edit and the stray files are left alone, uncommitted.
    status = git(clone, "status", "--porcelain")
    assert " M runs/digits/cnn.yaml" in status and "?? notes.txt" in status


def test_nothing_changed_is_a_no_op(bare_remote, make_clone):
    clone = make_clone("a")
    head = git(clone, "rev-parse", "HEAD")
    proc = tinymlaas("-C", str(clone), "results", "commit")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "nothing to commit: no new or changed result files" in out
    assert git(clone, "rev-parse", "HEAD") == head
    assert git(bare_remote, "rev-parse", "main") == head


def test_same_run_conflict_keeps_the_newer_remote_result(bare_remote, make_clone):
    a, b = make_clone("a"), make_clone("b")
    write_result_file(a, result_dict(accuracy=0.98, created_at="2025-03-04T12:00:00Z"))
    commit_results(a, backoff=0)
    # b made the same run earlier (older created_at) and one other run, then pushes late.
    write_result_file(b, result_dict(accuracy=0.96, created_at="2025-03-04T11:00:00Z"))
    write_result_file(b, result_dict(name="cnn-fp16", accuracy=0.975))

    outcome = commit_results(b, backoff=0)
    assert outcome.pushed and outcome.attempts == 2
    assert outcome.runs == ["digits/cnn-fp16"]
    assert len(outcome.superseded) == 1
    assert (
        "digits/cnn-static-int8: kept the result already on main (created 2025-03-04T12:00:00Z)"
        in outcome.superseded[0]
    )
    assert _remote_file(bare_remote, "runs/digits/results/cnn-static-int8.json")["metrics"]["accuracy"] == 0.98
    assert _remote_file(bare_remote, "runs/digits/results/cnn-fp16.json") is not None
    # The message was rewritten to say what the commit holds now.
    message = git(bare_remote, "log", "-1", "--format=%B", "main")
    assert message.startswith("results: digits/cnn-fp16\n") and "cnn-static-int8" not in message


def test_same_run_conflict_replaces_an_older_remote_result(bare_remote, make_clone):
    a, b = make_clone("a"), make_clone("b")
    write_result_file(a, result_dict(accuracy=0.96, created_at="2025-03-04T11:00:00Z"))
    commit_results(a, backoff=0)
    write_result_file(b, result_dict(accuracy=0.98, created_at="2025-03-04T12:00:00Z"))

    outcome = commit_results(b, backoff=0)
    assert outcome.pushed and outcome.runs == ["digits/cnn-static-int8"]
    assert "replaced the result on main (created 2025-03-04T11:00:00Z) with this newer one" in outcome.superseded[0]
    assert _remote_file(bare_remote, "runs/digits/results/cnn-static-int8.json")["metrics"]["accuracy"] == 0.98
    # The older result is not lost: it is the previous version in history.
    commits = git(bare_remote, "log", "--format=%H", "main", "--", "runs/digits/results/cnn-static-int8.json").split()
    assert len(commits) == 2


def test_all_results_superseded_pushes_nothing(bare_remote, make_clone):
    a, b = make_clone("a"), make_clone("b")
    write_result_file(a, result_dict(created_at="2025-03-04T12:00:00Z"))
    commit_results(a, backoff=0)
    remote_head = git(bare_remote, "rev-parse", "main")
    write_result_file(b, result_dict(accuracy=0.5, created_at="2025-03-04T09:00:00Z"))

    outcome = commit_results(b, backoff=0)
    assert not outcome.committed and not outcome.pushed
    assert "nothing to commit: the remote already holds newer results" in outcome.describe()
    assert git(bare_remote, "rev-parse", "main") == remote_head
    assert git(b, "status", "--porcelain") == ""  # b now matches the remote, nothing half-done


def test_dry_run_changes_nothing(bare_remote, make_clone):
    clone = make_clone("a")
    write_result_file(clone, result_dict())
    proc = tinymlaas("-C", str(clone), "results", "commit", "--dry-run")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "would commit 1 result file(s):" in out and "runs/digits/results/cnn-static-int8.json" in out
    assert "- digits/cnn-static-int8: succeeded, accuracy 0.9750" in out
    assert git(clone, "status", "--porcelain").startswith("?? runs/")


def test_retries_exhausted_says_so_and_keeps_the_commit(bare_remote, make_clone, monkeypatch):
    a, b = make_clone("a"), make_clone("b")
    write_result_file(b, result_dict(name="cnn-fp16"))
    write_result_file(a, result_dict())
    commit_results(a, backoff=0)
    with pytest.raises(GitError, match=r"rejected 1 times: the branch kept moving") as info:
        commit_results(b, retries=0, backoff=0)
    assert "raise --retries" in info.value.hint
    assert "cnn-fp16" in git(b, "log", "-1", "--format=%s")


def test_push_to_a_missing_remote_fails_with_a_hint(make_clone):
    clone = make_clone("a")
    write_result_file(clone, result_dict())
    with pytest.raises(GitError, match=r"pushing the results to nowhere/main") as info:
        commit_results(clone, remote="nowhere", backoff=0)
    assert "git remote -v" in info.value.hint


def test_refuses_a_broken_or_misplaced_result(make_clone):
    clone = make_clone("a")
    rel = write_result_file(clone, result_dict())
    wrong = clone / "runs" / "digits" / "results" / "other.json"
    wrong.write_text((clone / rel).read_text())
    with pytest.raises(
        UsageError, match=r"other.json: holds the result of digits/cnn-static-int8, not of digits/other"
    ):
        commit_results(clone, backoff=0)
    wrong.write_text("{not json")
    with pytest.raises(TinymlError, match=r"other.json: not a valid result file"):
        commit_results(clone, backoff=0)
    with pytest.raises(UsageError, match=r"not a result file"):
        commit_results(clone, [clone / "runs" / "digits" / "cnn.yaml"], backoff=0)


def test_detached_head_needs_a_branch(make_clone):
    clone = make_clone("a")
    git(clone, "checkout", "--quiet", "--detach")
    write_result_file(clone, result_dict())
    with pytest.raises(UsageError, match="HEAD is detached") as info:
        commit_results(clone, backoff=0)
    assert "--branch" in info.value.hint
    outcome = commit_results(clone, branch="main", backoff=0)
    assert outcome.pushed


def test_changed_result_files_ignores_deleted_and_other_files(make_clone):
    clone = make_clone("a")
    write_result_file(clone, result_dict())
    (clone / "runs" / "digits" / "results" / "nested").mkdir()
    (clone / "runs" / "digits" / "results" / "nested" / "x.json").write_text("{}")
    assert changed_result_files(clone) == ["runs/digits/results/cnn-static-int8.json"]


def test_long_subjects_count_the_runs():
    runs = [(f"digits/cnn-sweep-{i}", "succeeded", 0.97) for i in range(8)]
    message = commit_message("results:", runs)
    assert message.splitlines()[0] == "results: 8 runs"
    assert message.count("\n- digits/cnn-sweep-") == 8
