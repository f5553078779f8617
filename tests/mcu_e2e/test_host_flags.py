"""Which ISA the host build of ``runtime: c`` targets on each kind of Linux device."""

from __future__ import annotations

import pytest

from tinymlaas_ci.errors import TinymlError
from tinymlaas_ci.ml import c_runtime


@pytest.fixture
def here(monkeypatch) -> str:
    monkeypatch.setattr(c_runtime.platform, "machine", lambda: "x86_64")
    return "amd64"


def test_this_machine_gets_its_own_isa(here):
    assert c_runtime.host_build_flags("local", here) == ["-O3", "-march=native"]
    assert c_runtime.host_build_flags("docker", here) == ["-O3", "-march=native"]
    assert c_runtime.host_build_flags("docker", here, docker_host="unix:///var/run/docker.sock") == [
        "-O3",
        "-march=native",
    ]


def test_a_remote_engine_gets_the_architecture_baseline(here):
    assert c_runtime.host_build_flags("docker", here, docker_host="ssh://pi@board") == ["-O3", "-march=x86-64-v2"]


def test_another_architecture_is_not_built_here(here):
    with pytest.raises(TinymlError, match="architecture arm64 cannot be built on this amd64 runner"):
        c_runtime.host_build_flags("docker", "arm64", docker_host="ssh://pi@board")
