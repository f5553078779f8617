"""Whole runs through Docker: the Docker executor, and a ``docker`` device. They must give the
numbers the local executor gives (same code, same data, deterministic compression)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.docker_support import base_image, docker_engine, unavailable  # noqa: F401 (fixtures)
from tests.engine.example_repo import copy_example

pytestmark = pytest.mark.docker

RUN = "digits/cnn-static-int8"


@pytest.fixture(scope="module")
def stage_image(docker_engine):
    import docker

    from tinymlaas_ci.engine.images import STAGE_IMAGE

    try:
        docker_engine.client.images.get(STAGE_IMAGE)
    except docker.errors.ImageNotFound:
        unavailable(f"image {STAGE_IMAGE} is missing; build it with 'tinymlaas images build'")
    return STAGE_IMAGE


def _run(root, *args):
    proc = subprocess.run(
        [sys.executable, "-m", "tinymlaas_ci", "-C", str(root), "run", "--select", RUN,
         "--work-dir", str(root / ".work"), *args],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads((root / f"runs/{RUN.replace('/', '/results/')}.json").read_text())


@pytest.fixture(scope="module")
def local_result(tmp_path_factory):
    return _run(copy_example(tmp_path_factory.mktemp("local")))


def test_docker_executor_reproduces_the_local_run(tmp_path, stage_image, local_result):
    result = _run(copy_example(tmp_path), "--executor", "docker")
    assert [s["executor"] for s in result["stages"]] == ["docker"] * 4
    assert all(s["image_digest"].startswith("sha256:") for s in result["stages"])
    for key in ("accuracy", "baseline_accuracy", "model_size_bytes", "confusion_matrix", "samples"):
        assert result["metrics"][key] == local_result["metrics"][key], key
    assert result["inputs"] == local_result["inputs"]


def test_docker_device_installs_an_image_and_infers_in_it(tmp_path, base_image, local_result):
    root = copy_example(tmp_path)
    (root / "devices/board.yaml").write_text(
        f"schema: 1\nkind: docker\narch: amd64\nmemory_mb: 1024\ndocker: {{base_image: '{base_image}'}}\n"
    )
    spec = root / "runs/digits/cnn.yaml"
    spec.write_text(spec.read_text().replace("device: host", "device: board"))
    result = _run(root)
    executors = {s["name"]: s["executor"] for s in result["stages"]}
    assert executors == {"fetch": "local", "compile": "local", "install": "local", "infer": "docker"}
    install = json.loads((root / f".work/{RUN}/install/outputs.json").read_text())
    image = install["records"]["image"]
    assert image.startswith("tinymlaas-inference:")
    infer = next(s for s in result["stages"] if s["name"] == "infer")
    assert infer["image"] == image and infer["image_digest"] == install["records"]["image_digest"]
    assert result["device"]["name"] == "board" and result["device"]["kind"] == "docker"
    for key in ("accuracy", "model_size_bytes", "confusion_matrix"):
        assert result["metrics"][key] == local_result["metrics"][key], key
