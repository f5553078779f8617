"""``tinymlaas notify`` against a real SMTP server on loopback: STARTTLS or TLS, AUTH required."""

from __future__ import annotations

import email
import email.policy
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.notify.conftest import PASSWORD, USER, free_port
from tinymlaas_ci.errors import NotifyError
from tinymlaas_ci.notify.email import RunReport, SmtpSettings, build_message, subject_for


def notify(repo: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TINYMLAAS_SMTP_", "GITHUB_", "TINYMLAAS_SITE_URL", "TINYMLAAS_WORK_DIR"))
    }
    clean.update(env)
    clean.update(GITHUB_SERVER_URL="https://github.com", GITHUB_REPOSITORY="acme/tinyml", GITHUB_RUN_ID="4242")
    return subprocess.run(
        [sys.executable, "-m", "tinymlaas_ci", "-C", str(repo), "notify", "--outcomes", str(repo / "outcomes"), *args],
        capture_output=True,
        text=True,
        env=clean,
        timeout=120,
        check=False,
    )


def parse(envelope) -> email.message.EmailMessage:
    return email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return h.hexdigest()


def assert_no_password(proc: subprocess.CompletedProcess) -> None:
    assert PASSWORD not in proc.stdout + proc.stderr


def test_starttls_with_auth_sends_one_mail_per_run(notify_repo, smtp_starttls):
    proc = notify(notify_repo, smtp_starttls.env())
    assert proc.returncode == 0, proc.stderr
    assert_no_password(proc)
    assert "2 emails sent" in proc.stdout
    assert "digits/cnn-none: up-to-date, nothing to tell" in proc.stdout
    assert smtp_starttls.logins and all(ok for _, ok in smtp_starttls.logins)

    by_rcpt = {tuple(sorted(e.rcpt_tos)): e for e in smtp_starttls.messages}
    assert set(by_rcpt) == {("lead@example.com", "ml-team@example.com"), ("oncall@example.com",)}

    ok = parse(by_rcpt[("lead@example.com", "ml-team@example.com")])
    assert ok["Subject"].strip() == "[tinymlaas] digits/cnn-static-int8 succeeded: accuracy 0.983, p50 0.032 ms"
    assert ok["From"] == "tinymlaas@example.com"
    text = ok.get_body(preferencelist=("plain",)).get_content()
    html = ok.get_body(preferencelist=("html",)).get_content()
    for body in (text, html):
        assert "0.9833" in body  # accuracy from the result
        assert "51,414" in body  # model size in bytes
        assert "3.17x" in body  # compression ratio 163080 / 51414
        assert "min_accuracy: measured 0.9833 meets the limit 0.9" in body
        assert "https://ml.example.com/site/projects/digits/runs/cnn-static-int8.html" in body
        assert "https://github.com/acme/tinyml/actions/runs/4242" in body
        assert "https://github.com/acme/tinyml/commit/0123456789abcdef0123456789abcdef01234567" in body
    assert "<table>" in html and "<td" in html

    failed = parse(by_rcpt[("oncall@example.com",)])
    assert failed["Subject"].strip() == "[tinymlaas] digits/cnn-broken FAILED at compile"
    assert "torch export failed: boom" in failed.get_body(preferencelist=("plain",)).get_content()


def test_wrong_password_is_reported_exit_0_and_nothing_changes(notify_repo, smtp_starttls):
    before = tree_digest(notify_repo)
    proc = notify(notify_repo, smtp_starttls.env(TINYMLAAS_SMTP_PASSWORD="wrong-" + PASSWORD))
    assert proc.returncode == 0
    assert "rejected the login" in proc.stderr
    assert "2 of 2 emails failed (run results are unchanged)" in proc.stderr
    assert "wrong-" not in proc.stdout + proc.stderr
    assert_no_password(proc)
    assert smtp_starttls.messages == []
    assert tree_digest(notify_repo) == before


def test_server_down_is_reported(notify_repo, smtp_starttls):
    proc = notify(notify_repo, smtp_starttls.env(TINYMLAAS_SMTP_PORT=str(free_port())))
    assert proc.returncode == 0
    assert "cannot connect to smtp://" in proc.stderr
    assert "hint: check TINYMLAAS_SMTP_HOST and TINYMLAAS_SMTP_PORT" in proc.stderr
    assert "2 of 2 emails failed" in proc.stderr
    assert_no_password(proc)


def test_untrusted_certificate_is_reported_with_the_fix(notify_repo, smtp_starttls):
    env = smtp_starttls.env()
    del env["TINYMLAAS_SMTP_CA_FILE"]
    proc = notify(notify_repo, env)
    assert proc.returncode == 0
    assert "TLS failed" in proc.stderr and "TINYMLAAS_SMTP_CA_FILE" in proc.stderr
    assert smtp_starttls.messages == []


def test_ssl_mode(notify_repo, smtp_ssl):
    proc = notify(notify_repo, smtp_ssl.env())
    assert proc.returncode == 0, proc.stderr
    assert "(ssl)" in proc.stdout and "2 emails sent" in proc.stdout
    assert len(smtp_ssl.messages) == 2
    assert_no_password(proc)


def test_no_host_is_a_clear_error_but_exit_0_and_dry_run_needs_no_settings(notify_repo):
    proc = notify(notify_repo, {})
    assert proc.returncode == 0
    assert "TINYMLAAS_SMTP_HOST is not set" in proc.stderr
    assert "2 of 2 emails failed" in proc.stderr
    dry = notify(notify_repo, {}, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would send to ml-team@example.com, lead@example.com" in dry.stdout
    assert "Subject: [tinymlaas] digits/cnn-broken FAILED at compile" in dry.stdout


def test_missing_outcomes_is_a_usage_error(notify_repo):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tinymlaas_ci",
            "-C",
            str(notify_repo),
            "notify",
            "--outcomes",
            str(notify_repo / "nope"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "no such file or folder" in proc.stderr


@pytest.mark.parametrize(
    "env, match",
    [
        ({"TINYMLAAS_SMTP_SECURITY": "tls"}, "SECURITY='tls' is not one of"),
        ({"TINYMLAAS_SMTP_PORT": "99999"}, "PORT='99999' is not a port"),
        ({"TINYMLAAS_SMTP_USER": "u"}, "USER is set but TINYMLAAS_SMTP_PASSWORD is not"),
        ({"TINYMLAAS_SMTP_CA_FILE": "/nonexistent/ca.pem"}, "CA_FILE='/nonexistent/ca.pem' is not a file"),
    ],
)
def test_bad_settings_say_which_and_how(env, match):
    with pytest.raises(NotifyError, match=match):
        SmtpSettings.from_env({"TINYMLAAS_SMTP_HOST": "smtp.example.com", **env})


def test_settings_defaults_and_repr_hides_password():
    s = SmtpSettings.from_env(
        {
            "TINYMLAAS_SMTP_HOST": "smtp.example.com",
            "TINYMLAAS_SMTP_USER": USER,
            "TINYMLAAS_SMTP_PASSWORD": PASSWORD,
            "TINYMLAAS_SMTP_SECURITY": "SSL",
        }
    )
    assert (s.port, s.security, s.sender) == (465, "ssl", USER)
    assert PASSWORD not in repr(s) and PASSWORD not in s.describe()
    assert s.redact(f"AUTH PLAIN {s.secrets()[2]} and {PASSWORD}") == "AUTH PLAIN *** and ***"


def test_gates_failed_subject_names_the_gates():
    result = {
        "metrics": {"accuracy": 0.91, "latency_ms": {"p50": 0.5}},
        "gates": [
            {"gate": "max_latency_p95_ms", "passed": False, "message": "too slow"},
            {"gate": "min_accuracy", "passed": True, "message": "ok"},
        ],
    }
    report = RunReport("digits/x", "gates-failed", ["a@example.com"], result=result)
    assert subject_for(report) == "[tinymlaas] digits/x gates FAILED (max_latency_p95_ms): accuracy 0.910, p50 0.500 ms"
    msg = build_message(report, "t@example.com")
    assert "FAIL  too slow" in msg.get_body(preferencelist=("plain",)).get_content()
