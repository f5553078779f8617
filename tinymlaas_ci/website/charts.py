"""Plotly figures as plain JSON-ready dicts.

Figures are built as dicts rather than ``plotly.graph_objects`` objects: Plotly.js takes the
same JSON, and skipping the Python-side validation keeps 1,000 run pages cheap. The browser
renders them with the ``plotly.min.js`` shipped once in the site's assets.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from itertools import count
from typing import Any

from tinymlaas_ci.website.analysis import ProjectView, RunView

__all__ = [
    "MODE_COLORS",
    "confusion_heatmap",
    "figure_html",
    "latency_percentiles",
    "mode_bars",
    "pareto_scatter",
    "project_history",
    "run_history",
    "stage_timeline",
]

MODE_COLORS = {
    "none": "#546e7a",
    "dynamic-int8": "#ef6c00",
    "static-int8": "#1e88e5",
    "fp16": "#43a047",
}
_OTHER = ["#8e24aa", "#00897b", "#c0ca33", "#6d4c41", "#d81b60", "#3949ab"]
_FONT = {"family": "-apple-system, BlinkMacSystemFont, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif", "size": 12}
_ids = count(1)
MAX_HISTORY_TRACES = 50


def _color(mode: str) -> str:
    base = mode.split(" + ")[0]
    if base in MODE_COLORS and " + " not in mode:
        return MODE_COLORS[base]
    return _OTHER[sum(map(ord, mode)) % len(_OTHER)]


def _layout(title: str, **extra: Any) -> dict[str, Any]:
    layout = {
        "title": {"text": title, "font": {"size": 14}},
        "font": _FONT,
        "margin": {"l": 60, "r": 20, "t": 40, "b": 50},
        "paper_bgcolor": "rgba(0,0,0,0)",
        "plot_bgcolor": "rgba(0,0,0,0)",
        "hovermode": "closest",
        "legend": {"orientation": "h", "y": -0.2},
    }
    layout.update(extra)
    return layout


def figure_html(figure: dict[str, Any], height: int = 420, label: str = "chart") -> str:
    """A chart placeholder plus its figure JSON, as one raw-HTML line for a Markdown page.

    The figure's title is taken out of the Plotly layout and written as a line of HTML above
    the chart, where the Plotly toolbar (top right of the chart) cannot cover it. The JSON sits
    in a ``<script type="application/json">`` block, escaped so that no ``</`` can close it
    early; ``tinymlaas.js`` renders every such block with Plotly.
    """
    from markupsafe import escape

    fid = f"tm-fig-{next(_ids)}"
    layout = dict(figure.get("layout") or {})
    title = layout.pop("title", None)
    text = title.get("text") if isinstance(title, dict) else title
    margin = dict(layout.get("margin") or {})
    margin["t"] = min(margin.get("t", 40), 30)
    layout["margin"] = margin
    figure = {**figure, "layout": layout}
    payload = json.dumps(figure, separators=(",", ":"), allow_nan=False, default=str)
    payload = payload.replace("</", "<\\/").replace("<!--", "<\\!--")
    head = f'<p class="tm-chart__title" id="{fid}-title">{escape(text)}</p>' if text else ""
    labelled = f' aria-labelledby="{fid}-title"' if text else ""
    return (
        f'{head}<div class="tm-chart" id="{fid}" role="img" aria-label="{escape(label)}"{labelled} '
        f'style="height:{height}px"></div>'
        f'<script type="application/json" class="tm-figure" data-target="{fid}">{payload}</script>'
    )


def _clean(value: float | None) -> float | None:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return value


def pareto_scatter(project: ProjectView, run_href) -> dict[str, Any]:
    """Accuracy against p50 latency; marker area follows model size; the Pareto front is drawn."""
    runs = project.measured
    sizes = [r.size or 0 for r in runs]
    biggest = max(sizes, default=1) or 1
    traces = []
    for mode in sorted({r.mode for r in runs}):
        group = [r for r in runs if r.mode == mode]
        traces.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": mode,
                "x": [_clean(r.p50) for r in group],
                "y": [_clean(r.accuracy) for r in group],
                "text": [r.slug for r in group],
                "customdata": [
                    [run_href(r), r.size, r.status, " (estimate)" if r.latency_estimated else ""] for r in group
                ],
                "marker": {
                    "size": [8 + 32 * math.sqrt((r.size or 0) / biggest) for r in group],
                    "color": _color(mode),
                    "opacity": 0.8,
                    "line": {"width": [3 if r.slug in project.pareto else 0.5 for r in group], "color": "#212121"},
                },
                "hovertemplate": "<b>%{text}</b><br>p50 %{x:.4g} ms%{customdata[3]}<br>accuracy %{y:.4f}"
                "<br>%{customdata[1]:,} bytes<br>%{customdata[2]}<extra>" + mode + "</extra>",
            }
        )
    front = [r for r in runs if r.slug in project.pareto]
    if front:
        # The front is over accuracy, size and latency (per device), so it is not a line in this
        # plane: its runs are ringed instead.
        traces.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": "Pareto front (accuracy, size, p50)",
                "x": [_clean(r.p50) for r in front],
                "y": [_clean(r.accuracy) for r in front],
                "text": [r.slug for r in front],
                "marker": {
                    "symbol": "circle-open",
                    "size": [14 + 32 * math.sqrt((r.size or 0) / biggest) for r in front],
                    "color": "#212121",
                    "line": {"width": 2},
                },
                "hoverinfo": "skip",
            }
        )
    return {
        "data": traces,
        "layout": _layout(
            "Accuracy vs. p50 latency (marker size: model size; ringed: Pareto front)",
            xaxis={"title": {"text": "p50 latency (ms)"}, "type": "log"},
            yaxis={"title": {"text": "accuracy"}, "tickformat": ".3f"},
        ),
    }


def _median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def mode_bars(project: ProjectView, metric: str) -> dict[str, Any]:
    """Median model size (``metric="size"``) or p50 latency (``"p50"``) per compression mode."""
    runs = project.measured
    modes = sorted({r.mode for r in runs}, key=lambda m: (m.split(" + ")[0] != "none", m))
    values, lows, highs, counts = [], [], [], []
    for mode in modes:
        vals = [float(getattr(r, metric)) for r in runs if r.mode == mode and getattr(r, metric) is not None]
        med = _median(vals)
        values.append(med)
        lows.append(med - min(vals))
        highs.append(max(vals) - med)
        counts.append(len(vals))
    title, axis = (
        ("Model size per compression mode", "bytes") if metric == "size" else ("p50 latency per compression mode", "ms")
    )
    return {
        "data": [
            {
                "type": "bar",
                "x": modes,
                "y": values,
                "marker": {"color": [_color(m) for m in modes]},
                "error_y": {"type": "data", "symmetric": False, "array": highs, "arrayminus": lows, "visible": True},
                "customdata": counts,
                "hovertemplate": "%{x}<br>median %{y:.4g} " + axis + "<br>%{customdata} run(s)<extra></extra>",
            }
        ],
        "layout": _layout(
            title + (" (median, min-max)" if any(c > 1 for c in counts) else ""),
            yaxis={"title": {"text": axis}},
            showlegend=False,
        ),
    }


def _history_points(run: RunView) -> list[tuple[str, RunView | Any]]:
    """(commit date, result) pairs, oldest first, with the working copy when it is not committed."""
    points = [(h.date, h.result) for h in reversed(run.history)]
    if not run.history or run.history[0].raw != run.loaded.raw:
        points.append((run.result.created_at, run.result))
    return points


def project_history(project: ProjectView, metric: str) -> dict[str, Any]:
    """Accuracy (``metric="accuracy"``) or p50 latency (``"p50"``) of each run over commits."""
    runs = sorted(project.runs, key=lambda r: r.created_at, reverse=True)[:MAX_HISTORY_TRACES]
    traces = []
    for run in sorted(runs, key=lambda r: r.slug):
        xs, ys = [], []
        for date, result in _history_points(run):
            if result.metrics is None:
                continue
            xs.append(date)
            ys.append(result.metrics.accuracy if metric == "accuracy" else result.metrics.latency_ms.p50)
        if xs:
            traces.append(
                {
                    "type": "scatter",
                    "mode": "lines+markers",
                    "name": run.slug,
                    "x": xs,
                    "y": ys,
                    "line": {"color": _color(run.mode)},
                }
            )
    title = "Accuracy over commits" if metric == "accuracy" else "p50 latency over commits"
    if len(project.runs) > MAX_HISTORY_TRACES:
        title += f" ({MAX_HISTORY_TRACES} most recent runs)"
    return {
        "data": traces,
        "layout": _layout(
            title,
            xaxis={"title": {"text": "commit date"}, "type": "date"},
            yaxis={"title": {"text": "accuracy" if metric == "accuracy" else "ms"}},
            showlegend=len(traces) <= 12,
        ),
    }


def confusion_heatmap(run: RunView) -> dict[str, Any] | None:
    m = run.result.metrics
    if not m or not m.confusion_matrix:
        return None
    n = len(m.confusion_matrix)
    labels = list(m.labels) if len(m.labels) == n else [str(i) for i in range(n)]
    return {
        "data": [
            {
                "type": "heatmap",
                "z": m.confusion_matrix,
                "x": labels,
                "y": labels,
                "colorscale": "Blues",
                "hovertemplate": "true %{y}<br>predicted %{x}<br>%{z} samples<extra></extra>",
            }
        ],
        "layout": _layout(
            "Confusion matrix",
            xaxis={"title": {"text": "predicted"}, "type": "category"},
            yaxis={"title": {"text": "true"}, "autorange": "reversed", "type": "category"},
        ),
    }


def latency_percentiles(run: RunView) -> dict[str, Any] | None:
    """p50 to p99 and the mean as bars; the minimum and maximum are left out of the bars (one
    slow call would flatten the rest) and given in the title."""
    m = run.result.metrics
    if not m:
        return None
    lat = m.latency_ms
    names = ["p50", "p90", "p95", "p99", "mean"]
    return {
        "data": [
            {
                "type": "bar",
                "x": names,
                "y": [getattr(lat, n) for n in names],
                "marker": {"color": _color(run.mode)},
                "text": [f"{getattr(lat, n):.4g}" for n in names],
                "textposition": "outside",
                "cliponaxis": False,
                "hovertemplate": "%{x}: %{y:.4g} ms<extra></extra>",
            }
        ],
        "layout": _layout(
            f"Latency per call over {lat.iterations:,} iterations (min {lat.min:.4g} ms, max {lat.max:.4g} ms: "
            "not drawn)",
            yaxis={"title": {"text": "ms"}, "rangemode": "tozero"},
            showlegend=False,
        ),
    }


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


_STATUS_COLORS = {
    "generated": "#43a047",
    "failed": "#e53935",
    "running": "#fb8c00",
    "pending": "#9e9e9e",
    "skipped": "#90a4ae",
}


def stage_timeline(run: RunView) -> dict[str, Any] | None:
    """Each stage as a bar from its start to its end, seconds after the first stage started."""
    stages = run.result.stages
    starts = [_parse_time(s.started_at) for s in stages]
    t0 = min((t for t in starts if t), default=None)
    if not stages or t0 is None:
        return None
    names, bases, durations, colors, texts = [], [], [], [], []
    for stage, start in zip(stages, starts, strict=True):
        names.append(stage.name)
        base = (start - t0).total_seconds() if start else 0.0
        dur = stage.duration_s
        if dur is None:
            end = _parse_time(stage.finished_at)
            dur = (end - start).total_seconds() if (start and end) else 0.0
        bases.append(base)
        durations.append(max(dur, 0.0))
        colors.append(_STATUS_COLORS.get(stage.status, "#9e9e9e"))
        texts.append(f"{stage.status}{' (cache hit)' if stage.cache_hit else ''}")
    return {
        "data": [
            {
                "type": "bar",
                "orientation": "h",
                "y": names,
                "x": durations,
                "base": bases,
                "marker": {"color": colors},
                "text": texts,
                "textposition": "auto",
                "hovertemplate": "%{y}: %{x:.2f} s<br>%{text}<extra></extra>",
            }
        ],
        "layout": _layout(
            "Stage timeline",
            xaxis={"title": {"text": "seconds since the first stage started"}},
            yaxis={"autorange": "reversed", "type": "category"},
            showlegend=False,
        ),
    }


def run_history(run: RunView) -> dict[str, Any] | None:
    """Accuracy and p50 latency of one run over commits, on two axes."""
    points = [(d, r) for d, r in _history_points(run) if r.metrics is not None]
    if not points:
        return None
    xs = [d for d, _ in points]
    return {
        "data": [
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": "accuracy",
                "x": xs,
                "y": [r.metrics.accuracy for _, r in points],
                "line": {"color": "#1e88e5"},
            },
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": "p50 latency (ms)",
                "x": xs,
                "y": [r.metrics.latency_ms.p50 for _, r in points],
                "yaxis": "y2",
                "line": {"color": "#ef6c00"},
            },
        ],
        "layout": _layout(
            "History over commits",
            xaxis={"title": {"text": "commit date"}, "type": "date"},
            yaxis={"title": {"text": "accuracy"}, "tickformat": ".3f"},
            yaxis2={"title": {"text": "p50 ms"}, "overlaying": "y", "side": "right"},
        ),
    }
