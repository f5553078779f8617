"""Which run to deploy: chosen from the runs that pass their gates, on the Pareto front over
accuracy, size and latency, and never ranked by a speed difference inside its confidence
interval."""

from __future__ import annotations

import json

from tinymlaas_ci.results.models import Result
from tinymlaas_ci.website.analysis import build_site_data, faster, pareto_front, recommend
from tinymlaas_ci.website.loader import LoadedResult


def _runs(site_fixtures, edit=None):
    """The digits project of the fixture results, each edited by ``edit(name, result_dict)``."""
    loaded = []
    for res in site_fixtures.generate_results(5):
        if edit:
            edit(res["run"]["name"], res)
        loaded.append(
            LoadedResult(
                f"runs/digits/results/{res['run']['name']}.json",
                "digits",
                res["run"]["name"],
                json.dumps(Result.model_validate(res).to_json_dict()).encode(),
            )
        )
    return build_site_data(loaded, {}).project("digits")


def _set(res, *, acc=None, size=None, p50=None, speedup=None, ci=None, unstable=None, status=None):
    m = res["metrics"]
    if acc is not None:
        m["accuracy"] = acc
    if size is not None:
        m["model_size_bytes"] = size
    if p50 is not None:
        m["latency_ms"]["p50"] = p50
    if speedup is not None:
        m["speedup_vs_baseline"] = speedup
    if ci is not None:
        m["speedup_ci95"] = ci
    if unstable is not None:
        m["unstable"] = unstable
    if status is not None:
        res["status"] = status
        for g in res["gates"]:
            g["passed"] = status != "gates-failed"


def test_pareto_front_over_three_objectives_keeps_a_smaller_model_at_the_same_accuracy():
    # int8 is as accurate and slower than fp32, but 3x smaller: it is on the front.
    points = [("fp32", 0.97, 150_000, 0.015), ("int8", 0.97, 48_000, 0.018), ("worse", 0.96, 160_000, 0.02)]
    assert pareto_front(points) == {"fp32", "int8"}
    assert pareto_front((k, a, lat) for k, a, _s, lat in points) == {"fp32"}  # the old 2-D view misses it


def test_recommendation_is_the_smallest_as_accurate_run_that_passes(site_fixtures):
    def edit(name, res):
        sizes = {
            "cnn-none": 150_000,
            "cnn-fp16": 75_000,
            "cnn-static-int8": 44_000,
            "cnn-dynamic-int8": 40_000,
            "cnn-pruned": 46_000,
        }
        _set(
            res,
            acc=0.97,
            size=sizes[name],
            p50=0.015 if name == "cnn-none" else 0.0136,
            status="gates-failed" if name == "cnn-dynamic-int8" else "succeeded",
        )

    project = _runs(site_fixtures, edit)
    rec = project.devices[0].recommendation
    assert rec.run.slug == "cnn-static-int8", "the smallest passing one; dynamic-int8 failed a gate"
    assert rec.baseline.slug == "cnn-none"
    assert rec.sentence() == "deploy cnn-static-int8: 3.4× smaller, same accuracy, 1.1× faster than cnn-none"


def test_speed_within_the_confidence_interval_is_not_ranked(site_fixtures):
    def edit(name, res):
        sizes = {
            "cnn-none": 150_000,
            "cnn-fp16": 75_000,
            "cnn-static-int8": 44_000,
            "cnn-dynamic-int8": 43_000,
            "cnn-pruned": 90_000,
        }
        _set(res, acc=0.97, size=sizes[name], status="succeeded")
        if name == "cnn-dynamic-int8":  # 2 % smaller, "faster" by its p50, but the CIs overlap
            _set(res, p50=0.010, speedup=1.5, ci=[0.9, 2.1])
        if name == "cnn-static-int8":
            _set(res, p50=0.012, speedup=1.25, ci=[1.1, 1.4])

    project = _runs(site_fixtures, edit)
    runs = {r.slug: r for r in project.runs}
    assert faster(runs["cnn-dynamic-int8"], runs["cnn-static-int8"]) is None
    assert runs["cnn-dynamic-int8"].speed_known is False  # its CI contains 1
    rec = project.devices[0].recommendation
    assert rec.run.slug == "cnn-dynamic-int8"  # the smallest; speed decides nothing here
    assert "as fast (within measurement noise)" in rec.sentence()

    def edit_disjoint(name, res):
        edit(name, res)
        if name == "cnn-static-int8":  # now clearly faster than dynamic-int8, and 2 % larger
            _set(res, speedup=3.0, ci=[2.8, 3.2])

    rec = _runs(site_fixtures, edit_disjoint).devices[0].recommendation
    assert rec.run.slug == "cnn-static-int8"
    assert "3.0× faster" in rec.sentence()


def test_an_unstable_measurement_is_never_called_faster(site_fixtures):
    def edit(name, res):
        _set(res, acc=0.97, status="succeeded", size=150_000 if name == "cnn-none" else 50_000)
        if name == "cnn-static-int8":
            _set(res, size=40_000, speedup=2.0, ci=[1.8, 2.2], unstable=True)

    rec = _runs(site_fixtures, edit).devices[0].recommendation
    assert rec.run.slug == "cnn-static-int8"
    assert "faster" not in rec.sentence() and "within measurement noise" in rec.sentence()


def test_no_passing_run_means_no_recommendation(site_fixtures):
    project = _runs(site_fixtures, lambda name, res: _set(res, status="gates-failed"))
    rec = recommend("host", project.runs)
    assert rec.run is None and rec.sentence() == "no run on host passes its gates"


def test_older_results_without_speed_fields_still_compare_by_p50(site_fixtures):
    project = _runs(site_fixtures)
    for run in project.runs:
        assert run.result.metrics is None or run.result.metrics.speedup_vs_baseline is None
    static = next(r for r in project.runs if r.slug == "cnn-static-int8")
    assert static.speedup == static.baseline.p50 / static.p50
