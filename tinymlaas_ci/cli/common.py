"""Helpers shared by the command modules."""

from __future__ import annotations

import os
from pathlib import Path

from tinymlaas_ci.errors import UsageError

__all__ = ["find_repo_root", "in_github_actions", "repo_root", "work_dir"]

_MARKERS = ("runs", "devices", "pipelines", ".git")


def find_repo_root(start: Path) -> Path | None:
    """The nearest folder at or above ``start`` that holds runs/, devices/, pipelines/ or .git."""
    start = start.resolve()
    for folder in (start, *start.parents):
        if any((folder / m).exists() for m in _MARKERS):
            return folder
    return None


def repo_root(args) -> Path:
    """The repository root from ``--repo`` or the current directory."""
    if getattr(args, "repo", None):
        root = Path(args.repo)
        if not root.is_dir():
            raise UsageError(f"--repo {args.repo}: not a directory")
        return root.resolve()
    found = find_repo_root(Path.cwd())
    if found is None:
        raise UsageError(
            "not inside a TinyMLaaS-CI repository (no runs/, devices/, pipelines/ or .git above here)",
            hint="run from the repository, pass --repo DIR, or create one with 'tinymlaas init DIR'",
        )
    return found


def work_dir(args) -> Path:
    """The work dir (where run volumes and the shared stage cache live): ``--work-dir``, else
    ``TINYMLAAS_WORK_DIR``, else ``.tinymlaas/work`` in the repository."""
    from tinymlaas_ci.engine.volume import default_work_dir

    return Path(args.work_dir).resolve() if getattr(args, "work_dir", None) else default_work_dir(repo_root(args))


def in_github_actions() -> bool:
    return os.environ.get("GITHUB_ACTIONS") == "true"
