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
