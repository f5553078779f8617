"""The Docker client: connect to a device's engine, map every Docker error once, look up
images, probe the engine.

This is the one module that turns ``docker`` SDK exceptions into
:class:`~tinymlaas_ci.errors.ExecutorError` (with the host and the image it concerns and what
to do about it); the engine's Docker executor, the image builders and the export reuse it.

The ``docker`` package is imported inside functions only: ``tinymlaas validate`` must not
pay for it (and the light install does not have it).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from tinymlaas_ci import __version__
from tinymlaas_ci.errors import ExecutorError
from tinymlaas_ci.hostinfo import normalise_arch
from tinymlaas_ci.spec.models import DockerDevice

__all__ = [
    "client_for",
    "docker_errors",
    "find_image",
    "host_label",
    "platform_for",
    "probe",
    "require_image",
    "resolve_host",
]

_ARCH_PLATFORMS = {
    "amd64": "linux/amd64",
    "arm64": "linux/arm64",
    "armv7": "linux/arm/v7",
    "riscv64": "linux/riscv64",
    "x86": "linux/386",
}


def _docker():
    try:
        import docker
    except ModuleNotFoundError as exc:
        raise ExecutorError(
            "the Docker SDK for Python is not installed",
            hint="pip install 'tinymlaas-ci[docker]'",
        ) from exc
    return docker


def resolve_host(device_or_host: DockerDevice | str | None = None) -> str | None:
    """The Docker host URL of a ``docker`` device, a host string, or None (the default).

    ``None`` means "the environment's engine": ``DOCKER_HOST``, else the local socket.
    """
    if device_or_host is None or isinstance(device_or_host, str):
        return device_or_host or None
    return device_or_host.docker.host or None


def host_label(host: str | None) -> str:
    """A host as it should appear in messages: the explicit one, DOCKER_HOST, or the default."""
    return host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def _no_engine(host: str | None, exc: BaseException) -> ExecutorError:
    label = host_label(host)
    return ExecutorError(
        f"no Docker engine answers at {label}: {_short(exc)}",
        hint='start one (CI: eval "$(.ci/docker.sh start)") or set DOCKER_HOST '
        "(or the device's docker.host) to an engine that runs",
    )


def client_for(device_or_host: DockerDevice | str | None = None, *, timeout: int = 120):
    """A connected ``docker.DockerClient`` for a ``docker`` device or a host URL.

    The engine is pinged, so a missing engine fails here with a clear
    :class:`ExecutorError` instead of later in the middle of a run.
    """
    docker = _docker()
    import requests

    host = resolve_host(device_or_host)
    try:
        if host:
            client = docker.DockerClient(base_url=host, timeout=timeout, use_ssh_client=host.startswith("ssh://"))
        else:
            client = docker.from_env(timeout=timeout)
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        raise _no_engine(host, exc) from exc
    return client


def _short(exc: BaseException, limit: int = 300) -> str:
    text = getattr(exc, "explanation", None) or str(exc) or type(exc).__name__
    text = str(text).strip().splitlines()[0] if str(text).strip() else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def docker_errors(host: str | None, doing: str, *, hint: str | None = None) -> Iterator[None]:
    """Turn any Docker SDK or connection error raised inside into one :class:`ExecutorError`.

    ``doing`` says what was being done ("starting stage compile in IMAGE"); the host is added.
    """
    docker = _docker()
    import requests

    try:
        yield
    except ExecutorError:
        raise
    except (requests.exceptions.ConnectionError, ConnectionError) as exc:
        raise _no_engine(host, exc) from exc
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise ExecutorError(f"{doing} on {host_label(host)} failed: {_short(exc)}", hint=hint) from exc


def find_image(client, ref: str, host: str | None = None):
    """The image ``ref`` on ``client``'s engine, or None when the engine does not hold it.

    Every image lookup goes through here. Look before running or saving: for a missing image
    dockerd tries a pull and answers with an ``APIError`` 500 about the registry, which does
    not tell the user what to do.
    """
    docker = _docker()
    try:
        return client.images.get(ref)
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.APIError as exc:
        raise ExecutorError(f"cannot inspect image {ref} on {host_label(host)}: {_short(exc)}") from exc


def require_image(client, ref: str, host: str | None = None, *, needed_by: str = "", hint: str | None = None):
    """The image ``ref``; a missing one is an :class:`ExecutorError` saying what needs it and
    how to get it (``hint``; by default: build our images with ``tinymlaas images build``)."""
    image = find_image(client, ref, host)
    if image is None:
        raise ExecutorError(
            f"image {ref} not found on {host_label(host)}" + (f" ({needed_by})" if needed_by else ""),
            hint=hint or "build it with 'tinymlaas images build' (offline: add --base tinymlaas-base:bookworm)",
        )
    return image


def platform_for(device: DockerDevice) -> str | None:
    """The image platform of a device: ``docker.platform``, else derived from ``arch``."""
    return device.docker.platform or _ARCH_PLATFORMS.get(device.arch)


def probe(host: DockerDevice | str | None = None, *, images: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Facts about a Docker device: architecture, CPU model, memory, OS, engine version and
    which of our images it already holds.

    The CPU model is read from ``/proc/cpuinfo`` through a throw-away container when an image
    is available (the engine API does not report it); ``None`` otherwise.
    """
    host = resolve_host(host)
    if images is None:
        images = (f"tinymlaas-stage:{__version__}", "tinymlaas-base:bookworm")
    client = client_for(host)
    try:
        with docker_errors(host, "asking the engine for its info"):
            info = client.info()
            version = client.version()
        present = {}
        for ref in images:
            present[ref] = find_image(client, ref, host) is not None
        facts: dict[str, Any] = {
            "host": host_label(host),
            "arch": normalise_arch(info.get("Architecture") or version.get("Arch")),
            "os": info.get("OperatingSystem"),
            "kernel": info.get("KernelVersion"),
            "cpus": info.get("NCPU"),
            "memory_mb": int(info.get("MemTotal") or 0) // (1024 * 1024),
            "engine_version": version.get("Version"),
            "api_version": version.get("ApiVersion"),
            "cgroup_version": info.get("CgroupVersion"),
            "images": present,
            "cpu_model": None,
        }
        runner = next((ref for ref, ok in present.items() if ok), None)
        if runner is not None:
            facts["cpu_model"] = _cpu_model(client, runner)
        return facts
    finally:
        client.close()


def _cpu_model(client, image: str) -> str | None:
    docker = _docker()
    try:
        out = client.containers.run(
            image,
            [
                "sh",
                "-c",
                "grep -m1 -E '^(model name|Model|Hardware|cpu model)' /proc/cpuinfo || true",
            ],
            remove=True,
            network_mode="none",
            user="65534:65534",
            read_only=True,
        )
    except docker.errors.DockerException:
        return None  # a fact we can live without; the probe must not fail on it
    text = out.decode("utf-8", "replace").strip()
    return text.split(":", 1)[1].strip() if ":" in text else (text or None)
