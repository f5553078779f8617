"""The ``infer`` stage: run the installed model on the device and measure it.

Evaluates the deployed model and the fp32 baseline over the whole evaluation split
(``dataset.split``, default ``test``; streamed from the bundle and preprocessed per batch as its
manifest says; NaN or Inf outputs fail the stage), and measures the deployed model's latency after
MLPerf Tiny's habits (``measure``: warm-up, then at least ``min_iterations`` and
``min_seconds``) side by side with the baseline's, in the same process and in ``measure.rounds``
interleaved rounds, so the speed ratio (``speedup_vs_baseline``, with a confidence interval) is
not skewed by what else the machine did in between. Peak memory is taken before the baseline is
loaded, so it is the deployed model's.

Metrics: a ``results.models.Metrics`` dict. Records: ``device`` (``DeviceRecord``), ``runtime``
(``RuntimeRecord``), ``tools``, ``baseline_runtime``.

    python -m tinymlaas_ci.stages.infer VOLUME --name infer
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tinymlaas_ci.errors import TinymlError
from tinymlaas_ci.spec.models import Measure
from tinymlaas_ci.stages.bundle import BundleManifest, read_manifest
from tinymlaas_ci.stages.contract import StageContext, stage_main

__all__ = ["main", "measure_bundle", "measure_speed", "run"]


def measure_bundle(
    bundle: Path,
    manifest: BundleManifest,
    how: Measure,
    *,
    data: dict[str, Any] | None = None,
    split: str | None = None,
    log=lambda _msg: None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Measure a bundle; returns ``(metrics, runtime_record)``.

    ``data``/``split`` override the bundle's own evaluation data (e.g. the fetch stage's dataset).
    """
    import numpy as np

    from tinymlaas_ci.ml import measure
    from tinymlaas_ci.ml.runtime import load_session

    split = split or manifest.eval_split
    if data is None:
        data = bundle_data(bundle, manifest, split)
    x, y = measure.eval_split(data, split)
    labels = list(data.get("labels") or manifest.labels)
    num_classes = len(labels) or int(y.max()) + 1
    batch_size = how.batch_size

    model_path = bundle / manifest.model
    session = load_session(model_path, manifest.runtime.value, threads=how.threads)
    log(f"loaded {model_path.name} into {session.runtime} {session.version} in {session.load_time_ms:.1f} ms")
    if session.fixed_batch and session.fixed_batch != batch_size:
        raise TinymlError(
            f"the model's batch size is fixed to {session.fixed_batch}, but measure.batch_size is {batch_size}",
            hint=f"set measure.batch_size: {session.fixed_batch}, or export the model with a dynamic batch axis",
        )
    eval_batch = measure.eval_batch_size(x[0:1].shape[1:], at_least=batch_size)
    acc = measure.evaluate(
        session.run, x, y, num_classes=num_classes, batch_size=eval_batch, fixed_batch=session.fixed_batch
    )
    log(f"accuracy {acc['accuracy']:.4f} on {acc['samples']} {split} samples")
    reps = -(-batch_size // len(x))
    first = x[0:batch_size]
    batch = np.ascontiguousarray(np.concatenate([first] * reps)[:batch_size])
    # Taken before the baseline is loaded: the peak is the deployed model's.
    peak = measure.peak_memory_mb()

    baseline_path = bundle / manifest.baseline
    base_session = load_session(baseline_path, "onnxruntime", threads=how.threads)
    base = measure.evaluate(
        base_session.run,
        x,
        y,
        num_classes=num_classes,
        batch_size=eval_batch,
        fixed_batch=base_session.fixed_batch,
    )
    log(f"baseline accuracy {base['accuracy']:.4f}")
    same = base_session.fixed_batch in (None, batch_size)
    speed = measure_speed(session.run, base_session.run, batch, how, log=log, same_batch=same)
    latency = speed.pop("latency_ms")

    size = model_path.stat().st_size
    base_size = baseline_path.stat().st_size
    metrics = {
        "accuracy": acc["accuracy"],
        "top5_accuracy": acc["top5_accuracy"],
        "baseline_accuracy": base["accuracy"],
        "accuracy_drop": base["accuracy"] - acc["accuracy"],
        "samples": acc["samples"],
        "latency_ms": latency,
        "batch_size": batch_size,
        "throughput_per_s": batch_size * latency["iterations"] / latency["seconds"],
        "model_size_bytes": size,
        "model_gzip_bytes": measure.gzip_size(model_path),
        "baseline_model_bytes": base_size,
        "compression_ratio": base_size / size if size else None,
        "peak_memory_mb": peak,
        "load_time_ms": session.load_time_ms,
        "labels": labels,
        "confusion_matrix": acc["confusion_matrix"],
        "eval_split": split,
        **speed,
    }
    return metrics, session.record()


def bundle_data(bundle: Path, manifest: BundleManifest, split: str) -> dict[str, Any]:
    """The bundle's evaluation data, streamed: samples are read and preprocessed per batch, so
    memory does not grow with the split (nor with the train split, which the bundle lacks)."""
    from tinymlaas_ci.ml.datasets import SplitReader
    from tinymlaas_ci.ml.preprocess import apply_preprocess

    path = bundle / manifest.data
    plan = manifest.preprocess
    x = SplitReader(path, "x", transform=lambda raw: apply_preprocess(raw, plan))
    y = SplitReader(path, "y").materialize()
    return {f"x_{split}": x, f"y_{split}": y, "labels": list(manifest.labels)}


def measure_speed(
    run: Callable[[Any], Any],
    baseline: Callable[[Any], Any],
    batch: Any,
    how: Measure,
    *,
    log: Callable[[str], None] = lambda _msg: None,
    same_batch: bool = True,
) -> dict[str, Any]:
    """Latency of ``run`` and its speed against ``baseline``, measured side by side.

    Both models are timed in the same process, in ``how.rounds`` interleaved rounds
    (:func:`tinymlaas_ci.ml.measure.compare_latency`); returns ``Metrics`` fields:
    ``latency_ms``, ``baseline_latency_ms``, ``speedup_vs_baseline``, ``speedup_ci95``, ``rounds``,
    ``round_ratios``, ``round_spread``, ``load_before``, ``load_after``, ``cpu_share``,
    ``runnable_others``, ``cpus``, ``unstable``, ``unstable_reason``, ``remeasured``. When the
    baseline cannot take ``batch`` (``same_batch`` False), only the deployed model is timed and
    the comparison fields are left out.
    """
    from tinymlaas_ci.ml import measure

    if not same_batch:
        latency = measure.measure_latency(
            run, batch, warmup=how.warmup, min_iterations=how.min_iterations, min_seconds=how.min_seconds
        )
        log(f"latency p50 {latency['p50']:.4f} ms; the baseline takes another batch size, so no speed ratio")
        return {"latency_ms": latency}
    cmp = measure.compare_latency(
        run,
        baseline,
        batch,
        rounds=how.rounds,
        warmup=how.warmup,
        min_iterations=how.min_iterations,
        min_seconds=how.min_seconds,
        max_round_spread=how.max_round_spread,
        max_remeasure=how.max_remeasure,
        contention=how.contention,
        log=log,
    )
    latency, base = cmp["latency"], cmp["baseline_latency"]
    low, high = cmp["speedup_ci95"]
    log(
        f"latency p50 {latency['p50']:.4f} ms, p99 {latency['p99']:.4f} ms over {latency['iterations']} "
        f"iterations ({latency['seconds']:.2f} s); baseline p50 {base['p50']:.4f} ms"
    )
    log(
        f"speed vs baseline {cmp['speedup_vs_baseline']:.3f}x (95% CI {low:.3f}-{high:.3f}) over "
        f"{cmp['rounds']} interleaved rounds, spread {cmp['round_spread']:.1%}, "
        f"load {_load(cmp['load_before'])} -> {_load(cmp['load_after'])}, "
        f"CPU share {_share(cmp['cpu_share'])}"
        + (
            f" -- UNSTABLE after {cmp['remeasured']} re-measurements ({cmp['unstable_reason']})"
            if cmp["unstable"]
            else ""
        )
    )
    return {
        "latency_ms": latency,
        "baseline_latency_ms": base,
        "speedup_vs_baseline": cmp["speedup_vs_baseline"],
        "speedup_ci95": [low, high],
        "rounds": cmp["rounds"],
        "round_ratios": cmp["round_ratios"],
        "round_spread": cmp["round_spread"],
        "load_before": cmp["load_before"],
        "load_after": cmp["load_after"],
        "cpu_share": cmp["cpu_share"],
        "runnable_others": cmp["runnable_others"],
        "cpus": cmp["cpus"],
        "unstable": cmp["unstable"],
        "unstable_reason": cmp["unstable_reason"],
        "remeasured": cmp["remeasured"],
    }


def _load(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.2f}"


def _share(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.0%}"


def run(ctx: StageContext) -> None:
    """Measure the installed bundle of ``ctx``'s run."""
    from tinymlaas_ci.ml import measure

    bundle = ctx.input_path("install", "bundle").parent
    manifest = read_manifest(bundle)
    if manifest.runtime.value == "c":
        from tinymlaas_ci.stages.runtime_c import infer_c

        infer_c(ctx, bundle, manifest)
        return
    # The bundle's own evaluation split: labels already in the model's order, preprocessing in
    # the manifest, exactly what an exported bundle evaluates.
    metrics, runtime = measure_bundle(bundle, manifest, ctx.run.measure, split=manifest.eval_split, log=ctx.log)
    metrics.update(
        preprocess=manifest.preprocess,
        label_source=manifest.label_source,
        input_layout=(manifest.preprocess or {}).get("layout"),
    )
    ctx.metrics.update(metrics)
    ctx.records.update(
        device=measure.device_record(ctx.device),
        runtime=runtime,
        tools=measure.tool_versions("torch", "onnx", "onnxruntime", "numpy"),
    )


def main(argv: list[str] | None = None) -> int:
    """Run the stage as a process."""
    return stage_main("infer", run, argv)


if __name__ == "__main__":
    sys.exit(main())
