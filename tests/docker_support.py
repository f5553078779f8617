"""Fixtures for tests that need a real Docker engine.

The engine is the one ``DOCKER_HOST`` points at (CI: ``eval "$(.ci/docker.sh start)"``).
When none answers, the tests SKIP on a laptop, with the reason and how to start one; with
``CI=true`` they FAIL instead: in CI a missing engine is a failure, not a reason to go green.

Use from a test module::

    from tests.docker_support import docker_engine, base_image  # noqa: F401 (fixtures)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

__all__ = [
    "BASE_IMAGE",
    "DockerEngine",
    "base_image",
    "docker_client",
    "docker_engine",
    "in_ci",
    "leftover_containers",
    "unavailable",
]

BASE_IMAGE = os.environ.get("TINYMLAAS_BASE_IMAGE", "tinymlaas-base:bookworm")
"""A small local image with python3 (built offline by ``.ci/docker.sh base``)."""

_START_HINT = 'start one with: eval "$(.ci/docker.sh start)"'


def in_ci() -> bool:
    """True when running in CI (``CI=true``), where missing prerequisites are failures."""
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def unavailable(reason: str) -> None:
    """Skip the test (laptop) or fail it (CI) because a prerequisite is missing."""
    if in_ci():
        pytest.fail(f"{reason} (in CI a missing engine is a failure)", pytrace=False)
    pytest.skip(reason)


@dataclass
class DockerEngine:
    """A connected engine: its host URL (None: the SDK's default) and a ``DockerClient``."""

    host: str | None
    client: object

    @property
    def label(self) -> str:
        return self.host or "the default socket"


@pytest.fixture(scope="session")
def docker_engine():
    """The engine at DOCKER_HOST; skips (laptop) or fails (CI) when none answers."""
    try:
        import docker
    except ModuleNotFoundError:
        unavailable("the docker SDK is not installed (pip install 'tinymlaas-ci[docker]')")
    host = os.environ.get("DOCKER_HOST") or None
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except Exception as exc:
        unavailable(f"no Docker engine answers at {host or 'the default socket'}: {exc!s:.200}; {_START_HINT}")
    yield DockerEngine(host, client)
    client.close()


@pytest.fixture(scope="session")
def docker_client(docker_engine):
    """The ``docker.DockerClient`` of :func:`docker_engine`."""
    return docker_engine.client


@pytest.fixture(scope="session")
def base_image(docker_engine) -> str:
    """The small python3 base image; skips (laptop) or fails (CI) when it was not built."""
    import docker

    try:
        docker_engine.client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        unavailable(f"image {BASE_IMAGE} is not on {docker_engine.label}; build it with '.ci/docker.sh base'")
    return BASE_IMAGE


def leftover_containers(client, run_id: str) -> list:
    """Containers (running or not) the Docker executor created for ``run_id``."""
    return client.containers.list(all=True, filters={"label": f"org.tinymlaas.run={run_id}"})
