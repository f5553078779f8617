"""What the publish job relies on from ``tinymlaas results commit``, against real bare repositories.

- A push the server refuses (a protected branch) fails at once with the server's reason; only
  a push that lost a race is retried.
- The step outputs say whether result commits reached the branch: not when a newer result of
  the same run won the rebase (then the site must not be rebuilt).
- Calling it again after it was stopped between its commit and its push publishes that commit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.gitops.conftest import bare_remote, git, make_clone, result_dict, write_result_file  # noqa: F401
from tinymlaas_ci.errors import GitError, UsageError
from tinymlaas_ci.gitops.commit import commit_results

_GH006 = """#!/bin/sh
echo x >> "$GIT_DIR/push-attempts"
echo "error: GH006: Protected branch update failed for refs/heads/main." >&2
echo "error: Changes must be made through a pull request." >&2
exit 1
"""


def _protect(bare: Path) -> Path:
    hook = bare / "hooks" / "pre-receive"
    hook.write_text(_GH006)
    hook.chmod(0o755)
    return bare / "push-attempts"


def _commit_cli(clone: Path, tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    output = tmp_path / f"github-output-{clone.name}"
    output.write_text("")
    env = {**os.environ, "GITHUB_OUTPUT": str(output)}
    proc = subprocess.run(
        [sys.executable, "-m", "tinymlaas_ci", "results", "commit", "--branch", "main", "--backoff", "0", *args],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines() if "=" in line)
    return proc, outputs


def _remote_main(bare: Path) -> str:
    return git(bare, "rev-parse", "main").strip()


def test_a_protected_branch_is_refused_once_with_the_servers_reason(bare_remote, make_clone):
    clone = make_clone("job")
    write_result_file(clone, result_dict())
    attempts = _protect(bare_remote)
    with pytest.raises(GitError) as info:
        commit_results(clone, branch="main", retries=8, backoff=5.0)
    err = info.value
    assert "GH006: Protected branch update failed for refs/heads/main" in str(err)
    assert "kept moving" not in str(err)
    assert "protected branch" in err.hint and "--branch" in err.hint
    assert attempts.read_text().count("x") == 1, "a refusal is not a race: no retries"
    # The commit stays in the clone; nothing reached the remote.
    assert git(clone, "log", "-1", "--format=%s").startswith("results: digits/cnn-static-int8")
    assert git(bare_remote, "log", "--format=%s", "main").split("\n")[0] == "seed"


def test_a_rejected_non_fast_forward_is_still_a_race(bare_remote, make_clone):
    first, second = make_clone("first"), make_clone("second")
    write_result_file(first, result_dict(name="a"))
    write_result_file(second, result_dict(name="b"))
    commit_results(first, branch="main", backoff=0)
    outcome = commit_results(second, branch="main", backoff=0)
    assert outcome.pushed and outcome.attempts == 2
    assert git(bare_remote, "log", "--format=%s", "main").split("\n")[:2] == [
        "results: digits/b",
        "results: digits/a",
    ]


def test_outputs_say_committed_with_the_pushed_commit(bare_remote, make_clone, tmp_path):
    clone = make_clone("job")
    write_result_file(clone, result_dict())
    proc, outputs = _commit_cli(clone, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert outputs == {"committed": "true", "commit": _remote_main(bare_remote), "pushed": "true", "files": "1"}


def test_outputs_say_not_committed_when_a_newer_result_won_the_rebase(bare_remote, make_clone, tmp_path):
    newer, older = make_clone("newer"), make_clone("older")
    write_result_file(newer, result_dict(accuracy=0.98, created_at="2025-03-04T12:00:00Z"))
    write_result_file(older, result_dict(accuracy=0.96, created_at="2025-03-04T11:00:00Z"))
    commit_results(newer, branch="main", backoff=0)
    tip = _remote_main(bare_remote)
    before = git(older, "rev-parse", "HEAD").strip()
    proc, outputs = _commit_cli(older, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "kept the result already on main" in proc.stdout
    # HEAD moved (to the other publisher's commit), yet nothing of ours was published.
    assert git(older, "rev-parse", "HEAD").strip() == tip != before
    assert outputs["committed"] == "false" and outputs["commit"] == "", outputs
    assert _remote_main(bare_remote) == tip


def test_a_second_call_pushes_what_an_interrupted_call_committed(bare_remote, make_clone, tmp_path):
    clone = make_clone("job")
    write_result_file(clone, result_dict())
    # The first call committed, then the job was killed before its push.
    interrupted = commit_results(clone, branch="main", push=False)
    assert interrupted.committed and not interrupted.pushed
    assert git(bare_remote, "log", "-1", "--format=%s", "main").strip() == "seed"
    proc, outputs = _commit_cli(clone, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "pushed 1 earlier result commit(s) the remote lacked" in proc.stdout
    assert interrupted.commit[:12] in proc.stdout
    assert _remote_main(bare_remote) == interrupted.commit
    assert outputs["committed"] == "true" and outputs["commit"] == interrupted.commit
    # And once more: nothing left to do.
    proc, outputs = _commit_cli(clone, tmp_path)
    assert "nothing to commit" in proc.stdout and outputs["committed"] == "false"


def test_unpushed_commits_of_other_files_are_not_published(bare_remote, make_clone):
    clone = make_clone("job")
    (clone / "README.md").write_text("local work\n")
    git(clone, "add", "README.md")
    git(clone, "commit", "-q", "-m", "local work")
    with pytest.raises(UsageError, match="change more than result files: [0-9a-f]{12} local work"):
        commit_results(clone, branch="main")
    assert git(bare_remote, "log", "-1", "--format=%s", "main").strip() == "seed"
