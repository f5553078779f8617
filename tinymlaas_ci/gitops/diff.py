"""What changed between two results, or two specs, as read from git.

Shared by the pull-request comment and the job summary: both compare against results
committed in git, read with ``git show <ref>:<path>``, so they need no checkout of the base.

Speed is compared by the measured noise, not by the digits: a result measured side by side
with its baseline carries ``speedup_ci95``, the 95% confidence interval of its speed ratio. Two
runs whose intervals overlap are not ranked ("within noise"), nor is a run marked ``unstable``;
the relative width of the intervals is also the noise band of the latency and throughput rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinymlaas_ci.git import git, show
from tinymlaas_ci.results.layout import parse_result
from tinymlaas_ci.results.metrics import METRICS, flatten, metric_values
from tinymlaas_ci.results.models import Result

__all__ = [
    "SPEED_KEYS",
    "MetricChange",
    "base_result",
    "gate_flips",
    "metric_changes",
    "read_current",
    "spec_changes",
    "speed_noise",
]

SPEED_KEYS = frozenset(
    {
        "latency_ms.p50",
        "latency_ms.p90",
        "latency_ms.p95",
        "latency_ms.p99",
        "latency_ms.mean",
        "throughput_per_s",
        "speedup_vs_baseline",
    }
)
"""Metrics judged against the measured speed noise of the two runs."""


@dataclass(frozen=True)
class MetricChange:
    """One metric before and after, with its direction and verdict."""

    key: str
    label: str
    before: float | None
    after: float | None
    better: str | None
    fmt: str
    within_noise: bool = False
    """The change is inside the two runs' measured noise (or a run is ``unstable``): not ranked."""

    @property
    def percent(self) -> float | None:
        if self.before is None or self.after is None or self.before == 0:
            return None
        return (self.after - self.before) / abs(self.before) * 100.0

    @property
    def verdict(self) -> str:
        """``better``, ``worse``, ``within noise``, or ``""`` (no preferred direction)."""
        if self.before is None or self.after is None or self.better is None:
            return ""
        if self.within_noise:
            return "within noise"
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
            mark = {"better": "🟢", "worse": "🔴"}.get(self.verdict, "⚪")
            change += f" ({mark} {self.verdict})"
        return self.label, before, after, change


def speed_noise(result: Result | None) -> tuple[float, float, float] | None:
    """``(speedup, low, high)`` of a result measured side by side, or None (not measured so)."""
    m = result.metrics if result is not None else None
    if m is None or m.speedup_vs_baseline is None or not m.speedup_ci95 or len(m.speedup_ci95) != 2:
        return None
    low, high = sorted(float(v) for v in m.speedup_ci95)
    return float(m.speedup_vs_baseline), low, high


def _estimated(result: Result | None) -> bool:
    return bool(result is not None and result.metrics is not None and result.metrics.latency_is_estimate)


def _unstable(result: Result | None) -> bool:
    return bool(result is not None and result.metrics is not None and result.metrics.unstable)


def _within_noise(key: str, a: float, b: float, before: Result | None, after: Result | None) -> bool:
    if key not in SPEED_KEYS:
        return False
    if _unstable(before) or _unstable(after):
        return True
    old, new = speed_noise(before), speed_noise(after)
    if old is None or new is None:
        return False  # older results carry no noise figure: compared as before
    if key == "speedup_vs_baseline":
        return old[1] <= new[2] and new[1] <= old[2]  # the two intervals overlap
    # Relative half-widths of the two intervals: the band a latency change must leave.
    band = sum((high - low) / (2 * mid) for mid, low, high in (old, new) if mid > 0)
    return a != 0 and abs(b - a) / abs(a) <= band


def metric_changes(before: Result | None, after: Result | None) -> list[MetricChange]:
    """Only the metrics whose shown value changed between two results, in a fixed order.

    Speed metrics (:data:`SPEED_KEYS`) within the runs' measured noise are marked
    ``within_noise`` and not ranked better or worse.
    """
    old, new = metric_values(before), metric_values(after)
    out = []
    for m in METRICS:
        a, b = old.get(m.key), new.get(m.key)
        if not m.compared or (a is None and b is None):
            continue
        if a is not None and b is not None and m.fmt.format(a) == m.fmt.format(b):
            continue  # differences below the shown precision are noise, not news
        noise = a is not None and b is not None and _within_noise(m.key, a, b, before, after)
        label = m.label
        if m.key.startswith("latency_ms.") and (_estimated(before) or _estimated(after)):
            label += ", estimate"  # instructions / clock on an emulated board, not timed
        out.append(MetricChange(m.key, label, a, b, m.better, m.fmt, within_noise=noise))
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
