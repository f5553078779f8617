"""Assemble a :class:`~tinymlaas_ci.results.models.Result` from stage outputs, and judge gates.

Pure functions: the engine reads the files and passes their contents in.
"""

from __future__ import annotations

from typing import Any

from tinymlaas_ci.results.models import GateVerdict, Result
from tinymlaas_ci.spec.models import Gates

__all__ = ["build_result", "evaluate_gates"]


def _gate(
    gate: str, limit: float | None, value: float | None, ok, unit: str, fmt: str = "{:.4g}"
) -> GateVerdict | None:
    if limit is None:
        return None
    if value is None:
        return GateVerdict(
            gate=gate,
            limit=limit,
            value=None,
            passed=False,
            message=f"{gate}: no measured value to compare with the limit {fmt.format(limit)}{unit}",
        )
    passed = bool(ok(value, limit))
    verb = "meets" if passed else "fails"
    return GateVerdict(
        gate=gate,
        limit=limit,
        value=value,
        passed=passed,
        message=f"{gate}: measured {fmt.format(value)}{unit} {verb} the limit {fmt.format(limit)}{unit}",
    )


def evaluate_gates(gates: Gates, metrics: dict[str, Any] | None) -> list[GateVerdict]:
    """One verdict per gate that is set, naming the gate and both numbers."""
    m = metrics or {}
    lat = m.get("latency_ms") or {}
    le = lambda v, lim: v <= lim  # noqa: E731
    ge = lambda v, lim: v >= lim  # noqa: E731
    verdicts = [
        _gate("min_accuracy", gates.min_accuracy, m.get("accuracy"), ge, ""),
        _gate("max_accuracy_drop", gates.max_accuracy_drop, m.get("accuracy_drop"), le, ""),
        _gate("max_latency_p50_ms", gates.max_latency_p50_ms, lat.get("p50"), le, " ms"),
        _gate("max_latency_p95_ms", gates.max_latency_p95_ms, lat.get("p95"), le, " ms"),
        _gate("max_latency_p99_ms", gates.max_latency_p99_ms, lat.get("p99"), le, " ms"),
        _gate("max_model_bytes", gates.max_model_bytes, m.get("model_size_bytes"), le, " bytes", "{:.0f}"),
        _gate("max_peak_memory_mb", gates.max_peak_memory_mb, m.get("peak_memory_mb"), le, " MiB"),
    ]
    return [v for v in verdicts if v is not None]


def build_result(
    *,
    run: dict[str, Any],
    spec: dict[str, Any],
    gates: Gates,
    outputs: dict[str, dict[str, Any]],
    stages: list[dict[str, Any]],
    created_at: str,
    error: dict[str, Any] | None = None,
    tools: dict[str, str] | None = None,
) -> Result:
    """Build the result of one run. ``outputs`` maps builtin stage name -> its outputs.json."""
    fetch = outputs.get("fetch", {}).get("records", {})
    compile_ = outputs.get("compile", {}).get("records", {})
    infer = outputs.get("infer", {})
    metrics = infer.get("metrics") or None
    all_tools: dict[str, str] = {}
    for out in outputs.values():
        all_tools.update({k: str(v) for k, v in (out.get("records", {}).get("tools") or {}).items()})
    all_tools.update(tools or {})
    verdicts = evaluate_gates(gates, metrics) if error is None else []
    if error is not None:
        status = "failed"
    elif any(not v.passed for v in verdicts):
        status = "gates-failed"
    else:
        status = "succeeded"
    inputs = None
    if "model" in fetch and "dataset" in fetch:
        inputs = {"model": fetch["model"], "dataset": fetch["dataset"]}
    return Result.model_validate(
        {
            "schema": 1,
            "run": run,
            "status": status,
            "created_at": created_at,
            "spec": spec,
            "inputs": inputs,
            "compression": compile_.get("compression"),
            "device": infer.get("records", {}).get("device"),
            "runtime": infer.get("records", {}).get("runtime"),
            "metrics": metrics,
            "gates": [v.model_dump() for v in verdicts],
            "stages": stages,
            "error": error,
            "tools": all_tools,
        }
    )
