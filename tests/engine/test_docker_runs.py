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
        [
            sys.executable,
            "-m",
            "tinymlaas_ci",
            "-C",
            str(root),
            "run",
            "--select",
            RUN,
            "--work-dir",
            str(root / ".work"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=900,
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


def test_runtime_auto_on_a_docker_device_runs_what_compile_chose_in_the_image(tmp_path, base_image, local_result):
    from tests.cgen.conftest import need_compiler

    need_compiler()
    root = copy_example(tmp_path)
    (root / "devices/board.yaml").write_text(
        f"schema: 1\nkind: docker\narch: amd64\nmemory_mb: 1024\ndocker: {{base_image: '{base_image}'}}\n"
    )
    spec = root / "runs/digits/cnn.yaml"
    spec.write_text(
        spec.read_text().replace("device: host", "device: board").replace("runtime: onnxruntime", "runtime: auto")
    )
    result = _run(root)
    comp = result["compression"]
    # The engine is on this machine, so the C was timed against ONNX Runtime's recipes.
    assert {c.get("runtime", "onnxruntime") for c in comp["recipe_candidates"]} == {"onnxruntime", "c"}
    assert result["runtime"]["name"] == comp["runtime"] and comp["runtime_reason"]
    assert next(s for s in result["stages"] if s["name"] == "infer")["executor"] == "docker"
    m = result["metrics"]
    assert m["samples"] == local_result["metrics"]["samples"]
    assert abs(m["accuracy"] - local_result["metrics"]["accuracy"]) <= 0.01
    if comp["runtime"] == "c":
        assert m["agreement_with_onnxruntime"] == 1.0


def test_a_stage_image_of_your_own_is_built_by_content_and_used(tmp_path, docker_engine, base_image):
    from tests.engine.fakerepo import make_repo
    from tinymlaas_ci.engine.images import build_user_images, folder_image, user_image_tag

    root = make_repo(tmp_path)
    root.chmod(0o755)
    folder = root / "pipelines/images/hello"
    folder.mkdir(parents=True)
    (folder / "Dockerfile").write_text("ARG BASE=python:3.11-slim\nFROM ${BASE}\nCOPY hello.py /app/hello.py\n")
    (folder / "hello.py").write_text(
        "import hashlib, json, sys\n"
        "run, name = sys.argv[1], sys.argv[2]\n"
        "data = b'hello from my image'\n"
        "open(f'{run}/{name}/hello.txt', 'wb').write(data)\n"
        "json.dump({'schema': 1, 'stage': name, 'artifacts': {'data': {'path': f'{name}/hello.txt',"
        " 'sha256': hashlib.sha256(data).hexdigest(), 'bytes': len(data)}}, 'metrics': {}, 'records': {}},"
        " open(f'{run}/{name}/outputs.json', 'w'))\n"
    )
    pipe = root / "pipelines/fake.yaml"
    pipe.write_text(
        pipe.read_text().replace(
            "  - name: prepare\n    command: [python, pipelines/stages/fake.py, '{run}', prepare]\n",
            "  - name: prepare\n    image: pipelines/images/hello\n"
            "    command: [python3, /app/hello.py, '{run}', prepare]\n",
        )
    )
    assert folder_image(root, "pipelines/images/hello") == folder.resolve()
    tag = user_image_tag(folder)
    try:
        [built] = build_user_images(
            root, [folder], base=base_image, docker_host=docker_engine.host, sink=lambda _: None
        )
        assert built.tag == tag
        # Only the first stage runs in Docker here: the fake stages after it need the repo's Python.
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "tinymlaas_ci",
                "-C",
                str(root),
                "run",
                "--executor",
                "docker",
                "--work-dir",
                str(root / ".work"),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        status = json.loads((root / ".work/p/r1/prepare/status.json").read_text())
        assert status["status"] == "generated", proc.stdout + proc.stderr
        assert status["image"] == tag and status["image_digest"] == built.id
        assert (root / ".work/p/r1/prepare/hello.txt").read_bytes() == b"hello from my image"
        # Changing the folder changes the tag: the engine will not run a stale image.
        (folder / "hello.py").write_text((folder / "hello.py").read_text() + "# changed\n")
        assert user_image_tag(folder) != tag
    finally:
        docker_engine.client.images.remove(tag, force=True)
