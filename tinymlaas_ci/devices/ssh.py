"""Linux boards reached over SSH: run commands, copy files, probe what is installed.

Uses the OpenSSH client (``ssh``) of the runner, so keys, agents and ``~/.ssh/config`` work as
they do for the user. Every call is non-interactive (``BatchMode``): a missing key or an
unknown host key fails at once with a message instead of waiting for a prompt. Failures are
wrapped here, once, into :class:`~tinymlaas_ci.errors.DeviceError`.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from tinymlaas_ci.errors import DeviceError
from tinymlaas_ci.spec.models import SshEndpoint

__all__ = ["SSH_FAILURE", "SshTarget"]

SSH_FAILURE = 255
"""ssh's own exit code when it could not connect or log in (a remote command never gets it)."""

_PROBE = r"""
import json, os, platform, sys
facts = {"python": platform.python_version(), "machine": platform.machine(), "os": platform.platform()}
try:
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                facts["cpu_model"] = line.split(":", 1)[1].strip()
                break
except OSError:
    pass
try:
    facts["memory_mb"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
except (ValueError, OSError):
    pass
for name in ("tinymlaas_ci", "onnxruntime", "numpy"):
    try:
        module = __import__(name)
        facts[name] = getattr(module, "__version__", "unknown")
    except Exception:
        facts[name] = None
print(json.dumps(facts))
"""


class SshTarget:
    """One board: ``endpoint`` is the device file's ``ssh:`` section (host, user, port, ...)."""

    def __init__(self, endpoint: SshEndpoint, *, device: str | None = None, timeout: int = 15):
        self.host = endpoint.host
        self.user = endpoint.user
        self.port = endpoint.port
        self.python = endpoint.python
        self.identity_file = endpoint.identity_file
        self.known_hosts = endpoint.known_hosts
        self.work_dir = endpoint.work_dir.rstrip("/")
        self.device = device
        self.timeout = timeout
        if shutil.which("ssh") is None:
            raise DeviceError(
                "the OpenSSH client 'ssh' is not installed on the runner",
                device=device,
                hint="install it (Debian: apt-get install openssh-client)",
            )

    @property
    def label(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    def ssh_argv(self, command: str) -> list[str]:
        argv = [
            "ssh",
            "-p",
            str(self.port),
            "-o",
            "BatchMode=yes",
            "-o",
            f"ConnectTimeout={self.timeout}",
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "LogLevel=ERROR",
        ]
        if self.identity_file:
            argv += ["-i", str(Path(self.identity_file).expanduser()), "-o", "IdentitiesOnly=yes"]
        if self.known_hosts:
            argv += [
                "-o",
                f"UserKnownHostsFile={Path(self.known_hosts).expanduser()}",
                "-o",
                "StrictHostKeyChecking=yes",
            ]
        return argv + [f"{self.user}@{self.host}", "--", command]

    def _failed(self, doing: str, stderr: str) -> DeviceError:
        text = stderr.strip().splitlines()[-1] if stderr.strip() else "no answer"
        hint = "check that the board is on, the address and port are right, sshd runs, and the key is authorized"
        if "Host key verification failed" in stderr or "host key" in stderr.lower():
            hint = "add the board's host key to the known_hosts file (ssh-keyscan), or fix 'known_hosts'"
        elif "Permission denied" in stderr:
            hint = "authorize the runner's key on the board (ssh-copy-id), or set 'identity_file'"
        return DeviceError(f"{doing} on {self.label} failed: {text}", device=self.device, hint=hint)

    def run(self, command: str, sink: Callable[[str], None] | None = None, *, doing: str = "a command") -> int:
        """Run ``command`` (a shell line) on the board, streaming its output to ``sink``.
        Returns its exit code; raises :class:`DeviceError` when ssh itself could not connect."""
        proc = subprocess.Popen(
            self.ssh_argv(command),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            bufsize=1,
        )
        lines: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            if sink is not None:
                sink(line)
        code = proc.wait()
        if code == SSH_FAILURE and self._looks_like_ssh_error(lines):
            raise self._failed(doing, "\n".join(lines[-5:]))
        return code

    @staticmethod
    def _looks_like_ssh_error(lines: list[str]) -> bool:
        text = "\n".join(lines[-5:]).lower()
        return any(s in text for s in ("ssh:", "permission denied", "host key", "connection", "could not resolve"))

    def check_output(self, command: str, *, doing: str) -> str:
        proc = subprocess.run(
            self.ssh_argv(command), capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=self.timeout + 120
        )
        if proc.returncode != 0:
            if proc.returncode == SSH_FAILURE:
                raise self._failed(doing, proc.stderr)
            raise DeviceError(
                f"{doing} on {self.label} exited with {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-500:]}",
                device=self.device,
            )
        return proc.stdout

    def put(self, local_root: Path, files: Iterable[str], remote_dir: str, *, doing: str = "copying files") -> None:
        """Copy ``files`` (paths relative to ``local_root``) into ``remote_dir`` on the board,
        keeping their relative paths: one tar stream over one connection."""
        with tempfile.TemporaryFile() as buf:
            with tarfile.open(fileobj=buf, mode="w") as tar:
                for rel in sorted(set(files)):
                    tar.add(local_root / rel, arcname=rel)
            buf.seek(0)
            q = shlex.quote(remote_dir)
            proc = subprocess.run(
                self.ssh_argv(f"mkdir -p {q} && tar -x -f - -C {q}"),
                stdin=buf,
                capture_output=True,
                text=True,
                timeout=self.timeout + 600,
            )
        if proc.returncode != 0:
            raise (
                self._failed(doing, proc.stderr)
                if proc.returncode == SSH_FAILURE
                else DeviceError(
                    f"{doing} to {self.label}:{remote_dir} failed: {proc.stderr.strip()[-500:]}", device=self.device
                )
            )

    def get(self, remote_dir: str, local_dir: Path, *, doing: str = "copying files back") -> None:
        """Copy the contents of ``remote_dir`` into ``local_dir`` (refusing links and paths that
        would land outside it: the board is not trusted to write anywhere else)."""
        q = shlex.quote(remote_dir)
        with tempfile.TemporaryFile() as buf:
            proc = subprocess.run(
                self.ssh_argv(f"tar -c -f - -C {q} ."), stdout=buf, stderr=subprocess.PIPE, timeout=self.timeout + 600
            )
            if proc.returncode != 0:
                err = proc.stderr.decode(errors="replace")
                raise (
                    self._failed(doing, err)
                    if proc.returncode == SSH_FAILURE
                    else DeviceError(
                        f"{doing} from {self.label}:{remote_dir} failed: {err.strip()[-500:]}", device=self.device
                    )
                )
            buf.seek(0)
            local_dir.mkdir(parents=True, exist_ok=True)
            root = local_dir.resolve()
            with tarfile.open(fileobj=buf, mode="r") as tar:
                for member in tar.getmembers():
                    target = (root / member.name).resolve()
                    if not (member.isfile() or member.isdir()) or (target != root and root not in target.parents):
                        raise DeviceError(
                            f"{doing}: refused {member.name!r} from {self.label}",
                            device=self.device,
                            hint="the board sent a link or a path outside the stage folder",
                        )
                try:
                    tar.extractall(root, filter="data")
                except TypeError:  # Python without extraction filters; members were checked above
                    tar.extractall(root)

    def probe(self) -> dict[str, Any]:
        """Python, architecture, CPU, memory, and the versions of the packages inference needs."""
        out = self.check_output(f"{shlex.quote(self.python)} -c {shlex.quote(_PROBE)}", doing="probing the board")
        try:
            return json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError) as exc:
            raise DeviceError(
                f"the board {self.label} answered the probe with {out.strip()[-200:]!r}",
                device=self.device,
                hint=f"check that '{self.python}' is Python 3.10+",
            ) from exc

    def missing_runtime(self, facts: Mapping[str, Any]) -> list[str]:
        return [name for name in ("tinymlaas_ci", "onnxruntime", "numpy") if not facts.get(name)]
