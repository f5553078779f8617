"""The numbers the site shows, computed once from the loaded results: pure functions, no I/O."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from tinymlaas_ci.results.models import Result
from tinymlaas_ci.website.history import HistoryEntry
from tinymlaas_ci.website.loader import LoadedResult

__all__ = [
    "ACCURACY_TOLERANCE",
    "MAX_SLOWDOWN",
    "NOISE_RATIO",
    "DeviceView",
    "ProjectView",
    "Recommendation",
    "RunView",
    "SiteData",
    "accuracy_noise",
    "build_site_data",
    "faster",
    "mode_label",
    "pareto_front",
    "recommend",
    "same_accuracy",
]

ACCURACY_TOLERANCE = 0.005
"""Two accuracies closer than this (0.5 percentage points), or than the sampling noise of their
test sets (:func:`accuracy_noise`) when that is larger, count as the same accuracy."""
MAX_SLOWDOWN = 1.5
"""A run more than this many times slower than its baseline (beyond the noise) is recommended
only when no as-accurate run is faster than that: a smaller model that is much slower is rarely
what a device wants."""
NOISE_RATIO = 1.05
"""Without a recorded confidence interval, two latencies closer than this ratio (5 %) are not
ranked: a difference that small is within the run-to-run noise of a shared machine."""


def mode_label(result: Result) -> str:
    """Compression mode as shown on the site, e.g. ``static-int8`` or ``static-int8 + 80% pruned``."""
    comp = result.compression
    quant = comp.quantization if comp else str(result.spec.get("compression", {}).get("quantization", "none"))
    sparsity = None
    if comp is not None:
        sparsity = comp.achieved_sparsity if comp.achieved_sparsity is not None else comp.target_sparsity
    else:
        sparsity = (result.spec.get("compression", {}).get("pruning") or {}).get("sparsity")
    if sparsity:
        return f"{quant} + {sparsity:.0%} pruned"
    return quant


@dataclass
class RunView:
    """One run as the site sees it: its result, history, baseline and previous version."""

    loaded: LoadedResult
    history: list[HistoryEntry] = field(default_factory=list)
    baseline: RunView | None = None
    previous: HistoryEntry | None = None

    @property
    def result(self) -> Result:
        return self.loaded.result

    @property
    def project(self) -> str:
        return self.loaded.project

    @property
    def slug(self) -> str:
        return self.loaded.slug

    @property
    def name(self) -> str:
        return self.result.run.name

    @property
    def status(self) -> str:
        return self.result.status

    @property
    def mode(self) -> str:
        return mode_label(self.result)

    @property
    def quantization(self) -> str:
        comp = self.result.compression
        return comp.quantization if comp else str(self.result.spec.get("compression", {}).get("quantization", "none"))

    @property
    def pruned(self) -> bool:
        return "pruned" in self.mode

    @property
    def is_baseline(self) -> bool:
        return self.quantization == "none" and not self.pruned

    @property
    def device(self) -> str:
        if self.result.device:
            return self.result.device.name
        return str(self.result.spec.get("device", "?"))

    @property
    def accuracy(self) -> float | None:
        m = self.result.metrics
        return m.accuracy if m else None

    @property
    def p50(self) -> float | None:
        m = self.result.metrics
        return m.latency_ms.p50 if m else None

    @property
    def latency_estimated(self) -> bool:
        """True when the latency is instructions / clock on an emulated board, not a timing."""
        m = self.result.metrics
        return bool(m is not None and m.latency_is_estimate)

    @property
    def p99(self) -> float | None:
        m = self.result.metrics
        return m.latency_ms.p99 if m else None

    @property
    def size(self) -> int | None:
        m = self.result.metrics
        return m.model_size_bytes if m else None

    @property
    def ratio(self) -> float | None:
        m = self.result.metrics
        if not m:
            return None
        if m.compression_ratio is not None:
            return m.compression_ratio
        if m.baseline_model_bytes:
            return m.baseline_model_bytes / m.model_size_bytes
        return None

    @property
    def accuracy_drop(self) -> float | None:
        m = self.result.metrics
        if not m:
            return None
        if m.accuracy_drop is not None:
            return m.accuracy_drop
        if m.baseline_accuracy is not None:
            return m.baseline_accuracy - m.accuracy
        return None

    @property
    def size_ratio(self) -> float | None:
        """How many times smaller than the baseline run when there is one, else the recorded
        compression ratio (the same number the recommendation uses)."""
        base = self.baseline
        if base is not None and base.size and self.size:
            return base.size / self.size
        return self.ratio

    @property
    def accuracy_delta(self) -> float | None:
        """Accuracy minus the baseline's: against the project's baseline run when there is one
        (what the recommendation compares with), else the baseline the run measured itself;
        None for a baseline run."""
        if self.is_baseline:
            return None
        return self.vs_baseline()["accuracy"]

    @property
    def speedup(self) -> float | None:
        """How many times faster than the uncompressed baseline (above 1: faster).

        The measured ``metrics.speedup_vs_baseline`` when the result has it (measured in the
        same process, interleaved with the baseline), else the baseline run's p50 over this
        run's p50."""
        m = self.result.metrics
        if not m:
            return None
        recorded = getattr(m, "speedup_vs_baseline", None)
        if isinstance(recorded, (int, float)):
            return float(recorded)
        base = self.baseline
        if base is not None and base.p50 and m.latency_ms.p50:
            return base.p50 / m.latency_ms.p50
        return None

    @property
    def speedup_ci(self) -> tuple[float, float] | None:
        """The 95 % confidence interval of :attr:`speedup`, when the result records one."""
        m = self.result.metrics
        ci = getattr(m, "speedup_ci95", None) if m else None
        if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(v, (int, float)) for v in ci):
            return (float(min(ci)), float(max(ci)))
        return None

    @property
    def unstable(self) -> bool:
        """True when the result says its latency was too noisy to compare."""
        m = self.result.metrics
        return bool(getattr(m, "unstable", False)) if m else False

    @property
    def unstable_reason(self) -> str | None:
        """Why the latency was too noisy to compare, when the result says."""
        m = self.result.metrics
        reason = getattr(m, "unstable_reason", None) if m else None
        return reason if self.unstable and isinstance(reason, str) else None

    @property
    def speed_known(self) -> bool:
        """True when :attr:`speedup` differs from 1 by more than the noise: outside its confidence
        interval when there is one, else by more than :data:`NOISE_RATIO`; never when unstable."""
        s = self.speedup
        if s is None or self.unstable:
            return False
        ci = self.speedup_ci
        if ci is not None:
            return not (ci[0] <= 1.0 <= ci[1])
        return max(s, 1 / s) > NOISE_RATIO if s > 0 else False

    @property
    def passed(self) -> bool:
        """Measured, and every gate passed."""
        return self.status == "succeeded" and self.result.metrics is not None and not self.gates_failed

    @property
    def gates_passed(self) -> int:
        return sum(1 for g in self.result.gates if g.passed)

    @property
    def gates_failed(self) -> list[str]:
        return [g.gate for g in self.result.gates if not g.passed]

    @property
    def created_at(self) -> str:
        return self.result.created_at

    # Deltas -------------------------------------------------------------------------------

    def vs_baseline(self) -> dict[str, float | None]:
        """Accuracy difference and latency/size ratios against the uncompressed baseline.

        Uses the baseline run of the project when there is one, else the baseline numbers the
        run measured itself (accuracy and size only).
        """
        out: dict[str, float | None] = {"accuracy": None, "p50": None, "p99": None, "size": None}
        m = self.result.metrics
        if not m:
            return out
        base = self.baseline
        if base is not None and base.result.metrics:
            bm = base.result.metrics
            out["accuracy"] = m.accuracy - bm.accuracy
            out["p50"] = _ratio(m.latency_ms.p50, bm.latency_ms.p50)
            out["p99"] = _ratio(m.latency_ms.p99, bm.latency_ms.p99)
            out["size"] = _ratio(m.model_size_bytes, bm.model_size_bytes)
        else:
            if m.baseline_accuracy is not None:
                out["accuracy"] = m.accuracy - m.baseline_accuracy
            if m.baseline_model_bytes:
                out["size"] = _ratio(m.model_size_bytes, m.baseline_model_bytes)
        return out

    def vs_previous(self) -> dict[str, float | None]:
        """Accuracy difference and latency/size ratios against the previous committed result."""
        out: dict[str, float | None] = {"accuracy": None, "p50": None, "p99": None, "size": None}
        m = self.result.metrics
        prev = self.previous.result.metrics if self.previous else None
        if not m or not prev:
            return out
        out["accuracy"] = m.accuracy - prev.accuracy
        out["p50"] = _ratio(m.latency_ms.p50, prev.latency_ms.p50)
        out["p99"] = _ratio(m.latency_ms.p99, prev.latency_ms.p99)
        out["size"] = _ratio(m.model_size_bytes, prev.model_size_bytes)
        return out


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def accuracy_noise(a: RunView, b: RunView) -> float:
    """The 95 % half-width of the difference of two accuracies measured on ``samples`` test
    samples each (normal approximation): differences within it say nothing."""
    var = 0.0
    for run in (a, b):
        m = run.result.metrics
        if not m or not m.samples or m.accuracy is None:
            return ACCURACY_TOLERANCE
        var += m.accuracy * (1 - m.accuracy) / m.samples
    return 1.96 * math.sqrt(var)


def same_accuracy(a: RunView, b: RunView) -> bool:
    """True when the accuracies of ``a`` and ``b`` are within :data:`ACCURACY_TOLERANCE` or the
    sampling noise, whichever is larger."""
    if a.accuracy is None or b.accuracy is None:
        return False
    return abs(a.accuracy - b.accuracy) <= max(ACCURACY_TOLERANCE, accuracy_noise(a, b))


def faster(a: RunView, b: RunView) -> bool | None:
    """Whether ``a`` is faster than ``b``: True, False, or None when the difference is within
    the noise (their confidence intervals overlap, one is unstable, or without intervals the
    p50s are closer than :data:`NOISE_RATIO`) — two such runs are never ranked."""
    if a.unstable or b.unstable or not a.p50 or not b.p50:
        return None
    ca, cb = a.speedup_ci, b.speedup_ci
    if ca is not None and cb is not None and a.baseline is b.baseline:
        if ca[0] > cb[1]:
            return True
        if cb[0] > ca[1]:
            return False
        return None
    ratio = b.p50 / a.p50
    if max(ratio, 1 / ratio) <= NOISE_RATIO:
        return None
    return ratio > 1


@dataclass
class Recommendation:
    """Which run to deploy on one device, and why, from the runs that pass their gates."""

    device: str
    run: RunView | None
    """The run to deploy; None when no run on the device passes its gates."""
    baseline: RunView | None = None
    """The uncompressed run it is compared with, when there is one."""
    considered: int = 0
    """How many runs passed their gates (the candidates)."""
    why_uncompressed: str = ""
    """When the uncompressed run is the one to deploy: why no compressed run is."""

    @property
    def size_ratio(self) -> float | None:
        """Baseline size over this run's size (3.4 means 3.4 times smaller)."""
        if self.run is None or self.baseline is None or not self.run.size or not self.baseline.size:
            return None
        return self.baseline.size / self.run.size

    @property
    def accuracy_delta(self) -> float | None:
        if self.run is None or self.baseline is None or self.run.accuracy is None or self.baseline.accuracy is None:
            return None
        return self.run.accuracy - self.baseline.accuracy

    def reasons(self) -> list[str]:
        """The comparison with the baseline in words: size, accuracy, speed."""
        run, base = self.run, self.baseline
        if run is None:
            return []
        if base is None or base is run:
            return []
        out = []
        ratio = self.size_ratio
        if ratio is not None:
            if ratio >= 1.005:
                out.append(f"{ratio:.1f}× smaller")
            elif ratio <= 0.995:
                out.append(f"{1 / ratio:.1f}× larger")
            else:
                out.append("same size")
        delta = self.accuracy_delta
        if delta is not None:
            if abs(delta) < 0.0005:
                out.append("same accuracy")
            elif same_accuracy(run, base):
                out.append(f"same accuracy ({delta * 100:+.1f} pp, within sampling noise)".replace("-", "−"))
            else:
                out.append(f"{abs(delta) * 100:.1f} pp {'more' if delta > 0 else 'less'} accurate")
        speed = run.speedup
        if speed is not None:
            if run.speed_known:
                out.append(f"{speed:.1f}× faster" if speed > 1 else f"{1 / speed:.1f}× slower")
            else:
                out.append("as fast (within measurement noise)")
        return out

    def sentence(self) -> str:
        """E.g. ``deploy cnn-static-int8: 3.4× smaller, same accuracy, 1.1× faster than cnn-none``."""
        if self.run is None:
            return f"no run on {self.device} passes its gates"
        reasons = self.reasons()
        if self.baseline is None:
            return f"deploy {self.run.slug}: the best of {self.considered} run(s) that pass their gates"
        if self.baseline is self.run:
            return f"deploy {self.run.slug} (uncompressed): {self.why_uncompressed or 'no compressed run is better'}"
        return f"deploy {self.run.slug}: {', '.join(reasons)} than {self.baseline.slug}"


def recommend(device: str, runs: list[RunView]) -> Recommendation:
    """The run to deploy on ``device``, chosen from ``runs`` (that device's runs).

    Only runs that pass every gate are candidates. Of those, the runs whose accuracy is the
    same as the most accurate one's (:func:`same_accuracy`) are "as accurate"; of those, runs more than
    :data:`MAX_SLOWDOWN` times slower than their baseline are left out when any other is not.
    The smallest model wins, since flash is what a small device runs out of first; a run no
    more than 5 % larger wins instead when it is faster beyond the noise (:func:`faster`): two
    runs whose latency difference is within their confidence intervals are never ranked by speed.
    """
    candidates = [r for r in runs if r.passed and r.accuracy is not None and r.size]
    if not candidates:
        return Recommendation(device, None)
    best = max(candidates, key=lambda r: (r.accuracy, -r.size))  # type: ignore[operator]
    as_accurate = sorted(
        (r for r in candidates if r is best or same_accuracy(r, best)),
        key=lambda r: (r.size, -(r.accuracy or 0.0), r.slug),
    )
    close = [r for r in as_accurate if not _much_slower(r)] or as_accurate
    choice = close[0]
    for other in close[1:]:
        if other.size > choice.size * 1.05:  # type: ignore[operator]
            break
        if faster(other, choice) is True:
            choice = other
    baseline = choice.baseline if choice.baseline is not None else (choice if choice.is_baseline else None)
    why = ""
    if choice.is_baseline:
        compressed = [r for r in candidates if not r.is_baseline]
        if not compressed:
            why = "no compressed run passes its gates"
        elif all(r.is_baseline for r in as_accurate):
            why = "no compressed run that passes its gates is as accurate"
        else:
            why = f"every compressed run as accurate is more than {MAX_SLOWDOWN:g}× slower"
    return Recommendation(device, choice, baseline, considered=len(candidates), why_uncompressed=why)


def _much_slower(run: RunView) -> bool:
    speed = run.speedup
    return speed is not None and run.speed_known and speed < 1 / MAX_SLOWDOWN


@dataclass
class DeviceView:
    """A project's runs on one device, with the Pareto front and the recommendation there."""

    name: str
    runs: list[RunView]
    pareto: set[str] = field(default_factory=set)
    recommendation: Recommendation | None = None


@dataclass
class ProjectView:
    name: str
    runs: list[RunView]
    pareto: set[str] = field(default_factory=set)
    """Slugs of the runs on the Pareto front of their device (accuracy, size and p50 latency)."""
    devices: list[DeviceView] = field(default_factory=list)
    """The runs per device, each with its recommendation."""

    @property
    def measured(self) -> list[RunView]:
        return [r for r in self.runs if r.result.metrics is not None]

    @property
    def recommended(self) -> set[str]:
        """Slugs of the runs recommended on some device."""
        return {d.recommendation.run.slug for d in self.devices if d.recommendation and d.recommendation.run}

    @property
    def latest(self) -> str:
        return max((r.created_at for r in self.runs), default="")

    def counts(self) -> dict[str, int]:
        out = {"succeeded": 0, "gates-failed": 0, "failed": 0}
        for r in self.runs:
            out[r.status] = out.get(r.status, 0) + 1
        return out


@dataclass
class SiteData:
    projects: list[ProjectView]

    @property
    def runs(self) -> list[RunView]:
        return [r for p in self.projects for r in p.runs]

    def project(self, name: str) -> ProjectView | None:
        return next((p for p in self.projects if p.name == name), None)

    def latest_runs(self, n: int = 10) -> list[RunView]:
        return sorted(self.runs, key=lambda r: r.created_at, reverse=True)[:n]

    def headline(self) -> dict[str, object]:
        """Headline numbers for the landing page: counts, and per project and device the
        recommendation. Numbers of unrelated projects are never set against each other."""
        runs = self.runs
        counts = {"succeeded": 0, "gates-failed": 0, "failed": 0}
        for r in runs:
            counts[r.status] = counts.get(r.status, 0) + 1
        return {
            "projects": len(self.projects),
            "runs": len(runs),
            "counts": counts,
            "recommendations": [(p, d.recommendation) for p in self.projects for d in p.devices if d.recommendation],
            "latest": max((r.created_at for r in runs), default=None),
        }


def pareto_front(points: Iterable[tuple]) -> set[str]:
    """Keys of the points not dominated: ``points`` are ``(key, accuracy, cost, ...)`` with
    accuracy higher-is-better and every cost (size, latency) lower-is-better.

    A point is dominated when another is at least as good in every objective and strictly
    better in one. Identical points are all on the front.
    """
    pts = [(p[0], (-p[1], *p[2:])) for p in points]  # all objectives lower-is-better
    pts.sort(key=lambda p: p[1])
    front: list[tuple[str, tuple]] = []
    for key, objectives in pts:
        # Sorted lexicographically, a point can only be dominated by one before it.
        dominated = any(
            all(f <= o for f, o in zip(fo, objectives, strict=True)) and fo != objectives for _, fo in front
        )
        if not dominated:
            front.append((key, objectives))
    return {k for k, _ in front}


def _pick_baseline(run: RunView, candidates: list[RunView]) -> RunView | None:
    if run.is_baseline:
        return None
    model = run.result.inputs.model.sha256 if run.result.inputs else None
    best, best_score = None, -1
    for cand in candidates:
        cmodel = cand.result.inputs.model.sha256 if cand.result.inputs else None
        if model and cmodel and model != cmodel:
            continue  # another model's baseline says nothing about this one
        score = (2 if cand.device == run.device else 0) + (
            1
            if cand.result.runtime and run.result.runtime and cand.result.runtime.name == run.result.runtime.name
            else 0
        )
        if score > best_score or (score == best_score and best and cand.created_at > best.created_at):
            best, best_score = cand, score
    return best


def build_site_data(loaded: list[LoadedResult], history: dict[str, list[HistoryEntry]]) -> SiteData:
    """Group results into projects; attach baselines, previous versions and Pareto fronts."""
    by_project: dict[str, list[RunView]] = {}
    for item in loaded:
        hist = history.get(item.path, [])
        previous = next((h for h in hist if h.raw != item.raw), None)
        by_project.setdefault(item.project, []).append(RunView(item, hist, previous=previous))
    projects = []
    for name in sorted(by_project):
        runs = sorted(by_project[name], key=lambda r: r.slug)
        baselines = [r for r in runs if r.is_baseline and r.result.metrics is not None]
        for run in runs:
            run.baseline = _pick_baseline(run, baselines)
        devices = []
        for device in sorted({r.device for r in runs}):
            on_device = [r for r in runs if r.device == device]
            front = pareto_front((r.slug, r.accuracy, r.size, r.p50) for r in on_device if r.result.metrics is not None)
            devices.append(DeviceView(device, on_device, front, recommend(device, on_device)))
        pareto = set().union(*(d.pareto for d in devices)) if devices else set()
        projects.append(ProjectView(name, runs, pareto, devices))
    return SiteData(projects)
