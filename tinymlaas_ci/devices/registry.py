"""Register a device and check that it is ready: ``tinymlaas device register|check|list``.

:func:`probe_local` and :func:`probe_docker` report what a device is (architecture, CPU model,
memory, whether the runtime is there); :func:`register` turns that into ``devices/NAME.yaml``,
validated by the same loader ``tinymlaas validate`` uses; :func:`check` compares a device file
with what the device reports now and says what to fix.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinymlaas_ci import __version__
from tinymlaas_ci.errors import DeviceError, ExecutorError, SpecError, UsageError
from tinymlaas_ci.fs import atomic_write_text
from tinymlaas_ci.hostinfo import ARCHES, cpu_info, memory_mb, normalise_arch
from tinymlaas_ci.spec.loader import load_yaml_file, load_yaml_text
from tinymlaas_ci.spec.models import NAME_PATTERN, NAME_RULE, DockerDevice, LocalDevice, McuDevice, SshDevice
from tinymlaas_ci.spec.validate import validate_loaded

__all__ = [
    "KINDS",
    "Finding",
    "check",
    "device_yaml",
    "inference_image",
    "list_devices",
    "load_device",
    "normalise_arch",
    "probe_docker",
    "probe_local",
    "register",
]

KINDS = ("local", "docker")
"""Kinds ``register`` probes. ``ssh`` devices are written by hand (see the device reference)."""
_CLASSES = {"local": LocalDevice, "docker": DockerDevice, "ssh": SshDevice, "mcu": McuDevice}
_NAME_RE = re.compile(NAME_PATTERN)
_RUNTIME_PROBE = (
    "import json, importlib\n"
    "out = {}\n"
    "for name in ('onnxruntime', 'numpy'):\n"
    "    try:\n"
    "        out[name] = importlib.import_module(name).__version__\n"
    "    except Exception as exc:\n"
    "        out[name] = None\n"
    "        out[name + '_error'] = f'{type(exc).__name__}: {exc}'[:300]\n"
    "print(json.dumps(out))\n"
)


def inference_image() -> str:
    """The bare inference image ``tinymlaas images build --only inference`` makes."""
    return f"tinymlaas-inference:base-{__version__}"


def probe_local(python: str | None = None) -> dict[str, Any]:
    """Facts about this machine. Whether the runtime imports is checked in a child process
    (``python``, default this interpreter), so this process imports nothing heavy."""
    cpu = cpu_info()
    facts: dict[str, Any] = {
        "kind": "local",
        "arch": normalise_arch(platform.machine()),
        "machine": platform.machine(),
        "cpu_model": cpu["cpu_model"],
        "isa_flags": cpu["isa_flags"],
        "cpus": os.cpu_count(),
        "memory_mb": memory_mb(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }
    try:
        proc = subprocess.run(
            [python or sys.executable, "-c", _RUNTIME_PROBE], capture_output=True, text=True, timeout=120, check=False
        )
        runtime = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {}
        if proc.returncode != 0:
            runtime = {
                "onnxruntime": None,
                "numpy": None,
                "onnxruntime_error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:300],
            }
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError) as exc:
        runtime = {"onnxruntime": None, "numpy": None, "onnxruntime_error": f"{type(exc).__name__}: {exc}"[:300]}
    facts["runtime"] = runtime
    facts["runtime_ok"] = bool(runtime.get("onnxruntime") and runtime.get("numpy"))
    return facts


def probe_docker(host: str | None = None) -> dict[str, Any]:
    """Facts about the Docker engine at ``host`` (None: DOCKER_HOST): architecture, CPU model,
    memory, engine version, and whether the inference and stage images are there."""
    from tinymlaas_ci.devices.docker_client import probe

    images = (inference_image(), f"tinymlaas-stage:{__version__}", "tinymlaas-base:bookworm")
    facts = probe(host, images=images)
    facts["kind"] = "docker"
    facts["inference_image"] = inference_image()
    facts["runtime_ok"] = bool(facts["images"].get(inference_image()))
    return facts


# -- the device file --------------------------------------------------------------------------


def _check_name(name: str) -> None:
    if not _NAME_RE.match(name or ""):
        raise UsageError(
            f"device name {name!r} is not valid",
            hint=NAME_RULE,
        )


def _q(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid YAML scalar


def device_yaml(
    name: str,
    kind: str,
    facts: dict[str, Any],
    *,
    docker_host: str | None = None,
    runner_labels: list[str] | None = None,
) -> str:
    """The text of ``devices/NAME.yaml`` for what a probe found."""
    labels = runner_labels or ["self-hosted", "tinymlaas", name]
    cpu = facts.get("cpu_model") or "unknown CPU"
    where = "the runner machine itself" if kind == "local" else f"Docker engine at {facts.get('host') or docker_host}"
    description = f"{cpu}, {facts.get('cpus') or '?'} CPUs ({where})"
    lines = [
        "# yaml-language-server: $schema=../schemas/device.schema.json",
        f"# Registered by 'tinymlaas device register {name} --kind {kind}'. "
        f"Check it with 'tinymlaas device check {name}'.",
        "schema: 1",
        f"kind: {kind}",
        f"description: {_q(description)}",
        f"arch: {facts.get('arch') if facts.get('arch') in ARCHES else 'other'}",
        f"runner: [{', '.join(_q(label) if not re.match(r'^[A-Za-z0-9._-]+$', label) else label for label in labels)}]",
    ]
    if facts.get("memory_mb"):
        lines.append(f"memory_mb: {int(facts['memory_mb'])}")
    if kind == "docker" and docker_host:
        lines += ["docker:", f"  host: {_q(docker_host)}"]
    return "\n".join(lines) + "\n"


def _validate(text: str, rel: str, kind: str):
    loaded = load_yaml_text(text, rel)
    spec, problems = validate_loaded(loaded, _CLASSES[kind])
    if problems:
        raise SpecError(problems)
    return spec


def register(
    root: Path,
    name: str,
    kind: str,
    docker_host: str | None = None,
    runner_labels: list[str] | None = None,
    force: bool = False,
    facts: dict[str, Any] | None = None,
) -> Path:
    """Probe the device and write ``devices/NAME.yaml`` (validated, atomically). An existing
    file is kept unless ``force``. ``facts`` skips the probe (tests, or a probe done already)."""
    _check_name(name)
    if kind not in KINDS:
        raise UsageError(
            f"--kind {kind!r}: register probes 'local' or 'docker' devices",
            hint="write an ssh device's file by hand: see devices/ in the documentation",
        )
    if docker_host and kind != "docker":
        raise UsageError("--docker-host applies to --kind docker only")
    path = Path(root) / "devices" / f"{name}.yaml"
    if path.exists() and not force:
        raise UsageError(
            f"{path.relative_to(root)} exists already", hint="add --force to replace it, or pick another name"
        )
    if facts is None:
        facts = probe_local() if kind == "local" else _probe_docker_or_explain(name, docker_host)
    text = device_yaml(name, kind, facts, docker_host=docker_host, runner_labels=runner_labels)
    _validate(text, f"devices/{name}.yaml", kind)
    atomic_write_text(path, text)
    path.chmod(0o644)
    return path


def _probe_docker_or_explain(name: str, host: str | None) -> dict[str, Any]:
    try:
        return probe_docker(host)
    except ExecutorError as exc:
        raise DeviceError(
            f"cannot probe: {exc.message}",
            device=name,
            hint=(exc.hint or "") + "; give the engine with --docker-host URL",
        ) from exc


def load_device(root: Path, name: str):
    """The validated spec of ``devices/NAME.yaml``."""
    _check_name(name)
    path = Path(root) / "devices" / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(list_devices(root)) or "none"
        raise DeviceError(
            "no such device file",
            device=name,
            hint=f"register it: tinymlaas device register {name} --kind local|docker (known: {known})",
        )
    loaded = load_yaml_file(path, f"devices/{name}.yaml")
    kind = loaded.data.get("kind") if isinstance(loaded.data, dict) else None
    if loaded.problems or kind not in _CLASSES:
        raise SpecError(loaded.problems or [loaded.problem(("kind",), f"kind {kind!r} is not local, docker or ssh")])
    spec, problems = validate_loaded(loaded, _CLASSES[kind])
    if problems:
        raise SpecError(problems)
    return spec


def list_devices(root: Path) -> list[str]:
    """Names of the device files in ``root/devices``."""
    folder = Path(root) / "devices"
    return sorted(p.stem for p in folder.glob("*.y*ml") if p.suffix in (".yaml", ".yml")) if folder.is_dir() else []


# -- check ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One thing ``check`` found: ``ok``, ``warning`` or ``error`` (not ready), and the fix."""

    level: str
    message: str
    fix: str | None = None

    def format(self) -> str:
        mark = {"ok": "ok", "warning": "warning", "error": "NOT READY"}[self.level]
        text = f"{mark}: {self.message}"
        return text + (f"\n    fix: {self.fix}" if self.fix else "")


def check(root: Path, name: str) -> list[Finding]:
    """Is device ``name`` reachable and ready? One finding per fact; any ``error`` means not ready."""
    spec = load_device(root, name)
    findings: list[Finding] = [Finding("ok", f"devices/{name}.yaml is valid ({spec.kind}, {spec.arch})")]
    if spec.kind == "local":
        facts = probe_local()
        findings.append(
            Finding(
                "ok",
                f"runner machine: {facts['cpu_model'] or 'unknown CPU'}, {facts['cpus']} CPUs, "
                f"{facts['memory_mb']} MiB, {facts['os']}, Python {facts['python']}",
            )
        )
        findings += _compare_arch(spec.arch, facts["arch"], name)
        runtime = facts["runtime"]
        if facts["runtime_ok"]:
            findings.append(
                Finding("ok", f"runtime present: onnxruntime {runtime['onnxruntime']}, numpy {runtime['numpy']}")
            )
        else:
            why = runtime.get("onnxruntime_error") or runtime.get("numpy_error") or "not importable"
            findings.append(
                Finding(
                    "error", f"the inference runtime is missing on the runner: {why}", "pip install 'tinymlaas-ci[ml]'"
                )
            )
    elif spec.kind == "docker":
        host = spec.docker.host
        try:
            facts = probe_docker(host)
        except ExecutorError as exc:
            where = host or os.environ.get("DOCKER_HOST") or "the default socket"
            return findings + [
                Finding(
                    "error",
                    f"the Docker engine at {where} is unreachable: {exc.message}",
                    "start the engine (or the board) and check docker.host in "
                    f"devices/{name}.yaml{'' if host else ' or DOCKER_HOST'}; "
                    f"e.g. 'docker -H {where} info' must answer",
                )
            ]
        findings.append(
            Finding(
                "ok",
                f"engine {facts.get('engine_version')} at {facts['host']}: "
                f"{facts.get('cpu_model') or 'CPU model unknown'}, "
                f"{facts.get('cpus')} CPUs, {facts.get('memory_mb')} MiB, {facts.get('os')}",
            )
        )
        findings += _compare_arch(spec.arch, facts.get("arch"), name)
        image = facts["inference_image"]
        if facts["runtime_ok"]:
            findings.append(Finding("ok", f"inference image {image} is on the engine"))
        else:
            h = f" --docker-host {host}" if host else ""
            findings.append(
                Finding(
                    "error",
                    f"the inference image {image} is not on the engine",
                    f"tinymlaas images build --only inference{h} (offline: add --base tinymlaas-base:bookworm)",
                )
            )
    elif spec.kind == "mcu":
        findings += _check_mcu(spec)
    else:
        findings += _check_ssh(spec)
    return findings


def _check_mcu(spec) -> list[Finding]:
    """The runner builds and runs the firmware: the Arm toolchain, and QEMU or the serial port."""
    import shutil

    from tinymlaas_ci.devices.mcu.build import toolchain_version
    from tinymlaas_ci.devices.mcu.transport import qemu_version
    from tinymlaas_ci.errors import DeviceError

    findings = []
    checks = [("toolchain", toolchain_version)]
    if spec.transport == "qemu":
        checks.append(("emulator", qemu_version))
    for what, probe in checks:
        try:
            findings.append(Finding("ok", f"{what} on the runner: {probe()}"))
        except DeviceError as exc:
            findings.append(Finding("error", exc.message, exc.hint))
    if spec.transport == "qemu" and not any(shutil.which(cc) for cc in ("cc", "gcc", "clang")):
        findings.append(
            Finding(
                "error",
                "no host C compiler for QEMU's instruction-count plugin",
                "apt-get install gcc",
            )
        )
    if spec.transport == "serial":
        port = spec.serial.port
        if Path(port).exists() or "://" in port:
            findings.append(Finding("ok", f"serial port {port} is there"))
        else:
            findings.append(
                Finding("error", f"serial port {port} does not exist", "plug the board in, or fix serial.port")
            )
    return findings


def _compare_arch(declared: str, found: str | None, name: str) -> list[Finding]:
    found = normalise_arch(found) if found else found
    if found and found != declared:
        return [
            Finding(
                "error",
                f"devices/{name}.yaml says arch {declared}, but the device reports {found}",
                f"set 'arch: {found}' in devices/{name}.yaml (or re-register it with --force)",
            )
        ]
    return [Finding("ok", f"architecture {declared} matches")]


def _check_ssh(spec) -> list[Finding]:
    """Log in over SSH (as the runner will), then probe the board's Python and runtime."""
    from tinymlaas_ci.devices.ssh import SshTarget
    from tinymlaas_ci.errors import DeviceError

    endpoint = spec.ssh
    try:
        target = SshTarget(endpoint, device=spec.name)
        facts = target.probe()
    except DeviceError as exc:
        return [Finding("error", exc.message, exc.hint)]
    findings = [
        Finding(
            "ok",
            f"logged in to {target.label}: python {facts.get('python')}, "
            f"{facts.get('cpu_model') or 'CPU model unknown'}, {facts.get('memory_mb')} MiB, {facts.get('os')}",
        )
    ]
    findings += _compare_arch(spec.arch, facts.get("machine"), spec.name)
    missing = target.missing_runtime(facts)
    if missing:
        findings.append(
            Finding(
                "error",
                f"{target.python} on the board lacks {', '.join(missing)}",
                f"on the board: {target.python} -m pip install tinymlaas-ci onnxruntime numpy",
            )
        )
    else:
        findings.append(
            Finding(
                "ok",
                f"tinymlaas_ci {facts['tinymlaas_ci']}, onnxruntime {facts['onnxruntime']} "
                f"and numpy {facts['numpy']} are installed",
            )
        )
    return findings
