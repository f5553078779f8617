"""The metric comparison never ranks two runs whose speed difference is inside their measured noise."""

from __future__ import annotations

from tests.gitops.conftest import result_dict
from tinymlaas_ci.gitops.diff import metric_changes
from tinymlaas_ci.results.models import Result


def _result(
    p50: float, speedup: float | None = None, ci: tuple[float, float] | None = None, unstable=False, accuracy=0.975
):
    data = result_dict(p50=p50, accuracy=accuracy)
    if speedup is not None:
        data["metrics"].update(
            speedup_vs_baseline=speedup,
            speedup_ci95=list(ci),
            rounds=7,
            round_spread=0.04,
            load_before=0.5,
            load_after=0.6,
            unstable=unstable,
        )
    return Result.model_validate(data)


def _by_key(before, after):
    return {c.key: c for c in metric_changes(before, after)}


def test_overlapping_intervals_are_within_noise():
    before = _result(0.0200, 1.80, (1.74, 1.86))
    after = _result(0.0196, 1.83, (1.77, 1.90), accuracy=0.980)
    changes = _by_key(before, after)
    speed, p50 = changes["speedup_vs_baseline"], changes["latency_ms.p50"]
    assert speed.verdict == "within noise" and p50.verdict == "within noise"
    assert speed.cells() == ("speed vs fp32 baseline (x)", "1.8", "1.83", "↑ +1.7% (⚪ within noise)")
    # Accuracy has no speed noise: still ranked.
    assert changes["accuracy"].verdict == "better"


def test_separate_intervals_are_ranked():
    before = _result(0.0200, 1.20, (1.17, 1.23))
    after = _result(0.0140, 1.70, (1.66, 1.75))
    changes = _by_key(before, after)
    assert changes["speedup_vs_baseline"].verdict == "better"
    assert changes["latency_ms.p50"].verdict == "better"
    worse = _by_key(after, before)
    assert worse["speedup_vs_baseline"].verdict == "worse"


def test_an_unstable_run_is_never_ranked():
    before = _result(0.0200, 1.20, (1.17, 1.23))
    after = _result(0.0100, 2.40, (2.30, 2.50), unstable=True)
    changes = _by_key(before, after)
    assert changes["speedup_vs_baseline"].verdict == "within noise"
    assert changes["latency_ms.p50"].verdict == "within noise"


def test_results_without_a_noise_figure_compare_as_before():
    changes = _by_key(_result(0.0200), _result(0.0180))
    assert changes["latency_ms.p50"].verdict == "better"
    assert "speedup_vs_baseline" not in changes
