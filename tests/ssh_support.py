"""A real SSH server on loopback, standing in for a Linux board (an ``ssh`` device).

OpenSSH's ``sshd`` runs as a child process on 127.0.0.1 and a free port, with its own host
key, one authorized client key and nothing else (no passwords, no PAM). The tests SKIP on a
laptop without ``sshd`` and FAIL under ``CI=true``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.docker_support import unavailable

__all__ = ["ssh_board"]

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ssh_board(tmp_path_factory):
    """``{"host", "port", "user", "identity_file", "known_hosts"}`` of a running sshd."""
    if SSHD is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        unavailable("OpenSSH (sshd, ssh, ssh-keygen) is not installed (Debian: apt-get install openssh-server)")
    if os.geteuid() != 0:
        unavailable("the loopback sshd needs root to log in as the test user")
    home = tmp_path_factory.mktemp("sshd")
    home.chmod(0o755)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / "host_key")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / "client_key")], check=True)
    (home / "authorized_keys").write_text((home / "client_key.pub").read_text())
    port = _free_port()
    (home / "known_hosts").write_text(f"[127.0.0.1]:{port} {(home / 'host_key.pub').read_text()}")
    (home / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {home / 'host_key'}\n"
        f"AuthorizedKeysFile {home / 'authorized_keys'}\nPidFile {home / 'sshd.pid'}\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "UsePAM no\nStrictModes no\nPrintMotd no\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder
    proc = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(home / "sshd_config")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                pytest.fail(f"sshd did not start: {out[-1000:]}")
            time.sleep(0.05)
    yield {
        "host": "127.0.0.1",
        "port": port,
        "user": os.environ.get("USER") or "root",
        "identity_file": str(home / "client_key"),
        "known_hosts": str(home / "known_hosts"),
        "home": str(home),
    }
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
