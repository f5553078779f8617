"""The job summary after a run: per run its metrics, what changed, and its gate verdicts.

Written to ``$GITHUB_STEP_SUMMARY`` by ``tinymlaas github job-summary``. Each result is
compared with the previous committed version of its file (or with ``--base``), read from git.
Repository text is escaped by :mod:`tinymlaas_ci.gitops.markdown`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tinymlaas_ci.errors import UsageError
from tinymlaas_ci.git import git, rev_parse
from tinymlaas_ci.gitops.diff import MetricChange, base_result, gate_flips, metric_changes, read_current
from tinymlaas_ci.gitops.markdown import render
from tinymlaas_ci.results.layout import RESULT_PATH, parse_result_path, result_path
from tinymlaas_ci.results.metrics import format_metric, metric_values
from tinymlaas_ci.results.models import Result
from tinymlaas_ci.results.outcomes import Outcome

__all__ = ["job_summary"]

_COLUMNS = ("accuracy", "latency_ms.p50", "latency_ms.p95", "model_size_bytes", "peak_memory_mb")
"""The metrics of the summary table, in order (headed by the template)."""
_ACTIONS_URL = re.compile(r"https://[A-Za-z0-9.\-]+/[A-Za-z0-9_./\-]+")


@dataclass
class _Run:
    """One run of the summary, with what the template shows about it."""

    id: str
    status: str
    failed_stage: str | None
    message: str | None
    log: str | None
    current: Result | None
    before: Result | None
    cells: list[str]
    changes: list[MetricChange]
    flips: dict[str, str]
    actions_url: str | None


def _changed_results(root: Path, base: str) -> list[str]:
    diff = git(root, "diff", "--name-only", "-z", base, "--", "runs", check=False)
    untracked = git(root, "ls-files", "--others", "--exclude-standard", "-z", "--", "runs", check=False)
    names = (diff.stdout + b"\0" + untracked.stdout).decode("utf-8", "replace").split("\0")
    return sorted({n for n in names if RESULT_PATH.match(n) and (root / n).is_file()})


def _run(root: Path, ref: str, base: str | None, outcome: Outcome | None, rel: str | None) -> _Run:
    current, data = read_current(root, rel) if rel else (None, None)
    before = base_result(root, ref, rel, skip_same_as=None if base else data) if current is not None else None
    status = (outcome.status if outcome else None) or (current.status if current else "failed")
    error = current.error if current is not None else None
    values = metric_values(current)
    url = current.run.actions_run_url if current is not None else None
    return _Run(
        id=outcome.run if outcome else "/".join(parse_result_path(rel) or ("?", rel or "?")),
        status=status,
        failed_stage=(outcome.failed_stage if outcome else None) or (error.stage if error else None),
        message=(outcome.message if outcome else None) or (error.message if error else ""),
        log=outcome.log if outcome else None,
        current=current,
        before=before,
        cells=[format_metric(key, values.get(key)) for key in _COLUMNS],
        changes=metric_changes(before, current) if before is not None else [],
        flips=gate_flips(current, before) if current is not None else {},
        actions_url=url if url and _ACTIONS_URL.fullmatch(url) else None,
    )


def job_summary(root: str | Path, outcomes: list[Outcome] | None = None, base: str | None = None) -> str:
    """The job summary after a run, as Markdown.

    With ``outcomes`` (from ``tinymlaas run --json``), one row per outcome; without, every result
    file that differs from ``base`` (default ``HEAD``). Each result is compared with ``base``
    when given, else with the previous committed version of its file.
    """
    root = Path(root).resolve()
    ref = base or "HEAD"
    if base and rev_parse(root, base) is None:
        raise UsageError(
            f"--base {base}: no such commit, branch or tag here",
            hint="fetch it first (git fetch origin BRANCH) or check its spelling",
        )
    if outcomes is None:
        runs = [_run(root, ref, base, None, rel) for rel in _changed_results(root, ref)]
    else:
        runs = [_run(root, ref, base, o, o.result or result_path(o.project, o.name)) for o in outcomes]
    return render("job_summary.md.j2", runs=runs).rstrip() + "\n"
