"""Models and datasets committed to the adopter's repository (``uploads/...``).

An upload path is relative to the repository root, must name an existing regular file, and
must resolve inside the repository: a symlink that points outside it is refused, so a spec
cannot make the runner read arbitrary files of the machine it runs on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tinymlaas_ci.errors import SourceError
from tinymlaas_ci.fs import is_within, sha256_file

__all__ = ["Upload", "resolve_upload"]


@dataclass(frozen=True)
class Upload:
    """A file in the repository, checked and hashed."""

    rel: str
    """The path as written in the spec (POSIX, relative to the repository root)."""
    path: Path
    """The file on disk (symlinks resolved)."""
    sha256: str
    bytes: int


def resolve_upload(repo_root: str | os.PathLike, rel: str) -> Upload:
    """Check that ``rel`` names a regular file inside ``repo_root`` and hash it.

    Raises :class:`SourceError` when the path is absolute, climbs out with ``..``, does not
    exist, is not a regular file, or resolves (through a symlink) outside the repository.
    Git LFS pointer files are recognised and reported, since they are not the real content.
    """
    root = Path(repo_root)
    hint_path = "give a path relative to the repository root, e.g. uploads/my-model/model.onnx"
    posix = PurePosixPath(rel.replace("\\", "/"))
    if posix.is_absolute() or (len(rel) > 1 and rel[1] == ":"):
        raise SourceError(f"upload {rel!r} is an absolute path", source=rel, hint=hint_path)
    if ".." in posix.parts:
        raise SourceError(f"upload {rel!r} climbs out of the repository with '..'", source=rel, hint=hint_path)
    path = root.joinpath(*posix.parts)
    if not path.exists() and not path.is_symlink():
        parent = path.parent
        nearby = sorted(p.name for p in parent.iterdir())[:20] if parent.is_dir() else []
        extra = f"; {parent.relative_to(root).as_posix() or '.'}/ holds: {', '.join(nearby)}" if nearby else ""
        raise SourceError(
            f"upload {rel!r} does not exist in the repository",
            source=rel,
            hint=f"commit the file (Git LFS is fine) or fix the path{extra}",
        )
    if not is_within(path, root):
        raise SourceError(
            f"upload {rel!r} resolves outside the repository (through a symlink)",
            source=rel,
            hint="commit the file itself instead of a link to somewhere else",
        )
    resolved = path.resolve()
    if not resolved.exists():
        raise SourceError(f"upload {rel!r} is a dangling symlink", source=rel, hint="commit the file itself")
    if not resolved.is_file():
        raise SourceError(
            f"upload {rel!r} is not a regular file",
            source=rel,
            hint="point 'upload' at a file (an archive for datasets), not a folder",
        )
    with open(resolved, "rb") as fh:
        head = fh.read(64)
    if head.startswith(b"version https://git-lfs.github.com/spec/"):
        raise SourceError(
            f"upload {rel!r} is a Git LFS pointer, not the file's content",
            source=rel,
            hint="fetch LFS objects before running (actions/checkout with 'lfs: true', or git lfs pull)",
        )
    return Upload(
        rel=posix.as_posix(),
        path=resolved,
        sha256=sha256_file(resolved),
        bytes=resolved.stat().st_size,
    )
