"""What changed between two results, or two specs, as read from git.

Shared by the pull-request comment and the job summary: both compare against results
committed in git, read with ``git show <ref>:<path>``, so they need no checkout of the base.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinymlaas_ci.git import git, show
from tinymlaas_ci.results.layout import parse_result
from tinymlaas_ci.results.metrics import METRICS, flatten, metric_values
from tinymlaas_ci.results.models import Result

__all__ = ["MetricChange", "base_result", "gate_flips", "metric_changes", "read_current", "spec_changes"]


@dataclass(frozen=True)
class MetricChange:
    """One metric before and after, with its direction and verdict."""

    key: str
    label: str
    before: float | None
    after: float | None
    better: str | None
    fmt: str

    @property
    def percent(self) -> float | None:
        if self.before is None or self.after is None or self.before == 0:
            return None
        return (self.after - self.before) / abs(self.before) * 100.0

    @property
    def verdict(self) -> str:
        """``better``, ``worse`` or ``""`` (when the metric has no preferred direction)."""
        if self.before is None or self.after is None or self.better is None:
            return ""
        up = self.after > self.before
        return "better" if up == (self.better == "higher") else "worse"

    def arrow(self) -> str:
        if self.before is None:
            return "🆕"
        if self.after is None:
            return "—"
        return "↑" if self.after > self.before else "↓"

    def cells(self) -> tuple[str, str, str, str]:
        """``(label, before, after, change)`` as a table shows them."""
        before = self.fmt.format(self.before) if self.before is not None else "—"
        after = self.fmt.format(self.after) if self.after is not None else "—"
        pct = self.percent
        change = self.arrow()
        if pct is not None:
            change += f" {pct:+.1f}%"
        if self.verdict:
            change += f" ({'🟢' if self.verdict == 'better' else '🔴'} {self.verdict})"
        return self.label, before, after, change


def metric_changes(before: Result | None, after: Result | None) -> list[MetricChange]:
    """Only the metrics whose shown value changed between two results, in a fixed order."""
    old, new = metric_values(before), metric_values(after)
    out = []
    for m in METRICS:
        a, b = old.get(m.key), new.get(m.key)
        if not m.compared or (a is None and b is None):
            continue
        if a is not None and b is not None and m.fmt.format(a) == m.fmt.format(b):
            continue  # differences below the shown precision are noise, not news
        out.append(MetricChange(m.key, m.label, a, b, m.better, m.fmt))
    return out


def gate_flips(result: Result, before: Result | None) -> dict[str, str]:
    """Gate -> ``" (was ✅)"`` or ``" (was ❌)"`` for the gates whose verdict flipped."""
    was = {g.gate: g.passed for g in before.gates} if before is not None else {}
    return {
        g.gate: (" (was ✅)" if was[g.gate] else " (was ❌)")
        for g in result.gates
        if g.gate in was and was[g.gate] != g.passed
    }


def spec_changes(before: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Field-level differences between two specs: ``(dotted.key, old, new)``, sorted by key."""
    old, new = flatten(before), flatten(after)
    out = []
    for key in sorted(set(old) | set(new)):
        if key in ("matrix", "name") or key.startswith("matrix."):
            continue
        if old.get(key) != new.get(key):
            out.append((key, old.get(key), new.get(key)))
    return out


def _parse(data: bytes | None) -> Result | None:
    if data is None:
        return None
    try:
        return parse_result(data)
    except ValueError:
        return None  # a broken old result has nothing to compare against


def base_result(root: Path, ref: str, path: str, *, skip_same_as: bytes | None = None) -> Result | None:
    """The result at ``path`` as committed at ``ref`` (None when absent or unreadable).

    With ``skip_same_as``, a committed version equal to those bytes is passed over for the one
    before it: after ``results commit`` the summary should compare with the *previous* result.
    """
    data = show(root, ref, path)
    if skip_same_as is not None and data == skip_same_as:
        log = git(root, "log", "--format=%H", "-n", "2", ref, "--", path, check=False)
        commits = log.stdout.decode().split() if log.returncode == 0 else []
        data = None
        for commit in commits:
            candidate = show(root, commit, path)
            if candidate != skip_same_as:
                data = candidate
                break
    return _parse(data)


def read_current(root: Path, rel: str) -> tuple[Result | None, bytes | None]:
    """The result file in the work tree: ``(parsed or None, bytes or None)``."""
    path = root / rel
    if not path.is_file():
        return None, None
    data = path.read_bytes()
    return _parse(data), data
