"""Commit new result files and push them, surviving races with other pushers.

After a run, several jobs (one per device) may finish at about the same time, and the job that
publishes their results may race with a person pushing to ``main``. :func:`commit_results`
makes one commit of the result files, pushes it, and when the push is rejected because the
branch moved, fetches, rebases onto it and tries again with a growing, jittered pause.

Result files are per run (``runs/<project>/results/<run>.json``), so a rebase can only conflict
when two jobs wrote the *same* run. Then the result with the newer ``created_at`` wins and the
outcome says which one was kept; results of different runs are never dropped.

A push the server refuses for another reason (a protected branch, missing permission) is not a
race: it fails at once with the server's own words. Running the command again is safe: result
commits of an earlier call that never reached the remote (the job was killed between commit
and push) are pushed then.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from tinymlaas_ci.errors import GitError, UsageError
from tinymlaas_ci.git import current_branch, git, git_error, rev_parse, show, toplevel
from tinymlaas_ci.results.layout import RESULT_PATH, read_result, result_path

__all__ = ["CommitOutcome", "changed_result_files", "commit_message", "commit_results"]

"""Where result files live, relative to the repository root; nothing else is ever committed."""

# Why git says a ref was rejected, from `git push --porcelain`: "!<TAB>src:dst<TAB>[rejected]
# (fetch first)". Only these mean "someone else pushed first", worth a fetch and a rebase: the
# client saw the branch move, or the server lost the race to update the ref. Everything else
# ("[remote rejected] (pre-receive hook declined)" for a protected branch, permission errors)
# would be refused again after any number of retries.
_RACE_REASONS = {
    "[rejected]": ("fetch first", "non-fast-forward", "stale info"),
    "[remote rejected]": ("cannot lock ref", "incorrect old value", "failed to update ref"),
}
_MAX_PAUSE = 30.0


@dataclass
class CommitOutcome:
    """What :func:`commit_results` did."""

    files: list[str] = field(default_factory=list)
    """Result files in the commit, relative to the repository root."""
    runs: list[str] = field(default_factory=list)
    """``project/run`` of each committed result."""
    commit: str | None = None
    """The pushed commit (None when nothing was committed)."""
    pushed: bool = False
    attempts: int = 0
    """Push attempts made (1 when the first push went through)."""
    message: str = ""
    """The commit message."""
    superseded: list[str] = field(default_factory=list)
    """One line per same-run conflict, saying which result was kept and why."""
    earlier: list[str] = field(default_factory=list)
    """``<sha> <subject>`` of result commits made before this call that the remote lacked and
    that this call pushed (an earlier call was stopped between its commit and its push)."""
    dry_run: bool = False

    @property
    def committed(self) -> bool:
        return self.commit is not None

    @property
    def published(self) -> bool:
        """True when this call put result commits on the remote branch: its own, or earlier
        ones it pushed. False when nothing changed or newer results on the remote won."""
        return self.pushed and (self.committed or bool(self.earlier))

    def github_outputs(self) -> dict[str, str]:
        """Step outputs for GitHub Actions: ``committed`` (true when result commits reached
        the branch: the site must be rebuilt from ``commit``), ``commit`` (the pushed commit,
        empty when none), ``pushed`` and ``files`` (how many result files the commit holds)."""
        return {
            "committed": "true" if self.published else "false",
            "commit": (self.commit or "") if self.published else "",
            "pushed": "true" if self.pushed else "false",
            "files": str(len(self.files) if self.committed else 0),
        }

    def describe(self) -> str:
        """A few lines for the terminal and the Actions log."""
        lines = list(self.superseded)
        if self.dry_run:
            if not self.files:
                return "nothing to commit: no new or changed result files"
            lines.append(f"would commit {len(self.files)} result file(s):")
            lines += [f"  {f}" for f in self.files]
            lines += ["", self.message]
            return "\n".join(lines)
        tries = "" if self.attempts <= 1 else f" after {self.attempts} attempts"
        if self.earlier:
            lines.append(f"pushed {len(self.earlier)} earlier result commit(s) the remote lacked{tries}:")
            lines += [f"  {c}" for c in self.earlier]
        if not self.committed:
            if not self.earlier:
                lines.append(
                    "nothing to commit: no new or changed result files"
                    if not self.superseded
                    else "nothing to commit: the remote already holds newer results"
                )
            return "\n".join(lines)
        lines.append(
            f"committed {len(self.files)} result file(s) as {self.commit[:12]}"
            + (f" and pushed{tries}" if self.pushed else " (not pushed)")
        )
        lines += [f"  {f}" for f in self.files]
        return "\n".join(lines)


def _run_id(path: str) -> str:
    parts = path.split("/")
    return f"{parts[1]}/{Path(parts[3]).stem}"


def changed_result_files(root: Path) -> list[str]:
    """Result files that are new (untracked) or differ from ``HEAD``, relative to ``root``."""
    proc = git(root, "status", "--porcelain=v1", "-z", "--untracked-files=all", "--", "runs")
    out = []
    for entry in proc.stdout.decode("utf-8", "replace").split("\0"):
        if len(entry) < 4:
            continue
        state, path = entry[:2], entry[3:]
        if "D" in state:
            continue  # a deleted result is a person's decision, not ours to commit
        if RESULT_PATH.match(path):
            out.append(path)
    return sorted(set(out))


def commit_message(prefix: str, summaries: list[tuple[str, str, float | None]]) -> str:
    """One subject line naming the runs (or how many), then one line per run."""
    ids = [run for run, _, _ in summaries]
    subject = f"{prefix} {', '.join(ids)}".strip()
    if len(subject) > 72:
        subject = f"{prefix} {len(ids)} runs".strip()
    body = []
    for run, status, accuracy in summaries:
        acc = f", accuracy {accuracy:.4f}" if accuracy is not None else ""
        body.append(f"- {run}: {status}{acc}")
    return subject + "\n\n" + "\n".join(body) + "\n"


def _summaries(root: Path, files: list[str]) -> list[tuple[str, str, float | None]]:
    out = []
    for rel in files:
        result = read_result(root / rel)  # refuses a broken file before anything is committed
        expected = _run_id(rel)
        actual = f"{result.run.project}/{result.run.name}"
        if actual != expected:
            raise UsageError(
                f"{rel}: holds the result of {actual}, not of {expected}",
                hint=f"result files are written by 'tinymlaas run'; move it to "
                f"{result_path(result.run.project, result.run.name)} or restore it from git",
            )
        out.append((actual, result.status, result.metrics.accuracy if result.metrics else None))
    return out


def _select(root: Path, paths: list[str | Path] | None) -> list[str]:
    changed = changed_result_files(root)
    if paths is None:
        return changed
    wanted = []
    for p in paths:
        full = (Path(p) if Path(p).is_absolute() else Path.cwd() / p).resolve()
        try:
            rel = full.relative_to(root.resolve()).as_posix()
        except ValueError:
            raise UsageError(f"{p}: not inside the repository {root}") from None
        if not RESULT_PATH.match(rel):
            raise UsageError(
                f"{p}: not a result file",
                hint="only runs/<project>/results/<run>.json files are committed by this command",
            )
        if not full.is_file():
            raise UsageError(f"{p}: no such file")
        wanted.append(rel)
    return [f for f in sorted(set(wanted)) if f in changed]


def _created_at(data: bytes | None) -> str:
    try:
        return str(json.loads(data or b"{}").get("created_at") or "")
    except ValueError:
        return ""


def _is_race(porcelain: str) -> bool:
    """True when every rejected ref in ``git push --porcelain`` output lost a race."""
    rejected = [line.split("\t", 2)[2] for line in porcelain.splitlines() if line.startswith("!\t")]
    if not rejected:
        return False
    for summary in rejected:
        flag, _, reason = summary.partition(" (")
        if not any(r in reason for r in _RACE_REASONS.get(flag.strip(), ())):
            return False
    return True


def _refusal(stderr: str, porcelain: str) -> str:
    """The server's reason for refusing a push: its ``remote:`` lines, else git's summary."""
    said = [line[len("remote:") :].strip() for line in stderr.splitlines() if line.startswith("remote:")]
    said = [line for line in said if line]
    if said:
        return " ".join(said)
    rejected = [line.split("\t", 2)[2] for line in porcelain.splitlines() if line.startswith("!\t")]
    if rejected:
        return "; ".join(rejected)
    return stderr.strip().splitlines()[-1] if stderr.strip() else "no reason given"


def _unpushed(root: Path, upstream: str) -> list[tuple[str, str, list[str]]]:
    """``(sha, subject, files)`` of the commits in HEAD that ``upstream`` lacks, oldest first."""
    if rev_parse(root, upstream) is None:
        return []
    out = []
    shas = git(root, "rev-list", "--reverse", f"{upstream}..HEAD").stdout.decode().split()
    for sha in shas:
        subject = git(root, "log", "-1", "--format=%s", sha).stdout.decode().strip()
        files = git(root, "diff-tree", "--no-commit-id", "--name-only", "-r", "-z", "--root", sha).stdout.decode()
        out.append((sha, subject, sorted(f for f in files.split("\0") if f)))
    return out


def _pause(attempt: int, backoff: float) -> None:
    # Exponential with full jitter: pushers that collided once should not collide again in step.
    if backoff > 0:
        time.sleep(min(_MAX_PAUSE, backoff * (2 ** (attempt - 1))) * random.uniform(0.5, 1.5))


def commit_results(
    repo_root: str | Path,
    paths: list[str | Path] | None = None,
    message_prefix: str = "results:",
    remote: str = "origin",
    branch: str | None = None,
    retries: int = 5,
    *,
    backoff: float = 1.0,
    push: bool = True,
    dry_run: bool = False,
) -> CommitOutcome:
    """Commit new or changed result files in one commit and push it, retrying on races.

    ``paths`` narrows the files (default: every new or changed ``runs/*/results/*.json``);
    anything else is refused. A push rejected because ``branch`` moved on ``remote`` is
    followed by ``git fetch`` and ``git rebase`` onto it, then another push, up to ``retries``
    more times with exponential backoff (``backoff`` seconds, doubled each time, jittered).
    When a rebase conflicts, both sides wrote the same run: the result with the newer
    ``created_at`` is kept and :attr:`CommitOutcome.superseded` says so. A push the server
    refuses for any other reason (a protected branch) raises :class:`GitError` at once, with the
    server's message.

    Result commits of an earlier call that ``remote`` lacks are pushed too (and listed in
    :attr:`CommitOutcome.earlier`), so calling it again after an interrupted call publishes what
    that call committed. Nothing changed is not an error: the outcome has ``commit=None``.
    """
    root = toplevel(repo_root)
    files = _select(root, paths)
    summaries = _summaries(root, files)
    message = commit_message(message_prefix, summaries)
    outcome = CommitOutcome(files=files, runs=[s[0] for s in summaries], message=message, dry_run=dry_run)
    if dry_run or (not files and not push):
        return outcome
    if retries < 0:
        raise UsageError(f"--retries {retries}: must be 0 or more")
    branch = branch or current_branch(root)
    if push and not branch:
        raise UsageError(
            "HEAD is detached, so there is no branch to push to",
            hint='pass --branch BRANCH (in Actions: --branch "$GITHUB_REF_NAME")',
        )
    target = f"refs/heads/{branch}"
    upstream = f"refs/remotes/{remote}/{branch}"
    if not files:
        # Nothing new here; but an earlier call may have committed and been stopped before its
        # push. A remote without the branch, or out of reach, leaves nothing to compare with.
        git(root, "fetch", "--quiet", remote, f"+{target}:{upstream}", check=False)
    earlier = _unpushed(root, upstream) if push else []
    others = [f"{sha[:12]} {subject}" for sha, subject, changed in earlier if not all(map(RESULT_PATH.match, changed))]
    if others:
        raise UsageError(
            f"HEAD has commits that {remote}/{branch} lacks and that change more than result files: "
            + ", ".join(others),
            hint="push or drop them first; this command publishes result commits only",
        )
    if not files and not earlier:
        return outcome
    # Keep our bytes: a conflict resolution must be able to put them back exactly. Result files
    # of earlier unpushed commits too: their rebase is settled the same way.
    ours = {rel: (root / rel).read_bytes() for _, _, changed in earlier for rel in changed if (root / rel).is_file()}
    ours.update({rel: (root / rel).read_bytes() for rel in files})
    if files:
        git(root, "add", "--", *files)
        # The pathspec commits these files only, even when someone else staged other changes.
        git(root, "commit", "--quiet", "--no-verify", "-m", message, "--", *files)
        outcome.commit = rev_parse(root, "HEAD")
    if not push:
        return outcome
    for attempt in range(1, retries + 2):
        outcome.attempts = attempt
        proc = git(root, "push", "--porcelain", remote, f"HEAD:{target}", check=False)
        if proc.returncode == 0:
            outcome.pushed = True
            if outcome.commit is not None:
                outcome.commit = rev_parse(root, "HEAD")
            # Named as they were committed: a rebase gave them new ids.
            outcome.earlier = [f"{sha[:12]} {subject}" for sha, subject, _ in earlier]
            if not outcome.commit and outcome.earlier:
                outcome.commit = rev_parse(root, "HEAD")
            return outcome
        porcelain = proc.stdout.decode("utf-8", "replace")
        stderr = proc.stderr.decode("utf-8", "replace")
        if not _is_race(porcelain):
            if not any(line.startswith("!\t") for line in porcelain.splitlines()):
                raise git_error(proc, root, what=f"pushing the results to {remote}/{branch}")  # no push happened
            protected = "protected branch" in stderr.lower() or "gh006" in stderr.lower()
            raise git_error(
                proc,
                root,
                what=f"the server refused the results push to {remote}/{branch}: {_refusal(stderr, porcelain)}",
                hint=f"the commit {rev_parse(root, 'HEAD')[:12]} is safe in this clone; "
                + (
                    "let the workflow's token push to this protected branch (a bypass for GitHub Actions in "
                    "the branch's protection rule or ruleset), or publish to another branch with --branch"
                    if protected
                    else "fix what the server says, then run 'tinymlaas results commit' again"
                ),
            )
        if attempt > retries:
            raise GitError(
                f"pushing the results to {remote}/{branch} was rejected {attempt} times: the branch kept moving",
                hint="run 'tinymlaas results commit' again, or raise --retries; "
                f"the commit {outcome.commit[:12]} is safe in this clone",
            )
        _pause(attempt, backoff)
        git(root, "fetch", "--quiet", remote, f"+{target}:{upstream}")
        if not _rebase(root, upstream, ours, outcome, message_prefix):
            outcome.commit = None  # the remote already holds newer results for every run we had
            outcome.files, outcome.runs = [], []
            return outcome
        if outcome.commit is not None:
            outcome.commit = rev_parse(root, "HEAD")
    raise AssertionError("unreachable")  # pragma: no cover


def _rebase(root: Path, upstream: str, ours: dict[str, bytes], outcome: CommitOutcome, prefix: str) -> bool:
    """Rebase our commit onto ``upstream``, settling same-run conflicts by ``created_at``.

    Returns False when nothing of ours is left to push.
    """
    proc = git(root, "rebase", "--autostash", upstream, check=False)
    resolved = False
    while proc.returncode != 0:
        conflicted = git(root, "diff", "--name-only", "--diff-filter=U", "-z").stdout.decode().split("\0")
        conflicted = [c for c in conflicted if c]
        if not conflicted:
            git(root, "rebase", "--abort", check=False)
            raise git_error(
                proc,
                root,
                what=f"rebasing the results onto {upstream}",
                hint="resolve it by hand: git fetch && git rebase, then push",
            )
        for rel in conflicted:
            if rel not in ours or not RESULT_PATH.match(rel):
                git(root, "rebase", "--abort", check=False)
                raise GitError(
                    f"rebasing the results onto {upstream} conflicted in {rel}, which is not one of "
                    f"the result files being committed",
                    hint="commit only result files with this command; resolve this one by hand",
                )
            theirs = show(root, upstream, rel)
            ours_at, theirs_at = _created_at(ours[rel]), _created_at(theirs)
            run = _run_id(rel)
            if theirs is not None and theirs_at >= ours_at:
                (root / rel).write_bytes(theirs)
                outcome.superseded.append(
                    f"{run}: kept the result already on {upstream.split('/', 3)[-1]} "
                    f"(created {theirs_at or '?'}); it is newer than this one (created {ours_at or '?'})"
                )
            else:
                (root / rel).write_bytes(ours[rel])
                outcome.superseded.append(
                    f"{run}: replaced the result on {upstream.split('/', 3)[-1]} (created {theirs_at or '?'}) "
                    f"with this newer one (created {ours_at or '?'}); the older one stays in git history"
                )
            git(root, "add", "--", rel)
        resolved = True
        if not git(root, "diff", "--cached", "--quiet", check=False).returncode:
            # Every file of the commit resolved to what upstream already has: drop the commit.
            proc = git(root, "rebase", "--skip", check=False)
        else:
            proc = git(root, "-c", "core.editor=true", "rebase", "--continue", check=False)
    if not resolved:
        return True
    # Say in the message what the commit now holds, after conflicts dropped some files.
    left = git(root, "diff", "--name-only", "-z", upstream, "HEAD", "--", *ours).stdout.decode().split("\0")
    left = sorted(f for f in left if f)
    if not left:
        return False
    message = commit_message(prefix, _summaries(root, left))
    if rev_parse(root, "HEAD") != rev_parse(root, upstream):
        git(root, "commit", "--quiet", "--amend", "--no-verify", "-m", message)
    outcome.files = left
    outcome.runs = [_run_id(f) for f in left]
    outcome.message = message
    return True
