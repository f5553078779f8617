"""GitHub-flavoured Markdown from repository text: the one escaper, and the plan table.

Text from the repository (spec values, names, messages, descriptions) goes through
:func:`md` or :func:`code` before it reaches a pull-request comment or a job summary. The
comment is posted with a write token and a pull request from a fork may carry any text, so
it must not be able to add HTML, links or images, break a table, end a code span, or
mention people: an ``@`` is followed by a zero-width space (U+200B), which GitHub does not
turn into a mention (or a team ping) while the text still reads the same.
"""

from __future__ import annotations

import json
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

__all__ = ["PLAN_STATUS", "STATUS", "code", "describe_run", "md", "plan_markdown", "render", "value"]

STATUS = {
    "succeeded": "✅ succeeded",
    "gates-failed": "❌ gates failed",
    "failed": "❌ failed",
    "up-to-date": "✅ up to date",
    "not-run": "⏭️ not run",
}
"""A run outcome (or a result's status) as a table cell."""
PLAN_STATUS = {
    "new": "🆕 new",
    "changed": "✏️ changed",
    "up-to-date": "✅ up to date",
    "gates-failed": "❌ gates failed (recorded)",
}
"""A planned run's status as a table cell."""

_NO_MENTION = "@\u200b"


def md(text: Any, limit: int = 300) -> str:
    """Repository text made inert for Markdown (a table cell too): no HTML, no pipes, no
    emphasis or links, no mentions, one line."""
    text = str(text)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = text.replace("|", "\\|").replace("\r", " ").replace("\n", " ")
    for ch in "`*_[]":
        text = text.replace(ch, "\\" + ch)
    return text.replace("@", _NO_MENTION)


def code(text: Any, limit: int = 120) -> str:
    """Repository text as inline code (a backtick inside would end the span: it is replaced).

    GitHub does not mention people from inside code spans, but a zero-width space after an
    ``@`` costs nothing and keeps the rule "every @ is neutralised" true everywhere.
    """
    text = str(text).replace("`", "'").replace("\r", " ").replace("\n", " ").replace("|", "\\|")
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return f"`{text.replace('@', _NO_MENTION)}`"


def value(v: Any) -> str:
    """A spec value as inline code: JSON for lists and mappings, ``—`` for none."""
    if isinstance(v, (dict, list)):
        v = json.dumps(v, sort_keys=True)
    elif v is None:
        v = "—"
    return code(v, 80)


def _source(source) -> str:
    if source.upload is not None:
        return source.upload
    return f"hf:{source.huggingface}@{source.revision}"


_GATE_SIGN = {"min": "≥", "max": "≤"}


def describe_run(spec) -> str:
    """What a run is, in one line of plain text: model, dataset, compression and gates.

    ``model uploads/m.pkl · data hf:owner/digits@main (test) · static-int8, 50% pruned ·
    gates min_accuracy ≥ 0.9, max_model_bytes ≤ 64000``. Escape it (:func:`md`) before use.
    """
    parts = [f"model {_source(spec.model)}", f"data {_source(spec.dataset)} ({spec.dataset.split})"]
    comp = spec.compression
    quant = getattr(comp.quantization, "value", comp.quantization)
    compression = "no quantization" if quant == "none" else str(quant)
    if comp.pruning is not None:
        compression += f", {comp.pruning.sparsity:.0%} pruned"
    parts.append(compression)
    gates = [
        f"{key} {_GATE_SIGN[key.split('_', 1)[0]]} {limit:g}"
        for key, limit in spec.gates.model_dump().items()
        if limit is not None
    ]
    parts.append("gates " + ", ".join(gates) if gates else "no gates")
    return " · ".join(parts)


def plan_markdown(the_plan) -> str:
    """The plan as a Markdown table (``tinymlaas plan --format markdown``)."""
    return render("plan.md.j2", plan=the_plan, summary=the_plan.to_json()["summary"]).rstrip("\n")


_ENV: Environment | None = None


def render(template: str, **context: Any) -> str:
    """Render one of this package's Markdown templates. Values are escaped by the caller (or
    by the template's ``md``/``code`` filters): Markdown is not HTML, so no autoescape."""
    global _ENV
    if _ENV is None:
        _ENV = Environment(
            loader=PackageLoader("tinymlaas_ci.gitops", "templates"),
            undefined=StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        _ENV.filters.update(md=md, code=code, value=value, status=lambda s: STATUS.get(s) or md(s))
        _ENV.globals.update(PLAN_STATUS=PLAN_STATUS)
    return _ENV.get_template(template).render(**context)
