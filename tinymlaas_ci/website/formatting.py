"""Number formatting for the pages (Jinja filters) and the repository's web address."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import yaml

from tinymlaas_ci.git import git_output

__all__ = ["FILTERS", "repo_web_url"]


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def pct(value: float | None, digits: int = 2) -> str:
    """0.975 -> ``97.50 %``."""
    return "–" if _missing(value) else f"{value * 100:.{digits}f} %"


def ms(value: float | None) -> str:
    """Milliseconds with four significant digits: ``0.01550 ms``, ``12.50 ms``."""
    if _missing(value):
        return "–"
    return f"{value:.4g} ms" if value >= 1 else f"{value:.4f} ms"


def size(value: int | None) -> str:
    """Bytes in binary units: ``149.4 KiB``."""
    if _missing(value):
        return "–"
    value = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def ratio(value: float | None) -> str:
    """``3.2×``."""
    return "–" if _missing(value) else f"{value:.2f}×"


def pp(value: float | None) -> str:
    """An accuracy difference in percentage points: ``−0.20 pp``."""
    if _missing(value):
        return "–"
    sign = "+" if value > 0 else ("−" if value < 0 else "±")
    return f"{sign}{abs(value) * 100:.2f} pp"


def times(value: float | None) -> str:
    """A ratio against a reference: ``0.31×`` (smaller) or ``8.5×`` (larger)."""
    return "–" if _missing(value) else f"{value:.2f}×"


def num(value: float | None, digits: int = 4) -> str:
    return "–" if _missing(value) else f"{value:.{digits}g}"


def sortkey(value: Any) -> str:
    """A ``data-sort`` attribute value: numbers as numbers, missing values sort last."""
    if _missing(value):
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    return repr(value) if isinstance(value, (int, float)) else str(value)


def short(sha: str | None) -> str:
    return (sha or "")[:10]


def date(text: str | None) -> str:
    """``2025-03-01T12:00:00Z`` -> ``2025-03-01 12:00 UTC``."""
    if not text:
        return "–"
    m = re.match(r"(\d{4}-\d\d-\d\d)T(\d\d:\d\d)", text)
    if not m:
        return text
    tz = " UTC" if text.endswith(("Z", "+00:00")) else ""
    return f"{m.group(1)} {m.group(2)}{tz}"


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
"""Terminal colour and cursor codes: a tool's error message may carry them; a page shows none."""
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|])")
"""What Python-Markdown (with the tables extension) lets a backslash escape; ``<`` and ``>`` are
HTML-escaped instead."""


def line(value: Any) -> str:
    """Text from a spec or a result placed *inside HTML* (the run pages): one line, terminal
    codes removed. The page template HTML-escapes it, so nothing in it becomes markup."""
    return "" if value is None else " ".join(_ANSI.sub("", str(value)).split())


def text(value: Any):
    """Text from a spec or a result placed *inside Markdown* (a paragraph or a table cell),
    made inert: HTML escaped, every Markdown punctuation character backslash-escaped, one line.

    So ``[x](javascript:alert(1))`` shows as those characters, never as a link, and
    ``![i](x" onerror="...")`` neither becomes an image nor breaks the build.
    """
    from markupsafe import Markup, escape

    if value is None:
        return Markup("")
    one_line = line(value)
    # Markdown escapes first, HTML escapes second: an entity like &#34; must stay whole.
    return Markup(escape(_MD_SPECIAL.sub(r"\\\1", one_line)))


def thousands(value: int | None) -> str:
    """``150452`` -> ``150,452``."""
    return "–" if _missing(value) else f"{value:,}"


def anchor(title: str) -> str:
    """A heading's id, as the Markdown ``toc`` extension makes it: ``Device and runtime`` ->
    ``device-and-runtime``; so a page written as HTML keeps the anchors it had as Markdown."""
    from markdown.extensions.toc import slugify

    return slugify(str(title), "-")


def paragraph(value: Any):
    """Free text (a run's description) as a raw HTML paragraph: Markdown does not look inside
    a block of raw HTML, and the text itself is HTML-escaped, so nothing in it is a link, an
    image or markup. Line breaks are kept."""
    from markupsafe import Markup, escape

    lines = [str(escape(line.strip())) for line in str(value or "").strip().splitlines()]
    return Markup('<p class="tm-description">' + "<br>".join(line for line in lines if line) + "</p>")


def code(value: Any):
    """Text from a spec as an inline code span that no backtick, pipe or newline can end."""
    from markupsafe import Markup

    # Markdown escapes HTML inside a code span itself; a backtick would end the span.
    one_line = " ".join(str(value or "").split()).replace("`", "'").replace("|", "\\|")
    return Markup(f"`{one_line}`")


# libyaml's emitter writes the same YAML as the pure-Python one for the plain data of specs
# (tests/site/test_site_scale.py checks it) about ten times faster; a run page shows its spec.
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def to_yaml(value: Any) -> str:
    return yaml.dump(value, Dumper=_DUMPER, sort_keys=False, allow_unicode=True, default_flow_style=False).rstrip()


FILTERS = {
    "pct": pct,
    "ms": ms,
    "size": size,
    "ratio": ratio,
    "pp": pp,
    "times": times,
    "num": num,
    "sortkey": sortkey,
    "short": short,
    "date": date,
    "to_yaml": to_yaml,
    "text": text,
    "paragraph": paragraph,
    "line": line,
    "thousands": thousands,
    "anchor": anchor,
    "code": code,
}

_REMOTE = re.compile(r"^(?:https?://|ssh://)?(?:[^@/]+@)?(github\.com|gitlab\.com)[:/](.+?)(?:\.git)?/?$")


def repo_web_url(root: Path, mkdocs_yml: Path | None = None) -> str | None:
    """The repository's web address for commit links.

    From ``repo_url`` in mkdocs.yml, else the GitHub Actions environment, else the ``origin``
    remote when it is on GitHub or GitLab. ``None`` when none is known (commits are then shown
    without links).
    """
    if mkdocs_yml is not None and mkdocs_yml.is_file():
        try:
            # mkdocs.yml may hold !!python tags; only the plain repo_url line matters here.
            m = re.search(r"^repo_url:\s*['\"]?([^'\"\s#]+)", mkdocs_yml.read_text(encoding="utf-8"), re.MULTILINE)
        except OSError:
            m = None
        if m:
            return m.group(1).rstrip("/")
    server, repo = os.environ.get("GITHUB_SERVER_URL"), os.environ.get("GITHUB_REPOSITORY")
    if server and repo:
        return f"{server.rstrip('/')}/{repo}"
    out = git_output(root, "remote", "get-url", "origin", timeout=10)
    m = _REMOTE.match(out.decode("utf-8", "replace").strip()) if out is not None else None
    return f"https://{m.group(1)}/{m.group(2)}" if m else None
