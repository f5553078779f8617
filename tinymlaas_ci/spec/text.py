"""Text that comes from specs and ends up on the website, in email and in PR comments.

Two kinds of text are checked here, with no heavy import (``tinymlaas validate`` uses them):

* **Descriptions** (of runs, devices, pipelines) are plain text or a small, safe subset of
  Markdown: emphasis, code, lists, headings, and links whose target is an absolute ``http``,
  ``https`` or ``mailto`` URL. Refused: raw HTML (tags, comments), images, links to any other
  scheme (``javascript:``, ``data:``) or to relative targets (which fail the site's strict
  build), attribute lists (``{onclick=...}``: the site's Markdown turns them into HTML
  attributes), control and bidirectional-override characters, and text over
  :data:`MAX_DESCRIPTION` characters. The checks work on the text as Markdown will read it:
  HTML entities decoded, backslash escapes and blanks inside a link target removed.
* **Email addresses** (``notify``) are one plain address each, ``local@domain.tld``, without a
  display name, comments, quotes or lists: ``a,b,c@x.yz`` is refused, not read as three.
"""

from __future__ import annotations

import html
import re
import unicodedata

__all__ = [
    "ALLOWED_LINK_SCHEMES",
    "MAX_DESCRIPTION",
    "address_problem",
    "description_problems",
    "safe_link_target",
]

MAX_DESCRIPTION = 4000
"""Longest description accepted, in characters."""

ALLOWED_LINK_SCHEMES = ("http://", "https://", "mailto:")
"""What a link in a description may point at."""

_HINT_PLAIN = "write the description as plain text, or Markdown with links to http, https or mailto URLs only"

# Bidirectional overrides and isolates: they make text display differently from what it says.
_BIDI = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}
_AUTOLINK = re.compile(r"<(?:https?://|mailto:)[^<>\s]*>", re.IGNORECASE)
_TAG_START = re.compile(r"<[A-Za-z!/?]")
_REF_DEF = re.compile(r"^[ ]{0,3}\[((?:\\.|[^\\\]])*)\]:[ \t]*(?:\n[ \t]*)?(\S*)", re.MULTILINE)
_ATTR_LIST = re.compile(r"(?<!\\)\{[^}\n]*\}")
_DOT_ATOM = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def _normalized_target(target: str) -> str:
    """A link target as a browser will see its scheme: entities decoded (Markdown decodes them
    in URLs), backslash escapes dropped, and blanks and control characters removed (browsers
    ignore tabs and newlines inside a scheme)."""
    text = html.unescape(target)
    text = text.replace("\\", "")
    return "".join(ch for ch in text if not (ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf"))).lower()


def safe_link_target(target: str) -> bool:
    """Whether a link target is an absolute ``http``, ``https`` or ``mailto`` URL."""
    norm = _normalized_target(target)
    if norm.startswith("<") and norm.endswith(">"):
        norm = norm[1:-1]
    return any(norm.startswith(s) and len(norm) > len(s) for s in ALLOWED_LINK_SCHEMES)


def _inline_targets(text: str) -> list[str]:
    """The targets of every ``](target ...)`` in ``text``, read the way Markdown reads them:
    an ``<...>`` target, or up to the first blank or unbalanced ``)``."""
    targets = []
    for match in re.finditer(r"\]\s*\(", text):
        i = match.end()
        while i < len(text) and text[i] in " \t\n":
            i += 1
        if i < len(text) and text[i] == "<":
            end = text.find(">", i)
            targets.append(text[i : end + 1] if end != -1 else text[i:])
            continue
        depth, start = 0, i
        while i < len(text):
            ch = text[i]
            if ch == "\\" and i + 1 < len(text):
                i += 2
                continue
            if ch in " \t\n":
                break
            if ch == "(":
                depth += 1
            elif ch == ")":
                if depth == 0:
                    break
                depth -= 1
            i += 1
        targets.append(text[start:i])
    return targets


def description_problems(text: str) -> list[tuple[str, str]]:
    """What makes ``text`` unfit as a description, as ``(message, hint)`` pairs; empty when fine."""
    problems: list[tuple[str, str]] = []
    if len(text) > MAX_DESCRIPTION:
        too_long = f"is {len(text)} characters long; at most {MAX_DESCRIPTION} are shown"
        problems.append((too_long, "shorten it; link to a longer text"))
    bad_chars = sorted(
        {
            ch
            for ch in text
            if ch in _BIDI or (unicodedata.category(ch) in ("Cc", "Cs") and ch not in "\n\t") or ch == "\r"
        }
    )
    if bad_chars:
        shown = ", ".join(f"U+{ord(c):04X}" for c in bad_chars[:5])
        problems.append((f"contains control or text-direction characters ({shown})", "remove them"))
    if "![" in text:
        problems.append(("contains an image ('![...](...)'); images are not shown", _HINT_PLAIN))
    without_autolinks = _AUTOLINK.sub("", text)
    tag = _TAG_START.search(without_autolinks)
    if tag:
        snippet = without_autolinks[tag.start() : tag.start() + 30].split("\n")[0]
        problems.append(
            (
                f"contains HTML ({snippet!r}); descriptions may not hold HTML",
                "remove the tag; write a literal '<' as '&lt;'; links are written [text](https://...)",
            )
        )
    for target in _inline_targets(text):
        if not safe_link_target(target):
            problems.append(
                (
                    f"links to {target[:60]!r}; a link must be an absolute http, https or mailto URL",
                    "write links as [text](https://example.com/page) or [text](mailto:name@example.com)",
                )
            )
    for match in _REF_DEF.finditer(text):
        target = match.group(2)
        if not safe_link_target(target):
            problems.append(
                (
                    f"defines the link [{match.group(1)[:30]}] to {target[:60]!r}; a link must be an absolute "
                    "http, https or mailto URL",
                    "write it as [name]: https://example.com/page",
                )
            )
    attrs = _ATTR_LIST.search(text)
    if attrs:
        problems.append(
            (
                f"contains {attrs.group(0)[:40]!r}, which the site would read as HTML attributes",
                "write literal braces as \\{ and \\}",
            )
        )
    return problems


def address_problem(address: str) -> tuple[str, str] | None:
    """Why ``address`` is not one plain email address (``reason``, ``hint``), or None.

    Strict on purpose: exactly one ``@``; a dot-atom local part of at most 64 characters (no
    quotes, comments, commas, spaces or angle brackets); a domain of at least two labels of
    letters, digits and inner hyphens, ending in a letter-only top-level label; ASCII only.
    """
    hint = "write one address per entry, as name@example.com"
    if not isinstance(address, str) or not address:
        return ("it is empty", hint)
    if any(ch.isspace() for ch in address) or not address.isascii() or not address.isprintable():
        return ("it has blanks, control or non-ASCII characters", hint)
    if address.count("@") != 1:
        return ("it needs exactly one '@'", hint)
    local, domain = address.split("@")
    if any(ch in local for ch in ',;<>()[]\\":'):
        return ("a list, a display name or a quoted part is not allowed", hint)
    if not local or len(local) > 64 or not _DOT_ATOM.match(local):
        return ("the name before the '@' is invalid", hint)
    labels = domain.split(".")
    if len(domain) > 253 or len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        return ("the domain after the '@' is invalid", hint)
    if not labels[-1].isalpha() or len(labels[-1]) < 2:
        return ("the top-level domain is invalid", hint)
    return None
