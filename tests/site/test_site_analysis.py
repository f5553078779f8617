"""Pure parts of the site: Pareto front, baselines and deltas, tolerant loading, git history."""

from __future__ import annotations

import json

from conftest import make_repo

from tinymlaas_ci.website.analysis import build_site_data, pareto_front
from tinymlaas_ci.website.history import collect_history
from tinymlaas_ci.website.loader import load_results


def test_pareto_front_keeps_only_undominated_points():
    pts = [
        ("fast", 0.90, 1.0),
        ("accurate", 0.99, 5.0),
        ("middle", 0.95, 2.0),
        ("dominated", 0.94, 3.0),
        ("slow-and-bad", 0.80, 9.0),
        ("twin", 0.95, 2.0),
    ]
    assert pareto_front(pts) == {"fast", "accurate", "middle", "twin"}
    assert pareto_front([]) == set()
    # Equal latency: only the more accurate one.
    assert pareto_front([("a", 0.9, 1.0), ("b", 0.8, 1.0)]) == {"a"}


def test_loader_reports_each_bad_file_with_its_reason(tmp_path):
    make_repo(tmp_path, 2, commits=1, invalid=False)
    bad = tmp_path / "runs/digits/results"
    (bad / "truncated.json").write_text('{"schema": 1, "run": ')
    (bad / "list.json").write_text("[1, 2]")
    (bad / "binary.json").write_bytes(b"\xff\xfe\x00")
    loaded, skipped = load_results(tmp_path)
    assert len(loaded) == 2
    reasons = {s.path.rsplit("/", 1)[1]: s.reason for s in skipped}
    assert reasons["truncated.json"].startswith("not JSON:")
    assert reasons["list.json"] == "not a JSON object"
    assert reasons["binary.json"] == "not UTF-8 text"


def test_history_has_one_entry_per_commit_newest_first(tmp_path):
    make_repo(tmp_path, 5, commits=3, invalid=False)
    loaded, _ = load_results(tmp_path)
    history = collect_history(tmp_path, [x.path for x in loaded])
    entries = history["runs/digits/results/cnn-static-int8.json"]
    assert len(entries) == 3
    assert entries[0].date > entries[1].date > entries[2].date
    assert entries[0].raw == (tmp_path / "runs/digits/results/cnn-static-int8.json").read_bytes()
    assert (
        collect_history(tmp_path, [x.path for x in loaded], limit=2)["runs/digits/results/cnn-none.json"][1].commit
        == entries[1].commit
    )


def test_history_outside_git_is_empty(tmp_path):
    make_repo(tmp_path, 2, git=False, invalid=False)
    loaded, _ = load_results(tmp_path)
    assert collect_history(tmp_path, [x.path for x in loaded]) == {x.path: [] for x in loaded}


def test_baseline_and_previous_deltas(tmp_path):
    make_repo(tmp_path, 5, commits=2, invalid=False)
    loaded, _ = load_results(tmp_path)
    data = build_site_data(loaded, collect_history(tmp_path, [x.path for x in loaded]))
    digits = data.project("digits")
    run = next(r for r in digits.runs if r.slug == "cnn-static-int8")
    base = next(r for r in digits.runs if r.slug == "cnn-none")
    assert run.baseline is base and base.baseline is None
    vb = run.vs_baseline()
    assert abs(vb["accuracy"] - (run.accuracy - base.accuracy)) < 1e-12
    assert abs(vb["size"] - run.size / base.size) < 1e-12
    prev = json.loads(run.previous.raw)
    assert abs(run.vs_previous()["p50"] - run.p50 / prev["metrics"]["latency_ms"]["p50"]) < 1e-12
    assert run.mode == "static-int8"
    assert next(r for r in digits.runs if r.slug == "cnn-pruned").mode == "static-int8 + 80% pruned"
