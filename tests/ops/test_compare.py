"""``tinymlaas compare``: committed results side by side in the terminal, as Markdown or JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.ops.conftest import ROOT, cli


@pytest.fixture(scope="module")
def results_repo(tmp_path_factory) -> tuple[Path, list[dict]]:
    spec = importlib.util.spec_from_file_location("tinymlaas_site_fixtures_ops", ROOT / "tests/site/fixtures.py")
    fx = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fx)
    root = tmp_path_factory.mktemp("compare")
    return root, fx.write_repo(root, git=False, invalid=False)


def test_text_table_has_every_run_and_its_numbers(results_repo):
    root, results = results_repo
    proc = cli("compare", "digits", cwd=root)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["run", "device", "accuracy", "Δ", "acc", "size", "smaller", "p50", "speed", "gates"]
    rows = {line.split()[0]: line for line in lines[1:] if line.startswith("digits/")}
    assert sorted(rows) == sorted(f"digits/{r['run']['name']}" for r in results if r["run"]["project"] == "digits")
    static = next(r for r in results if r["run"]["name"] == "cnn-static-int8")
    base = next(r for r in results if r["run"]["name"] == "cnn-none")
    row = rows["digits/cnn-static-int8"]
    assert f"{static['metrics']['accuracy'] * 100:.2f} %" in row
    ratio = base["metrics"]["model_size_bytes"] / static["metrics"]["model_size_bytes"]
    assert f"{ratio:.2f}×" in row
    assert "baseline" in rows["digits/cnn-none"]
    assert "✗ max_latency_p95_ms" in rows["digits/cnn-dynamic-int8"]
    assert row.split()[1] == "*"  # the run to deploy


def test_json_has_plain_numbers(results_repo):
    root, results = results_repo
    proc = cli("compare", "kws/ds-cnn-*", "--format", "json", cwd=root)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    by_run = {r["run"]: r for r in data["runs"]}
    assert sorted(by_run) == ["kws/ds-cnn-dynamic-int8", "kws/ds-cnn-fp16", "kws/ds-cnn-none", "kws/ds-cnn-static-int8"]
    fp16 = next(r for r in results if r["run"]["name"] == "ds-cnn-fp16")
    none = next(r for r in results if r["run"]["name"] == "ds-cnn-none")
    got = by_run["kws/ds-cnn-fp16"]
    assert got["accuracy"] == fp16["metrics"]["accuracy"]
    assert got["baseline"] == "kws/ds-cnn-none"
    p50 = none["metrics"]["latency_ms"]["p50"] / fp16["metrics"]["latency_ms"]["p50"]
    assert got["speedup_vs_baseline"] == pytest.approx(p50)
    assert by_run["kws/ds-cnn-dynamic-int8"]["gates_failed"] == ["max_latency_p95_ms"]


def test_markdown_is_a_table(results_repo):
    root, _ = results_repo
    proc = cli("compare", "vww", "--format", "markdown", cwd=root)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "| run | device | accuracy | Δ acc | size | smaller | p50 | speed | gates |"
    assert any(line.startswith("| `vww/mobilenet-static-int8` |") and "run failed" in line for line in lines)


def test_a_pattern_matching_nothing_is_a_usage_error(results_repo):
    root, _ = results_repo
    proc = cli("compare", "nope/*", cwd=root)
    assert proc.returncode == 2 and "no committed result matches nope/*" in proc.stderr
