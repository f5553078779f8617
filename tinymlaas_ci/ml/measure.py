"""Measurement on the device, after MLPerf Tiny's habits.

* accuracy over the whole evaluation split (never the training data), with a confusion matrix;
* latency: ``warmup`` untimed calls, then timed calls until both ``min_iterations`` and
  ``min_seconds`` are reached; percentiles, not a single time;
* speed against a baseline: both models in the same process, in interleaved rounds
  (:func:`compare_latency`), with a confidence interval of the ratio, the spread between rounds
  and the machine's load; rounds that disagree, or a CPU shared with other work while
  measuring, mark the measurement ``unstable``;
* the CPU model and ISA flags recorded next to the latency; peak resident memory of the process.
"""

from __future__ import annotations

import gzip
import math
import os
import platform
import random
import statistics
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
    "MIN_CPU_SHARE",
    "PLACEMENT_NOISE",
    "compare_latency",
    "cpu_info",
    "device_record",
    "eval_batch_size",
    "eval_split",
    "evaluate",
    "gzip_size",
    "interleaved_rounds",
    "latency_stats",
    "machine_load",
    "measure_latency",
    "peak_memory_mb",
    "percentile",
    "read_dataset",
    "runnable_processes",
    "speedup_ci95",
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


PLACEMENT_NOISE = 0.02
"""Relative difference allowed between two sessions of the *same* model file in one process.

Two ONNX Runtime sessions of one file, measured side by side, run at slightly different speeds
for as long as they live (their buffers land at different addresses: cache sets, alignment);
the digits CNN's two int8 sessions measured 0.990x with a bootstrap interval of 0.984-0.998
over 15 stable rounds. A bootstrap over rounds cannot see that — every round reuses the same two
sessions — so :func:`compare_latency` widens its interval by this much on each side: the
recorded interval is about the two *models*, not the two sessions that happened to be built."""

MIN_CPU_SHARE = 0.9
"""Least share of the wall time the measuring thread must spend on a CPU for a trusted ratio.

Below it the thread was preempted by other work, throttled by a CPU quota or lost time to the
hypervisor, and the two models did not pay for it equally: on a 2-core machine with one busy
process per core, ResNet-8's int8 speed ratio read 0.82 of its quiet value in rounds that agreed
with each other, so the spread between rounds alone did not show it."""

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
    times_ns, seconds = _timed_calls(run, batch, min_iterations, min_seconds)
    return latency_stats(times_ns, seconds, warmup)


def _timed_calls(
    run: Callable[[Any], Any], batch: Any, min_iterations: int, min_seconds: float
) -> tuple[list[int], float]:
    # Timed calls until both limits are reached; returns the per-call times (ns) and the wall time (s).
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
    return times_ns, (clock() - started) / 1e9


def latency_stats(times_ns: Sequence[int], seconds: float, warmup: int) -> dict[str, Any]:
    """Percentiles, mean and spread of per-call times (ns) as a ``results.models.Latency`` dict (ms)."""
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


def machine_load() -> float | None:
    """The machine's 1-minute load average (runnable processes), or None where the OS has none."""
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):
        return None


def runnable_processes() -> int | None:
    """Processes runnable on the machine at this moment, this one included, or None off Linux.

    Linux's ``procs_running`` (``/proc/stat``): the threads on a CPU or waiting for one.
    """
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"procs_running "):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


class CpuUse:
    """What the measuring thread got of a CPU during timed calls, for :func:`interleaved_rounds`.

    ``cpu_ns`` / ``wall_ns``: the thread's CPU time and the wall time of the timed calls (a
    thread preempted by other work, throttled by a CPU quota or robbed by the hypervisor gets
    less CPU than wall time); ``runnable``: :func:`runnable_processes` sampled before each
    timed block.
    """

    def __init__(self) -> None:
        self.cpu_ns = 0
        self.wall_ns = 0
        self.runnable: list[int] = []

    @property
    def share(self) -> float | None:
        """CPU time / wall time of the timed calls (1.0: never off the CPU), None before any."""
        return min(1.0, self.cpu_ns / self.wall_ns) if self.wall_ns > 0 else None

    @property
    def others(self) -> float | None:
        """Median number of other runnable processes while measuring, None where unknown."""
        return float(statistics.median(self.runnable)) - 1 if self.runnable else None

    def contention(self, cpus: int | None, min_share: float = MIN_CPU_SHARE) -> str | None:
        """Why the CPU was not the measurement's own, or None when it was.

        Oversubscribed: at least as many other runnable processes as CPUs, so every CPU had
        other work to share; or the thread was off the CPU for more than ``1 - min_share`` of
        the time. Either changes the two models' times unequally (caches, time slices).
        """
        others, share = self.others, self.share
        if others is not None and cpus and others >= cpus:
            return f"{others:g} other runnable processes on {cpus} CPUs"
        if share is not None and share < min_share:
            return f"the measuring thread was on a CPU {share:.0%} of the time"
        return None


def interleaved_rounds(
    runners: Mapping[str, Callable[[Any], Any]],
    batch: Any,
    *,
    rounds: int = 7,
    warmup: int = 20,
    min_iterations: int = 200,
    min_seconds: float = 1.0,
    walls: dict[str, float] | None = None,
    cpu: CpuUse | None = None,
) -> dict[str, list[list[int]]]:
    """Time every runner in ``rounds`` interleaved rounds; returns name -> per-round call times (ns).

    Each runner gets ``warmup`` untimed calls first. In every round each runner is timed in turn
    for at least ``min_iterations / rounds`` calls and ``min_seconds / rounds`` seconds, so the
    totals over all rounds meet the same limits as :func:`measure_latency`. The order alternates
    between rounds (A B, then B A), so a drift of the machine's speed hits every runner alike.
    ``walls``, when given, receives each runner's total wall time of timed calls in seconds;
    ``cpu``, when given, what the calling thread got of a CPU during them (:class:`CpuUse`).
    """
    if rounds < 1:
        raise ValueError("rounds must be at least 1")
    names = list(runners)
    for name in names:
        for _ in range(int(warmup)):
            runners[name](batch)
    per_iter = max(1, -(-int(min_iterations) // rounds))
    per_sec = float(min_seconds) / rounds
    out: dict[str, list[list[int]]] = {name: [] for name in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            if cpu is not None:
                runnable = runnable_processes()
                if runnable is not None:
                    cpu.runnable.append(runnable)
                cpu_start = time.thread_time_ns()
            times, seconds = _timed_calls(runners[name], batch, per_iter, per_sec)
            if cpu is not None:
                cpu.cpu_ns += time.thread_time_ns() - cpu_start
                cpu.wall_ns += int(seconds * 1e9)
            out[name].append(times)
            if walls is not None:
                walls[name] = walls.get(name, 0.0) + seconds
    return out


def _median_ns(times: Sequence[int]) -> float:
    return float(statistics.median(times))


def speedup_ci95(
    baseline_p50: Sequence[float], deployed_p50: Sequence[float], *, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """95% confidence interval of ``median(baseline_p50) / median(deployed_p50)``.

    A paired bootstrap over rounds: round ``i``'s two medians were measured back to back, so
    rounds are resampled as pairs (``resamples`` times, seeded, so the interval is reproducible),
    the ratio of medians is computed on each resample, and the 2.5th and 97.5th percentiles of
    those ratios are the interval. With a single round the interval is that round's ratio.
    """
    if len(baseline_p50) != len(deployed_p50) or not baseline_p50:
        raise ValueError("need the same number (>= 1) of baseline and deployed rounds")
    n = len(baseline_p50)
    rng = random.Random(seed)
    ratios = []
    for _ in range(resamples if n > 1 else 1):
        idx = [rng.randrange(n) for _ in range(n)] if n > 1 else [0]
        b = statistics.median(baseline_p50[i] for i in idx)
        d = statistics.median(deployed_p50[i] for i in idx)
        ratios.append(b / d if d > 0 else math.inf)
    ratios.sort()
    return percentile(ratios, 2.5), percentile(ratios, 97.5)


def compare_latency(
    run: Callable[[Any], Any],
    baseline: Callable[[Any], Any],
    batch: Any,
    *,
    rounds: int = 7,
    warmup: int = 20,
    min_iterations: int = 200,
    min_seconds: float = 1.0,
    max_round_spread: float = 0.15,
    max_remeasure: int = 2,
    contention: bool = True,
    log: Callable[[str], None] = lambda _msg: None,
) -> dict[str, Any]:
    """Measure ``run`` against ``baseline`` side by side, in the same process and interleaved rounds.

    Both get the same ``batch``. Round ``i`` gives each model a median call time; the round's
    ratio is ``baseline / deployed``. The result:

    * ``latency`` / ``baseline_latency``: ``results.models.Latency`` dicts over all timed calls
      of the kept attempt (latency gates judge ``latency.p50`` as before);
    * ``speedup_vs_baseline``: baseline p50 / deployed p50, each the median of the per-round
      medians (above 1: the deployed model is faster);
    * ``speedup_ci95``: ``[low, high]``, a paired bootstrap over rounds (:func:`speedup_ci95`)
      widened by :data:`PLACEMENT_NOISE` on each side (``low / 1.02``, ``high * 1.02``);
    * ``round_spread``: ``(max - min) / median`` of the per-round ratios, relative;
    * ``rounds``; ``load_before`` / ``load_after``: the 1-minute load average around the attempt;
    * ``cpu_share``: the measuring thread's CPU time / wall time over the timed calls;
      ``runnable_others``: the median number of other runnable processes (Linux), ``cpus``;
    * ``unstable``: the rounds disagree by more than ``max_round_spread``, or (``contention``)
      the CPU was shared with other work while measuring (:meth:`CpuUse.contention`);
      ``unstable_reason`` says which. An unstable attempt is measured again, up to
      ``max_remeasure`` times; a stable attempt ends it, otherwise the attempt with the smallest
      spread is kept. ``remeasured`` says how many extra attempts were made.
    """
    cpus = os.cpu_count()
    best: dict[str, Any] | None = None
    for attempt in range(int(max_remeasure) + 1):
        load_before = machine_load()
        walls: dict[str, float] = {}
        cpu = CpuUse()
        times = interleaved_rounds(
            {"deployed": run, "baseline": baseline},
            batch,
            rounds=rounds,
            warmup=warmup if attempt == 0 else min(int(warmup), 5),
            min_iterations=min_iterations,
            min_seconds=min_seconds,
            walls=walls,
            cpu=cpu,
        )
        load_after = machine_load()
        dep = [_median_ns(t) for t in times["deployed"]]
        base = [_median_ns(t) for t in times["baseline"]]
        ratios = [b / d for b, d in zip(base, dep, strict=True)]
        mid = statistics.median(ratios)
        spread = (max(ratios) - min(ratios)) / mid if mid > 0 else math.inf
        low, high = speedup_ci95(base, dep)
        low, high = low / (1 + PLACEMENT_NOISE), high * (1 + PLACEMENT_NOISE)
        speedup = statistics.median(base) / statistics.median(dep)
        reasons = []
        if spread > max_round_spread:
            reasons.append(
                f"rounds disagree: speed ratios {min(ratios):.3g}x to {max(ratios):.3g}x "
                f"(spread {spread:.0%} > {max_round_spread:.0%})"
            )
        busy = cpu.contention(cpus) if contention else None
        if busy is not None:
            reasons.append(f"the CPU was shared with other work: {busy}")
        reason = "; ".join(reasons) or None
        current = dict(
            latency=_pooled(times["deployed"], walls["deployed"], warmup),
            baseline_latency=_pooled(times["baseline"], walls["baseline"], warmup),
            speedup_vs_baseline=speedup,
            speedup_ci95=[low, high],
            rounds=int(rounds),
            round_ratios=ratios,
            round_spread=spread,
            load_before=load_before,
            load_after=load_after,
            cpu_share=cpu.share,
            runnable_others=cpu.others,
            cpus=cpus,
            unstable=reason is not None,
            unstable_reason=reason,
            remeasured=attempt,
        )
        if best is None or not current["unstable"] or (best["unstable"] and spread < best["round_spread"]):
            best = current
        best["remeasured"] = attempt
        if not current["unstable"]:
            break
        if attempt < max_remeasure:
            log(f"{reason} (load {load_before} -> {load_after}); measuring again")
    assert best is not None
    return best


def _pooled(rounds_ns: Sequence[Sequence[int]], seconds: float, warmup: int) -> dict[str, Any]:
    return latency_stats([t for r in rounds_ns for t in r], seconds, warmup)


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
