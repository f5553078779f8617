"""From run outcomes to emails: who is told what about which run.

``tinymlaas run --json FILE`` writes the outcomes of a run job; the publish job of the run
workflow downloads them from every device as ``outcomes/<device>.json``. For each run that
succeeded, failed a gate or failed, this module finds its result (the committed file; for a
failed run the run volume's ``result.json`` when the volume is on this machine), its ``notify``
list (from the result's spec, else from the spec file) and the links, and sends one message.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinymlaas_ci.engine.volume import default_work_dir
from tinymlaas_ci.errors import NotifyError
from tinymlaas_ci.notify.email import (
    RunReport,
    SmtpSettings,
    build_message,
    send_message,
    subject_for,
)
from tinymlaas_ci.results.layout import result_path
from tinymlaas_ci.results.outcomes import Outcome

__all__ = ["NOTIFY_STATUSES", "SendReport", "collect_reports", "send_reports"]

NOTIFY_STATUSES = ("succeeded", "gates-failed", "failed")
"""Outcomes that mail is sent about; ``up-to-date`` and ``not-run`` runs did not run."""


def _load_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _result_for(root: Path, outcome: Outcome, work_dir: Path | None) -> dict[str, Any] | None:
    project, name = outcome.project, outcome.name
    if outcome.status != "failed":
        found = _load_json(root / (outcome.result or result_path(project, name)))
        if found is not None:
            return found
    # A failed run has no committed result; its volume has one when it ran on this machine.
    candidates = []
    if outcome.log:
        candidates.append(Path(outcome.log).parent.parent / "result.json")
    candidates.append((work_dir or default_work_dir(root)) / project / name / "result.json")
    for path in candidates:
        found = _load_json(path)
        if found is not None and (found.get("run") or {}).get("name") == name:
            return found
    return None


def _links(project: str, name: str, result: dict[str, Any] | None, env: dict[str, str]) -> dict[str, str]:
    links: dict[str, str] = {}
    site = (env.get("TINYMLAAS_SITE_URL") or "").strip().rstrip("/")
    if site:
        links["run page"] = f"{site}/projects/{project}/runs/{name}.html"
    run_info = (result or {}).get("run") or {}
    server = (env.get("GITHUB_SERVER_URL") or "https://github.com").rstrip("/")
    repo = env.get("GITHUB_REPOSITORY")
    actions = run_info.get("actions_run_url")
    if not actions and repo and env.get("GITHUB_RUN_ID"):
        actions = f"{server}/{repo}/actions/runs/{env['GITHUB_RUN_ID']}"
    if actions:
        links["Actions run"] = actions
    commit = run_info.get("spec_commit") or env.get("GITHUB_SHA")
    if commit and repo:
        links["commit"] = f"{server}/{repo}/commit/{commit}"
    return links


def collect_reports(
    root: Path,
    outcomes: list[Outcome],
    *,
    work_dir: Path | None = None,
    env: dict[str, str] | None = None,
) -> tuple[list[RunReport], list[str]]:
    """One :class:`RunReport` per outcome worth a message, and notes on the ones skipped."""
    env = dict(os.environ if env is None else env)
    reports: list[RunReport] = []
    notes: list[str] = []
    specs: dict[str, list[str]] | None = None
    seen: set[str] = set()
    for outcome in outcomes:
        run_id, status = outcome.run, outcome.status
        if status not in NOTIFY_STATUSES:
            notes.append(f"{run_id}: {status}, nothing to tell")
            continue
        if run_id in seen:
            continue
        seen.add(run_id)
        project, name = outcome.project, outcome.name
        result = _result_for(root, outcome, work_dir)
        recipients = ((result or {}).get("spec") or {}).get("notify")
        if recipients is None:
            if specs is None:
                specs = _notify_lists(root)
            recipients = specs.get(run_id, [])
        if not recipients:
            notes.append(f"{run_id}: {status}, no notify list in its spec")
            continue
        reports.append(
            RunReport(
                run_id=run_id,
                status=status,
                recipients=list(dict.fromkeys(recipients)),
                result=result,
                failed_stage=outcome.failed_stage or ((result or {}).get("error") or {}).get("stage"),
                message=outcome.message or ((result or {}).get("error") or {}).get("message"),
                links=_links(project, name, result, env),
            )
        )
    return reports, notes


def _notify_lists(root: Path) -> dict[str, list[str]]:
    from tinymlaas_ci.spec.repo import load_repo

    repo = load_repo(root, results=False)
    return {run.id: list(run.spec.notify) for run in repo.runs}


@dataclass
class SendReport:
    """What happened to one message."""

    run_id: str
    recipients: list[str]
    subject: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def send_reports(
    reports: list[RunReport],
    settings: SmtpSettings | None,
    *,
    dry_run: bool = False,
    on_send: Callable[[SendReport], None] = lambda _r: None,
) -> list[SendReport]:
    """Send one message per report (``settings`` may be None with ``dry_run``). A failure is
    recorded in its :class:`SendReport` and the next message is still sent."""
    done: list[SendReport] = []
    for report in reports:
        entry = SendReport(report.run_id, report.recipients, subject_for(report))
        if not dry_run:
            assert settings is not None
            try:
                send_message(settings, build_message(report, settings.sender), report.recipients)
            except NotifyError as exc:
                entry.error = settings.redact(str(exc))
        done.append(entry)
        on_send(entry)
    return done
