"""A real SMTP server on 127.0.0.1 (aiosmtpd) with STARTTLS or implicit TLS and AUTH required,
a self-signed certificate made in the test, and a repository with real result files."""

from __future__ import annotations

import datetime
import json
import shutil
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
USER = "runner@example.com"
PASSWORD = "s3cret-Pa55word!"


@pytest.fixture(scope="session")
def cert(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost: (cert.pem, key.pem)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class SmtpServer:
    host: str
    port: int
    ca_file: Path
    security: str
    messages: list = field(default_factory=list)
    logins: list = field(default_factory=list)

    def env(self, **overrides: str) -> dict[str, str]:
        env = {
            "TINYMLAAS_SMTP_HOST": self.host,
            "TINYMLAAS_SMTP_PORT": str(self.port),
            "TINYMLAAS_SMTP_USER": USER,
            "TINYMLAAS_SMTP_PASSWORD": PASSWORD,
            "TINYMLAAS_SMTP_SECURITY": self.security,
            "TINYMLAAS_SMTP_FROM": "tinymlaas@example.com",
            "TINYMLAAS_SMTP_CA_FILE": str(self.ca_file),
            "TINYMLAAS_SMTP_TIMEOUT": "10",
            "TINYMLAAS_SITE_URL": "https://ml.example.com/site/",
        }
        env.update(overrides)
        return env


def _server(cert, security: str):
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    cert_path, key_path = cert
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    server = SmtpServer("127.0.0.1", free_port(), cert_path, security)

    class Handler:
        async def handle_DATA(self, smtp, session, envelope):
            server.messages.append(envelope)
            return "250 OK"

    def authenticator(smtp, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == USER.encode()
            and auth_data.password == PASSWORD.encode()
        )
        server.logins.append((mechanism, ok))
        return AuthResult(success=ok, handled=False)  # handled=False: the server answers 535

    kwargs = {"hostname": "127.0.0.1", "port": server.port, "authenticator": authenticator, "auth_required": True}
    if security == "ssl":
        # aiosmtpd counts only STARTTLS as TLS when deciding to offer AUTH; this connection is
        # TLS from its first byte, so AUTH may be offered on it.
        controller = Controller(Handler(), ssl_context=context, auth_require_tls=False, **kwargs)
    else:
        controller = Controller(Handler(), tls_context=context, require_starttls=True, **kwargs)
    return controller, server


@pytest.fixture
def smtp_starttls(cert):
    controller, server = _server(cert, "starttls")
    controller.start()
    yield server
    controller.stop()


@pytest.fixture
def smtp_ssl(cert):
    controller, server = _server(cert, "ssl")
    controller.start()
    yield server
    controller.stop()


@pytest.fixture
def notify_repo(tmp_path) -> Path:
    """A repository with one committed result (succeeded), one failed run whose result is in
    its run volume, one up-to-date run, and the outcomes of two devices in outcomes/."""
    repo = tmp_path / "repo"
    results = repo / "runs" / "digits" / "results"
    results.mkdir(parents=True)
    source = json.loads((ROOT / "runs" / "digits" / "results" / "cnn-static-int8.json").read_text())
    source["spec"]["notify"] = ["ml-team@example.com", "lead@example.com"]
    source["run"]["spec_commit"] = "0123456789abcdef0123456789abcdef01234567"
    # Pin the numbers the tests read, so re-measuring the example's results changes nothing here.
    metrics = source["metrics"]
    metrics.update(
        accuracy=0.98333, model_size_bytes=51414, baseline_model_bytes=163080, compression_ratio=163080 / 51414
    )
    metrics["latency_ms"]["p50"] = 0.0321
    source["gates"] = [
        {
            "gate": "min_accuracy",
            "limit": 0.9,
            "value": 0.98333,
            "passed": True,
            "message": "min_accuracy: measured 0.9833 meets the limit 0.9",
        }
    ]
    (results / "cnn-static-int8.json").write_text(json.dumps(source, indent=2, sort_keys=True))
    shutil.copy(ROOT / "runs" / "digits" / "results" / "cnn-none.json", results / "cnn-none.json")

    failed = json.loads(json.dumps(source))
    failed.update(
        status="failed", metrics=None, gates=[], error={"stage": "compile", "message": "torch export failed: boom"}
    )
    failed["run"]["name"] = "cnn-broken"
    failed["spec"]["notify"] = ["oncall@example.com"]
    volume = repo / ".tinymlaas" / "work" / "digits" / "cnn-broken"
    (volume / "compile").mkdir(parents=True)
    (volume / "result.json").write_text(json.dumps(failed))

    outcomes = repo / "outcomes"
    outcomes.mkdir()
    (outcomes / "host.json").write_text(
        json.dumps(
            {
                "schema": 1,
                "outcomes": [
                    {
                        "run": "digits/cnn-static-int8",
                        "status": "succeeded",
                        "result": "runs/digits/results/cnn-static-int8.json",
                        "failed_stage": None,
                        "message": None,
                        "log": None,
                    },
                    {
                        "run": "digits/cnn-none",
                        "status": "up-to-date",
                        "result": "runs/digits/results/cnn-none.json",
                        "failed_stage": None,
                        "message": None,
                        "log": None,
                    },
                ],
            }
        )
    )
    (outcomes / "rpi4.json").write_text(
        json.dumps(
            {
                "schema": 1,
                "outcomes": [
                    {
                        "run": "digits/cnn-broken",
                        "status": "failed",
                        "result": None,
                        "failed_stage": "compile",
                        "message": "torch export failed: boom",
                        "log": str(volume / "compile" / "log.txt"),
                    },
                ],
            }
        )
    )
    return repo
