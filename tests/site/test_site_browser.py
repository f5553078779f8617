"""The built site in a real headless Chromium: served under a sub-path and opened from file://.

Skipped with a reason when Chromium or Playwright is missing, except in CI (``CI=true``), where
a missing browser is a failure: the site must be checked there.
"""

from __future__ import annotations

import pytest
from browser_support import launch
from conftest import REPO

ARTIFACTS = REPO / "test-output" / "site"


@pytest.fixture(scope="module")
def browser():
    yield from launch()


@pytest.fixture(scope="module")
def served(built_site):
    """The built site served under /tinyml-repo/, as GitHub Pages serves a project site."""
    from tinymlaas_ci.website.serve import serve_in_thread

    _, out, _, _ = built_site
    server, url = serve_in_thread(out, base_path="/tinyml-repo/")
    yield url
    server.shutdown()
    server.server_close()


class _Page:
    def __init__(self, browser):
        self.page = browser.new_page(viewport={"width": 1400, "height": 1000})
        self.errors: list[str] = []
        self.failed: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("requestfailed", lambda r: self.failed.append(r.url))
        self.page.on("response", lambda r: self.failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)

    def open(self, url: str, charts: int = 0):
        self.errors.clear()
        self.failed.clear()
        self.page.goto(url)
        self.page.wait_for_load_state("load")
        if charts:
            self.page.wait_for_function(
                f"document.querySelectorAll('.tm-chart[data-rendered] svg.main-svg').length >= {charts}", timeout=15000
            )
        # A browser asks for /favicon.ico on its own; the site declares its own icon.
        errors = [e for e in self.errors if "favicon.ico" not in e]
        failed = [f for f in self.failed if "favicon.ico" not in f]
        assert not errors, f"{url}: console errors {errors}"
        assert not failed, f"{url}: failed requests {failed}"
        return self.page

    def close(self):
        self.page.close()


PAGES = [  # (path, charts that must render)
    ("index.html", 0),
    ("projects/index.html", 0),
    ("projects/digits/index.html", 5),
    ("projects/digits/compare.html", 0),
    ("projects/digits/runs/cnn-static-int8.html", 4),
    ("projects/vww/runs/mobilenet-static-int8.html", 1),
    ("reference/spec.html", 0),
    ("reference/cli.html", 0),
    ("guide/getting-started.html", 0),
    ("research/index.html", 0),
    ("research/posts/static-vs-dynamic-int8.html", 3),
]


@pytest.mark.parametrize("path,charts", PAGES, ids=[p for p, _ in PAGES])
def test_page_loads_cleanly_under_a_sub_path(browser, served, path, charts):
    page = _Page(browser)
    try:
        page.open(served + path, charts)
    finally:
        page.close()


def test_dashboard_charts_sorting_and_screenshot(browser, served, built_site):
    _, _, _, results = built_site
    page = _Page(browser)
    try:
        p = page.open(served + "projects/digits/index.html", charts=5)
        assert p.locator(".tm-chart svg.main-svg").count() >= 5
        # The Pareto front is drawn as its own trace.
        assert "Pareto front" in p.locator(".tm-chart").first.inner_text()
        table = p.locator("table.tm-sortable").first
        header = table.locator('th:text-is("Accuracy")')
        header.click()
        header.click()  # descending
        column = table.locator("thead th").all_inner_texts().index("Accuracy")
        shown = [
            float(v)
            for v in table.locator(f"tbody tr td:nth-child({column + 1})").evaluate_all(
                "cells => cells.map(c => c.getAttribute('data-sort')).filter(v => v !== '')"
            )
        ]
        digits = [r["metrics"]["accuracy"] for r in results if r["run"]["project"] == "digits" and r["metrics"]]
        assert shown == sorted(digits, reverse=True)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        p.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
    finally:
        page.close()


def test_run_page_shows_that_runs_numbers(browser, served, built_site):
    _, _, _, results = built_site
    res = next(r for r in results if r["run"]["name"] == "ds-cnn-fp16")
    page = _Page(browser)
    try:
        p = page.open(served + "projects/kws/runs/ds-cnn-fp16.html", charts=4)
        assert p.locator('[data-metric="accuracy"]').inner_text() == f"{res['metrics']['accuracy'] * 100:.2f} %"
        p50 = res["metrics"]["latency_ms"]["p50"]
        assert p.locator('[data-metric="p50"]').inner_text() == (f"{p50:.4g} ms" if p50 >= 1 else f"{p50:.4f} ms")
        assert p.locator(".tm-chart[aria-label='Confusion matrix heatmap'] svg.main-svg").count() >= 1
        assert "rpi4" in p.inner_text("article")
    finally:
        page.close()


def test_links_work_from_file_urls(browser, built_site):
    _, out, _, _ = built_site
    page = _Page(browser)
    try:
        p = page.open((out / "index.html").as_uri())
        # The landing page's recommendation for digits links to the run to deploy.
        p.click(".tm-recommend-project .tm-recommend a >> nth=0")
        p.wait_for_load_state("load")
        assert p.url.endswith("projects/digits/runs/cnn-static-int8.html")
        p.wait_for_function("document.querySelectorAll('.tm-chart[data-rendered] svg.main-svg').length >= 3")
        p.click("article >> text=digits >> nth=0")
        p.wait_for_load_state("load")
        assert p.url.endswith("projects/digits/index.html")
        assert not [e for e in page.errors if "favicon.ico" not in e]
    finally:
        page.close()


def test_every_link_on_the_dashboard_answers(browser, served):
    page = _Page(browser)
    try:
        p = page.open(served + "projects/digits/index.html")
        hrefs = p.eval_on_selector_all("a[href]", "els => els.map(e => e.href)")
        internal = sorted({h.split("#")[0] for h in hrefs if h.startswith(served)})
        assert len(internal) > 10
        for url in internal:
            response = p.request.get(url)
            assert response.status == 200, url
    finally:
        page.close()
