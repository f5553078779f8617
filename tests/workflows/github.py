"""A stand-in GitHub for running the workflows under act: the remote, the REST API, artifacts.

- :class:`Remote`: a bare git repository as the repository on GitHub. Pull requests get
  ``refs/pull/N/head`` (the head commit) and ``refs/pull/N/merge`` (a merge commit of the base
  tip and the head, parents in that order, as GitHub makes it for the check to test); merging
  makes the merge commit GitHub's merge button makes. A protected branch is a ``pre-receive``
  hook that refuses updates with GitHub's message (``GH006``).
- :class:`RestApi`: the few REST endpoints the workflows' github-script steps call (pull
  requests, issue comments, collaborator permission), on 127.0.0.1, with comments made by the
  workflow token belonging to ``github-actions[bot]``.
- :class:`GitHub`: both, plus the artifact store and Pages folder the stand-in actions use, and
  :meth:`GitHub.act` which runs one workflow for one event with act in host mode.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

ACTIONS = Path(__file__).resolve().parent / "actions"
OWNER, NAME = "acme", "widgets"
REPOSITORY = f"{OWNER}/{NAME}"
BOT = {"login": "github-actions[bot]", "type": "Bot", "id": 41898282}

# Every `uses:` of the workflows and the stand-in folder that replaces it.
STAND_INS = {
    "actions/checkout@v4": "checkout",
    "actions/setup-python@v5": "setup-python",
    "actions/upload-artifact@v4": "upload-artifact",
    "actions/download-artifact@v4": "download-artifact",
    "actions/github-script@v7": "github-script",
    "actions/upload-pages-artifact@v3": "upload-pages-artifact",
    "actions/deploy-pages@v4": "deploy-pages",
    "quarto-dev/quarto-actions@v2": "quarto-actions",
}

_GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test Person",
    "GIT_AUTHOR_EMAIL": "person@example.com",
    "GIT_COMMITTER_NAME": "Test Person",
    "GIT_COMMITTER_EMAIL": "person@example.com",
}


def git(*args: str, cwd: str | Path, env: dict | None = None, check: bool = True) -> str:
    proc = subprocess.run(
        ["git", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **_GIT_ENV, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} in {cwd} failed: {proc.stderr}")
    return proc.stdout.strip()


# -- the remote -----------------------------------------------------------------------------------

_PROTECT_HOOK = """#!/bin/sh
# GitHub's branch protection, as the server reports it.
while read -r old new ref; do
  if grep -qx "$ref" "$GIT_DIR/protected-refs" 2>/dev/null; then
    echo "error: GH006: Protected branch update failed for $ref." >&2
    echo "error: Changes must be made through a pull request." >&2
    exit 1
  fi
done
exit 0
"""


@dataclass
class PullRequest:
    number: int
    branch: str
    head: str
    base: str = "main"
    state: str = "open"
    merged: bool = False
    head_repo: str = REPOSITORY


class Remote:
    """A bare repository standing in for ``github.com/acme/widgets``."""

    def __init__(self, path: Path):
        self.path = path
        git("init", "-q", "--bare", "-b", "main", str(path), cwd=path.parent)
        # GitHub serves any reachable commit by its id (checkout fetches the event's sha).
        git("config", "uploadpack.allowAnySHA1InWant", "true", cwd=path)
        hook = path / "hooks" / "pre-receive"
        hook.write_text(_PROTECT_HOOK)
        hook.chmod(0o755)
        self.pulls: dict[int, PullRequest] = {}
        self._work = path.parent / (path.name + ".work")
        git("init", "-q", "-b", "main", str(self._work), cwd=path.parent)
        git("remote", "add", "origin", str(path), cwd=self._work)

    # What people do: push commits (a person pushes straight past the hook: a maintainer).
    def commit(
        self, branch: str, files: dict[str, str | bytes | None], message: str, *, base: str | None = None
    ) -> str:
        """Commit ``files`` (None deletes) on ``branch`` (created from ``base``) and push it."""
        w = self._work
        start = base or (branch if self.sha(branch) else "main")
        if self.sha(start):
            git("fetch", "-q", "origin", f"+refs/heads/{start}:refs/remotes/origin/{start}", cwd=w)
            git("checkout", "-q", "--force", "-B", branch, f"refs/remotes/origin/{start}", cwd=w)
            git("clean", "-qfdx", cwd=w)
        else:
            git("checkout", "-q", "--orphan", branch, cwd=w)
        for rel, content in files.items():
            target = w / rel
            if content is None:
                git("rm", "-q", "-r", "--", rel, cwd=w)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content if isinstance(content, bytes) else content.encode())
            git("add", "-f", "--", rel, cwd=w)
        git("commit", "-q", "--allow-empty", "-m", message, cwd=w)
        self._push(f"HEAD:refs/heads/{branch}")
        return git("rev-parse", "HEAD", cwd=w)

    def seed_tree(self, source: Path, message: str) -> str:
        """Make ``main`` hold the files of ``source`` (a folder), as one commit."""
        files = {p.relative_to(source).as_posix(): p.read_bytes() for p in sorted(source.rglob("*")) if p.is_file()}
        return self.commit("main", files, message)

    def _push(self, refspec: str) -> None:
        protected = self.path / "protected-refs"
        saved = protected.read_text() if protected.exists() else None
        protected.unlink(missing_ok=True)  # an admin's push
        try:
            git("push", "-q", "--force", "origin", refspec, cwd=self._work)
        finally:
            if saved is not None:
                protected.write_text(saved)

    def sha(self, ref: str) -> str | None:
        full = ref if ref.startswith("refs/") else f"refs/heads/{ref}"
        out = git("rev-parse", "--verify", "-q", full, cwd=self.path, check=False)
        return out or None

    def protect(self, branch: str = "main", on: bool = True) -> None:
        protected = self.path / "protected-refs"
        if on:
            protected.write_text(f"refs/heads/{branch}\n")
        else:
            protected.unlink(missing_ok=True)

    # Pull requests, the way GitHub keeps them.
    def open_pr(self, number: int, branch: str, files: dict[str, str | bytes | None], message: str) -> PullRequest:
        head = self.commit(branch, files, message)
        pr = self.pulls.get(number) or PullRequest(number, branch, head)
        pr.head = head
        self.pulls[number] = pr
        self._pull_refs(pr)
        return pr

    def push_to_pr(self, number: int, files: dict[str, str | bytes | None], message: str) -> PullRequest:
        return self.open_pr(number, self.pulls[number].branch, files, message)

    def _pull_refs(self, pr: PullRequest) -> None:
        base = self.sha(pr.base)
        git("update-ref", f"refs/pull/{pr.number}/head", pr.head, cwd=self.path)
        tree = git("merge-tree", "--write-tree", base, pr.head, cwd=self.path, check=False)
        if not re.fullmatch(r"[0-9a-f]{40}", tree.splitlines()[0] if tree else ""):
            git("update-ref", "-d", f"refs/pull/{pr.number}/merge", cwd=self.path, check=False)
            return  # a conflicting PR has no merge ref, and its checks do not run
        merge = git(
            "commit-tree", tree.splitlines()[0], "-p", base, "-p", pr.head,
            "-m", f"Merge {pr.head} into {base}", cwd=self.path,
        )  # fmt: skip
        git("update-ref", f"refs/pull/{pr.number}/merge", merge, cwd=self.path)

    def merge_ref(self, number: int) -> str:
        sha = self.sha(f"refs/pull/{number}/merge")
        assert sha, f"pull request #{number} has no merge ref"
        return sha

    def merge_pr(self, number: int) -> str:
        """GitHub's merge button: a merge commit on the base branch (branch protection does not
        apply: merging the pull request is what it asks for)."""
        pr = self.pulls[number]
        base = self.sha(pr.base)
        tree = git("merge-tree", "--write-tree", base, pr.head, cwd=self.path).splitlines()[0]
        merge = git(
            "commit-tree", tree, "-p", base, "-p", pr.head,
            "-m", f"Merge pull request #{number} from {OWNER}/{pr.branch}", cwd=self.path,
        )  # fmt: skip
        git("update-ref", f"refs/heads/{pr.base}", merge, base, cwd=self.path)
        pr.state, pr.merged = "closed", True
        return merge

    def log(self, ref: str = "main", fmt: str = "%s") -> list[str]:
        return git("log", f"--format={fmt}", ref, cwd=self.path).splitlines()

    def show(self, ref: str, path: str) -> str | None:
        proc = subprocess.run(["git", "show", f"{ref}:{path}"], cwd=self.path, capture_output=True, text=True)
        return proc.stdout if proc.returncode == 0 else None

    def files(self, ref: str = "main", under: str = "") -> list[str]:
        out = git("ls-tree", "-r", "--name-only", ref, "--", under or ".", cwd=self.path)
        return out.splitlines()


# -- the REST API ---------------------------------------------------------------------------------


@dataclass
class Comment:
    id: int
    issue: int
    body: str
    user: dict
    created_by_run: str


@dataclass
class ApiState:
    remote: Remote
    comments: list[Comment] = field(default_factory=list)
    permissions: dict[str, str] = field(default_factory=lambda: {"alice": "admin", "bob": "write"})
    requests: list[tuple[str, str, str]] = field(default_factory=list)
    """(method, path, token) of every request, for tests to check what was called."""
    ids: itertools.count = field(default_factory=lambda: itertools.count(1001))
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    state: ApiState

    def log_message(self, *args) -> None:  # quiet: the test output is act's log
        pass

    def _send(self, status: int, data) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _route(self, method: str) -> None:
        url = urlparse(self.path)
        token = (self.headers.get("authorization") or "").partition(" ")[2]
        with self.state.lock:
            self.state.requests.append((method, url.path, token))
        if not token:
            return self._send(401, {"message": "Requires authentication"})
        length = int(self.headers.get("content-length") or 0)
        payload = json.loads(self.rfile.read(length) or b"{}") if length else {}
        prefix = f"/repos/{REPOSITORY}"
        if not url.path.startswith(prefix + "/"):
            return self._send(404, {"message": "Not Found"})
        path = url.path[len(prefix) :]
        with self.state.lock:
            status, data = self._handle(method, path, parse_qs(url.query), payload, token)
        self._send(status, data)

    def _handle(self, method, path, query, payload, token):
        st = self.state
        if m := re.fullmatch(r"/pulls/(\d+)", path):
            pr = st.remote.pulls.get(int(m.group(1)))
            if pr is None or method != "GET":
                return 404, {"message": "Not Found"}
            return 200, {
                "number": pr.number,
                "state": pr.state,
                "merged": pr.merged,
                "head": {"sha": pr.head, "ref": pr.branch, "repo": {"full_name": pr.head_repo}},
                "base": {"ref": pr.base, "sha": st.remote.sha(pr.base), "repo": {"full_name": REPOSITORY}},
            }
        if m := re.fullmatch(r"/issues/(\d+)/comments", path):
            number = int(m.group(1))
            if number not in st.remote.pulls:
                return 404, {"message": "Not Found"}
            if method == "GET":
                per_page = int(query.get("per_page", ["30"])[0])
                page = int(query.get("page", ["1"])[0])
                mine = [self._comment(c) for c in st.comments if c.issue == number]
                return 200, mine[(page - 1) * per_page : page * per_page]
            if method == "POST":
                comment = Comment(next(st.ids), number, payload["body"], self._user(token), token)
                st.comments.append(comment)
                return 201, self._comment(comment)
        if m := re.fullmatch(r"/issues/comments/(\d+)", path):
            comment = next((c for c in st.comments if c.id == int(m.group(1))), None)
            if comment is None:
                return 404, {"message": "Not Found"}
            if method == "PATCH":
                if comment.user["login"] != self._user(token)["login"]:
                    return 403, {"message": "Resource not accessible by integration"}
                comment.body = payload["body"]
                return 200, self._comment(comment)
        if m := re.fullmatch(r"/collaborators/([^/]+)/permission", path):
            level = st.permissions.get(m.group(1), "none")
            if level == "none":
                return 404, {"message": f"{m.group(1)} is not a user"}
            role = {"admin": "admin", "maintain": "maintain", "write": "write", "triage": "triage"}.get(level, "read")
            perm = {"maintain": "write", "triage": "read"}.get(level, level)
            return 200, {"permission": perm, "role_name": role, "user": {"login": m.group(1)}}
        return 404, {"message": "Not Found"}

    @staticmethod
    def _user(token: str) -> dict:
        # Workflow tokens (ghs_...) are the Actions app's bot; anything else is a person.
        return dict(BOT) if token.startswith("ghs_") else {"login": token, "type": "User", "id": 1}

    @staticmethod
    def _comment(c: Comment) -> dict:
        return {
            "id": c.id,
            "body": c.body,
            "user": c.user,
            "html_url": f"https://github.com/{REPOSITORY}/pull/{c.issue}#issuecomment-{c.id}",
        }

    do_GET = lambda self: self._route("GET")  # noqa: E731
    do_POST = lambda self: self._route("POST")  # noqa: E731
    do_PATCH = lambda self: self._route("PATCH")  # noqa: E731


class RestApi:
    def __init__(self, state: ApiState):
        handler = type("Handler", (_Handler,), {"state": state})
        self.state = state
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def comments(self, number: int) -> list[Comment]:
        return [c for c in self.state.comments if c.issue == number]


# -- act ------------------------------------------------------------------------------------------


@dataclass(repr=False)
class ActRun:
    """One workflow run: act's exit code and log, and what the run left behind."""

    workflow: str
    event: str
    run_id: int
    attempt: int
    returncode: int
    log: str
    seconds: float
    head_sha: str | None = None
    """For a pull-request check: the head of the pull request it checked."""

    @property
    def summaries(self) -> dict[str, str]:
        """The job summaries (``$GITHUB_STEP_SUMMARY``) by job id, as act prints them; the
        summaries of a matrix job's instances are joined."""
        out: dict[str, str] = {}
        job, text = None, []
        for line in self.log.splitlines() + ["[end/end]"]:
            m = re.match(r"^\[(?:[^\]]*/)?([^\]/]+?)(?:-\d+)?\]", line)
            if m:
                if job is not None:
                    out[job] = out.get(job, "") + "\n".join(text) + "\n"
                job, text = None, []
                if "⚙  Summary - " in line:
                    job, text = m.group(1), [line.split("⚙  Summary - ", 1)[1]]
            elif job is not None:
                text.append(line)
        return out

    def job_lines(self, job: str) -> list[str]:
        return [line for line in self.log.splitlines() if re.match(rf"^\[(?:[^\]]*/)?{re.escape(job)}(-\d+)?\]", line)]

    def succeeded(self, job: str) -> bool:
        return any("🏁  Job succeeded" in line for line in self.job_lines(job))

    def failed(self, job: str) -> bool:
        return any("🏁  Job failed" in line for line in self.job_lines(job))

    def ran(self, job: str) -> bool:
        return bool(self.job_lines(job))

    def step_ran(self, step: str) -> bool:
        return any(f"⭐ Run Main {step}" in line for line in self.log.splitlines())

    def annotations(self, level: str = "error") -> list[dict[str, str]]:
        """Workflow commands ``::error file=...,line=...::message`` the steps printed."""
        out = []
        for m in re.finditer(rf"::{level}(?: ([^:]*))?::(.*)", self.log):
            props = dict(p.split("=", 1) for p in (m.group(1) or "").split(",") if "=" in p)
            props["message"] = m.group(2)
            out.append(props)
        return out

    def report(self, lines: int = 200) -> str:
        """The end of the log, for an assertion message (pytest shows a string in full)."""
        tail = "\n".join(self.log.splitlines()[-lines:])
        return f"{self.workflow} ({self.event}, run {self.run_id}.{self.attempt}) exit {self.returncode}\n{tail}"

    def __repr__(self) -> str:
        return f"<ActRun {self.workflow} {self.event} {self.run_id}.{self.attempt} exit {self.returncode}>"


class GitHub:
    """The stand-in GitHub of one test session."""

    def __init__(self, root: Path, act: str, python: str = sys.executable):
        self.root = root
        self.act_bin = act
        self.python = python
        self.remote = Remote(root / "remote.git")
        self.api = RestApi(ApiState(self.remote))
        self.artifacts = root / "artifacts"
        self.pages = root / "pages" / "site"
        self.home = root / "runner-home"
        for d in (self.artifacts, self.pages.parent, self.home):
            d.mkdir(parents=True, exist_ok=True)
        # A runner has no git identity and no user git config.
        self.gitconfig = root / "empty-gitconfig"
        self.gitconfig.write_text("")
        # This runner's pip takes the dependencies its Python already has as they are (no
        # resolving dozens of installed packages); in the stand-in setup-python's environment it
        # also builds with the installed build backend. Each job still builds and installs the
        # package the workflow names; a fresh install that resolves everything is .ci/run's.
        self.pipconf = root / "runner-pip.conf"
        self.pipconf.write_text("[install]\nno-deps = true\n")
        self.pipconf_python = root / "setup-python-pip.conf"
        self.pipconf_python.write_text("[install]\nno-deps = true\nno-build-isolation = false\n")
        self._run_ids = itertools.count(100)
        self._lock = threading.Lock()
        self.runs: list[ActRun] = []

    def close(self) -> None:
        self.api.close()

    def next_run_id(self) -> int:
        with self._lock:
            return next(self._run_ids)

    def payload_repository(self) -> dict:
        return {"full_name": REPOSITORY, "name": NAME, "owner": {"login": OWNER}, "default_branch": "main"}

    def act(
        self,
        event: str,
        workflow: str,
        payload: dict,
        *,
        sha: str,
        branch: str | None = "main",
        run_id: int | None = None,
        attempt: int = 1,
        actor: str = "alice",
        job: str | None = None,
        workflow_file: Path | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 600,
    ) -> ActRun:
        """Run ``.github/workflows/<workflow>`` as of ``sha`` for ``event`` with act.

        The workflow file comes from ``sha`` (GitHub runs the file of the event's commit;
        ``workflow_run`` and dispatch events pass the default branch's tip) unless
        ``workflow_file`` is given.
        """
        run_id = run_id or self.next_run_id()
        where = self.root / "act" / f"{run_id}.{attempt}"
        ctx = where / "ctx"
        if where.exists():
            shutil.rmtree(where)
        where.mkdir(parents=True)
        # act reads the repository name, the sha and the branch from this clone.
        git("clone", "-q", "--no-checkout", str(self.remote.path), str(ctx), cwd=where)
        git("remote", "set-url", "origin", f"https://github.com/{REPOSITORY}.git", cwd=ctx)
        if branch:
            git("checkout", "-q", "-B", branch, sha, cwd=ctx)
        else:
            git("checkout", "-q", "--detach", sha, cwd=ctx)
        if workflow_file is not None:
            shutil.copyfile(workflow_file, ctx / ".github" / "workflows" / workflow)
        payload = {"repository": self.payload_repository(), "sender": {"login": actor}, **payload}
        event_path = where / "event.json"
        event_path.write_text(json.dumps(payload))
        token = f"ghs_run{run_id}"
        cmd = [
            self.act_bin, event,
            "-C", str(ctx),
            "-W", str(ctx / ".github" / "workflows" / workflow),
            "-e", str(event_path),
            "-P", "ubuntu-latest=-self-hosted",
            "-P", "self-hosted=-self-hosted",
            "--action-offline-mode",
            "--no-skip-checkout",
            "--no-cache-server",
            "--action-cache-path", str(where / "cache"),
            "--actor", actor,
            "--defaultbranch", "main",
            "--log-prefix-job-id",
            "-s", f"GITHUB_TOKEN={token}",
            "--env", f"GITHUB_RUN_ID={run_id}",
            "--env", f"GITHUB_RUN_ATTEMPT={attempt}",
            "--env", f"GITHUB_API_URL={self.api.url}",
        ]  # fmt: skip
        for uses, folder in STAND_INS.items():
            cmd += ["--local-repository", f"{uses}={ACTIONS / folder}"]
        if job:
            cmd += ["-j", job]
        run_env = {
            **os.environ,
            "DOCKER_HOST": "unix:///nonexistent",  # host mode; and a device runner without Docker
            "HOME": str(self.home),
            "GIT_CONFIG_GLOBAL": str(self.gitconfig),
            "GIT_CONFIG_NOSYSTEM": "1",
            "STANDIN_HOME": str(ACTIONS),
            "STANDIN_PYTHON": self.python,
            "STANDIN_REMOTE": str(self.remote.path),
            "STANDIN_ARTIFACTS": str(self.artifacts),
            "STANDIN_PAGES": str(self.pages),
            "PIP_CONFIG_FILE": str(self.pipconf),
            "STANDIN_PIP_CONFIG": str(self.pipconf_python),
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PIP_NO_WARN_SCRIPT_LOCATION": "1",
            **(env or {}),
        }
        for key in ("GITHUB_ACTIONS", "GITHUB_TOKEN", "CI_JOB_TOKEN", "HF_TOKEN"):
            run_env.pop(key, None)
        start = time.monotonic()
        proc = subprocess.run(cmd, cwd=where, env=run_env, capture_output=True, text=True, timeout=timeout, check=False)
        seconds = time.monotonic() - start
        run = ActRun(workflow, event, run_id, attempt, proc.returncode, proc.stdout + proc.stderr, seconds)
        with self._lock:
            self.runs.append(run)
        (where / "act.log").write_text(run.log)
        return run

    # Events, the way GitHub fills them in.
    def pull_request_event(self, pr: PullRequest, action: str = "synchronize") -> dict:
        return {
            "action": action,
            "number": pr.number,
            "pull_request": {
                "number": pr.number,
                "state": pr.state,
                "head": {"sha": pr.head, "ref": pr.branch, "repo": {"full_name": pr.head_repo}},
                "base": {"sha": self.remote.sha(pr.base), "ref": pr.base, "repo": {"full_name": REPOSITORY}},
            },
        }

    def run_pr_check(self, pr: PullRequest, **kw) -> ActRun:
        run = self.act(
            "pull_request", "pr.yml", self.pull_request_event(pr), sha=self.remote.merge_ref(pr.number),
            branch=None, **kw,
        )  # fmt: skip
        run.head_sha = pr.head
        return run

    def run_pr_comment(self, check: ActRun, pr: PullRequest, *, conclusion: str | None = None, **kw) -> ActRun:
        payload = {
            "action": "completed",
            "workflow_run": {
                "id": check.run_id,
                "name": "Pull request",
                "event": "pull_request",
                "conclusion": conclusion or ("success" if check.returncode == 0 else "failure"),
                "head_sha": check.head_sha,
                "head_branch": pr.branch,
                "head_repository": {"full_name": pr.head_repo},
                "pull_requests": [{"number": pr.number}] if pr.head_repo == REPOSITORY else [],
            },
        }
        return self.act("workflow_run", "pr-comment.yml", payload, sha=self.remote.sha("main"), **kw)

    def run_push(self, before: str, after: str, workflow: str = "run.yml", **kw) -> ActRun:
        payload = {"ref": "refs/heads/main", "before": before, "after": after}
        return self.act("push", workflow, payload, sha=after, **kw)

    def run_dispatch(self, workflow: str = "run.yml", inputs: dict | None = None, **kw) -> ActRun:
        payload = {"ref": "refs/heads/main", "inputs": {k: str(v).lower() if isinstance(v, bool) else v
                                                         for k, v in (inputs or {}).items()}}  # fmt: skip
        return self.act("workflow_dispatch", workflow, payload, sha=self.remote.sha("main"), **kw)
