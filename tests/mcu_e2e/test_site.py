"""The website's microcontroller sections, built from the example's committed results."""

from __future__ import annotations

import json
import re
import shutil
from html import unescape
from pathlib import Path

import pytest

from tinymlaas_ci.cli.main import build_parser
from tinymlaas_ci.website import build_site

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "runs" / "digits-mcu" / "results"
BOARDS = ("mps2-an386", "mps2-an500", "mps2-an505", "mps3-an547")


def _text(path: Path) -> str:
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", path.read_text())))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("mcu-site")
    shutil.copytree(ROOT / "site", root / "site", ignore=shutil.ignore_patterns("build"))
    shutil.copytree(RESULTS.parent, root / "runs" / "digits-mcu")
    report = build_site(root, root / "out", cli_parser=build_parser())
    assert report.runs == 5
    return root / "out" / "projects" / "digits-mcu"


def test_the_run_page_shows_budgets_instructions_and_the_memory_map(site):
    m = json.loads((RESULTS / "cnn-mps2-an386.json").read_text())["metrics"]
    page = _text(site / "runs" / "cnn-mps2-an386.html")
    assert "On the microcontroller" in page and "Memory map" in page
    assert f"{m['flash_bytes']['firmware']:,} bytes" in page and f"{m['ram_bytes']['total']:,} bytes" in page
    assert f"{m['instructions_per_inference']['median']:,.0f}" in page
    assert "Latency estimate" in page and "the emulator has no timing model" in page
    # The headline cards and the metrics table label the latency as an estimate too.
    assert "p50 latency estimate (instructions / clock)" in page
    assert "Latency p50 / p90 / p95 / p99 (estimate: instructions / clock)" in page
    for section in m["memory_map"]["sections"]:
        assert f"{section['name']} {section['address']} {section['size']:,} bytes" in page
    for region in m["memory_map"]["regions"]:
        assert f"{region['name']} {region['origin']} {region['length']:,} bytes {region['used']:,} bytes" in page


def test_the_project_page_compares_boards_and_says_where_the_model_fits(site):
    page = _text(site / "index.html")
    assert "Microcontrollers" in page and "Fits on" in page
    for board in BOARDS:
        m = json.loads((RESULTS / f"cnn-{board}.json").read_text())["metrics"]
        assert f"✓ {board} {board}" in page
        assert f"{m['instructions_per_inference']['median']:,.0f}" in page
    assert "(est.)" in page


def test_the_host_run_page_shows_the_generated_c(site):
    page = _text(site / "runs" / "cnn-host.html")
    assert "Generated C" in page and "Agreement with ONNX Runtime" in page
    assert "On the microcontroller" not in page
    # Timed on the host: a measurement, not an estimate.
    assert "p50 latency " in page and "estimate (instructions" not in page


def test_the_runs_table_marks_estimated_latencies(site):
    html = (site / "index.html").read_text()
    rows = {m.group(1): m.group(0) for m in re.finditer(r'<tr data-run="([^"]+)".*?</tr>', html)}
    for board in BOARDS:
        assert "(est.)" in rows[f"cnn-{board}"], board
    assert "(est.)" not in rows["cnn-host"]


def test_a_pr_comment_labels_an_estimated_latency(tmp_path):
    from tinymlaas_ci.gitops.diff import metric_changes
    from tinymlaas_ci.results.layout import parse_result

    after = parse_result((RESULTS / "cnn-mps2-an386.json").read_bytes())
    data = json.loads((RESULTS / "cnn-mps2-an386.json").read_text())
    data["metrics"]["latency_ms"]["p50"] *= 2
    before = parse_result(json.dumps(data).encode())
    labels = {c.key: c.label for c in metric_changes(before, after)}
    assert labels["latency_ms.p50"] == "latency p50 (ms), estimate"
    host = parse_result((RESULTS / "cnn-host.json").read_bytes())
    data = json.loads((RESULTS / "cnn-host.json").read_text())
    data["metrics"]["latency_ms"]["p50"] *= 2
    labels = {c.key: c.label for c in metric_changes(parse_result(json.dumps(data).encode()), host)}
    assert labels["latency_ms.p50"] == "latency p50 (ms)"
