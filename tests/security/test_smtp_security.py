"""Email through a real SMTP server (aiosmtpd on 127.0.0.1): without TLS the password is never
sent unless ``TINYMLAAS_SMTP_ALLOW_INSECURE`` says so, and then every send warns; notify
entries must be single plain addresses, checked before anything is sent."""

from __future__ import annotations

import socket
import warnings

import pytest

from tinymlaas_ci.errors import NotifyError
from tinymlaas_ci.notify.email import InsecureSmtpWarning, RunReport, SmtpSettings, build_message, send_message

USER = "runner@example.com"
PASSWORD = "plain-Text-Pa55word!"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Plain:
    """An SMTP server with no TLS at all that offers AUTH in the clear (like a careless relay)
    and records every login attempt and every message."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword

        self.port = _free_port()
        self.logins: list[tuple[str, bytes]] = []
        self.messages: list = []
        server = self

        class Handler:
            async def handle_DATA(self, smtp, session, envelope):
                server.messages.append(envelope)
                return "250 OK"

        def authenticator(smtp, session, envelope, mechanism, auth_data):
            password = auth_data.password if isinstance(auth_data, LoginPassword) else b""
            server.logins.append((mechanism, password))
            return AuthResult(success=password == PASSWORD.encode(), handled=False)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # aiosmtpd warns about AUTH without TLS: that is the point
            self.controller = Controller(
                Handler(), hostname="127.0.0.1", port=self.port, authenticator=authenticator, auth_require_tls=False
            )

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "TINYMLAAS_SMTP_HOST": "127.0.0.1",
            "TINYMLAAS_SMTP_PORT": str(self.port),
            "TINYMLAAS_SMTP_USER": USER,
            "TINYMLAAS_SMTP_PASSWORD": PASSWORD,
            "TINYMLAAS_SMTP_FROM": "tinymlaas@example.com",
            "TINYMLAAS_SMTP_TIMEOUT": "10",
            **extra,
        }


@pytest.fixture
def plain_smtp():
    server = _Plain()
    server.controller.start()
    yield server
    server.controller.stop()


def _report(recipients: list[str]) -> RunReport:
    return RunReport(run_id="digits/cnn-none", status="succeeded", recipients=recipients)


def _send(settings: SmtpSettings, recipients: list[str]) -> None:
    send_message(settings, build_message(_report(["ok@example.com"]), settings.sender), recipients)


def test_no_tls_is_refused_without_allow_insecure_and_no_password_is_sent(plain_smtp):
    with pytest.raises(NotifyError) as info:
        SmtpSettings.from_env(plain_smtp.env(TINYMLAAS_SMTP_SECURITY="none"))
    assert "in clear text" in str(info.value)
    assert "TINYMLAAS_SMTP_ALLOW_INSECURE=1" in info.value.hint
    assert plain_smtp.logins == [] and plain_smtp.messages == []


def test_no_tls_with_allow_insecure_sends_and_warns(plain_smtp):
    settings = SmtpSettings.from_env(plain_smtp.env(TINYMLAAS_SMTP_SECURITY="none", TINYMLAAS_SMTP_ALLOW_INSECURE="1"))
    assert "NO TLS" in settings.describe() and PASSWORD not in settings.describe()
    with pytest.warns(InsecureSmtpWarning, match="without TLS"):
        _send(settings, ["ok@example.com"])
    assert [m for m, _ in plain_smtp.logins] and len(plain_smtp.messages) == 1


def test_starttls_against_a_server_without_it_never_sends_the_password(plain_smtp):
    settings = SmtpSettings.from_env(plain_smtp.env(TINYMLAAS_SMTP_SECURITY="starttls"))
    with pytest.raises(NotifyError) as info:
        _send(settings, ["ok@example.com"])
    assert PASSWORD not in str(info.value)
    assert plain_smtp.logins == [] and plain_smtp.messages == []


@pytest.mark.parametrize("address", ["a,b,c@x.yz", "<img/src=x/onerror=alert(1)>@x.yz", "Boss <b@x.yz>"])
def test_a_notify_entry_that_is_not_one_address_is_refused_before_sending(plain_smtp, address):
    settings = SmtpSettings.from_env(plain_smtp.env(TINYMLAAS_SMTP_SECURITY="none", TINYMLAAS_SMTP_ALLOW_INSECURE="1"))
    with pytest.raises(NotifyError) as info:
        _send(settings, ["ok@example.com", address])
    assert repr(address) in str(info.value) and "one address per notify entry" in info.value.hint
    assert plain_smtp.messages == [] and plain_smtp.logins == []
    with pytest.raises(NotifyError):
        build_message(_report([address]), settings.sender)


def test_allow_insecure_must_be_a_yes_or_no(plain_smtp):
    with pytest.raises(NotifyError, match="ALLOW_INSECURE='maybe'"):
        SmtpSettings.from_env(plain_smtp.env(TINYMLAAS_SMTP_SECURITY="none", TINYMLAAS_SMTP_ALLOW_INSECURE="maybe"))
