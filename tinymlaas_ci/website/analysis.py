"""The numbers the site shows, computed once from the loaded results: pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from tinymlaas_ci.results.models import Result
from tinymlaas_ci.website.history import HistoryEntry
from tinymlaas_ci.website.loader import LoadedResult

__all__ = ["ProjectView", "RunView", "SiteData", "build_site_data", "mode_label", "pareto_front"]


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


@dataclass
class ProjectView:
    name: str
    runs: list[RunView]
    pareto: set[str] = field(default_factory=set)
    """Slugs of the runs on the accuracy/latency Pareto front."""

    @property
    def measured(self) -> list[RunView]:
        return [r for r in self.runs if r.result.metrics is not None]

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
        """Headline numbers of the latest results, for the landing page."""
        runs = self.runs
        measured = [r for r in runs if r.result.metrics is not None]
        counts = {"succeeded": 0, "gates-failed": 0, "failed": 0}
        for r in runs:
            counts[r.status] = counts.get(r.status, 0) + 1
        return {
            "projects": len(self.projects),
            "runs": len(runs),
            "counts": counts,
            "best_accuracy": max(measured, key=lambda r: r.accuracy or 0.0, default=None),
            "fastest": min(measured, key=lambda r: r.p50 or float("inf"), default=None),
            "smallest": min(measured, key=lambda r: r.size or 0, default=None),
            "best_ratio": max(measured, key=lambda r: r.ratio or 0.0, default=None),
            "latest": max((r.created_at for r in runs), default=None),
        }


def pareto_front(points: Iterable[tuple[str, float, float]]) -> set[str]:
    """Keys of the points not dominated in (higher accuracy, lower latency).

    ``points`` are ``(key, accuracy, latency)``. A point is dominated when another is at least
    as accurate and at least as fast, and strictly better in one of the two.
    """
    pts = sorted(points, key=lambda p: (p[2], -p[1]))  # fastest first, then most accurate
    front: set[str] = set()
    best_acc = float("-inf")
    for key, acc, _lat in pts:
        # Sorted by latency, a point is on the front iff it beats every faster point's accuracy.
        if acc > best_acc:
            front.add(key)
            best_acc = acc
    # Ties (same accuracy and latency) are all on the front.
    tied = {(a, lat) for k, a, lat in pts if k in front}
    front.update(k for k, a, lat in pts if (a, lat) in tied)
    return front


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
        front = pareto_front((r.slug, r.accuracy, r.p50) for r in runs if r.result.metrics is not None)
        projects.append(ProjectView(name, runs, front))
    return SiteData(projects)
