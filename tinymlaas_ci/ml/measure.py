"""Measurement on the device, after MLPerf Tiny's habits.

* accuracy over the whole evaluation split (never the training data), with a confusion matrix;
* latency: ``warmup`` untimed calls, then timed calls until both ``min_iterations`` and
  ``min_seconds`` are reached; percentiles, not a single time;
* the CPU model and ISA flags recorded next to the latency; peak resident memory of the process.
"""

from __future__ import annotations

import gzip
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinymlaas_ci.errors import TinymlError
from tinymlaas_ci.hostinfo import arch, cpu_info, memory_mb
from tinymlaas_ci.spec.models import DeviceSpec

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = [
    "cpu_info",
    "device_record",
    "eval_batch_size",
    "eval_split",
    "evaluate",
    "gzip_size",
    "measure_latency",
    "peak_memory_mb",
    "percentile",
    "read_dataset",
    "tool_versions",
]


def read_dataset(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``dataset.npz`` (``x_<split>``, ``y_<split>``, ``labels``) without unpickling anything."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as npz:
            data: dict[str, Any] = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise TinymlError(f"cannot read dataset {Path(path).name}: {exc}", hint="re-run the fetch stage") from exc
    data["labels"] = [str(v) for v in data.get("labels", [])]
    return data


def eval_split(data: Mapping[str, Any], split: str) -> tuple[np.ndarray, np.ndarray]:
    """The inputs (float32, or a :class:`~tinymlaas_ci.ml.datasets.SplitReader` that streams them)
    and labels (int64) of ``split``; an empty or missing split is an error."""
    import numpy as np

    x, y = data.get(f"x_{split}"), data.get(f"y_{split}")
    if x is not None and hasattr(x, "raw") and y is not None and len(x):
        return x, np.asarray(y, dtype=np.int64)  # a SplitReader: streamed, preprocessed per slice
    if x is None or y is None or len(x) == 0:
        present = sorted(k[2:] for k, v in data.items() if k.startswith("x_") and len(v))
        raise TinymlError(
            f"the dataset has no samples in split {split!r} (splits with samples: {', '.join(present) or 'none'})",
            hint="set dataset.split in the run spec to a held-out split the dataset has (test or val)",
        )
    return np.ascontiguousarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64)


EVAL_BATCH_BYTES = 1024 * 1024
"""Input bytes per evaluation batch: large images get small batches, so the runtime's buffers
for the activations stay small too (MobileNetV2 at 224x224: one sample a batch; 8x8 digits: 64)."""


def eval_batch_size(sample_shape: Sequence[int], at_least: int = 1, at_most: int = 64) -> int:
    """Samples per evaluation batch for samples of ``sample_shape`` (float32)."""
    n = 4
    for d in sample_shape:
        n *= int(d)
    return max(int(at_least), min(int(at_most), EVAL_BATCH_BYTES // max(n, 1)))


def evaluate(
    run: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    *,
    num_classes: int,
    batch_size: int = 64,
    fixed_batch: int | None = None,
) -> dict[str, Any]:
    """Top-1 (and top-5 when there are more than 5 classes) accuracy and the confusion matrix.

    Every sample of ``x`` is evaluated. A model with a fixed batch size is fed batches of exactly
    that size (the last one padded and the padding dropped).
    """
    import numpy as np

    n = len(x)
    if n == 0:
        raise TinymlError("the evaluation split is empty", hint="choose a split with samples (dataset.split)")
    step = fixed_batch or batch_size
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    top5_hits = 0
    for start in range(0, n, step):
        xb = x[start : start + step]
        yb = y[start : start + step]
        real = len(xb)
        if fixed_batch and real < fixed_batch:
            xb = np.concatenate([xb, np.repeat(xb[-1:], fixed_batch - real, axis=0)])
        logits = np.asarray(run(xb))[:real]
        if logits.ndim != 2 or logits.shape[1] != num_classes:
            raise TinymlError(
                f"the model returns shape {tuple(logits.shape)}, but the dataset has {num_classes} classes",
                hint="the model's last layer must output one logit per label of the dataset",
            )
        if not np.isfinite(logits).all():
            # argmax of NaN is 0: scoring it would count a broken model as predicting class 0.
            bad = int((~np.isfinite(logits)).any(axis=1).sum())
            raise TinymlError(
                f"the model gives NaN or Inf outputs for {bad} of samples {start}..{start + real - 1}",
                hint="check the preprocessing (dataset.preprocess) and the compression; non-finite outputs "
                "cannot be scored",
            )
        pred = logits.argmax(axis=1)
        np.add.at(confusion, (yb, pred), 1)
        if num_classes > 5:
            top5 = np.argpartition(-logits, 5, axis=1)[:, :5]
            top5_hits += int((top5 == yb[:, None]).any(axis=1).sum())
    correct = int(np.trace(confusion))
    return {
        "accuracy": correct / n,
        "top5_accuracy": (top5_hits / n) if num_classes > 5 else None,
        "samples": int(n),
        "confusion_matrix": confusion.tolist(),
    }


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of already sorted values, linear interpolation."""
    if not sorted_values:
        raise ValueError("no values")
    k = (len(sorted_values) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo))


def measure_latency(
    run: Callable[[np.ndarray], Any],
    batch: np.ndarray,
    *,
    warmup: int = 20,
    min_iterations: int = 200,
    min_seconds: float = 1.0,
) -> dict[str, Any]:
    """Latency of ``run(batch)`` in milliseconds; a dict fitting ``results.models.Latency``."""
    for _ in range(int(warmup)):
        run(batch)
    times_ns: list[int] = []
    clock = time.perf_counter_ns
    started = clock()
    min_ns = int(min_seconds * 1e9)
    while True:
        t0 = clock()
        run(batch)
        t1 = clock()
        times_ns.append(t1 - t0)
        if len(times_ns) >= min_iterations and t1 - started >= min_ns:
            break
    seconds = (clock() - started) / 1e9
    ms = sorted(t / 1e6 for t in times_ns)
    n = len(ms)
    mean = sum(ms) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in ms) / n)
    return {
        "p50": percentile(ms, 50),
        "p90": percentile(ms, 90),
        "p95": percentile(ms, 95),
        "p99": percentile(ms, 99),
        "mean": mean,
        "std": std,
        "min": ms[0],
        "max": ms[-1],
        "iterations": n,
        "seconds": seconds,
        "warmup": int(warmup),
    }


def peak_memory_mb() -> float:
    """Peak resident memory of this process in MiB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def gzip_size(path: str | os.PathLike) -> int:
    """Bytes of the file after ``gzip -9`` (fixed mtime, so it is deterministic)."""
    return len(gzip.compress(Path(path).read_bytes(), compresslevel=9, mtime=0))


def device_record(device: DeviceSpec | None = None) -> dict[str, Any]:
    """A dict fitting ``results.models.DeviceRecord``: the device spec (None: this machine, as
    an unnamed local device) plus what this machine reports."""
    info = cpu_info()
    return {
        "name": (device.name if device else None) or "host",
        "kind": device.kind if device else "local",
        "arch": device.arch if device else arch(),
        "cpu_model": info["cpu_model"],
        "isa_flags": info["isa_flags"],
        "cpu_count": info["cpu_count"],
        "memory_mb": (device.memory_mb if device else None) or memory_mb(),
        "os": f"{platform.system()} {platform.release()}",
    }


def tool_versions(*names: str) -> dict[str, str]:
    """Versions of the named tools that are installed (python and tinymlaas_ci always)."""
    from importlib import metadata

    import tinymlaas_ci

    out = {"python": platform.python_version(), "tinymlaas_ci": tinymlaas_ci.__version__}
    for name in names:
        module = sys.modules.get(name)
        version = getattr(module, "__version__", None)
        if version is None:
            try:
                version = metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
        out[name] = str(version)
    return out
