"""The one place that runs git.

Every git command of the package goes through :func:`git`, which runs it as a subprocess in a
given repository and turns a failure into a :class:`~tinymlaas_ci.errors.GitError` that names
the command, the folder, the tail of git's stderr and a hint for the usual causes. Callers that
only ask a question and carry on without an answer (the website's history and commit links) use
:func:`git_output`. It sits in the lowest layer so that every layer may use it.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

from tinymlaas_ci.errors import GitError

__all__ = [
    "current_branch",
    "git",
    "git_error",
    "git_ok",
    "git_output",
    "init_repository",
    "ref_exists",
    "rev_parse",
    "show",
    "toplevel",
]

_STDERR_TAIL = 1500

# (substring of git's stderr, hint): the first match wins.
_HINTS: tuple[tuple[str, str], ...] = (
    ("not a git repository", "run the command inside a git clone of the repository, or pass --repo DIR"),
    ("please tell me who you are", "set an identity: git config user.name NAME && git config user.email EMAIL"),
    ("unable to auto-detect email", "set an identity: git config user.name NAME && git config user.email EMAIL"),
    (
        "authentication failed",
        "the push credentials were refused: in Actions give the job 'permissions: contents: write'",
    ),
    ("permission to", "the token may not push here: in Actions give the job 'permissions: contents: write'"),
    ("could not read from remote", "check the remote's URL and that it is reachable (git remote -v)"),
    ("does not appear to be a git repository", "check the remote's name and URL (git remote -v)"),
    ("couldn't find remote ref", "the branch does not exist on the remote yet; check --branch"),
    (
        "invalid object name",
        "the ref does not exist here: fetch it first (git fetch origin BRANCH) or check its spelling",
    ),
    ("unknown revision", "the ref does not exist here: fetch it first (git fetch origin BRANCH) or check its spelling"),
    ("index.lock", "another git process is running in this repository; wait for it, or remove a stale .git/index.lock"),
    ("unstaged changes", "commit or stash the other changes first"),
)


def _hint(stderr: str) -> str | None:
    low = stderr.lower()
    for needle, hint in _HINTS:
        if needle in low:
            return hint
    return None


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # Never stop to ask: there is no one at the terminal in CI, and a hung job is worse than an error.
    env["GIT_TERMINAL_PROMPT"] = "0"
    env.setdefault("GIT_EDITOR", "true")
    env["LC_ALL"] = "C"  # stderr is matched against English messages above
    return env


def git(
    repo: str | os.PathLike,
    *args: str,
    check: bool = True,
    input: bytes | None = None,
    hint: str | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``git -C repo ARGS``; raise :class:`GitError` when it fails and ``check`` is true.

    Output is captured as bytes (result files are compared byte for byte). ``hint`` replaces
    the automatic hint for failures the caller knows more about. git that cannot be started,
    or that runs past ``timeout`` seconds, is a :class:`GitError` whatever ``check`` says.
    """
    cmd = ["git", "-C", str(repo), *args]
    try:
        proc = subprocess.run(cmd, input=input, capture_output=True, env=_env(), check=False, timeout=timeout)
    except FileNotFoundError as exc:
        raise GitError("git is not installed (or not on PATH)", hint="install git, e.g. apt-get install git") from exc
    except subprocess.TimeoutExpired as exc:
        raise GitError(
            f"'git {shlex.join(args)}' in {repo} did not finish within {timeout:g} s",
            hint="the repository may be very large, or git may be waiting on a lock or the network",
        ) from exc
    except OSError as exc:
        raise GitError(f"git could not be started: {exc}", hint="check that git is installed and runnable") from exc
    if check and proc.returncode != 0:
        raise git_error(proc, repo, hint=hint)
    return proc


def git_error(
    proc: subprocess.CompletedProcess[bytes],
    repo: str | os.PathLike,
    *,
    hint: str | None = None,
    what: str | None = None,
) -> GitError:
    """The :class:`GitError` for a finished git process that failed."""
    args = proc.args[3:] if isinstance(proc.args, list) else proc.args
    stderr = (proc.stderr or b"").decode("utf-8", "replace").strip()
    tail = stderr[-_STDERR_TAIL:]
    command = "git " + shlex.join(args)
    head = what or f"'{command}' failed"
    err = GitError(
        f"{head} in {repo} (exit {proc.returncode}):\n{tail}" if tail else f"{head} in {repo} (exit {proc.returncode})",
        hint=hint or _hint(stderr),
    )
    # Kept as data for callers that decide what to do next (e.g. retry a rejected push).
    err.command = command
    err.stderr = stderr
    err.returncode = proc.returncode
    return err


def git_output(
    repo: str | os.PathLike, *args: str, input: bytes | None = None, timeout: float | None = 300
) -> bytes | None:
    """Standard output of a git command that succeeded, else None (no git, not a repository, a
    failure or a timeout): for questions whose answer is optional."""
    try:
        proc = git(repo, *args, check=False, input=input, timeout=timeout)
    except GitError:
        return None
    return proc.stdout if proc.returncode == 0 else None


def git_ok(repo: str | os.PathLike, *args: str) -> bool:
    """True when the git command exits 0 (for questions, not actions)."""
    return git(repo, *args, check=False).returncode == 0


def show(repo: str | os.PathLike, ref: str, path: str) -> bytes | None:
    """The bytes of ``path`` at ``ref``, or None when the ref or the file does not exist there."""
    proc = git(repo, "show", f"{ref}:{path}", check=False)
    return proc.stdout if proc.returncode == 0 else None


def rev_parse(repo: str | os.PathLike, ref: str) -> str | None:
    """The commit ``ref`` names, or None when it names none."""
    proc = git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
    return proc.stdout.decode().strip() or None if proc.returncode == 0 else None


def ref_exists(repo: str | os.PathLike, ref: str) -> bool:
    return rev_parse(repo, ref) is not None


def toplevel(path: str | os.PathLike) -> Path:
    """The root of the git work tree that holds ``path``."""
    proc = git(
        path,
        "rev-parse",
        "--show-toplevel",
        hint="results are committed from a git clone: run inside one, or pass --repo DIR",
    )
    return Path(proc.stdout.decode().strip())


def current_branch(repo: str | os.PathLike) -> str | None:
    """The checked-out branch, or None on a detached HEAD."""
    proc = git(repo, "symbolic-ref", "--quiet", "--short", "HEAD", check=False)
    return proc.stdout.decode().strip() or None if proc.returncode == 0 else None


def init_repository(dest: str | os.PathLike) -> str:
    """``git init`` ``dest`` unless it already is inside a work tree; says what was done.

    Never raises: a scaffold without git is still a scaffold, and the sentence tells the user
    what to do instead.
    """
    try:
        inside = git(dest, "rev-parse", "--is-inside-work-tree", check=False)
    except GitError:
        return "git not found: run 'git init' yourself"
    if inside.returncode == 0 and inside.stdout.strip() == b"true":
        return "already inside a git repository: left as it is"
    proc = git(dest, "init", "-q", check=False)
    if proc.returncode != 0:
        return f"git init failed: {proc.stderr.decode('utf-8', 'replace').strip()[:300]}"
    return "initialised an empty git repository"
