"""The comparable metrics of a result: one table of keys, labels, directions and formats.

The job summary, the pull-request comment and the emails name and format a metric from this
table, so a number reads the same wherever it is shown. (The website has its own display
filters with units, ``97.50 %`` and ``149.4 KiB``, in :mod:`tinymlaas_ci.website.formatting`.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from tinymlaas_ci.results.models import Result

__all__ = ["METRICS", "MetricDef", "flatten", "format_metric", "metric_values"]


@dataclass(frozen=True)
class MetricDef:
    """One metric of :attr:`Result.metrics`."""

    key: str
    """Dotted key in the metrics, e.g. ``latency_ms.p50``."""
    label: str
    """How a table names it, with its unit."""
    better: Literal["higher", "lower"] | None
    """Which way is an improvement; None when neither is."""
    fmt: str
    """``str.format`` pattern of a value."""
    compared: bool = True
    """Listed in 'what changed' tables (inputs such as the sample count are not news)."""

    def format(self, value: float | None) -> str:
        return "—" if value is None else self.fmt.format(value)


METRICS: tuple[MetricDef, ...] = (
    MetricDef("accuracy", "accuracy", "higher", "{:.4f}"),
    MetricDef("top5_accuracy", "top-5 accuracy", "higher", "{:.4f}"),
    MetricDef("baseline_accuracy", "baseline accuracy", "higher", "{:.4f}", compared=False),
    MetricDef("accuracy_drop", "accuracy drop", "lower", "{:.4f}"),
    MetricDef("latency_ms.p50", "latency p50 (ms)", "lower", "{:.4g}"),
    MetricDef("latency_ms.p90", "latency p90 (ms)", "lower", "{:.4g}"),
    MetricDef("latency_ms.p95", "latency p95 (ms)", "lower", "{:.4g}"),
    MetricDef("latency_ms.p99", "latency p99 (ms)", "lower", "{:.4g}"),
    MetricDef("latency_ms.mean", "latency mean (ms)", "lower", "{:.4g}"),
    MetricDef("speedup_vs_baseline", "speed vs fp32 baseline (x)", "higher", "{:.3g}"),
    MetricDef("throughput_per_s", "throughput (/s)", "higher", "{:,.1f}"),
    MetricDef("model_size_bytes", "model size (bytes)", "lower", "{:,.0f}"),
    MetricDef("model_gzip_bytes", "gzip size (bytes)", "lower", "{:,.0f}"),
    MetricDef("compression_ratio", "compression ratio", "higher", "{:.3g}"),
    MetricDef("peak_memory_mb", "peak memory (MiB)", "lower", "{:.4g}"),
    MetricDef("load_time_ms", "load time (ms)", "lower", "{:.4g}"),
    MetricDef("samples", "samples", None, "{:,.0f}", compared=False),
)
_BY_KEY = {m.key: m for m in METRICS}


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one mapping of dotted keys: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
    else:
        out[prefix[:-1]] = data
    return out


def metric_values(metrics: Result | dict[str, Any] | None) -> dict[str, float]:
    """The finite numeric metrics of a result (or of its ``metrics`` as a dict), by key."""
    if isinstance(metrics, Result):
        metrics = metrics.metrics.model_dump(mode="json") if metrics.metrics is not None else None
    flat = flatten(metrics or {})
    out = {}
    for m in METRICS:
        value = flat.get(m.key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[m.key] = float(value)
    return out


def format_metric(key: str, value: float | None) -> str:
    """A value of metric ``key`` as every table shows it (``—`` when missing)."""
    return _BY_KEY[key].format(value)
