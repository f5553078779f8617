"""Text from specs is text: ``tinymlaas validate`` refuses descriptions that would carry live
links, images or HTML onto the site (or break its strict build), and notify entries that are not
one plain address. The description check is held against the site's real Markdown renderer
(Python-Markdown with the extensions of ``site/mkdocs.yml``): whatever it accepts renders to
HTML with no script, no image, no event attribute and no link other than http/https/mailto."""

from __future__ import annotations

import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.spec.conftest import HOST_DEVICE, RUN, make_repo
from tinymlaas_ci.spec.text import address_problem, description_problems

ROOT = Path(__file__).resolve().parents[2]

ATTACKS = [
    "[x](javascript:alert(1))",
    '![i](x" onerror="alert(1)")',
    "![i](https://example.com/tracker.png)",
    "[x](JaVaScRiPt:alert(1))",
    "[x](&#106;avascript:alert(1))",
    "[x](&#x6A;avascript&colon;alert(1))",
    "[x](java\\script:alert(1))",
    "[x](<javascript:alert(1)>)",
    "[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "[x][r]\n\n[r]: javascript:alert(1)",
    "[x][r]\n\n[r]:\n  javascript:alert(1)",
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "<a href='javascript:alert(1)'>x</a>",
    "<details open ontoggle=alert(1)>",
    '<div markdown="1">[x](https://a.b)</div>',
    "<!-- hidden -->",
    "[x](https://example.com){ onclick=alert(1) }",
    "# Title { onmouseover=alert(1) }",
    "[relative](../secret.md)",
    "[anchor](#top)",
    "[x](//evil.example/path)",
    "[x](vbscript:msgbox(1))",
    "[x](file:///etc/passwd)",
    "text\u202egnp.exe",
    "null\x00byte",
]

SAFE = [
    "Static int8 PTQ of the digits CNN",
    "Quantization sweep: 4 modes, *fp32* baseline, `batch_size` 1; accuracy > 0.9 and a < b.",
    "See [the paper](https://arxiv.org/abs/1234.5678) and <https://example.com/x>.",
    "Contact [the team](mailto:ml-team@example.com).",
    "- one\n- two\n\n1. three",
    "Wiki: [Python](https://en.wikipedia.org/wiki/Python_(programming_language))",
    "[ref][r]\n\n[r]: https://example.com/ref",
]

_EXTENSIONS = ["tables", "attr_list", "md_in_html", "admonition", "toc", "pymdownx.superfences", "pymdownx.details"]
_ALLOWED_TAGS = {
    "p", "a", "em", "strong", "code", "pre", "ul", "ol", "li", "blockquote", "hr", "br",
    "h1", "h2", "h3", "h4", "h5", "h6", "table", "thead", "tbody", "tr", "th", "td", "div", "span",
    "details", "summary",
}  # fmt: skip
_ALLOWED_ATTRS = {"href", "title", "id", "class", "style"}  # class/id/style come from toc, admonition, tables


class _Audit(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in _ALLOWED_TAGS:
            self.problems.append(f"tag <{tag}>")
        for name, value in attrs:
            if name not in _ALLOWED_ATTRS:
                self.problems.append(f"attribute {name}= on <{tag}>")
            if name == "style" and tag not in ("th", "td"):
                self.problems.append(f"style on <{tag}>")
            if name == "href":
                v = "".join((value or "").split()).lower()
                if not v.startswith(("http://", "https://", "mailto:")):
                    self.problems.append(f"link to {value!r}")

    def handle_comment(self, data):
        self.problems.append("an HTML comment")


def _rendered_problems(text: str) -> list[str]:
    markdown = pytest.importorskip("markdown", reason="the site's Markdown renderer (pip install '.[site]')")
    audit = _Audit()
    audit.feed(markdown.markdown(text, extensions=_EXTENSIONS))
    return audit.problems + (["a control character"] if any(c in text for c in "\x00\u202e") else [])


@pytest.mark.parametrize("text", ATTACKS)
def test_an_attack_description_is_refused(text):
    assert description_problems(text), text


@pytest.mark.parametrize("text", SAFE)
def test_a_safe_description_is_accepted_and_renders_safely(text):
    assert description_problems(text) == []
    assert _rendered_problems(text) == []


def test_the_attack_corpus_is_real_against_the_site_renderer():
    """Most attacks do render to unsafe HTML (or a link the strict build refuses) when let through;
    the rest (an image of an allowed URL, a bidi override) are refused for what they are."""
    live = [t for t in ATTACKS if _rendered_problems(t)]
    assert len(live) >= len(ATTACKS) - 4, [t for t in ATTACKS if t not in live]


_PIECES = st.sampled_from(
    [
        "[", "]", "(", ")", "<", ">", "!", "{", "}", ":", "=", "\\", "&#", "&#x", ";", "6A", "106", '"', "'",
        " ", "\n", "\n\n", "    ", "`", "*", "#", ".", "/", "x", "a", "img", "src", "script", "onerror",
        "javascript", "JaVaScRiPt", "data", "https://e.org", "http://e.org/p", "mailto:a@b.co", "https", "&colon;",
        "[r]:", "[x](", "](", "![", "<a href=", "<!--", "-->", "{:", "{ .c ", "markdown=\"1\"", "div", "details",
    ]
)  # fmt: skip


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_PIECES, max_size=25).map("".join))
def test_whatever_the_check_accepts_renders_to_safe_html(text):
    if not description_problems(text):
        assert _rendered_problems(text) == [], text


# -- through validate, as a pull request check sees it -----------------------------------------


def _validate(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tinymlaas_ci", "-C", str(root), "validate", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("where", "text"),
    [("run", "[x](javascript:alert(1))"), ("run", '![i](x" onerror="alert(1)")'), ("device", "<b onclick=x>hi</b>")],
)
def test_validate_refuses_an_unsafe_description_with_its_position(tmp_path, where, text):
    root = make_repo(tmp_path / "repo")
    (root / "runs" / "demo").mkdir(parents=True)
    run = RUN + ("description: " + json.dumps(text) + "\n" if where == "run" else "")
    (root / "runs" / "demo" / "r.yaml").write_text(run)
    if where == "device":
        (root / "devices" / "host.yaml").write_text(HOST_DEVICE + "description: " + json.dumps(text) + "\n")
    proc = _validate(root)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    problems = json.loads(proc.stdout)["problems"]
    found = [p for p in problems if "description" in p["message"]]
    assert found, problems
    for problem in found:
        assert problem["path"] == ("runs/demo/r.yaml" if where == "run" else "devices/host.yaml")
        assert problem["line"] > 0 and problem["hint"]


@pytest.mark.parametrize("address", ["a,b,c@x.yz", "<img/src=x/onerror=alert(1)>@x.yz", "Boss <b@x.yz>", "a@b@x.yz"])
def test_validate_refuses_a_notify_entry_that_is_not_one_address(tmp_path, address):
    root = make_repo(tmp_path / "repo")
    (root / "runs" / "demo").mkdir(parents=True)
    (root / "runs" / "demo" / "r.yaml").write_text(
        RUN + "notify:\n  - ok@example.com\n  - " + json.dumps(address) + "\n"
    )
    proc = _validate(root)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [problem] = json.loads(proc.stdout)["problems"]
    assert problem["line"] == 8 and "is not an email address" in problem["message"]
    assert "one address per entry" in problem["hint"]


@pytest.mark.parametrize("address", ["ml-team@example.com", "first.last+tag@sub.example.co.uk", "o'brien@example.ie"])
def test_plain_addresses_are_accepted(address):
    assert address_problem(address) is None


def test_the_example_specs_still_validate():
    proc = _validate(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert yaml.safe_load(proc.stdout)
