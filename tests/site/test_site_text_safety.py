"""Text from a spec is text on the site: a hostile run description or label never becomes a
link, an image or markup, and never breaks the (strict) build. Checked in a real Chromium."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from browser_support import launch
from conftest import make_repo

HOSTILE = {
    "description": '[x](javascript:alert(1)) ![i](x" onerror="alert(2)") <img src=x onerror=alert(3)> **bold**',
    "label": "[y](javascript:alert(4))",
    "error": "\x1b[1;31mExportError\x1b[0m " + '![e](x" onerror="alert(5)") <script>alert(6)</script>',
}


@pytest.fixture(scope="module")
def hostile_site(tmp_path_factory):
    from tinymlaas_ci.website import build_site

    root = tmp_path_factory.mktemp("hostile")
    make_repo(root, git=False, invalid=False)
    ok = root / "runs" / "digits" / "results" / "cnn-fp16.json"
    data = json.loads(ok.read_text())
    data["spec"]["description"] = HOSTILE["description"]
    data["inputs"]["dataset"]["labels"][0] = HOSTILE["label"]
    ok.write_text(json.dumps(data))
    failed = root / "runs" / "vww" / "results" / "mobilenet-static-int8.json"
    data = json.loads(failed.read_text())
    data["spec"]["description"] = HOSTILE["description"]
    data["error"]["message"] = HOSTILE["error"]
    failed.write_text(json.dumps(data))
    out = tmp_path_factory.mktemp("hostile-out") / "site"
    build_site(root, out, strict=True)  # must not raise: nothing in a spec can break the build
    return out


@pytest.fixture(scope="module")
def browser():
    yield from launch()


def test_hostile_text_is_escaped_in_the_html(hostile_site: Path):
    for page in ("projects/digits/runs/cnn-fp16.html", "projects/vww/runs/mobilenet-static-int8.html"):
        html = (hostile_site / page).read_text()
        assert 'href="javascript:' not in html.lower()
        assert "<img src=x" not in html and 'onerror="alert' not in html
        assert "<script>alert" not in html
        assert "\x1b" not in html  # terminal colour codes of a tool's message are not shown


@pytest.mark.parametrize("page", ["projects/digits/runs/cnn-fp16.html", "projects/vww/runs/mobilenet-static-int8.html"])
def test_hostile_text_shows_as_text_in_chromium(browser, hostile_site: Path, page: str):
    tab = browser.new_page(viewport={"width": 1280, "height": 800})
    dialogs: list[str] = []
    tab.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    try:
        tab.goto((hostile_site / page).as_uri())
        tab.wait_for_load_state("load")
        article = tab.locator("article")
        js_links = tab.eval_on_selector_all(
            "a[href]", "els => els.filter(e => /^\\s*javascript:/i.test(e.getAttribute('href'))).length"
        )
        assert js_links == 0
        handlers = tab.eval_on_selector_all(
            "article *", "els => els.filter(e => [...e.attributes].some(a => a.name.startsWith('on'))).length"
        )
        assert handlers == 0
        assert tab.eval_on_selector_all("article img", "els => els.length") == 0
        # The page's own chart scripts are there; none carries the description's text.
        assert tab.eval_on_selector_all("script", "els => els.filter(e => e.text.includes('alert(')).length") == 0
        text = article.inner_text()
        # The description reads as the characters that were written.
        assert "[x](javascript:alert(1))" in text
        assert '![i](x" onerror="alert(2)")' in text
        assert "**bold**" in text
        if "vww" in page:
            assert "<script>alert(6)</script>" in text
        else:
            assert HOSTILE["label"] in text
        # Clicking where a link would be does nothing either.
        tab.locator("p.tm-description").click()
        assert dialogs == []
    finally:
        tab.close()
