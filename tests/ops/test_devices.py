"""``tinymlaas device register|check|list`` on the runner itself and on a real Docker engine."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
import yaml

from tests.docker_support import docker_engine  # noqa: F401 (fixture)
from tests.ops.conftest import cli
from tinymlaas_ci.devices.registry import Finding, check, device_yaml, normalise_arch, register


@pytest.fixture
def repo(tmp_path) -> Path:
    (tmp_path / "devices").mkdir()
    (tmp_path / "runs").mkdir()
    return tmp_path


def test_register_and_check_the_runner_itself(repo):
    proc = cli(
        "device", "register", "bench", "--kind", "local", "--runner", "self-hosted", "--runner", "lab-1", cwd=repo
    )
    assert proc.returncode == 0, proc.stderr
    path = repo / "devices" / "bench.yaml"
    text = path.read_text()
    assert text.startswith("# yaml-language-server: $schema=../schemas/device.schema.json\n")
    data = yaml.safe_load(text)
    assert data["schema"] == 1 and data["kind"] == "local"
    assert data["arch"] == normalise_arch(platform.machine())
    assert data["runner"] == ["self-hosted", "lab-1"]
    assert data["memory_mb"] > 0
    proc = cli("device", "check", "bench", cwd=repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "runtime present: onnxruntime" in proc.stdout
    assert proc.stdout.rstrip().endswith("device bench: ready")
    assert cli("validate", cwd=repo).returncode == 0
    listed = cli("device", "list", cwd=repo)
    assert listed.returncode == 0 and listed.stdout.startswith("bench")


def test_register_refuses_to_overwrite_without_force_and_bad_names(repo):
    assert cli("device", "register", "bench", "--kind", "local", cwd=repo).returncode == 0
    (repo / "devices" / "bench.yaml").write_text((repo / "devices" / "bench.yaml").read_text() + "# mine\n")
    proc = cli("device", "register", "bench", "--kind", "local", cwd=repo)
    assert proc.returncode == 2 and "exists already" in proc.stderr and "--force" in proc.stderr
    assert (repo / "devices" / "bench.yaml").read_text().endswith("# mine\n")
    assert cli("device", "register", "bench", "--kind", "local", "--force", cwd=repo).returncode == 0
    assert not (repo / "devices" / "bench.yaml").read_text().endswith("# mine\n")
    proc = cli("device", "register", "Bad Name", "--kind", "local", cwd=repo)
    assert proc.returncode == 2 and "not valid" in proc.stderr


def test_arch_mismatch_is_not_ready_with_the_fix(repo):
    facts = {"arch": "arm64" if normalise_arch(platform.machine()) != "arm64" else "amd64", "cpu_model": "x"}
    register(repo, "wrong", "local", facts=facts)
    findings = check(repo, "wrong")
    bad = [f for f in findings if f.level == "error"]
    assert len(bad) == 1 and "says arch" in bad[0].message
    assert f"arch: {normalise_arch(platform.machine())}" in bad[0].fix


def test_unreachable_docker_engine_is_not_ready_with_the_fix(repo, tmp_path):
    sock = f"unix://{tmp_path}/no-engine.sock"
    (repo / "devices" / "gone.yaml").write_text(device_yaml("gone", "docker", {"arch": "amd64"}, docker_host=sock))
    proc = cli("device", "check", "gone", cwd=repo)
    assert proc.returncode == 1
    assert f"the Docker engine at {sock} is unreachable" in proc.stdout
    assert "fix: start the engine" in proc.stdout and "docker.host in devices/gone.yaml" in proc.stdout
    assert proc.stdout.rstrip().endswith("device gone: NOT ready")


def test_check_of_an_unknown_device_says_how_to_register(repo):
    proc = cli("device", "check", "nope", cwd=repo)
    assert proc.returncode == 1 and "tinymlaas device register nope" in proc.stderr


def test_finding_format():
    assert Finding("error", "down", "start it").format() == "NOT READY: down\n    fix: start it"


@pytest.mark.docker
def test_register_and_check_the_docker_engine(repo, docker_engine):
    args = ["device", "register", "engine", "--kind", "docker"]
    if docker_engine.host:
        args += ["--docker-host", docker_engine.host]
    proc = cli(*args, cwd=repo)
    assert proc.returncode == 0, proc.stderr
    data = yaml.safe_load((repo / "devices" / "engine.yaml").read_text())
    info = docker_engine.client.info()
    assert data["kind"] == "docker"
    assert data["arch"] == normalise_arch(info["Architecture"])
    assert data["memory_mb"] == info["MemTotal"] // (1024 * 1024)
    if docker_engine.host:
        assert data["docker"] == {"host": docker_engine.host}
    proc = cli("device", "check", "engine", cwd=repo)
    assert "architecture" in proc.stdout and f"engine {docker_engine.client.version()['Version']}" in proc.stdout
    image_there = "is on the engine" in proc.stdout
    assert proc.returncode == (0 if image_there else 1), proc.stdout
    if not image_there:
        assert "tinymlaas images build --only inference" in proc.stdout
