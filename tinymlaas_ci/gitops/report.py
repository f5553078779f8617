"""Markdown for GitHub: the sticky pull-request comment and the after-run job summary.

Both compare against results committed in git, read with ``git show <ref>:<path>``, so they
need no checkout of the base branch:

- :func:`pr_comment` — on a pull request nothing has run yet. It shows the validation errors,
  the plan (what would run on which device and runner), and for runs that already have a
  result on the base branch, that result's metrics and what changed in the spec (a field-level
  diff of the expanded spec against the ``spec`` stored in the base result).
- :func:`job_summary` — after a run. Per run: its metrics, the metrics that changed against
  the previous committed result (with direction and percent), and its gate verdicts.

Text that comes from the repository (spec values, messages) is escaped: a comment is posted
with a write token, and a pull request from a fork must not be able to shape its layout.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tinymlaas_ci.errors import TinymlError, UsageError
from tinymlaas_ci.git import git, rev_parse, show
from tinymlaas_ci.results.models import Result

__all__ = [
    "MARKER",
    "MAX_COMMENT",
    "MetricChange",
    "base_result",
    "job_summary",
    "load_outcomes",
    "metric_changes",
    "metric_values",
    "pr_comment",
    "spec_changes",
]

MARKER = "<!-- tinymlaas-report -->"
"""Hidden first line of the pull-request comment: how the workflow finds the comment to update."""
MAX_COMMENT = 60_000
"""GitHub refuses comments past 65,536 characters; keep a margin for the truncation note."""

# (key in the flattened metrics, label, which way is better, format)
_METRICS: tuple[tuple[str, str, str | None, str], ...] = (
    ("accuracy", "accuracy", "higher", "{:.4f}"),
    ("top5_accuracy", "top-5 accuracy", "higher", "{:.4f}"),
    ("accuracy_drop", "accuracy drop", "lower", "{:.4f}"),
    ("latency_ms.p50", "latency p50 (ms)", "lower", "{:.4g}"),
    ("latency_ms.p90", "latency p90 (ms)", "lower", "{:.4g}"),
    ("latency_ms.p95", "latency p95 (ms)", "lower", "{:.4g}"),
    ("latency_ms.p99", "latency p99 (ms)", "lower", "{:.4g}"),
    ("latency_ms.mean", "latency mean (ms)", "lower", "{:.4g}"),
    ("throughput_per_s", "throughput (/s)", "higher", "{:,.1f}"),
    ("model_size_bytes", "model size (bytes)", "lower", "{:,.0f}"),
    ("model_gzip_bytes", "gzip size (bytes)", "lower", "{:,.0f}"),
    ("compression_ratio", "compression ratio", "higher", "{:.3g}"),
    ("peak_memory_mb", "peak memory (MiB)", "lower", "{:.4g}"),
    ("load_time_ms", "load time (ms)", "lower", "{:.4g}"),
)
_STATUS = {
    "succeeded": "✅ succeeded",
    "gates-failed": "❌ gates failed",
    "failed": "❌ failed",
    "up-to-date": "✅ up to date",
    "not-run": "⏭️ not run",
}
_PLAN_STATUS = {"new": "🆕 new", "changed": "✏️ changed", "up-to-date": "✅ up to date"}


# -- escaping ------------------------------------------------------------------------------------


def _md(value: Any, limit: int = 300) -> str:
    """Repository text made inert for a Markdown table cell: no HTML, no pipes, one line."""
    text = str(value)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = text.replace("|", "\\|").replace("\r", " ").replace("\n", " ")
    for ch in "`*_[]":
        text = text.replace(ch, "\\" + ch)
    return text


def _code(value: Any, limit: int = 120) -> str:
    """Repository text as inline code (backticks inside would end the span: they are replaced)."""
    text = str(value).replace("`", "'").replace("\r", " ").replace("\n", " ").replace("|", "\\|")
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return f"`{text}`"


def _value(value: Any) -> str:
    if isinstance(value, (dict, list)):
        value = json.dumps(value, sort_keys=True)
    elif value is None:
        value = "—"
    return _code(value, 80)


# -- metrics ---------------------------------------------------------------------------------------


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(_flat(value, f"{prefix}{key}."))
    else:
        out[prefix[:-1]] = data
    return out


def metric_values(result: Result | None) -> dict[str, float]:
    """The comparable metrics of a result, by key (``latency_ms.p50``, ...); missing ones left out."""
    if result is None or result.metrics is None:
        return {}
    flat = _flat(result.metrics.model_dump(mode="json"))
    out = {}
    for key, *_ in _METRICS:
        value = flat.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = float(value)
    return out


@dataclass(frozen=True)
class MetricChange:
    key: str
    label: str
    before: float | None
    after: float | None
    better: str | None
    fmt: str

    @property
    def percent(self) -> float | None:
        if self.before is None or self.after is None or self.before == 0:
            return None
        return (self.after - self.before) / abs(self.before) * 100.0

    @property
    def verdict(self) -> str:
        """``better``, ``worse`` or ``""`` (when the metric has no preferred direction)."""
        if self.before is None or self.after is None or self.better is None:
            return ""
        up = self.after > self.before
        return "better" if up == (self.better == "higher") else "worse"

    def arrow(self) -> str:
        if self.before is None:
            return "🆕"
        if self.after is None:
            return "—"
        return "↑" if self.after > self.before else "↓"

    def cells(self) -> tuple[str, str, str, str]:
        before = self.fmt.format(self.before) if self.before is not None else "—"
        after = self.fmt.format(self.after) if self.after is not None else "—"
        pct = self.percent
        change = self.arrow()
        if pct is not None:
            change += f" {pct:+.1f}%"
        if self.verdict:
            change += f" ({'🟢' if self.verdict == 'better' else '🔴'} {self.verdict})"
        return self.label, before, after, change


def metric_changes(before: Result | None, after: Result | None) -> list[MetricChange]:
    """Only the metrics whose shown value changed between two results, in a fixed order."""
    old, new = metric_values(before), metric_values(after)
    out = []
    for key, label, better, fmt in _METRICS:
        a, b = old.get(key), new.get(key)
        if a is None and b is None:
            continue
        if a is not None and b is not None and fmt.format(a) == fmt.format(b):
            continue  # differences below the shown precision are noise, not news
        out.append(MetricChange(key, label, a, b, better, fmt))
    return out


def spec_changes(before: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Field-level differences between two specs: ``(dotted.key, old, new)``, sorted by key."""
    old, new = _flat(before), _flat(after)
    out = []
    for key in sorted(set(old) | set(new)):
        if key in ("matrix", "name") or key.startswith("matrix."):
            continue
        if old.get(key) != new.get(key):
            out.append((key, old.get(key), new.get(key)))
    return out


# -- reading results from git ----------------------------------------------------------------------


def _parse(data: bytes | None) -> Result | None:
    if data is None:
        return None
    try:
        return Result.model_validate(json.loads(data))
    except (ValueError, ValidationError):
        return None  # a broken old result has nothing to compare against


def base_result(root: Path, ref: str, path: str, *, skip_same_as: bytes | None = None) -> Result | None:
    """The result at ``path`` as committed at ``ref`` (None when absent or unreadable).

    With ``skip_same_as``, a committed version equal to those bytes is passed over for the one
    before it: after ``results commit`` the summary should compare with the *previous* result.
    """
    data = show(root, ref, path)
    if skip_same_as is not None and data == skip_same_as:
        log = git(root, "log", "--format=%H", "-n", "2", ref, "--", path, check=False)
        commits = log.stdout.decode().split() if log.returncode == 0 else []
        data = None
        for commit in commits:
            candidate = show(root, commit, path)
            if candidate != skip_same_as:
                data = candidate
                break
    return _parse(data)


def _read_current(root: Path, rel: str) -> tuple[Result | None, bytes | None]:
    path = root / rel
    if not path.is_file():
        return None, None
    data = path.read_bytes()
    return _parse(data), data


# -- the pull-request comment ----------------------------------------------------------------------


def _problems_section(problems) -> list[str]:
    if not problems:
        return ["### ✅ Specs are valid", ""]
    files = len({p.path for p in problems})
    out = [
        f"### ❌ {len(problems)} problem{'s' * (len(problems) != 1)} in {files} file{'s' * (files != 1)}",
        "",
        "| where | problem | how to fix |",
        "|---|---|---|",
    ]
    for p in problems[:100]:
        where = p.path + (f":{p.line}:{p.column or 1}" if p.line else "")
        out.append(f"| {_code(where)} | {_md(p.message)} | {_md(p.hint) if p.hint else ''} |")
    if len(problems) > 100:
        out.append(f"\n… and {len(problems) - 100} more: run `tinymlaas validate` locally.")
    out += ["", "Runs with problems are left out of the plan below.", ""]
    return out


def _plannable(repo):
    """The repository narrowed to runs whose device and pipeline exist, so a partly broken pull
    request still shows what the rest would do."""
    files = []
    for rf in repo.run_files:
        runs = [r for r in rf.runs if r.spec.device in repo.devices and r.spec.pipeline in repo.pipelines]
        files.append(replace(rf, runs=runs))
    return replace(repo, run_files=files)


def _base_label(root: Path, base: str) -> str:
    commit = rev_parse(root, base)
    return f"{_code(base)} ({commit[:8]})" if commit else _code(base)


def pr_comment(root: str | Path, base: str | None) -> str:
    """The sticky pull-request comment, as Markdown starting with :data:`MARKER`.

    Never raises on invalid specs: showing them is the comment's job.
    """
    from tinymlaas_ci.plan import plan
    from tinymlaas_ci.spec.repo import load_repo

    root = Path(root).resolve()
    repo = load_repo(root)
    out = [MARKER, "## TinyMLaaS-CI: pull request check", ""]
    out += _problems_section(repo.problems)
    try:
        the_plan = plan(_plannable(repo))
    except TinymlError as exc:
        out += [f"The plan could not be made: {_md(exc)}", ""]
        return _finish(out)
    base_ok = bool(base) and rev_parse(root, base) is not None
    if base and not base_ok:
        out += [
            (
                f"> Base {_code(base)} was not found in this clone, so there is no comparison with it "
                f"(fetch it: `git fetch origin BRANCH`)."
            ),
            "",
        ]
    out += _plan_section(the_plan)
    if base_ok:
        out += _changes_section(root, repo, the_plan, base)
    return _finish(out)


def _plan_section(the_plan) -> list[str]:
    s = the_plan.to_json()["summary"]
    out = [f"### Plan: {s['total']} runs — {s['new']} new, {s['changed']} changed, {s['up-to-date']} up to date", ""]
    if not the_plan.runs:
        return out + ["No runs.", ""]
    pending = [r for r in the_plan.runs if r.status != "up-to-date"]
    if pending:
        out += [
            "After merge these run, one job per device on the runner with these labels:",
            "",
            "| run | device | runner | status |",
            "|---|---|---|---|",
        ]
        for r in pending:
            out.append(f"| {_code(r.id)} | {_code(r.device)} | {_md(', '.join(r.runner))} | {_PLAN_STATUS[r.status]} |")
        out.append("")
    else:
        out += ["Nothing would run after merge: every run is up to date.", ""]
    if len(pending) < len(the_plan.runs):
        out += [
            f"<details><summary>{len(the_plan.runs) - len(pending)} up-to-date run(s)</summary>",
            "",
            "| run | device | runner |",
            "|---|---|---|",
        ]
        out += [
            f"| {_code(r.id)} | {_code(r.device)} | {_md(', '.join(r.runner))} |"
            for r in the_plan.runs
            if r.status == "up-to-date"
        ]
        out += ["", "</details>", ""]
    return out


def _changes_section(root: Path, repo, the_plan, base: str) -> list[str]:
    out: list[str] = []
    for r in the_plan.runs:
        committed = base_result(root, base, r.result_path)
        current, _ = _read_current(root, r.result_path)
        lines: list[str] = []
        if current is not None and committed is not None and current.created_at != committed.created_at:
            # The pull request carries a result of its own: show what it changes.
            changes = metric_changes(committed, current)
            if changes:
                lines += _metric_table(changes)
        if r.status == "changed" and committed is not None:
            new_spec = r.spec.model_dump(mode="json", by_alias=True, exclude={"matrix"})
            diff = spec_changes(committed.spec, new_spec)
            lines += _base_metrics(committed)
            if diff:
                lines += [
                    "Spec changes against the spec of that result:",
                    "",
                    "| field | before | after |",
                    "|---|---|---|",
                ]
                lines += [f"| {_code(k)} | {_value(a)} | {_value(b)} |" for k, a, b in diff]
                lines.append("")
            else:
                lines += ["The spec itself is unchanged: its device, pipeline or an uploaded file changed.", ""]
        if lines:
            out += [f"#### {_code(r.id)}", ""] + lines
    if out:
        out = [f"### Against {_base_label(root, base)}", ""] + out
    return out


def _base_metrics(result: Result) -> list[str]:
    values = metric_values(result)
    head = f"Committed result ({_STATUS.get(result.status, _md(result.status))}, {_md(result.created_at)})"
    if not values:
        return [head + ": no metrics.", ""]
    cells = [
        (label, fmt.format(values[key]))
        for key, label, _, fmt in _METRICS
        if key in values
        and key in ("accuracy", "latency_ms.p50", "latency_ms.p95", "model_size_bytes", "peak_memory_mb")
    ]
    out = [
        head + ":",
        "",
        "| " + " | ".join(c[0] for c in cells) + " |",
        "|" + "---|" * len(cells),
        "| " + " | ".join(c[1] for c in cells) + " |",
        "",
    ]
    if result.gates:
        out += [_gates_line(result, None), ""]
    return out


def _metric_table(changes: list[MetricChange]) -> list[str]:
    out = ["| metric | before | after | change |", "|---|---|---|---|"]
    for ch in changes:
        out.append("| " + " | ".join(ch.cells()) + " |")
    return out + [""]


def _gates_line(result: Result, before: Result | None) -> str:
    was = {g.gate: g.passed for g in before.gates} if before is not None else {}
    parts = []
    for g in result.gates:
        mark = "✅" if g.passed else "❌"
        flip = ""
        if g.gate in was and was[g.gate] != g.passed:
            flip = " (was ✅)" if was[g.gate] else " (was ❌)"
        parts.append(f"{mark} {_md(g.message)}{flip}")
    return "Gates: " + "; ".join(parts)


def _finish(lines: list[str]) -> str:
    text = "\n".join(lines).rstrip() + "\n"
    if len(text) > MAX_COMMENT:
        cut = text.rfind("\n", 0, MAX_COMMENT)
        text = (
            text[:cut] + "\n\n… (cut here: the report is longer than a GitHub comment may be; see the workflow log)\n"
        )
    return text


# -- the job summary -------------------------------------------------------------------------------


def load_outcomes(path: str | Path) -> list[dict[str, Any]]:
    """Outcomes written by ``tinymlaas run --json FILE``: from one file, or every such file in a
    folder (one per device job, as the publish job downloads them)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.json") if p.is_file())
    elif path.is_file():
        files = [path]
    else:
        raise UsageError(
            f"--outcomes {path}: no such file or folder",
            hint="pass the file written by 'tinymlaas run --json FILE', or a folder of them",
        )
    outcomes: list[dict[str, Any]] = []
    for f in files:
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(
                f"{f}: not a JSON file: {exc}", hint="pass the file written by 'tinymlaas run --json FILE'"
            ) from exc
        if not isinstance(data, dict) or not isinstance(data.get("outcomes"), list):
            if path.is_dir():
                continue  # another JSON file in the folder, not an outcomes file
            raise UsageError(
                f"{f}: has no 'outcomes' list", hint="pass the file written by 'tinymlaas run --json FILE'"
            )
        outcomes += [o for o in data["outcomes"] if isinstance(o, dict) and o.get("run")]
    return outcomes


def _changed_results(root: Path, base: str) -> list[str]:
    from tinymlaas_ci.gitops.commit import RESULT_PATH

    diff = git(root, "diff", "--name-only", "-z", base, "--", "runs", check=False)
    untracked = git(root, "ls-files", "--others", "--exclude-standard", "-z", "--", "runs", check=False)
    names = (diff.stdout + b"\0" + untracked.stdout).decode("utf-8", "replace").split("\0")
    return sorted({n for n in names if RESULT_PATH.match(n) and (root / n).is_file()})


def job_summary(root: str | Path, outcomes: list[dict[str, Any]] | None = None, base: str | None = None) -> str:
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
        outcomes = [{"run": _id_of(rel), "status": None, "result": rel} for rel in _changed_results(root, ref)]
    out = ["## TinyMLaaS-CI results", ""]
    if not outcomes:
        return "\n".join(out + ["No runs ran: nothing was new or changed.", ""]) + "\n"
    rows, details = [], []
    for o in outcomes:
        rel = o.get("result") or _path_of(str(o["run"]))
        current, data = _read_current(root, rel) if rel else (None, None)
        status = o.get("status") or (current.status if current else "failed")
        before = None
        if current is not None:
            before = base_result(root, ref, rel, skip_same_as=None if base else data)
        cell = _cells(metric_values(current))
        gates = "—"
        if current is not None and current.gates:
            gates = " ".join("✅" if g.passed else "❌" for g in current.gates)
        rows.append(
            f"| {_code(o['run'])} | {_STATUS.get(status, _md(status))} | {cell('accuracy')} | "
            f"{cell('latency_ms.p50')} | {cell('latency_ms.p95')} | {cell('model_size_bytes')} | "
            f"{cell('peak_memory_mb')} | {gates} |"
        )
        details += _run_details(o, current, before)
    out += (
        [
            "| run | status | accuracy | p50 (ms) | p95 (ms) | size (bytes) | peak memory (MiB) | gates |",
            "|---|---|---|---|---|---|---|---|",
        ]
        + rows
        + [""]
    )
    return "\n".join(out + details).rstrip() + "\n"


def _cells(values: dict[str, float]):
    fmt = {k: f for k, _, _, f in _METRICS}
    return lambda key: fmt[key].format(values[key]) if key in values else "—"


def _path_of(run_id: str) -> str | None:
    project, _, name = run_id.partition("/")
    return f"runs/{project}/results/{name}.json" if project and name and "/" not in name else None


def _id_of(rel: str) -> str:
    parts = rel.split("/")
    return f"{parts[1]}/{Path(parts[3]).stem}"


def _run_details(outcome: dict[str, Any], current: Result | None, before: Result | None) -> list[str]:
    out = [f"### {_code(outcome['run'])}", ""]
    if outcome.get("status") == "failed" or (current is not None and current.status == "failed"):
        stage = outcome.get("failed_stage") or (current.error.stage if current and current.error else None)
        message = outcome.get("message") or (current.error.message if current and current.error else "")
        out += [f"❌ failed{f' at stage {_code(stage)}' if stage else ''}: {_md(message, 1000)}", ""]
        if outcome.get("log"):
            out += [f"Log on the runner: {_code(outcome['log'], 300)}", ""]
        return out
    if outcome.get("status") == "not-run":
        return out + ["⏭️ not run: an earlier run on this device failed.", ""]
    if current is None:
        return out + ["No result file.", ""]
    if before is None:
        out += ["First result of this run: nothing to compare with.", ""]
    else:
        changes = metric_changes(before, current)
        if changes:
            out += [f"Against the previous result ({_md(before.created_at)}):", ""] + _metric_table(changes)
        else:
            out += [f"No metric changed against the previous result ({_md(before.created_at)}).", ""]
    if current.gates:
        out += ["| gate | limit | value | verdict |", "|---|---|---|---|"]
        was = {g.gate: g.passed for g in before.gates} if before is not None else {}
        for g in current.gates:
            verdict = "✅ passed" if g.passed else "❌ failed"
            if g.gate in was and was[g.gate] != g.passed:
                verdict += " (was ✅)" if was[g.gate] else " (was ❌)"
            value = f"{g.value:.4g}" if g.value is not None else "—"
            out.append(f"| {_code(g.gate)} | {g.limit:.4g} | {value} | {verdict} |")
        out.append("")
    url = current.run.actions_run_url
    if url and re.fullmatch(r"https://[A-Za-z0-9.\-]+/[A-Za-z0-9_./\-]+", url):
        out += [f"[Actions run]({url})", ""]
    return out
