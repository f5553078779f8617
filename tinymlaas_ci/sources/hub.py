"""Models and datasets from the Hugging Face Hub, through the real ``huggingface_hub`` client.

A revision (branch, tag or commit) is resolved to a commit sha first, and every download then
asks for that sha, so what is recorded is exactly what was fetched even if the branch moves
meanwhile. Files land in a folder of the run volume (``local_dir=``), never in a shared cache
that a container would see as dangling symlinks.

The token comes from ``HF_TOKEN`` and the endpoint from ``HF_ENDPOINT``. The token is handed
to the client and nowhere else: it is never logged, recorded or put into an error message.
Every vendor error is mapped once, in :func:`_hub_error`, to a :class:`SourceError` that names
the repository (and revision, file) and says what to do.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url, snapshot_download
from huggingface_hub import errors as hf_errors

from tinymlaas_ci.errors import IntegrityError, SourceError, os_error
from tinymlaas_ci.fs import sha256_file

__all__ = [
    "MODEL_METADATA_FILES",
    "HubFile",
    "HubSnapshot",
    "announced_file_hash",
    "download_file",
    "download_snapshot",
    "hub_endpoint",
    "hub_token",
    "list_repo_files",
    "model_companions",
    "resolve_revision",
    "verify_hub_file",
]

_REPO_TYPES = ("model", "dataset")


@dataclass(frozen=True)
class HubFile:
    """One file downloaded from the Hub, at a resolved commit."""

    repo: str
    repo_type: str
    revision: str
    commit: str
    file: str
    path: Path
    sha256: str
    bytes: int


@dataclass(frozen=True)
class HubSnapshot:
    """A whole repository (or the files matching some patterns) at a resolved commit."""

    repo: str
    repo_type: str
    revision: str
    commit: str
    path: Path
    files: list[str] = field(default_factory=list)
    sha256: str = ""
    """sha256 over the sorted ``path\\0sha256`` lines of the downloaded files."""
    bytes: int = 0


def hub_token() -> str | None:
    """The token from ``HF_TOKEN``, or ``None``. Never log or record the value."""
    token = os.environ.get("HF_TOKEN", "").strip()
    return token or None


def hub_endpoint() -> str | None:
    """The Hub endpoint from ``HF_ENDPOINT`` (``None`` means the public Hub)."""
    endpoint = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/")
    return endpoint or None


def _network_errors() -> tuple[type[BaseException], ...]:
    # The client's transport changed across releases (requests, httpx, httpx2); catch whichever
    # is installed so that a dead network is reported as such, not as a crash.
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, name in (
        ("httpx2", "TransportError"),
        ("httpx", "TransportError"),
        ("requests", "ConnectionError"),
        ("requests", "Timeout"),
    ):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def _where(repo: str, repo_type: str, revision: str | None = None, file: str | None = None) -> str:
    kind = "dataset" if repo_type == "dataset" else "model"
    text = f"Hugging Face {kind} repo {repo!r}"
    if revision is not None:
        text += f" at revision {revision!r}"
    if file is not None:
        text = f"file {file!r} in {text}"
    return text


def _hub_error(
    exc: BaseException,
    *,
    repo: str,
    repo_type: str,
    revision: str | None,
    file: str | None = None,
    endpoint: str | None,
    token: str | None,
    available: list[str] | None = None,
) -> SourceError:
    """Map one vendor exception to a SourceError that says what failed and what to do."""
    where = _where(repo, repo_type, revision, file)
    source = f"hf://{'datasets/' if repo_type == 'dataset' else ''}{repo}"
    host = endpoint or "https://huggingface.co"
    page = f"{host}/{'datasets/' if repo_type == 'dataset' else ''}{repo}"
    if isinstance(exc, hf_errors.GatedRepoError):
        hint = (
            f"request access on {page}, then set HF_TOKEN to a token of the account that was granted it"
            if token is None
            else f"the token in HF_TOKEN has no access yet: request it on {page} "
            "(or use a token of an account that has it)"
        )
        return SourceError(f"{where} is gated: access was refused", source=source, hint=hint)
    if isinstance(exc, hf_errors.RepositoryNotFoundError):
        hint = (
            f"check the repository id and that it is a {repo_type} repo; if it is private, set HF_TOKEN "
            "to a token that can read it"
        )
        if token is not None:
            hint = (
                f"check the repository id and that it is a {repo_type} repo; if it is private, the token "
                "in HF_TOKEN cannot read it"
            )
        return SourceError(f"{_where(repo, repo_type)} was not found (or is private)", source=source, hint=hint)
    if isinstance(exc, hf_errors.RevisionNotFoundError):
        return SourceError(
            f"revision {revision!r} was not found in {_where(repo, repo_type)}",
            source=source,
            hint="check the branch, tag or full 40-character commit sha in 'revision' (default: main)",
        )
    if isinstance(exc, hf_errors.EntryNotFoundError) and not isinstance(exc, hf_errors.LocalEntryNotFoundError):
        listing = ""
        if available:
            shown = ", ".join(available[:20]) + (" ..." if len(available) > 20 else "")
            listing = f"; files in the repo: {shown}"
        return SourceError(
            f"{where} does not exist",
            source=source,
            hint=f"check 'file' (a path inside the repo){listing}",
        )
    if isinstance(exc, (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled, *_network_errors())):
        return SourceError(
            f"could not reach the Hugging Face Hub at {host} for {where}",
            source=source,
            hint="check the network, proxy and HF_ENDPOINT; unset HF_HUB_OFFLINE to allow downloads",
        )
    if isinstance(exc, hf_errors.HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        server = getattr(exc, "server_message", None) or ""
        detail = f" (HTTP {status}{': ' + server.strip() if server else ''})" if status else ""
        hint = "retry later; if it persists, check HF_ENDPOINT and the Hub's status page"
        if status in (401, 403):
            hint = "check that HF_TOKEN is set to a valid token with read access"
        return SourceError(f"the Hub refused a request for {where}{detail}", source=source, hint=hint)
    return SourceError(
        f"fetching {where} failed: {type(exc).__name__}",
        source=source,
        hint="see the stage log for details",
    )


def _vendor_errors() -> tuple[type[BaseException], ...]:
    return (
        hf_errors.HfHubHTTPError,
        hf_errors.EntryNotFoundError,
        hf_errors.OfflineModeIsEnabled,
        hf_errors.FileMetadataError,
    ) + _network_errors()


@contextlib.contextmanager
def _mapped(**where) -> Iterator[None]:
    vendor = _vendor_errors()
    try:
        yield
    except SourceError:
        raise
    except vendor as exc:
        raise _hub_error(exc, **where) from exc


def _api(endpoint: str | None, token: str | None) -> HfApi:
    # token=False stops the client from falling back to a token stored by `hf auth login`:
    # the pipeline uses HF_TOKEN only, so runs behave the same on every machine.
    return HfApi(endpoint=endpoint, token=token if token is not None else False)


def _settings(repo_type: str, token: str | None, endpoint: str | None) -> tuple[str | None, str]:
    """Check ``repo_type``; fill the token and endpoint from the environment when not given."""
    if repo_type not in _REPO_TYPES:
        raise ValueError(f"repo_type must be one of {_REPO_TYPES}, not {repo_type!r}")
    return (token if token is not None else hub_token(), endpoint if endpoint is not None else hub_endpoint())


def resolve_revision(
    repo: str,
    revision: str = "main",
    *,
    repo_type: str = "model",
    token: str | None = None,
    endpoint: str | None = None,
) -> str:
    """Resolve a branch, tag or commit of ``repo`` to its 40-hex commit sha.

    ``token`` and ``endpoint`` default to ``HF_TOKEN`` and ``HF_ENDPOINT``.
    Raises :class:`SourceError` when the repo or revision does not exist or cannot be read.
    """
    token, endpoint = _settings(repo_type, token, endpoint)
    api = _api(endpoint, token)
    with _mapped(repo=repo, repo_type=repo_type, revision=revision, endpoint=endpoint, token=token):
        info = (api.model_info if repo_type == "model" else api.dataset_info)(repo, revision=revision)
    sha = getattr(info, "sha", None)
    if not sha:
        raise SourceError(
            f"the Hub returned no commit sha for {_where(repo, repo_type, revision)}",
            source=repo,
            hint="check that HF_ENDPOINT points at a Hugging Face Hub",
        )
    return sha


def list_repo_files(
    repo: str,
    commit: str,
    *,
    repo_type: str = "model",
    token: str | None = None,
    endpoint: str | None = None,
) -> list[str]:
    """Files of ``repo`` at ``commit`` (sorted)."""
    token, endpoint = _settings(repo_type, token, endpoint)
    with _mapped(repo=repo, repo_type=repo_type, revision=commit, endpoint=endpoint, token=token):
        return sorted(_api(endpoint, token).list_repo_files(repo, revision=commit, repo_type=repo_type))


MODEL_METADATA_FILES = ("config.json", "preprocessor_config.json")
"""Files that describe a model (architecture, labels, preprocessing), fetched with it when present."""


def model_companions(model_file: str, repo_files: list[str]) -> list[str]:
    """Files of a model repository that come with ``model_file``: the ``*.py`` files (a pickle's
    classes, a ``python:`` architecture) and the metadata files (:data:`MODEL_METADATA_FILES`),
    from the model's folder and the repository root. External data of an ONNX file is added by
    the fetch stage, which reads the locations from the model itself."""
    folder = model_file.rpartition("/")[0]
    wanted: list[str] = []
    for rel in repo_files:
        parent, _, name = rel.rpartition("/")
        if rel == model_file or parent not in {folder, ""}:
            continue
        if name.endswith(".py") or name in MODEL_METADATA_FILES:
            wanted.append(rel)
    return sorted(wanted)


def download_file(
    repo: str,
    file: str,
    dest_dir: str | os.PathLike,
    *,
    revision: str = "main",
    repo_type: str = "model",
    token: str | None = None,
    endpoint: str | None = None,
) -> HubFile:
    """Download ``file`` of ``repo`` at ``revision`` into ``dest_dir`` (keeping its path in the repo).

    The revision is resolved to a commit sha first and the download asks for that sha.
    Raises :class:`SourceError` naming the repo, revision and file, with what to do.
    """
    token, endpoint = _settings(repo_type, token, endpoint)
    commit = resolve_revision(repo, revision, repo_type=repo_type, token=token, endpoint=endpoint)
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        path = hf_hub_download(
            repo,
            file,
            repo_type=repo_type,
            revision=commit,
            local_dir=dest,
            endpoint=endpoint,
            token=token if token is not None else False,
        )
    except (
        hf_errors.HfHubHTTPError,
        hf_errors.EntryNotFoundError,
        hf_errors.OfflineModeIsEnabled,
        hf_errors.FileMetadataError,
        *_network_errors(),
    ) as exc:
        available = None
        if isinstance(exc, hf_errors.EntryNotFoundError) and not isinstance(exc, hf_errors.LocalEntryNotFoundError):
            try:
                available = list_repo_files(repo, commit, repo_type=repo_type, token=token, endpoint=endpoint)
            except SourceError:
                available = None
        raise _hub_error(
            exc,
            repo=repo,
            repo_type=repo_type,
            revision=revision,
            file=file,
            endpoint=endpoint,
            token=token,
            available=available,
        ) from exc
    except ValueError as exc:  # the client refuses a name that would escape dest ('../x', '/x')
        raise _bad_name(exc, repo, repo_type, commit, file) from exc
    except OSError as exc:  # disk full, name too long, permission denied
        raise os_error(exc, path=dest, doing=f"downloading {_where(repo, repo_type, commit, file)}") from exc
    path = Path(path)
    with _mapped(repo=repo, repo_type=repo_type, revision=revision, file=file, endpoint=endpoint, token=token):
        announced = announced_file_hash(repo, file, commit, repo_type=repo_type, token=token, endpoint=endpoint)
    digest = verify_hub_file(path, announced, repo=repo, repo_type=repo_type, commit=commit, file=file)
    return HubFile(
        repo=repo,
        repo_type=repo_type,
        revision=revision,
        commit=commit,
        file=file,
        path=path,
        sha256=digest,
        bytes=path.stat().st_size,
    )


def download_snapshot(
    repo: str,
    dest_dir: str | os.PathLike,
    *,
    revision: str = "main",
    repo_type: str = "dataset",
    token: str | None = None,
    endpoint: str | None = None,
    allow_patterns: list[str] | None = None,
) -> HubSnapshot:
    """Download every file of ``repo`` at ``revision`` (or those matching ``allow_patterns``)
    into ``dest_dir``. The revision is resolved to a commit sha first.

    The returned ``sha256`` digests the downloaded files (path and content), so the same
    snapshot always gives the same digest.
    """
    token, endpoint = _settings(repo_type, token, endpoint)
    commit = resolve_revision(repo, revision, repo_type=repo_type, token=token, endpoint=endpoint)
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    with _mapped(repo=repo, repo_type=repo_type, revision=revision, endpoint=endpoint, token=token):
        announced = _announced_tree(repo, commit, repo_type=repo_type, token=token, endpoint=endpoint)
        try:
            snapshot_download(
                repo,
                repo_type=repo_type,
                revision=commit,
                local_dir=dest,
                endpoint=endpoint,
                token=token if token is not None else False,
                allow_patterns=allow_patterns,
            )
        except ValueError as exc:  # a listed name that would escape dest ('../x', '/x')
            bad = next((n for n in announced if not _safe_repo_path(n)), None)
            raise _bad_name(exc, repo, repo_type, commit, bad) from exc
        except OSError as exc:
            if isinstance(exc, _vendor_errors()):
                raise  # mapped by _mapped, with the repo and what to do
            raise os_error(exc, path=dest, doing=f"downloading {_where(repo, repo_type, commit)}") from exc
    files: list[str] = []
    digest = hashlib.sha256()
    total = 0
    for path in sorted(p for p in dest.rglob("*") if p.is_file()):
        rel = path.relative_to(dest).as_posix()
        if rel.startswith(".cache/"):
            continue  # the client's own bookkeeping, not repo content
        if rel not in announced:
            raise IntegrityError(
                f"{_where(repo, repo_type, commit, rel)} was downloaded but the Hub does not list it at that commit",
                path=str(path),
                hint="the Hub (or a proxy in between) served files the repository does not have; retry, "
                "and check HF_ENDPOINT",
            )
        files.append(rel)
        sha = verify_hub_file(path, announced[rel], repo=repo, repo_type=repo_type, commit=commit, file=rel)
        digest.update(f"{rel}\0{sha}\n".encode())
        total += path.stat().st_size
    return HubSnapshot(
        repo=repo,
        repo_type=repo_type,
        revision=revision,
        commit=commit,
        path=dest,
        files=files,
        sha256=digest.hexdigest(),
        bytes=total,
    )


def _safe_repo_path(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return bool(name) and ".." not in parts and not name.startswith(("/", "\\")) and ":" not in parts[0]


def _bad_name(exc: ValueError, repo: str, repo_type: str, commit: str, file: str | None) -> SourceError:
    name = f" {file!r}" if file else ""
    return SourceError(
        f"{_where(repo, repo_type, commit)} lists a file{name} whose name is not a plain relative path "
        f"(it would be written outside the download folder): {exc}",
        source=repo,
        hint="ask the repository's owner to rename the file; nothing of the repository was used",
    )


def announced_file_hash(
    repo: str,
    file: str,
    commit: str,
    *,
    repo_type: str = "model",
    token: str | None = None,
    endpoint: str | None = None,
) -> str | None:
    """The hash the Hub announces for ``file`` at ``commit``: the ``X-Linked-Etag`` of an LFS
    (or Xet) file, which is its sha256, else the ``ETag``, which for a file kept in git is its
    git blob sha1. ``None`` when the Hub sends neither."""
    url = hf_hub_url(repo, file, repo_type=repo_type, revision=commit, endpoint=endpoint)
    meta = get_hf_file_metadata(url, token=token if token is not None else False)
    return (meta.etag or "").strip().strip('"').lower() or None


def _announced_tree(
    repo: str, commit: str, *, repo_type: str, token: str | None, endpoint: str | None
) -> dict[str, str | None]:
    """path -> announced hash of every file of ``repo`` at ``commit``, from the tree listing:
    the LFS sha256 where the file is in LFS, else the git blob sha1."""
    from huggingface_hub.hf_api import RepoFile

    announced: dict[str, str | None] = {}
    for entry in _api(endpoint, token).list_repo_tree(repo, revision=commit, repo_type=repo_type, recursive=True):
        if isinstance(entry, RepoFile):
            lfs = getattr(entry, "lfs", None)
            sha = getattr(lfs, "sha256", None) if lfs is not None else None
            announced[entry.path] = (sha or entry.blob_id or "").lower() or None
    return announced


def _git_blob_sha1(path: Path) -> str:
    h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def verify_hub_file(path: Path, announced: str | None, *, repo: str, repo_type: str, commit: str, file: str) -> str:
    """Check a downloaded file against the hash the Hub announced for it; returns its sha256.

    A 64-hex hash is the file's sha256 (LFS and Xet files); a 40-hex one is its git blob sha1
    (``sha1("blob <size>\\0" + bytes)``, files kept in git). A file whose bytes do not match, or
    for which the Hub announced no hash we can check, is an :class:`IntegrityError` naming the
    file and the repository: corrupted or substituted bytes are never used.
    """
    where = _where(repo, repo_type, commit, file)
    try:
        sha256 = sha256_file(path)
        value = (announced or "").lower()
        if len(value) == 64 and all(c in "0123456789abcdef" for c in value):
            kind, actual = "sha256", sha256
        elif len(value) == 40 and all(c in "0123456789abcdef" for c in value):
            kind, actual = "git blob sha1", _git_blob_sha1(path)
        else:
            raise IntegrityError(
                f"the Hub announced no checkable hash for {where} (ETag {announced!r}), so the download "
                "cannot be verified",
                path=str(path),
                hint="check HF_ENDPOINT: a Hugging Face Hub sends the sha256 (LFS) or git blob sha1 of every file",
            )
    except OSError as exc:
        raise os_error(exc, path=path, doing=f"checking the download of {where}") from exc
    if actual != value:
        raise IntegrityError(
            f"{where}: the downloaded bytes do not match the {kind} the Hub announced "
            f"({actual} instead of {value}); the file was corrupted or substituted on the way",
            path=str(path),
            hint="retry the run; if it persists, check HF_ENDPOINT and any proxy between the runner and the Hub",
        )
    return sha256
