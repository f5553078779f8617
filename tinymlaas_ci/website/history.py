"""History of each result file over git commits.

One ``git log`` over all result files and one ``git cat-file --batch`` process for the blobs,
instead of two git processes per file: at 1,000 results the difference is minutes.
"""

from __future__ import annotations

from pathlib import Path

from tinymlaas_ci.git import git_output
from tinymlaas_ci.results.layout import RESULT_GLOB, parse_result
from tinymlaas_ci.website.loader import Packed

__all__ = ["DEFAULT_LIMIT", "HistoryEntry", "collect_history", "git_head"]

DEFAULT_LIMIT = 50


class HistoryEntry(Packed):
    """One committed version of a result file: ``result`` parsed on demand, ``raw`` its bytes."""

    __slots__ = ("commit", "date")

    def __init__(self, commit: str, date: str, raw: bytes):
        super().__init__(raw)
        self.commit = commit
        self.date = date
        """Commit date, ISO 8601."""

    def __repr__(self) -> str:
        return f"HistoryEntry({self.commit[:12]!r}, {self.date!r})"


_BATCH = 2000
"""Versions read per ``git cat-file --batch``: its output is held in memory, one batch at a time."""


def git_head(root: Path) -> str | None:
    """The commit checked out in ``root``, or ``None`` outside a git repository."""
    out = git_output(Path(root), "rev-parse", "HEAD")
    return out.decode().strip() if out else None


def collect_history(root: Path, paths: list[str], limit: int = DEFAULT_LIMIT) -> dict[str, list[HistoryEntry]]:
    """Committed versions of each result file, newest first, at most ``limit`` per file.

    Outside a git repository (or without git) every list is empty. Versions that no longer parse
    are left out: history is shown for what can be read. Renames are not followed: a result's
    path is its run's identity.
    """
    root = Path(root)
    history: dict[str, list[HistoryEntry]] = {p: [] for p in paths}
    if not paths:
        return history
    inside = git_output(root, "rev-parse", "--show-prefix")
    if inside is None:
        return history
    prefix = inside.decode().strip()  # the site may be built from a subfolder of a repository
    log = git_output(root, "log", "--no-renames", "--format=%x00%H%x09%cI", "--name-only", "--", RESULT_GLOB)
    if not log:
        return history
    wanted: list[tuple[str, str, str]] = []  # (path, commit, date)
    counts: dict[str, int] = {}
    for block in log.decode("utf-8", "replace").split("\x00"):
        lines = [ln for ln in block.splitlines() if ln.strip()]
        if not lines or "\t" not in lines[0]:
            continue
        commit, date = lines[0].split("\t", 1)
        for name in lines[1:]:
            rel = name[len(prefix) :] if prefix and name.startswith(prefix) else name
            if rel in history and counts.get(rel, 0) < limit:
                counts[rel] = counts.get(rel, 0) + 1
                wanted.append((rel, commit, date))
    if not wanted:
        return history
    for start in range(0, len(wanted), _BATCH):
        batch = wanted[start : start + _BATCH]
        request = "".join(f"{commit}:{prefix}{rel}\n" for rel, commit, _ in batch).encode()
        out = git_output(root, "cat-file", "--batch", input=request)
        if out is None:
            return history
        pos = 0
        for rel, commit, date in batch:
            end = out.index(b"\n", pos)
            header = out[pos:end].split()
            pos = end + 1
            if len(header) < 3 or header[1] != b"blob":
                continue  # "missing": the file was deleted in that commit
            size = int(header[2])
            blob = out[pos : pos + size]
            pos += size + 1
            try:
                parse_result(blob)
            except ValueError:
                continue
            history[rel].append(HistoryEntry(commit, date, blob))
        del out
    return history
