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

from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub import errors as hf_errors

from tinymlaas_ci.errors import SourceError
from tinymlaas_ci.fs import sha256_file

__all__ = [
    "MODEL_METADATA_FILES",
    "HubFile",
    "HubSnapshot",
    "download_file",
    "download_snapshot",
    "hub_endpoint",
    "hub_token",
    "list_repo_files",
    "model_companions",
    "resolve_revision",
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


@contextlib.contextmanager
def _mapped(**where) -> Iterator[None]:
    vendor = (
        hf_errors.HfHubHTTPError,
        hf_errors.EntryNotFoundError,
        hf_errors.OfflineModeIsEnabled,
        hf_errors.FileMetadataError,
    ) + _network_errors()
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
    path = Path(path)
    return HubFile(
        repo=repo,
        repo_type=repo_type,
        revision=revision,
        commit=commit,
        file=file,
        path=path,
        sha256=sha256_file(path),
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
        snapshot_download(
            repo,
            repo_type=repo_type,
            revision=commit,
            local_dir=dest,
            endpoint=endpoint,
            token=token if token is not None else False,
            allow_patterns=allow_patterns,
        )
    files: list[str] = []
    digest = hashlib.sha256()
    total = 0
    for path in sorted(p for p in dest.rglob("*") if p.is_file()):
        rel = path.relative_to(dest).as_posix()
        if rel.startswith(".cache/"):
            continue  # the client's own bookkeeping, not repo content
        files.append(rel)
        digest.update(f"{rel}\0{sha256_file(path)}\n".encode())
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
