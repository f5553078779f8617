"""Email notifications: one message per run to the run's ``notify`` list.

Settings come from the environment (the workflow passes them from repository secrets):

=============================  ==========================================================
``TINYMLAAS_SMTP_HOST``        SMTP server (required to send)
``TINYMLAAS_SMTP_PORT``        port (default 587 for ``starttls``, 465 for ``ssl``, 25 for ``none``)
``TINYMLAAS_SMTP_USER``        login user (no login when unset)
``TINYMLAAS_SMTP_PASSWORD``    login password; never printed, logged or put in an error
``TINYMLAAS_SMTP_SECURITY``    ``starttls`` (default), ``ssl`` or ``none`` (needs ``ALLOW_INSECURE``)
``TINYMLAAS_SMTP_ALLOW_INSECURE``  ``1`` to allow ``none``: mail and password in clear text
``TINYMLAAS_SMTP_FROM``        sender address (default: the user, else ``tinymlaas@<host>``)
``TINYMLAAS_SMTP_CA_FILE``     PEM file of CAs to trust instead of the system's (private servers)
``TINYMLAAS_SMTP_TIMEOUT``     seconds to wait for the server (default 30)
``TINYMLAAS_SITE_URL``         the published site, for the link to the run's page
=============================  ==========================================================

Without TLS the password would cross the network in clear text, so ``security: none`` is
refused unless ``TINYMLAAS_SMTP_ALLOW_INSECURE`` is set (a relay on the same machine), and then
every send warns. ``starttls`` never falls back: a server that does not offer STARTTLS gets no
password. Recipients are checked to be single plain addresses before anything is sent.

A mail that cannot be sent raises :class:`~tinymlaas_ci.errors.NotifyError`; the caller reports
it and goes on. Notifications never change a run's result. ``smtplib`` and ``ssl`` errors are
wrapped here, once, with the password (and its base64 forms) removed from the text.
"""

from __future__ import annotations

import base64
import os
import smtplib
import ssl
import warnings
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from tinymlaas_ci.errors import NotifyError
from tinymlaas_ci.results.metrics import METRICS, metric_values
from tinymlaas_ci.spec.text import address_problem

__all__ = [
    "ENV_PREFIX",
    "SECURITY_MODES",
    "InsecureSmtpWarning",
    "RunReport",
    "SmtpSettings",
    "build_message",
    "check_recipients",
    "send_message",
    "subject_for",
]

ENV_PREFIX = "TINYMLAAS_SMTP_"
SECURITY_MODES = ("starttls", "ssl", "none")
_DEFAULT_PORTS = {"starttls": 587, "ssl": 465, "none": 25}


class _MappingEnv(EnvSettingsSource):
    """The environment variables of a given mapping instead of ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]):
        self._mapping = env
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {key.lower(): value for key, value in self._mapping.items()}


_ENV: ContextVar[Mapping[str, str] | None] = ContextVar("tinymlaas_smtp_env", default=None)


def _fail(name: str, message: str, hint: str) -> ValueError:
    """A settings error; :meth:`SmtpSettings.from_env` turns it into a :class:`NotifyError`."""
    return ValueError(_SettingsProblem(f"{ENV_PREFIX}{name}{message}", hint))


@dataclass(frozen=True)
class _SettingsProblem:
    message: str
    hint: str

    def __str__(self) -> str:
        return self.message


class SmtpSettings(BaseSettings):
    """How to reach the SMTP server, read from the ``TINYMLAAS_SMTP_*`` variables. ``repr``
    never shows the password."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, frozen=True, extra="ignore")

    host: str | None = None
    """SMTP server (required to send)."""
    port: int | None = None
    """Port (default: 587 for ``starttls``, 465 for ``ssl``, 25 for ``none``)."""
    security: str = "starttls"
    """``starttls``, ``ssl`` or ``none``."""
    user: str | None = None
    """Login user; no login when unset."""
    password: str | None = Field(default=None, repr=False)
    """Login password; never printed, logged or put in an error."""
    sender: str | None = Field(default=None, validation_alias=AliasChoices(ENV_PREFIX + "FROM", "sender"))
    """Sender address (default: the user, else ``tinymlaas@<host>``)."""
    ca_file: str | None = None
    """PEM file of CAs to trust instead of the system's."""
    timeout: float = 30.0
    """Seconds to wait for the server."""
    allow_insecure: bool = False
    """Allow ``security: none``: mail, login and password then cross the network in clear
    text. Only for a relay on the same machine or a network you trust; every send warns."""

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        env = _ENV.get()
        return (init_settings, env_settings if env is None else _MappingEnv(settings_cls, env))

    @field_validator("security", mode="before")
    @classmethod
    def _security(cls, value: Any) -> str:
        value = str(value or "starttls").lower()
        if value not in SECURITY_MODES:
            raise _fail(
                "SECURITY",
                f"={value!r} is not one of: {', '.join(SECURITY_MODES)}",
                "starttls (port 587) upgrades a plain connection; ssl (port 465) is TLS from the start; "
                "none sends in clear text (local relays only)",
            )
        return value

    @field_validator("port", mode="before")
    @classmethod
    def _port(cls, value: Any) -> int | None:
        if value is None:
            return None
        try:
            port = int(value)
        except (TypeError, ValueError):
            port = -1
        if not 1 <= port <= 65535:
            raise _fail(
                "PORT",
                f"={value!r} is not a port number",
                "give a number from 1 to 65535, e.g. 587 for starttls or 465 for ssl",
            )
        return port

    @field_validator("ca_file")
    @classmethod
    def _ca_file(cls, value: str | None) -> str | None:
        if value and not os.path.isfile(value):
            raise _fail(
                "CA_FILE",
                f"={value!r} is not a file",
                "point it at a PEM file of the CA that signed the server's certificate, or unset it",
            )
        return value

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, value: Any) -> float:
        if value is None:
            return 30.0
        try:
            timeout = float(value)
        except (TypeError, ValueError):
            timeout = -1.0
        if timeout <= 0:
            raise _fail("TIMEOUT", f"={value!r} is not a positive number of seconds", "e.g. 30")
        return timeout

    @field_validator("allow_insecure", mode="before")
    @classmethod
    def _allow_insecure(cls, value: Any) -> bool:
        if value is None or isinstance(value, bool):
            return bool(value)
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("", "0", "false", "no", "off"):
            return False
        raise _fail("ALLOW_INSECURE", f"={value!r} is not a yes/no value", "set it to 1 (allow) or 0 (refuse)")

    @field_validator(
        "host", "user", "sender", "ca_file", "security", "port", "timeout", "allow_insecure", mode="before"
    )
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        # Defined after the other validators so that it runs before them (pydantic runs "before"
        # validators last-defined first). Secrets that are not set arrive as empty or blank
        # strings. The password is kept as given: spaces may be part of it.
        if isinstance(value, str):
            return value.strip() or None
        return value

    @model_validator(mode="after")
    def _together(self) -> SmtpSettings:
        if self.host is None:
            raise _fail(
                "HOST",
                " is not set, so no email can be sent",
                f"set {ENV_PREFIX}HOST (and _PORT, _USER, _PASSWORD, _SECURITY, _FROM) from your "
                "repository's secrets, or use --dry-run to see what would be sent",
            )
        if self.password and not self.user:
            raise _fail(
                "PASSWORD",
                f" is set but {ENV_PREFIX}USER is not",
                f"set {ENV_PREFIX}USER to the login name that goes with the password",
            )
        if self.user and not self.password:
            raise _fail(
                "USER", f" is set but {ENV_PREFIX}PASSWORD is not", f"set {ENV_PREFIX}PASSWORD from a repository secret"
            )
        if self.security == "none" and not self.allow_insecure:
            what = "the login and password" if self.user else "every mail"
            raise _fail(
                "SECURITY",
                f"=none would send {what} in clear text",
                f"use starttls (port 587) or ssl (port 465); for a relay on this machine, set "
                f"{ENV_PREFIX}ALLOW_INSECURE=1 to allow it",
            )
        # Defaults that depend on other settings; the model is frozen, so they are set once here.
        if not self.port:
            object.__setattr__(self, "port", _DEFAULT_PORTS[self.security])
        if not self.sender:
            user = self.user
            object.__setattr__(self, "sender", user if user and "@" in user else f"tinymlaas@{self.host}")
        if "@" not in self.sender:
            raise _fail("FROM", f"={self.sender!r} is not an email address", "write it as name@example.com")
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SmtpSettings:
        """Read the settings from ``env`` (default: ``os.environ``); a bad or missing one is a
        :class:`NotifyError` that names the variable and how to fix it."""
        token = _ENV.set(env)
        try:
            return cls()
        except ValidationError as exc:
            errors = exc.errors()
            for error in errors:
                problem = (error.get("ctx") or {}).get("error")
                if isinstance(problem, ValueError) and isinstance(problem.args[0], _SettingsProblem):
                    raise NotifyError(problem.args[0].message, hint=problem.args[0].hint) from None
            raise NotifyError(f"SMTP settings: {exc}", hint=f"check the {ENV_PREFIX}* variables") from None
        finally:
            _ENV.reset(token)

    def describe(self) -> str:
        """Where mail goes, for messages: host, port, security and user; never the password."""
        who = f"{self.user}@" if self.user else ""
        security = self.security
        if security == "none":
            security = "none: NO TLS, mail" + (" and password" if self.user else "") + " in clear text"
        return f"smtp://{who}{self.host}:{self.port} ({security})"

    def secrets(self) -> list[str]:
        """Texts that must never appear in output: the password and the forms AUTH sends it in."""
        if not self.password:
            return []
        user = self.user or ""
        forms = [
            self.password,
            base64.b64encode(self.password.encode()).decode(),
            base64.b64encode(f"\0{user}\0{self.password}".encode()).decode(),
        ]
        return [f for f in forms if f]

    def redact(self, text: str) -> str:
        for secret in sorted(self.secrets(), key=len, reverse=True):
            text = text.replace(secret, "***")
        return text


# -- the message ------------------------------------------------------------------------------


@dataclass
class RunReport:
    """What one message is about: a run's outcome, its result (when there is one) and links."""

    run_id: str
    status: str
    """``succeeded``, ``gates-failed`` or ``failed``."""
    recipients: list[str]
    result: dict[str, Any] | None = None
    failed_stage: str | None = None
    message: str | None = None
    links: dict[str, str] = field(default_factory=dict)
    """Label -> URL: the run's page, the Actions run, the commit."""


def _metrics(result: dict[str, Any] | None) -> dict[str, Any]:
    return (result or {}).get("metrics") or {}


def subject_for(report: RunReport) -> str:
    """``[tinymlaas] digits/cnn-static-int8 succeeded: accuracy 0.983, p50 0.032 ms`` and the like."""
    m = _metrics(report.result)
    head = f"[tinymlaas] {report.run_id}"
    if report.status == "failed":
        where = f" at {report.failed_stage}" if report.failed_stage else ""
        return f"{head} FAILED{where}"
    numbers = ""
    if m:
        p50 = (m.get("latency_ms") or {}).get("p50")
        numbers = f": accuracy {m.get('accuracy', 0):.3f}" + (f", p50 {p50:.3f} ms" if p50 is not None else "")
    if report.status == "gates-failed":
        failed = [g.get("gate") for g in (report.result or {}).get("gates", []) if not g.get("passed")]
        return f"{head} gates FAILED ({', '.join(failed) or 'gates'}){numbers}"
    return f"{head} {report.status}{numbers}"


_EMAIL_METRICS = (
    "accuracy",
    "baseline_accuracy",
    "accuracy_drop",
    "latency_ms.p50",
    "latency_ms.p99",
    "model_size_bytes",
    "compression_ratio",
    "peak_memory_mb",
    "samples",
)
"""The metrics an email lists, in order (labels and formats: :data:`~tinymlaas_ci.results.metrics.METRICS`)."""


def metric_rows(result: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The metrics table as (label, formatted value) rows; missing metrics are left out."""
    values = metric_values(_metrics(result))
    rows = []
    for m in METRICS:
        if m.key in _EMAIL_METRICS and m.key in values:
            rows.append((m.label, m.format(values[m.key]) + ("x" if m.key == "compression_ratio" else "")))
    return rows


def _gate_rows(result: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    return [
        (g.get("gate", "?"), "pass" if g.get("passed") else "FAIL", g.get("message", ""))
        for g in (result or {}).get("gates", [])
    ]


def _context(report: RunReport) -> list[tuple[str, str]]:
    r = report.result or {}
    device = (r.get("device") or {}).get("name") or (r.get("spec") or {}).get("device")
    quant = (r.get("compression") or {}).get("quantization") or ((r.get("spec") or {}).get("compression") or {}).get(
        "quantization"
    )
    runtime = r.get("runtime") or {}
    rows = [("run", report.run_id), ("status", report.status)]
    if device:
        rows.append(("device", str(device)))
    if quant:
        rows.append(("quantization", str(quant)))
    if runtime.get("name"):
        rows.append(("runtime", f"{runtime['name']} {runtime.get('version', '')}".strip()))
    return rows


def _body_context(report: RunReport) -> dict[str, Any]:
    return {
        "report": report,
        "title": subject_for(report).removeprefix("[tinymlaas] "),
        "context": _context(report),
        "metrics": metric_rows(report.result),
        "gates": _gate_rows(report.result),
        "colour": {"succeeded": "#1a7f37", "gates-failed": "#bf8700"}.get(report.status, "#cf222e"),
    }


_TEMPLATES: dict[bool, Environment] = {}


def _render(name: str, report: RunReport) -> str:
    html = name.endswith(".html.j2")
    env = _TEMPLATES.get(html)
    if env is None:
        env = _TEMPLATES[html] = Environment(
            loader=PackageLoader("tinymlaas_ci.notify", "templates"),
            autoescape=html,  # run names, messages and links are escaped in the HTML part
            undefined=StrictUndefined,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
    return env.get_template(name).render(**_body_context(report))


def build_message(report: RunReport, sender: str) -> EmailMessage:
    """The email for one run: a plain-text part and an HTML part with the same facts."""
    check_recipients(report.recipients)
    msg = EmailMessage()
    msg["Subject"] = subject_for(report)
    msg["From"] = sender
    msg["To"] = ", ".join(report.recipients)
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = make_msgid(domain=sender.rsplit("@", 1)[-1] or None)
    msg["X-Tinymlaas-Run"] = report.run_id
    msg["X-Tinymlaas-Status"] = report.status
    msg.set_content(_render("email.txt.j2", report))
    msg.add_alternative(_render("email.html.j2", report), subtype="html")
    return msg


# -- sending ----------------------------------------------------------------------------------


class InsecureSmtpWarning(UserWarning):
    """Mail is sent without TLS because ``TINYMLAAS_SMTP_ALLOW_INSECURE`` allows it."""


def check_recipients(recipients: Sequence[str]) -> None:
    """Refuse anything but single plain addresses (:func:`tinymlaas_ci.spec.text.address_problem`):
    ``a,b,c@x.yz`` is not three recipients, and markup is not an address."""
    bad = []
    for address in recipients:
        problem = address_problem(address)
        if problem is not None:
            bad.append(f"{address!r} ({problem[0]})")
    if not recipients:
        raise NotifyError("no recipients", hint="add addresses to the run spec's notify list")
    if bad:
        raise NotifyError(
            f"not sent: {', '.join(bad)} {'is' if len(bad) == 1 else 'are'} not an email address",
            hint="write one address per notify entry, as name@example.com",
        )


def _tls_context(settings: SmtpSettings) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=settings.ca_file) if settings.ca_file else ssl.create_default_context()


def send_message(settings: SmtpSettings, msg: EmailMessage, recipients: Sequence[str]) -> None:
    """Send ``msg`` to ``recipients``. Any failure is one :class:`NotifyError` whose text never
    holds the password."""
    where = settings.describe()
    check_recipients(recipients)
    if settings.security == "none":
        warnings.warn(
            f"sending mail to {settings.host}:{settings.port} without TLS"
            + (" (the password too)" if settings.user else "")
            + f", because {ENV_PREFIX}ALLOW_INSECURE is set",
            InsecureSmtpWarning,
            stacklevel=2,
        )
    # ``from None`` below: the chained smtplib exception adds nothing the message lacks, and a
    # traceback printed by a caller must not carry the SMTP dialogue.
    try:
        if settings.security == "ssl":
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                settings.host, settings.port, timeout=settings.timeout, context=_tls_context(settings)
            )
        else:
            client = smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout)
        with client:
            client.ehlo()
            if settings.security == "starttls":
                client.starttls(context=_tls_context(settings))
                client.ehlo()
            if settings.user:
                _login(client, settings)
            refused = client.send_message(msg, from_addr=settings.sender, to_addrs=list(recipients))
        if refused:
            bad = ", ".join(f"{addr} ({code} {_decode(text)})" for addr, (code, text) in refused.items())
            raise NotifyError(
                f"{where} refused some recipients: {bad}", hint="check the addresses in the run spec's notify list"
            )
    except NotifyError as exc:
        raise NotifyError(settings.redact(exc.message), hint=exc.hint) from None
    except smtplib.SMTPAuthenticationError as exc:
        raise NotifyError(
            f"{where} rejected the login: {exc.smtp_code} {_decode(exc.smtp_error)}",
            hint=f"check {ENV_PREFIX}USER and {ENV_PREFIX}PASSWORD",
        ) from None
    except smtplib.SMTPNotSupportedError as exc:
        raise NotifyError(
            f"{where}: the server does not support {settings.security if 'TLS' in str(exc) else 'AUTH'}: "
            f"{settings.redact(str(exc))}",
            hint=f"check {ENV_PREFIX}SECURITY and {ENV_PREFIX}PORT: starttls usually uses 587, ssl 465",
        ) from None
    except smtplib.SMTPRecipientsRefused as exc:
        bad = ", ".join(f"{addr} ({code} {_decode(text)})" for addr, (code, text) in exc.recipients.items())
        raise NotifyError(
            f"{where} refused every recipient: {bad}", hint="check the addresses in the run spec's notify list"
        ) from None
    except smtplib.SMTPException as exc:
        raise NotifyError(
            f"{where}: {type(exc).__name__}: {settings.redact(str(exc))}",
            hint="check the SMTP settings and the server's log",
        ) from None
    except ssl.SSLError as exc:
        raise NotifyError(
            f"{where}: TLS failed: {settings.redact(str(exc))}",
            hint=f"if the server's certificate is from a private CA, set {ENV_PREFIX}CA_FILE to its PEM file; "
            f"check {ENV_PREFIX}SECURITY (ssl for port 465, starttls for 587)",
        ) from None
    except TimeoutError as exc:
        raise NotifyError(
            f"{where}: no answer within {settings.timeout:g} s ({exc})",
            hint="check the host and port, and that the runner may reach it",
        ) from None
    except OSError as exc:
        raise NotifyError(
            f"cannot connect to {where}: {settings.redact(str(exc))}",
            hint=f"check {ENV_PREFIX}HOST and {ENV_PREFIX}PORT, and that the server runs",
        ) from None


def _login(client: smtplib.SMTP, settings: SmtpSettings) -> None:
    """Log in with one mechanism, PLAIN or LOGIN (both safe inside TLS), else smtplib's choice.

    ``smtplib.SMTP.login`` tries every mechanism in turn after a rejected password; servers
    that lock an account after repeated failures count each try, so one is enough.
    """
    if not client.has_extn("auth"):
        raise smtplib.SMTPNotSupportedError("SMTP AUTH extension not supported by server.")
    offered = client.esmtp_features.get("auth", "").upper().split()
    client.user, client.password = settings.user or "", settings.password or ""
    if "PLAIN" in offered:
        code, resp = client.auth("PLAIN", client.auth_plain)
    elif "LOGIN" in offered:
        code, resp = client.auth("LOGIN", client.auth_login)
    else:
        client.login(settings.user or "", settings.password or "")
        return
    if code not in (235, 503):
        raise smtplib.SMTPAuthenticationError(code, resp)


def _decode(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
