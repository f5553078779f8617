"""The sticky pull-request comment: validation errors, the plan, and changes against the base.

On a pull request nothing has run yet. The comment shows every validation error, what would
run on which device and runner (and, for a new or changed run, what it is in one line), and
for runs that already have a result on the base branch, that result's metrics and what
changed in the spec (a field-level diff of the expanded spec against the ``spec`` stored in
the base result). Repository text is escaped by :mod:`tinymlaas_ci.gitops.markdown`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tinymlaas_ci.errors import TinymlError
from tinymlaas_ci.git import rev_parse
from tinymlaas_ci.gitops.diff import MetricChange, base_result, metric_changes, read_current, spec_changes
from tinymlaas_ci.gitops.markdown import code, describe_run, render
from tinymlaas_ci.results.metrics import METRICS, format_metric, metric_values
from tinymlaas_ci.results.models import Result

__all__ = ["MARKER", "MAX_COMMENT", "MAX_PROBLEMS", "pr_comment"]

MARKER = "<!-- tinymlaas-report -->"
"""Hidden first line of the pull-request comment: how the workflow finds the comment to update."""
MAX_COMMENT = 60_000
"""GitHub refuses comments past 65,536 characters; keep a margin for the truncation note."""
MAX_PROBLEMS = 100
"""Problems listed in the comment; past that it points to ``tinymlaas validate``."""
_BASE_METRICS = ("accuracy", "latency_ms.p50", "latency_ms.p95", "model_size_bytes", "peak_memory_mb")


@dataclass
class _RunChanges:
    """What the comment says about one run against the base."""

    id: str
    metric_changes: list[MetricChange] = field(default_factory=list)
    committed: Result | None = None
    """The base result, shown for a changed run."""
    committed_metrics: list[tuple[str, str]] = field(default_factory=list)
    """``(label, value)`` of the base result's headline metrics."""
    spec_diff: list[tuple[str, Any, Any]] | None = None


def _plannable(repo):
    """The repository narrowed to runs whose device and pipeline exist, so a partly broken pull
    request still shows what the rest would do."""
    files = []
    for rf in repo.run_files:
        runs = [r for r in rf.runs if r.spec.device in repo.devices and r.spec.pipeline in repo.pipelines]
        files.append(replace(rf, runs=runs))
    return replace(repo, run_files=files)


def _changes(root: Path, the_plan, base: str) -> list[_RunChanges]:
    out = []
    for r in the_plan.runs:
        committed = base_result(root, base, r.result_path)
        current, _ = read_current(root, r.result_path)
        entry = _RunChanges(r.id)
        if current is not None and committed is not None and current.created_at != committed.created_at:
            # The pull request carries a result of its own: show what it changes.
            entry.metric_changes = metric_changes(committed, current)
        if r.status == "changed" and committed is not None:
            new_spec = r.spec.model_dump(mode="json", by_alias=True, exclude={"matrix"})
            entry.committed = committed
            values = metric_values(committed)
            entry.committed_metrics = [
                (m.label, format_metric(m.key, values[m.key]))
                for m in METRICS
                if m.key in _BASE_METRICS and m.key in values
            ]
            entry.spec_diff = spec_changes(committed.spec, new_spec)
        if entry.metric_changes or entry.committed is not None:
            out.append(entry)
    return out


def _finish(text: str) -> str:
    text = text.rstrip() + "\n"
    if len(text) > MAX_COMMENT:
        cut = text.rfind("\n", 0, MAX_COMMENT)
        text = (
            text[:cut] + "\n\n… (cut here: the report is longer than a GitHub comment may be; see the workflow log)\n"
        )
    return text


def pr_comment(root: str | Path, base: str | None) -> str:
    """The sticky pull-request comment, as Markdown starting with :data:`MARKER`.

    Never raises on invalid specs: showing them is the comment's job.
    """
    from tinymlaas_ci.plan import plan
    from tinymlaas_ci.spec.repo import load_repo

    root = Path(root).resolve()
    repo = load_repo(root)
    problems = repo.problems
    context: dict[str, Any] = {
        "marker": MARKER,
        "problems": problems[:MAX_PROBLEMS],
        "more_problems": max(0, len(problems) - MAX_PROBLEMS),
        "n_problems": len(problems),
        "n_files": len({p.path for p in problems}),
        "plan_error": None,
        "plan": None,
        "base": base,
        "base_missing": False,
        "changes": [],
    }
    try:
        the_plan = plan(_plannable(repo))
    except TinymlError as exc:
        context["plan_error"] = str(exc)
        return _finish(render("pr_comment.md.j2", **context))
    commit = rev_parse(root, base) if base else None
    context["base_missing"] = bool(base) and commit is None
    context["base_label"] = f"{code(base)} ({commit[:8]})" if commit else (code(base) if base else "")
    pending = [r for r in the_plan.runs if r.pending]
    context.update(
        plan=the_plan,
        summary=the_plan.to_json()["summary"],
        pending=[(r, describe_run(r.spec)) for r in pending],
        gates_failed=[r for r in the_plan.runs if r.status == "gates-failed"],
        up_to_date=[r for r in the_plan.runs if r.status == "up-to-date"],
    )
    if commit:
        context["changes"] = _changes(root, the_plan, base)
    return _finish(render("pr_comment.md.j2", **context))
