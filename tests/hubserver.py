"""A small, real HTTP server that speaks enough of the Hugging Face Hub API for the real
``huggingface_hub`` client: repo info (with and without a revision), the recursive tree
listing, ``HEAD``/``GET`` resolve with ``X-Repo-Commit``/``ETag``/``Content-Length``, a 302 to a
second server on another port for "large" files (``X-Linked-Etag``/``X-Linked-Size``), and the
``X-Error-Code`` headers the client classifies errors by.

Usage::

    from tests.hubserver import FakeHub

    with FakeHub() as hub:
        repo = hub.add_repo("acme/digits-cnn")
        sha = repo.commit({"model.onnx": b"..."}, large=["model.onnx"])
        repo.tag("v1")
        hf_hub_download("acme/digits-cnn", "model.onnx", endpoint=hub.endpoint, ...)

Private and gated repositories need ``Authorization: Bearer <hub.token>``. Every request is
recorded in ``hub.requests`` (method, path, whether a token was sent) so tests can assert on
what the client did. Both servers bind 127.0.0.1 on free ports.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest
from typing_extensions import Self

__all__ = ["DEFAULT_TOKEN", "FakeHub", "FakeRepo", "HubRequest", "fake_hub_fixture"]

DEFAULT_TOKEN = "hf_fakehub_secret_token_0123456789"


def _git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _corrupted(data: bytes) -> bytes:
    """The same number of bytes, one of them flipped (or one byte, for an empty file)."""
    if not data:
        return b"\0"
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


@dataclass
class FakeRepo:
    """One repository on the fake Hub: commits (full file trees), branches and tags."""

    repo_id: str
    repo_type: str = "model"
    private: bool = False
    gated: bool = False
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    large: set[str] = field(default_factory=set)
    corrupt: set[str] = field(default_factory=set)
    """Paths whose bytes are served altered (same length; the headers and the tree listing still
    announce the true hashes), like a corrupting mirror or a tampering proxy would."""
    _counter: int = 0

    def commit(
        self,
        files: dict[str, bytes | None],
        *,
        branch: str = "main",
        large: Iterable[str] = (),
        replace: bool = False,
    ) -> str:
        """Add a commit on ``branch`` (created when missing) and return its 40-hex sha.

        ``files`` is merged into the branch's current tree (``None`` deletes a file), or replaces
        it when ``replace`` is true. Paths in ``large`` are served through the redirect server.
        """
        parent = self.branches.get(branch)
        tree = {} if (replace or parent is None) else dict(self.commits[parent])
        for path, data in files.items():
            if data is None:
                tree.pop(path, None)
            else:
                tree[path] = bytes(data)
        self.large.update(large)
        self._counter += 1
        h = hashlib.sha1(f"{self.repo_type}/{self.repo_id}#{self._counter}#{parent}".encode())
        for path in sorted(tree):
            h.update(path.encode() + b"\0" + hashlib.sha256(tree[path]).digest())
        sha = h.hexdigest()
        self.commits[sha] = tree
        self.branches[branch] = sha
        return sha

    def tag(self, name: str, sha: str | None = None) -> str:
        """Point tag ``name`` at ``sha`` (default: the head of ``main``)."""
        sha = sha or self.branches["main"]
        self.tags[name] = sha
        return sha

    def branch(self, name: str, sha: str | None = None) -> str:
        """Create or move branch ``name`` to ``sha`` (default: the head of ``main``)."""
        sha = sha or self.branches["main"]
        self.branches[name] = sha
        return sha

    def resolve(self, revision: str) -> str | None:
        """The commit sha a branch, tag or (full) commit sha names, or ``None``."""
        if revision in self.branches:
            return self.branches[revision]
        if revision in self.tags:
            return self.tags[revision]
        if revision in self.commits:
            return revision
        return None

    @property
    def head(self) -> str:
        return self.branches["main"]


@dataclass(frozen=True)
class HubRequest:
    """One request the fake Hub saw. The token itself is never recorded."""

    method: str
    path: str
    authorized: bool
    had_token: bool
    server: str  # "hub" or "cdn"


class FakeHub:
    """The fake Hub: an API server and a "CDN" server for large files, both on 127.0.0.1."""

    def __init__(self, token: str = DEFAULT_TOKEN) -> None:
        self.token = token
        self.repos: dict[tuple[str, str], FakeRepo] = {}
        self.blobs: dict[str, bytes] = {}
        self.requests: list[HubRequest] = []
        self._lock = threading.Lock()
        self._hub: ThreadingHTTPServer | None = None
        self._cdn: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        """Start both servers on free ports; returns ``self``."""
        hub = self

        class HubHandler(_Handler):
            fake = hub
            role = "hub"

        class CdnHandler(_Handler):
            fake = hub
            role = "cdn"

        self._hub = ThreadingHTTPServer(("127.0.0.1", 0), HubHandler)
        self._cdn = ThreadingHTTPServer(("127.0.0.1", 0), CdnHandler)
        for server in (self._hub, self._cdn):
            server.daemon_threads = True
            t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        """Stop both servers and free their ports."""
        for server in (self._hub, self._cdn):
            if server is not None:
                server.shutdown()
                server.server_close()
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()
        self._hub = self._cdn = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """Base URL to give the client (``HF_ENDPOINT`` or ``endpoint=``)."""
        assert self._hub is not None, "start the FakeHub first"
        return f"http://127.0.0.1:{self._hub.server_address[1]}"

    @property
    def cdn_endpoint(self) -> str:
        assert self._cdn is not None, "start the FakeHub first"
        return f"http://127.0.0.1:{self._cdn.server_address[1]}"

    # -- content -----------------------------------------------------------------------------

    def add_repo(
        self,
        repo_id: str,
        *,
        repo_type: str = "model",
        private: bool = False,
        gated: bool = False,
        files: dict[str, bytes] | None = None,
        large: Iterable[str] = (),
    ) -> FakeRepo:
        """Create a repository (``repo_type`` ``model`` or ``dataset``), optionally with a first
        commit of ``files`` on ``main``."""
        if repo_type not in ("model", "dataset"):
            raise ValueError("repo_type must be 'model' or 'dataset'")
        repo = FakeRepo(repo_id=repo_id, repo_type=repo_type, private=private, gated=gated)
        self.repos[(repo_type, repo_id)] = repo
        if files is not None:
            repo.commit(files, large=large)
        return repo

    def requests_to(self, fragment: str) -> list[HubRequest]:
        """Recorded requests whose path contains ``fragment``."""
        with self._lock:
            return [r for r in self.requests if fragment in r.path]

    def _record(self, req: HubRequest) -> None:
        with self._lock:
            self.requests.append(req)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    role: str
    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/1"

    def log_message(self, format, *args):  # keep test output clean
        pass

    # -- helpers -----------------------------------------------------------------------------

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return None

    def _send(
        self,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        *,
        content_type: str = "application/json",
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _error(self, status: int, code: str | None, message: str, extra: dict[str, str] | None = None):
        headers = dict(extra or {})
        if code:
            headers["X-Error-Code"] = code
        headers["X-Error-Message"] = message
        self._send(status, json.dumps({"error": message}).encode(), headers)

    def _json(self, obj) -> None:
        self._send(200, json.dumps(obj).encode())

    def _repo_or_error(self, repo_type: str, repo_id: str, *, needs_access: bool) -> FakeRepo | None:
        """The repo if this request may see it; otherwise sends the Hub's error and returns None."""
        repo = self.fake.repos.get((repo_type, repo_id))
        token = self._token()
        valid = token is not None and token == self.fake.token
        if repo is None or (repo.private and not valid):
            # The real Hub hides private repos: 401 without a token, 404 with a wrong one.
            status = 401 if (repo is not None and token is None) else 404
            self._error(status, "RepoNotFound", "Repository not found")
            return None
        if repo.gated and needs_access and not valid:
            status = 401 if token is None else 403
            self._error(
                status,
                "GatedRepo",
                f"Access to model {repo_id} is restricted. You must have access to it and be authenticated "
                "to access it. Please log in.",
            )
            return None
        return repo

    # -- dispatch ----------------------------------------------------------------------------

    def do_HEAD(self):
        self._dispatch()

    def do_GET(self):
        self._dispatch()

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        token = self._token()
        self.fake._record(
            HubRequest(
                method=self.command,
                path=url.path,
                authorized=token is not None and token == self.fake.token,
                had_token=token is not None,
                server=self.role,
            )
        )
        try:
            if self.role == "cdn":
                return self._cdn(url.path)
            if url.path.startswith("/api/models/") or url.path.startswith("/api/datasets/"):
                return self._api(url.path, parse_qs(url.query))
            return self._resolve(url.path)
        except BrokenPipeError:
            pass

    def _api(self, path: str, query: dict) -> None:
        kind, rest = path[len("/api/") :].split("/", 1)
        repo_type = "model" if kind == "models" else "dataset"
        tree_path = None
        if "/tree/" in rest:
            repo_id, tail = rest.split("/tree/", 1)
            revision, _, tree_path = tail.partition("/")
            endpoint = "tree"
        elif "/revision/" in rest:
            repo_id, revision = rest.split("/revision/", 1)
            endpoint = "info"
        else:
            repo_id, revision, endpoint = rest.rstrip("/"), "main", "info"
        revision = unquote(revision)
        repo = self._repo_or_error(repo_type, repo_id, needs_access=False)
        if repo is None:
            return
        sha = repo.resolve(revision)
        if sha is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return
        tree = repo.commits[sha]
        if endpoint == "info":
            self._json(
                {
                    "id": repo.repo_id,
                    "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
                    "sha": sha,
                    "private": repo.private,
                    "gated": "manual" if repo.gated else False,
                    "disabled": False,
                    "tags": [],
                    "siblings": [{"rfilename": p} for p in sorted(tree)],
                }
            )
            return
        prefix = unquote(tree_path).strip("/") + "/" if tree_path else ""
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        entries, folders = [], set()
        for p in sorted(tree):
            if not p.startswith(prefix):
                continue
            rel = p[len(prefix) :]
            parts = rel.split("/")
            for i in range(1, len(parts)):
                if recursive or i == 1:
                    folders.add(prefix + "/".join(parts[:i]))
            if recursive or len(parts) == 1:
                data = tree[p]
                entry = {"type": "file", "path": p, "size": len(data), "oid": _git_blob_sha(data)}
                if p in repo.large:
                    entry["lfs"] = {
                        "oid": hashlib.sha256(data).hexdigest(),
                        "size": len(data),
                        "pointerSize": 134,
                    }
                entries.append(entry)
        dirs = [{"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest()} for d in sorted(folders)]
        self._json(dirs + entries)

    def _resolve(self, path: str) -> None:
        repo_type = "model"
        if path.startswith("/datasets/"):
            repo_type, path = "dataset", path[len("/datasets") :]
        elif path.startswith("/models/"):
            path = path[len("/models") :]
        if "/resolve/" not in path:
            self._error(404, None, "Not found")
            return
        repo_id, tail = path.lstrip("/").split("/resolve/", 1)
        revision, _, file_path = tail.partition("/")
        revision, file_path = unquote(revision), unquote(file_path)
        repo = self._repo_or_error(repo_type, repo_id, needs_access=True)
        if repo is None:
            return
        sha = repo.resolve(revision)
        if sha is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return
        tree = repo.commits[sha]
        if file_path not in tree:
            self._error(
                404,
                "EntryNotFound",
                f'{file_path} does not exist on "{revision}"',
                {"X-Repo-Commit": sha},
            )
            return
        data = tree[file_path]
        served = _corrupted(data) if file_path in repo.corrupt else data
        if file_path in repo.large:
            digest = hashlib.sha256(data).hexdigest()
            self.fake.blobs[digest] = served
            location = f"{self.fake.cdn_endpoint}/blobs/{digest}?sig={quote(repo_id, safe='')}"
            self.send_response(302)
            for k, v in {
                "Location": location,
                "X-Repo-Commit": sha,
                "ETag": f'"{_git_blob_sha(data)}"',
                "X-Linked-Etag": f'"{digest}"',
                "X-Linked-Size": str(len(data)),
                "Content-Length": "0",
            }.items():
                self.send_header(k, v)
            self.end_headers()
            return
        self._send(
            200,
            served,
            {"X-Repo-Commit": sha, "ETag": f'"{_git_blob_sha(data)}"'},
            content_type="application/octet-stream",
        )

    def _cdn(self, path: str) -> None:
        digest = path.rsplit("/", 1)[-1]
        data = self.fake.blobs.get(digest)
        if data is None:
            self._error(404, None, "NoSuchKey")
            return
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[6:-1])
            part = data[start:]
            self._send(
                206,
                part,
                {
                    "ETag": f'"{digest}"',
                    "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}",
                },
                content_type="application/octet-stream",
            )
            return
        self._send(200, data, {"ETag": f'"{digest}"'}, content_type="application/octet-stream")


def fake_hub_fixture() -> Iterator[FakeHub]:
    """Body of a pytest fixture: ``fake_hub = pytest.fixture(fake_hub_fixture)`` in a conftest."""
    hub = FakeHub().start()
    try:
        yield hub
    finally:
        hub.stop()


fake_hub = pytest.fixture(fake_hub_fixture, name="fake_hub")
"""Import this into a conftest (``from tests.hubserver import fake_hub``) to get the fixture."""
