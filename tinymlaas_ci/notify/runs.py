"""From run outcomes to emails: who is told what about which run.

``tinymlaas run --json FILE`` writes the outcomes of a run job; the publish job of the run
workflow downloads them from every device as ``outcomes/<device>.json``. For each run that
succeeded, failed a gate or failed, this module finds its result (the committed file; for a
failed run the run volume's ``result.json`` when the volume is on this machine), its ``notify``
list (from the result's spec, else from the spec file) and the links. Each recipient gets one
message per run command: the run's own message when only one run concerns them, else a digest
of all their runs (:func:`digests`), so a sweep of twelve runs is one email, not twelve.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from email.message import EmailMessage
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

__all__ = [
    "NOTIFY_STATUSES",
    "RECORDED_PREFIX",
    "Digest",
    "SendReport",
    "build_digest",
    "collect_reports",
    "digests",
    "send_reports",
]

RECORDED_PREFIX = "recorded result"
"""How the engine's message for a run skipped because its committed result already failed its
gates begins (``tinymlaas run`` reports such a run as ``gates-failed`` without running it)."""
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
        if status == "gates-failed" and (outcome.message or "").startswith(RECORDED_PREFIX):
            # Not measured by this run command: the verdict of a committed result, told when it was new.
            notes.append(f"{run_id}: gates-failed in its recorded result, told when it was measured")
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
class Digest:
    """One message: the runs it is about and who gets it (each recipient is in one digest)."""

    recipients: list[str]
    reports: list[RunReport]

    @property
    def run_ids(self) -> list[str]:
        return [r.run_id for r in self.reports]


def digests(reports: list[RunReport]) -> list[Digest]:
    """Group the reports into one message per recipient: every recipient's runs, in run order.
    Recipients told about exactly the same runs share one message."""
    per_person: dict[str, list[int]] = {}
    for index, report in enumerate(reports):
        for person in report.recipients:
            runs = per_person.setdefault(person, [])
            if index not in runs:
                runs.append(index)
    groups: dict[tuple[int, ...], list[str]] = {}
    for person, runs in per_person.items():
        groups.setdefault(tuple(runs), []).append(person)
    return [Digest(people, [reports[i] for i in runs]) for runs, people in groups.items()]


_STATUS_WORDS = {"succeeded": "succeeded", "gates-failed": "gates failed", "failed": "failed"}


def _digest_subject(reports: list[RunReport]) -> str:
    counts: dict[str, int] = {}
    for r in reports:
        counts[r.status] = counts.get(r.status, 0) + 1
    parts = [f"{counts[s]} {_STATUS_WORDS[s]}" for s in ("failed", "gates-failed", "succeeded") if s in counts]
    return f"[tinymlaas] {len(reports)} runs: " + ", ".join(parts)


def _html_body(msg: EmailMessage) -> str:
    html = msg.get_body(preferencelist=("html",)).get_content()
    found = re.search(r"<body[^>]*>(.*)</body>", html, re.DOTALL | re.IGNORECASE)
    return found.group(1) if found else html


def build_digest(digest: Digest, sender: str) -> EmailMessage:
    """The message of one :class:`Digest`: a single run's own email, or for several runs a
    summary line per run followed by each run's full report (text and HTML parts)."""
    if len(digest.reports) == 1:
        return build_message(replace(digest.reports[0], recipients=digest.recipients), sender)
    parts = [build_message(replace(r, recipients=digest.recipients), sender) for r in digest.reports]
    subject = _digest_subject(digest.reports)
    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"] = sender
    msg["To"] = ", ".join(digest.recipients)
    msg["Date"] = parts[0]["Date"]
    msg["Message-ID"] = parts[0]["Message-ID"]
    msg["X-Tinymlaas-Runs"] = ", ".join(digest.run_ids)
    lines = [subject.removeprefix("[tinymlaas] "), ""]
    lines += [f"  {subject_for(r).removeprefix('[tinymlaas] ')}" for r in digest.reports]
    text = "\n".join(lines) + "\n"
    for part in parts:
        body = part.get_body(preferencelist=("plain",)).get_content()
        text += "\n" + "=" * 72 + "\n" + body.split("\n-- \n")[0].rstrip() + "\n"
    text += "\n-- \nSent by tinymlaas notify: one message for all the runs of this run command.\n"
    msg.set_content(text)
    from html import escape

    items = "".join(f"<li>{escape(subject_for(r).removeprefix('[tinymlaas] '))}</li>" for r in digest.reports)
    sections = "<hr>".join(_html_body(p).split('<p style="color:#666">Sent by')[0] for p in parts)
    msg.add_alternative(
        f'<!DOCTYPE html><html><body style="font-family:sans-serif"><h2>{escape(lines[0])}</h2><ul>{items}</ul>'
        f'<hr>{sections}<p style="color:#666">Sent by tinymlaas notify: one message for all the runs of this '
        "run command.</p></body></html>",
        subtype="html",
    )
    return msg


@dataclass
class SendReport:
    """What happened to one message."""

    run_id: str
    """The run the message is about; for a digest, its runs separated by commas."""
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
    """Send one message per recipient (:func:`digests`; ``settings`` may be None with
    ``dry_run``). A failure is recorded in its :class:`SendReport` and the next message is
    still sent."""
    done: list[SendReport] = []
    for digest in digests(reports):
        sender = settings.sender if settings is not None else "tinymlaas@localhost"
        msg = build_digest(digest, sender)
        entry = SendReport(", ".join(digest.run_ids), digest.recipients, str(msg["Subject"]))
        if not dry_run:
            assert settings is not None
            try:
                send_message(settings, msg, digest.recipients)
            except NotifyError as exc:
                entry.error = settings.redact(str(exc))
        done.append(entry)
        on_send(entry)
    return done
