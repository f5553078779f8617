"""Speed measured side by side: interleaved rounds, the ratio's confidence interval, unstable rounds."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest

from tinymlaas_ci.ml import measure
from tinymlaas_ci.ml.runtime import load_session
from tinymlaas_ci.results.models import Latency, Metrics
from tinymlaas_ci.spec.models import Measure
from tinymlaas_ci.stages.infer import measure_speed


def _spin(us: float) -> None:
    # Busy-wait, not sleep: a sleeping runner would measure the scheduler, not a steady cost.
    end = time.perf_counter_ns() + int(us * 1000)
    while time.perf_counter_ns() < end:
        pass


class Runner:
    """A model stand-in whose call costs ``fast_us``, or ``slow_us`` while ``slow(call index)``."""

    def __init__(self, fast_us: float, slow_us: float | None = None, slow=lambda _i: False) -> None:
        self.fast_us, self.slow_us, self.slow, self.calls = fast_us, slow_us, slow, 0

    def __call__(self, _batch) -> None:
        _spin(self.slow_us if self.slow_us is not None and self.slow(self.calls) else self.fast_us)
        self.calls += 1


def test_same_model_in_two_real_sessions_is_as_fast(compiled, digits_data):
    path = compiled("static-int8").deployed
    a, b = load_session(path, threads=1), load_session(path, threads=1)
    x = digits_data["x_test"][:1]
    # Two sessions of one file differ by about a percent for as long as they live (buffer
    # placement); the recorded interval allows for it, so the two must read "as fast". A 95%
    # interval still misses in 1 of 20 measurements by design, and on a machine shared with
    # other work every round can disagree (the measurement then says `unstable` itself): up to
    # three independent measurements, and every stable one must cover 1.
    attempts = []
    for _ in range(3):
        cmp = measure.compare_latency(a.run, b.run, x, rounds=15, warmup=50, min_iterations=900, min_seconds=0.9)
        attempts.append(cmp)
        low, high = cmp["speedup_ci95"]
        assert low <= cmp["speedup_vs_baseline"] <= high
        if low <= 1.0 <= high and not cmp["unstable"]:
            break
    summary = [(c["speedup_vs_baseline"], c["speedup_ci95"], c["round_spread"], c["load_before"]) for c in attempts]
    stable = [c for c in attempts if not c["unstable"]]
    if not stable:
        # Every attempt disagreed between rounds: the measurement refuses to judge, as it must.
        assert all(c["round_spread"] > 0.15 for c in attempts), summary
        return
    assert stable[-1]["speedup_ci95"][0] <= 1.0 <= stable[-1]["speedup_ci95"][1], summary
    assert 0.85 < cmp["speedup_vs_baseline"] < 1.15
    assert cmp["rounds"] == 15 and len(cmp["round_ratios"]) == 15
    Latency.model_validate(cmp["latency"])
    Latency.model_validate(cmp["baseline_latency"])
    assert cmp["latency"]["iterations"] >= 900


def test_the_interval_allows_for_session_placement(monkeypatch):
    # The bootstrap over rounds (its own test is below) says 0.98-0.99: confidently slower. The
    # recorded interval is that one widened by PLACEMENT_NOISE on each side, so it covers 1.
    monkeypatch.setattr(measure, "speedup_ci95", lambda base, dep: (0.98, 0.99))
    cmp = measure.compare_latency(Runner(20), Runner(20), None, rounds=3, warmup=0, min_iterations=30, min_seconds=0)
    low, high = cmp["speedup_ci95"]
    assert low == pytest.approx(0.98 / (1 + measure.PLACEMENT_NOISE))
    assert high == pytest.approx(0.99 * (1 + measure.PLACEMENT_NOISE))
    assert low < 1.0 < high


def test_a_faster_model_has_a_ratio_above_one():
    # Busy-waits of 100 us against 300 us: the ratio is 3 up to what a shared machine adds.
    cmp = measure.compare_latency(
        Runner(100), Runner(300), None, rounds=5, warmup=0, min_iterations=150, min_seconds=0, max_round_spread=0.5
    )
    assert 2.3 < cmp["speedup_vs_baseline"] < 3.5, cmp["round_ratios"]
    assert cmp["speedup_ci95"][0] > 1.8 and not cmp["unstable"]


def test_rounds_that_disagree_are_measured_again():
    # 4 rounds of 25 calls each: the deployed model is 3x slower in rounds 2-3 of the first attempt
    # only (calls 50..99), then steady: the second attempt agrees and is kept.
    deployed = Runner(100, 300, slow=lambda i: 20 <= i < 40)
    log: list[str] = []
    cmp = measure.compare_latency(
        deployed,
        Runner(100),
        None,
        rounds=4,
        warmup=0,
        min_iterations=40,
        min_seconds=0,
        max_remeasure=2,
        log=log.append,
    )
    assert cmp["remeasured"] == 1 and not cmp["unstable"], (cmp["round_ratios"], log)
    assert cmp["round_spread"] <= 0.15
    assert len(log) == 1 and "rounds disagree" in log[0]


def test_rounds_that_keep_disagreeing_are_marked_unstable():
    # Slow in every odd round (calls 25..49, 75..99, ...): every attempt disagrees.
    deployed = Runner(150, 450, slow=lambda i: (i // 25) % 2 == 1)
    cmp = measure.compare_latency(
        deployed, Runner(150), None, rounds=4, warmup=0, min_iterations=100, min_seconds=0, max_round_spread=0.5
    )
    assert cmp["unstable"] and cmp["remeasured"] == 2
    assert cmp["round_spread"] > 0.5
    assert deployed.calls == 3 * 100  # three attempts of four rounds of 25 calls


def test_bootstrap_ci_is_reproducible_and_brackets_the_ratio():
    base, dep = [10.0, 11.0, 9.5, 10.2, 10.8], [5.0, 5.1, 4.9, 5.3, 5.0]
    low, high = measure.speedup_ci95(base, dep)
    assert (low, high) == measure.speedup_ci95(base, dep)
    assert low <= 10.2 / 5.0 <= high
    assert measure.speedup_ci95([4.0], [2.0]) == (2.0, 2.0)
    with pytest.raises(ValueError):
        measure.speedup_ci95([1.0], [])


def test_interleaved_rounds_alternate_the_order():
    order: list[str] = []
    runners = {"a": lambda _b: order.append("a"), "b": lambda _b: order.append("b")}
    times = measure.interleaved_rounds(runners, None, rounds=3, warmup=0, min_iterations=3, min_seconds=0)
    assert order == ["a", "b", "b", "a", "a", "b"]
    assert [len(r) for r in times["a"]] == [1, 1, 1]


def test_infer_measure_speed_fills_the_metric_fields(compiled, digits_data):
    deployed = load_session(compiled("static-int8").deployed, threads=1)
    base = load_session(compiled("none").baseline, threads=1)
    how = Measure(warmup=5, min_iterations=70, min_seconds=0.1, rounds=5)
    speed = measure_speed(deployed.run, base.run, digits_data["x_test"][:1], how)
    for key in (
        "speedup_vs_baseline",
        "speedup_ci95",
        "rounds",
        "round_spread",
        "load_before",
        "load_after",
        "cpu_share",
        "cpus",
    ):
        assert speed[key] is not None, key
    assert speed["rounds"] == 5 and isinstance(speed["unstable"], bool)
    m = Metrics.model_validate(
        dict(
            speed,
            accuracy=0.98,
            samples=10,
            batch_size=1,
            throughput_per_s=1.0,
            model_size_bytes=1,
            model_gzip_bytes=1,
        )
    )
    assert m.latency_ms.p50 > 0 and m.baseline_latency_ms.p50 > 0
    low, high = m.speedup_ci95
    assert low <= m.speedup_vs_baseline <= high


@contextmanager
def _busy_processes(n: int, seconds: float = 60.0):
    # Real processes spinning on the CPU, ended when the block ends (or after ``seconds``).
    code = "import time, sys\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end: pass\n"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(seconds)]) for _ in range(n)]
    try:
        time.sleep(0.5)
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


@pytest.mark.skipif(measure.runnable_processes() is None, reason="needs Linux's /proc/stat")
def test_a_cpu_shared_with_other_work_marks_the_measurement_unstable():
    # One busy process per CPU: every CPU has other work, so the rounds may agree with each other
    # and still be wrong. The measurement says so, tries again, and gives up with the reason.
    cpus = os.cpu_count() or 1
    log: list[str] = []
    with _busy_processes(cpus):
        cmp = measure.compare_latency(
            Runner(100), Runner(300), None, rounds=4, warmup=0, min_iterations=80, min_seconds=0, log=log.append
        )
    assert cmp["unstable"] and cmp["remeasured"] == 2, cmp
    assert "the CPU was shared with other work: " in cmp["unstable_reason"], cmp["unstable_reason"]
    assert cmp["runnable_others"] >= cpus or cmp["cpu_share"] < measure.MIN_CPU_SHARE
    assert cmp["cpus"] == cpus
    assert len(log) == 2 and all("measuring again" in line for line in log), log


@pytest.mark.skipif(measure.runnable_processes() is None, reason="needs Linux's /proc/stat")
def test_the_contention_check_can_be_turned_off():
    # ``measure.contention: false``: only the rounds' spread decides, as it did before the check.
    with _busy_processes(os.cpu_count() or 1):
        cmp = measure.compare_latency(
            Runner(100),
            Runner(300),
            None,
            rounds=4,
            warmup=0,
            min_iterations=80,
            min_seconds=0,
            max_round_spread=100.0,
            contention=False,
        )
    assert not cmp["unstable"] and cmp["unstable_reason"] is None and cmp["remeasured"] == 0
    assert cmp["runnable_others"] is not None


def test_contention_is_judged_from_runnable_processes_and_cpu_share():
    use = measure.CpuUse()
    assert use.contention(2) is None  # nothing measured: nothing known
    use.cpu_ns, use.wall_ns, use.runnable = 95, 100, [1, 2, 1]
    assert use.share == pytest.approx(0.95) and use.others == 0
    assert use.contention(2) is None
    use.runnable = [3, 3, 2]  # two others on two CPUs, most of the time
    assert use.contention(2) == "2 other runnable processes on 2 CPUs"
    assert use.contention(4) is None
    use.cpu_ns = 60  # preempted 40% of the time
    assert use.contention(4) == "the measuring thread was on a CPU 60% of the time"
    use.cpu_ns = 120  # thread time may run ahead of a coarse wall clock: capped at 1
    assert use.share == 1.0
