#!/usr/bin/env python3
"""Run an exported TinyMLaaS-CI model on this device and print the numbers as JSON.

Needs Python 3.9+, numpy and onnxruntime (``pip install -r requirements.txt``); nothing else.

    python infer.py                      # accuracy, latency and speed vs the fp32 baseline
    python infer.py --inputs x.npy       # predictions for your own inputs
    python infer.py --model baseline     # the uncompressed fp32 baseline instead
    python infer.py --alone              # time the model alone, without the baseline

Accuracy is computed the way the pipeline measured it (batches of up to 64, one thread, the whole
evaluation split, the same preprocessing from ``manifest.json``), so it reproduces the recorded
value. ``--inputs`` are raw samples like ``eval.npz`` holds (e.g. uint8 images ``C,H,W``) and get
that preprocessing too, unless ``--no-preprocess``. Latency is per call at the recorded batch
size after a warm-up, as median and percentiles.

The deployed model's speed is measured as the pipeline measured it: side by side with the fp32
baseline in this process, in interleaved rounds (the order alternating), so a change of the
machine's speed hits both alike. ``speedup_vs_baseline`` is baseline p50 / deployed p50 with a
95% bootstrap interval over rounds; rounds that disagree by more than ``max_round_spread``, or a
CPU shared with other work while measuring (as many other runnable processes as CPUs, or this
thread on a CPU less than 90% of the time), make the measurement ``unstable``: it is repeated up
to ``max_remeasure`` times and then reported with ``unstable_reason``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))


# -- preprocessing: the pipeline's own, copied (numpy only); a test keeps the two identical --

_LUMA = (0.299, 0.587, 0.114)


def default_scale(dtype) -> float:
    """The ``scale`` used when neither the spec nor the model says: by the stored sample type."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return 1.0 / 255.0
    if dtype == np.uint16:
        return 1.0 / 65535.0
    return 1.0


def resize_bilinear(x: np.ndarray, size: list) -> np.ndarray:
    """Bilinear resize of ``N,C,H,W`` float32 to ``size`` (half-pixel centres, no antialiasing)."""
    out_h, out_w = int(size[0]), int(size[1])
    in_h, in_w = x.shape[-2], x.shape[-1]
    if (in_h, in_w) == (out_h, out_w):
        return x

    def axis(n_in: int, n_out: int) -> tuple:
        pos = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        pos = np.clip(pos, 0, n_in - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (pos - lo).astype(np.float32)

    y0, y1, wy = axis(in_h, out_h)
    x0, x1, wx = axis(in_w, out_w)
    rows = x[..., y0, :] * (1 - wy)[:, None] + x[..., y1, :] * wy[:, None]
    return np.ascontiguousarray(rows[..., x0] * (1 - wx) + rows[..., x1] * wx, dtype=np.float32)


def apply_preprocess(x: np.ndarray, plan: dict | None) -> np.ndarray:
    """Raw samples (a batch, ``N,...``) -> float32 model inputs, following ``plan``."""
    plan = plan or {}
    dtype = x.dtype
    out = np.asarray(x, dtype=np.float32)
    image = out.ndim == 4
    channels = plan.get("channels")
    if channels and image and out.shape[1] != channels:
        if channels == 3 and out.shape[1] == 1:
            out = np.repeat(out, 3, axis=1)
        elif channels == 1 and out.shape[1] in (3, 4):
            luma = np.asarray(_LUMA, dtype=np.float32)[None, :, None, None]
            out = (out[:, :3] * luma).sum(axis=1, keepdims=True, dtype=np.float32)
        else:
            raise ValueError(f"cannot convert samples with {out.shape[1]} channels to {channels}")
    elif channels == 3 and image and out.shape[1] == 4:
        out = out[:, :3]
    resize = plan.get("resize")
    if resize and image:
        out = resize_bilinear(out, resize)
    scale = plan.get("scale")
    if scale is None:
        scale = default_scale(dtype)
    if scale != 1.0:
        out = out * np.float32(scale)
    mean, std = plan.get("mean"), plan.get("std")
    if mean is not None and std is not None:
        shape = (1, -1) + (1,) * (out.ndim - 2) if out.ndim >= 2 else (-1,)
        m = np.asarray(mean, dtype=np.float32)
        s = np.asarray(std, dtype=np.float32)
        if m.size > 1 and out.ndim >= 2 and out.shape[1] != m.size:
            raise ValueError(
                f"dataset.preprocess.mean has {m.size} values but the samples have {out.shape[1]} channels"
            )
        if m.size > 1:
            m, s = m.reshape(shape), s.reshape(shape)
        out = (out - m) / s
    if plan.get("layout") == "nhwc" and image:
        out = out.transpose(0, 2, 3, 1)
    if plan.get("reshape"):
        out = out.reshape((len(out), *plan["reshape"]))
    return np.ascontiguousarray(out, dtype=np.float32)


def load_manifest(folder: str) -> dict:
    with open(os.path.join(folder, "manifest.json"), encoding="utf-8") as fh:
        return json.load(fh)


def load_model(path: str, threads: int):
    """An ONNX Runtime session set up as the pipeline's: sequential, ``threads`` intra-op threads."""
    ort.set_default_logger_severity(3)  # warnings only clutter the JSON's stderr
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    started = time.perf_counter()
    session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
    load_ms = (time.perf_counter() - started) * 1000
    inp = session.get_inputs()[0]
    fixed = inp.shape[0] if inp.shape and isinstance(inp.shape[0], int) else None
    return session, inp.name, session.get_outputs()[0].name, fixed, load_ms


def predict(
    session, in_name: str, out_name: str, x: np.ndarray, fixed: int | None, step: int = 64, plan: dict | None = None
) -> np.ndarray:
    """Logits for every sample of ``x`` (raw samples, preprocessed per batch with ``plan``); a
    fixed-batch model gets padded batches of its size. NaN or Inf outputs are an error."""
    if not fixed and len(x):
        # large inputs get small batches, as in the pipeline (1 MiB of float32 input per batch)
        step = max(1, min(step, (1024 * 1024) // (4 * int(np.prod(np.shape(x)[1:])) or 1)))
    step = fixed or step
    out = []
    for start in range(0, len(x), step):
        xb = apply_preprocess(np.asarray(x[start : start + step]), plan)
        real = len(xb)
        if fixed and real < fixed:
            xb = np.concatenate([xb, np.repeat(xb[-1:], fixed - real, axis=0)])
        logits = np.asarray(session.run([out_name], {in_name: np.ascontiguousarray(xb, dtype=np.float32)})[0])
        if not np.isfinite(logits[:real]).all():
            raise SystemExit(f"error: the model gives NaN or Inf outputs for samples {start}..{start + real - 1}")
        out.append(logits[:real])
    return np.concatenate(out)


def percentile(values: list, q: float) -> float:
    k = (len(values) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return float(values[lo] + (values[hi] - values[lo]) * (k - lo))


def latency_stats(times_ns: list, warmup: int) -> dict:
    times = sorted(t / 1e6 for t in times_ns)
    mean = sum(times) / len(times)
    return {
        "p50": percentile(times, 50),
        "p90": percentile(times, 90),
        "p99": percentile(times, 99),
        "mean": mean,
        "min": times[0],
        "max": times[-1],
        "iterations": len(times),
        "warmup": warmup,
    }


def timed_calls(call, iterations: int, seconds: float) -> list:
    """Per-call times (ns) of ``call()`` until both ``iterations`` and ``seconds`` are reached."""
    times = []
    started = time.perf_counter_ns()
    while True:
        t0 = time.perf_counter_ns()
        call()
        t1 = time.perf_counter_ns()
        times.append(t1 - t0)
        if len(times) >= iterations and (t1 - started) / 1e9 >= seconds:
            return times


def latency(call, warmup: int, iterations: int, seconds: float) -> dict:
    """Latency of ``call()`` alone, in milliseconds."""
    for _ in range(warmup):
        call()
    return latency_stats(timed_calls(call, iterations, seconds), warmup)


PLACEMENT_NOISE = 0.02  # two sessions of one model file differ by about this much (buffer placement)
MIN_CPU_SHARE = 0.9  # below it, the thread was preempted, throttled or robbed by the hypervisor


def runnable_processes():
    """Processes runnable on the machine now, this one included (Linux ``procs_running``), or None."""
    try:
        with open("/proc/stat", "rb") as fh:
            for line in fh:
                if line.startswith(b"procs_running "):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def bootstrap_ci95(base: list, dep: list, resamples: int = 2000, seed: int = 0) -> tuple:
    """95% interval of median(base) / median(dep), resampling rounds as pairs (seeded)."""
    n = len(base)
    rng = random.Random(seed)
    ratios = []
    for _ in range(resamples if n > 1 else 1):
        idx = [rng.randrange(n) for _ in range(n)] if n > 1 else [0]
        b = statistics.median(base[i] for i in idx)
        d = statistics.median(dep[i] for i in idx)
        ratios.append(b / d if d > 0 else math.inf)
    ratios.sort()
    return percentile(ratios, 2.5), percentile(ratios, 97.5)


def side_by_side(deployed, baseline, how: dict) -> dict:
    """``deployed()`` against ``baseline()`` in interleaved rounds, as the pipeline measures."""
    rounds = max(1, int(how.get("rounds", 7)))
    warmup = int(how.get("warmup", 20))
    per_iter = max(1, -(-int(how.get("min_iterations", 200)) // rounds))
    per_sec = float(how.get("min_seconds", 1.0)) / rounds
    max_spread = float(how.get("max_round_spread", 0.15))
    check_cpu = bool(how.get("contention", True))
    cpus = os.cpu_count()
    calls = {"deployed": deployed, "baseline": baseline}
    best = None
    for attempt in range(int(how.get("max_remeasure", 2)) + 1):
        for call in calls.values():
            for _ in range(warmup if attempt == 0 else min(warmup, 5)):
                call()
        times = {name: [] for name in calls}
        cpu_ns = wall_ns = 0
        runnable = []
        for r in range(rounds):
            for name in list(calls) if r % 2 == 0 else list(calls)[::-1]:
                count = runnable_processes()
                if count is not None:
                    runnable.append(count)
                cpu0, wall0 = time.thread_time_ns(), time.perf_counter_ns()
                times[name].append(timed_calls(calls[name], per_iter, per_sec))
                cpu_ns += time.thread_time_ns() - cpu0
                wall_ns += time.perf_counter_ns() - wall0
        dep = [statistics.median(t) for t in times["deployed"]]
        base = [statistics.median(t) for t in times["baseline"]]
        ratios = [base[i] / dep[i] for i in range(rounds)]  # zip(strict=) needs 3.10
        mid = statistics.median(ratios)
        spread = (max(ratios) - min(ratios)) / mid if mid > 0 else math.inf
        low, high = bootstrap_ci95(base, dep)
        share = min(1.0, cpu_ns / wall_ns) if wall_ns else None
        others = float(statistics.median(runnable)) - 1 if runnable else None
        reasons = []
        if spread > max_spread:
            reasons.append(
                f"rounds disagree: speed ratios {min(ratios):.3g}x to {max(ratios):.3g}x "
                f"(spread {spread:.0%} > {max_spread:.0%})"
            )
        if check_cpu and others is not None and cpus and others >= cpus:
            reasons.append(f"the CPU was shared with other work: {others:g} other runnable processes on {cpus} CPUs")
        elif check_cpu and share is not None and share < MIN_CPU_SHARE:
            reasons.append(
                f"the CPU was shared with other work: the measuring thread was on a CPU {share:.0%} of the time"
            )
        reason = "; ".join(reasons) or None
        current = {
            "latency_ms": latency_stats([t for r in times["deployed"] for t in r], warmup),
            "baseline_latency_ms": latency_stats([t for r in times["baseline"] for t in r], warmup),
            "speedup_vs_baseline": statistics.median(base) / statistics.median(dep),
            "speedup_ci95": [low / (1 + PLACEMENT_NOISE), high * (1 + PLACEMENT_NOISE)],
            "rounds": rounds,
            "round_ratios": ratios,
            "round_spread": spread,
            "cpu_share": share,
            "runnable_others": others,
            "cpus": cpus,
            "unstable": reason is not None,
            "unstable_reason": reason,
        }
        if best is None or reason is None or (best["unstable"] and spread < best["round_spread"]):
            best = current
        best["remeasured"] = attempt
        if reason is None:
            break
        print(f"{reason}; measuring again", file=sys.stderr)
    return best


def shape_inputs(x: np.ndarray, sample_shapes: list) -> np.ndarray:
    """Add the batch axis to a single sample (of any of ``sample_shapes``)."""
    x = np.asarray(x)
    if any(shape and list(x.shape) == list(shape) for shape in sample_shapes):
        x = x[None]
    return x


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run the exported model over its evaluation set or your inputs; print JSON."
    )
    parser.add_argument(
        "--bundle",
        default=os.environ.get("TINYMLAAS_BUNDLE", HERE),
        help="folder holding manifest.json and the model (default: this script's folder)",
    )
    parser.add_argument(
        "--model",
        choices=("deployed", "baseline"),
        default="deployed",
        help="the compressed model that was deployed, or the fp32 baseline",
    )
    parser.add_argument(
        "--inputs",
        metavar="FILE.npy",
        nargs="+",
        default=None,
        help="predict these inputs (one sample or a batch per file) instead of evaluating",
    )
    parser.add_argument(
        "--no-preprocess",
        action="store_true",
        help="--inputs are already model inputs; by default they are raw samples like eval.npz "
        "(e.g. uint8 images) and get the recorded preprocessing (manifest.json 'preprocess')",
    )
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: as measured)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls before timing")
    parser.add_argument("--iterations", type=int, default=None, help="timed calls, at least")
    parser.add_argument("--seconds", type=float, default=None, help="seconds of timed calls, at least")
    parser.add_argument("--no-latency", action="store_true", help="measure accuracy only")
    parser.add_argument(
        "--alone",
        action="store_true",
        help="time the model alone; by default the deployed model is timed side by side with the baseline",
    )
    args = parser.parse_args(argv)

    manifest = load_manifest(args.bundle)
    measure = manifest.get("measure") or {}
    threads = args.threads or int(measure.get("threads", 1))
    model_file = manifest["model"] if args.model == "deployed" else manifest["baseline"]
    session, in_name, out_name, fixed, load_ms = load_model(os.path.join(args.bundle, model_file), threads)
    labels = [str(v) for v in manifest.get("labels") or []]
    report = {
        "model": model_file,
        "runtime": "onnxruntime",
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": threads,
        "load_time_ms": load_ms,
    }

    plan = manifest.get("preprocess") or None
    if args.inputs:
        data_file = os.path.join(args.bundle, manifest.get("data", "eval.npz"))
        raw_shape = None
        if os.path.isfile(data_file):
            with np.load(data_file, allow_pickle=False) as npz:
                raw_shape = list(npz["x"].shape[1:])
        shapes = [manifest.get("input_shape")] if args.no_preprocess else [raw_shape, manifest.get("input_shape")]
        x = np.concatenate([shape_inputs(np.load(f, allow_pickle=False), shapes) for f in args.inputs])
        logits = predict(session, in_name, out_name, x, fixed, plan=None if args.no_preprocess else plan)
        pred = logits.argmax(axis=1).tolist()
        report.update(
            samples=len(pred), predictions=pred, labels=[labels[p] if p < len(labels) else str(p) for p in pred]
        )
        print(json.dumps(report, indent=2, sort_keys=True))
        return 0

    with np.load(os.path.join(args.bundle, manifest.get("data", "eval.npz")), allow_pickle=False) as npz:
        x = npz["x"]  # raw samples, as stored; preprocessed batch by batch
        y = np.asarray(npz["y"], dtype=np.int64)
    logits = predict(session, in_name, out_name, x, fixed, plan=plan)
    correct = int((logits.argmax(axis=1) == y).sum())
    report.update(samples=len(x), correct=correct, accuracy=correct / len(x), eval_split=manifest.get("eval_split"))
    if not args.no_latency:
        batch = int(measure.get("batch_size", 1))
        sample = apply_preprocess(np.concatenate([x[:batch]] * (-(-batch // len(x))))[:batch], plan)
        how = dict(measure)
        for key, value in (("warmup", args.warmup), ("min_iterations", args.iterations), ("min_seconds", args.seconds)):
            if value is not None:
                how[key] = value
        feed = {in_name: np.ascontiguousarray(sample, dtype=np.float32)}

        def deployed():
            return session.run([out_name], feed)

        base = None
        if args.model == "deployed" and not args.alone:
            b_session, b_in, b_out, b_fixed, _ = load_model(os.path.join(args.bundle, manifest["baseline"]), threads)
            if b_fixed in (None, batch) and fixed in (None, batch):
                b_feed = {b_in: feed[in_name]}

                def base():
                    return b_session.run([b_out], b_feed)

            else:
                report["speed_note"] = f"the baseline takes batches of {b_fixed}, the model {fixed}: timed alone"
        if base is not None:
            report.update(side_by_side(deployed, base, how))
        else:
            report["latency_ms"] = latency(
                deployed,
                warmup=int(how.get("warmup", 20)),
                iterations=int(how.get("min_iterations", 200)),
                seconds=float(how.get("min_seconds", 1.0)),
            )
        report["batch_size"] = batch
    recorded = os.path.join(args.bundle, "export.json")
    if os.path.isfile(recorded) and args.model == "deployed":
        with open(recorded, encoding="utf-8") as fh:
            report["recorded"] = json.load(fh).get("recorded") or {}
    print(json.dumps(report, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
