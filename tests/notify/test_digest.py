"""One email per recipient per run command: a sweep's runs arrive as one digest, against a
real SMTP server on loopback."""

from __future__ import annotations

import json
from pathlib import Path

from tests.notify.test_notify import notify, parse


def _sweep(repo: Path) -> None:
    """Three more runs of a sweep for ml-team (one of them failed its gates), one of them also
    for a second person; the outcomes of one device job."""
    results = repo / "runs" / "digits" / "results"
    source = json.loads((results / "cnn-static-int8.json").read_text())
    outcomes = json.loads((repo / "outcomes" / "host.json").read_text())
    for name, status, extra in (
        ("cnn-fp16", "succeeded", []),
        ("cnn-dynamic-int8", "gates-failed", ["qa@example.com"]),
        ("cnn-pruned", "succeeded", []),
    ):
        res = json.loads(json.dumps(source))
        res["run"]["name"] = name
        res["status"] = status
        res["spec"]["notify"] = ["ml-team@example.com", *extra]
        if status == "gates-failed":
            res["gates"][0].update(passed=False, message="min_accuracy: measured 0.8 fails the limit 0.9")
        (results / f"{name}.json").write_text(json.dumps(res))
        outcomes["outcomes"].append(
            {"run": f"digits/{name}", "status": status, "result": f"runs/digits/results/{name}.json"}
        )
    (repo / "outcomes" / "host.json").write_text(json.dumps(outcomes))


def test_a_sweep_is_one_digest_per_recipient(notify_repo, smtp_starttls):
    _sweep(notify_repo)
    proc = notify(notify_repo, smtp_starttls.env())
    assert proc.returncode == 0, proc.stderr
    per_person: dict[str, list] = {}
    for envelope in smtp_starttls.messages:
        for rcpt in envelope.rcpt_tos:
            per_person.setdefault(rcpt, []).append(parse(envelope))
    assert {p: len(m) for p, m in per_person.items()} == {
        "ml-team@example.com": 1,
        "lead@example.com": 1,
        "qa@example.com": 1,
        "oncall@example.com": 1,
    }
    team = per_person["ml-team@example.com"][0]
    assert team["Subject"].strip() == "[tinymlaas] 4 runs: 1 gates failed, 3 succeeded"
    text = team.get_body(preferencelist=("plain",)).get_content()
    html = team.get_body(preferencelist=("html",)).get_content()
    for run in ("cnn-static-int8", "cnn-fp16", "cnn-dynamic-int8", "cnn-pruned"):
        assert f"digits/{run}" in text and f"digits/{run}" in html
    assert "min_accuracy: measured 0.8 fails the limit 0.9" in text
    assert html.count("<html") == 1 and html.count("</body>") == 1
    # lead@ is on one run only: that run's own message, as before.
    lead = per_person["lead@example.com"][0]
    assert lead["Subject"].strip().startswith("[tinymlaas] digits/cnn-static-int8 succeeded")
    # qa@ is on one run only too, with its gate failure in the subject.
    assert "gates FAILED" in per_person["qa@example.com"][0]["Subject"]
    assert "4 emails sent" in proc.stdout


def test_dry_run_shows_the_digest(notify_repo):
    _sweep(notify_repo)
    proc = notify(notify_repo, {}, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("--- would send to") == 4
    assert "Subject: [tinymlaas] 4 runs: 1 gates failed, 3 succeeded" in proc.stdout


def test_a_recorded_gate_failure_is_not_mailed_again(notify_repo, smtp_starttls):
    """``tinymlaas run`` reports a run whose committed result failed its gates as gates-failed
    without running it; nobody is told again."""
    outcomes = json.loads((notify_repo / "outcomes" / "host.json").read_text())
    outcomes["outcomes"][0].update(
        status="gates-failed",
        message="recorded result runs/digits/results/cnn-static-int8.json failed its gates; change the spec, "
        "or --force to measure again",
    )
    (notify_repo / "outcomes" / "host.json").write_text(json.dumps(outcomes))
    proc = notify(notify_repo, smtp_starttls.env())
    assert proc.returncode == 0, proc.stderr
    assert "digits/cnn-static-int8: gates-failed in its recorded result" in proc.stdout
    assert [sorted(e.rcpt_tos) for e in smtp_starttls.messages] == [["oncall@example.com"]]
