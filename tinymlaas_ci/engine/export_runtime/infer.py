#!/usr/bin/env python3
"""Run an exported TinyMLaaS-CI model on this device and print the numbers as JSON.

Needs Python 3.9+, numpy and onnxruntime (``pip install -r requirements.txt``); nothing else.

    python infer.py                      # accuracy and latency over eval.npz (the test split)
    python infer.py --inputs x.npy       # predictions for your own inputs
    python infer.py --model baseline     # the uncompressed fp32 baseline instead

Accuracy is computed the way the pipeline measured it (batches of 64, one thread, the whole
evaluation split), so it reproduces the recorded value. Latency is per call at batch size 1
after a warm-up, as median and percentiles.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

import numpy as np
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))


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


def predict(session, in_name: str, out_name: str, x: np.ndarray, fixed: int | None, step: int = 64) -> np.ndarray:
    """Logits for every sample of ``x``; a fixed-batch model gets padded batches of its size."""
    step = fixed or step
    out = []
    for start in range(0, len(x), step):
        xb = x[start : start + step]
        real = len(xb)
        if fixed and real < fixed:
            xb = np.concatenate([xb, np.repeat(xb[-1:], fixed - real, axis=0)])
        logits = session.run([out_name], {in_name: np.ascontiguousarray(xb, dtype=np.float32)})[0]
        out.append(np.asarray(logits)[:real])
    return np.concatenate(out)


def percentile(values: list, q: float) -> float:
    k = (len(values) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return float(values[lo] + (values[hi] - values[lo]) * (k - lo))


def latency(
    session, in_name: str, out_name: str, sample: np.ndarray, warmup: int, iterations: int, seconds: float
) -> dict:
    feed = {in_name: np.ascontiguousarray(sample, dtype=np.float32)}
    for _ in range(warmup):
        session.run([out_name], feed)
    times = []
    started = time.perf_counter_ns()
    while True:
        t0 = time.perf_counter_ns()
        session.run([out_name], feed)
        t1 = time.perf_counter_ns()
        times.append((t1 - t0) / 1e6)
        if len(times) >= iterations and (t1 - started) / 1e9 >= seconds:
            break
    times.sort()
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


def shape_inputs(x: np.ndarray, input_shape: list) -> np.ndarray:
    """Add the batch axis to a single sample."""
    x = np.asarray(x, dtype=np.float32)
    if input_shape and list(x.shape) == list(input_shape):
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
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: as measured)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls before timing")
    parser.add_argument("--iterations", type=int, default=None, help="timed calls, at least")
    parser.add_argument("--seconds", type=float, default=None, help="seconds of timed calls, at least")
    parser.add_argument("--no-latency", action="store_true", help="measure accuracy only")
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

    if args.inputs:
        x = np.concatenate(
            [shape_inputs(np.load(f, allow_pickle=False), manifest.get("input_shape")) for f in args.inputs]
        )
        logits = predict(session, in_name, out_name, x, fixed)
        pred = logits.argmax(axis=1).tolist()
        report.update(
            samples=len(pred), predictions=pred, labels=[labels[p] if p < len(labels) else str(p) for p in pred]
        )
        print(json.dumps(report, indent=2, sort_keys=True))
        return 0

    with np.load(os.path.join(args.bundle, manifest.get("data", "eval.npz")), allow_pickle=False) as npz:
        x = np.ascontiguousarray(npz["x"], dtype=np.float32)
        y = np.asarray(npz["y"], dtype=np.int64)
    logits = predict(session, in_name, out_name, x, fixed)
    correct = int((logits.argmax(axis=1) == y).sum())
    report.update(samples=len(x), correct=correct, accuracy=correct / len(x), eval_split=manifest.get("eval_split"))
    if not args.no_latency:
        batch = int(measure.get("batch_size", 1))
        sample = np.concatenate([x] * (-(-batch // len(x))))[:batch]
        report["latency_ms"] = latency(
            session,
            in_name,
            out_name,
            sample,
            warmup=args.warmup if args.warmup is not None else int(measure.get("warmup", 20)),
            iterations=args.iterations if args.iterations is not None else int(measure.get("min_iterations", 200)),
            seconds=args.seconds if args.seconds is not None else float(measure.get("min_seconds", 1.0)),
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
