"""Integrity of a run's artifacts: no stage can change what a later stage reads, and in
particular no model can change the data it is graded on.

The attack is real: a pickled model whose unpickling inside the compile stage rewrites the
fetch stage's ``dataset.npz`` to make a constant-class model score 1.0 (see
``hostile_models.py``). Under Docker the write must be refused (upstream folders are mounted
read-only and belong to the runner); under the local executor, which cannot sandbox, the
rewrite happens and must be caught by the sha256 check of the next stage that reads the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docker_support import docker_engine  # noqa: F401 (fixture)
from tests.engine.example_repo import copy_example
from tests.security.hostile_models import add_hostile_run


def _run(root: Path, run: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tinymlaas_ci",
            "-C",
            str(root),
            "run",
            "--select",
            run,
            "--work-dir",
            str(root / ".work"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )


def _outcome(root: Path, run: str) -> dict:
    project, name = run.split("/")
    return json.loads((root / ".work" / project / name / "result.json").read_text())


def _require_stage_image(docker_engine) -> None:
    import docker

    from tinymlaas_ci.engine.images import STAGE_IMAGE

    try:
        docker_engine.client.images.get(STAGE_IMAGE)
    except docker.errors.ImageNotFound:
        from tests.docker_support import unavailable

        unavailable(f"image {STAGE_IMAGE} is missing; build it with 'tinymlaas images build'")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("forge_record", [False, True], ids=["data", "data-and-record"])
def test_local_executor_detects_a_model_that_rewrites_its_evaluation_data(tmp_path, forge_record):
    root = copy_example(tmp_path)
    run = add_hostile_run(root, forge_record=forge_record)
    proc = _run(root, run)
    volume = root / ".work" / run
    # The local executor cannot sandbox: the model's code did rewrite the file...
    assert "in place: written" in (volume / "compile" / "tamper.txt").read_text()
    # ...but the run does not report what the forged data would give.
    assert proc.returncode != 0, proc.stdout + proc.stderr
    result = _outcome(root, run)
    assert result["status"] == "failed"
    assert result["metrics"] is None
    assert result["error"]["stage"] == "install"
    assert "fetch/dataset.npz" in result["error"]["message"]
    assert "changed after stage 'fetch' finished" in result["error"]["message"]
    assert not (root / "runs" / "evil" / "results" / "steal.json").exists()


def test_finished_stage_folders_are_read_only(tmp_path):
    root = copy_example(tmp_path)
    proc = _run(root, "digits/cnn-none")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    volume = root / ".work" / "digits" / "cnn-none"
    for stage in ("fetch", "compile", "install", "infer"):
        for path in (volume / stage).rglob("*"):
            mode = path.lstat().st_mode
            if stat.S_ISREG(mode):
                assert not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH), path
            elif stat.S_ISDIR(mode):
                assert not mode & (stat.S_IWGRP | stat.S_IWOTH), path
    # A re-run reuses them (cache hits), and a forced re-run can still replace them.
    again = _run(root, "digits/cnn-none", "--force")
    assert again.returncode == 0, again.stdout + again.stderr


def test_cached_outputs_with_an_edited_record_are_not_reused(tmp_path):
    """Editing a cached stage's outputs.json (say, to point at other data) is never trusted: the
    stage runs again, or its outputs come back from the shared stage cache, whose files are
    checked against their sha256 on the way back."""
    root = copy_example(tmp_path)
    assert _run(root, "digits/cnn-none").returncode == 0
    record = root / ".work/digits/cnn-none/fetch/outputs.json"
    outputs = json.loads(record.read_text())
    outputs["artifacts"]["dataset"]["sha256"] = "f" * 64
    os.chmod(record, 0o644)
    record.write_text(json.dumps(outputs))
    (root / "runs/digits/results/cnn-none.json").unlink()
    proc = _run(root, "digits/cnn-none")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    status = json.loads((root / ".work/digits/cnn-none/fetch/status.json").read_text())
    # Not the edited record: a fresh run of the stage, or the verified shared cache entry.
    assert status["cache_hit"] is False or status.get("cache_from") == "digits/cnn-none", status
    assert json.loads(record.read_text())["artifacts"]["dataset"]["sha256"] != "f" * 64


@pytest.mark.docker
@pytest.mark.parametrize("forge_record", [False, True], ids=["data", "data-and-record"])
def test_docker_sandbox_refuses_a_model_that_rewrites_its_evaluation_data(tmp_path, docker_engine, forge_record):
    _require_stage_image(docker_engine)
    root = copy_example(tmp_path)
    run = add_hostile_run(root, forge_record=forge_record)
    proc = _run(root, run, "--executor", "docker")
    volume = root / ".work" / run
    notes = (volume / "compile" / "tamper.txt").read_text()
    # The model's code ran (inside the sandbox): it could not even read the file (withheld from
    # compile), and every way it tried to write over it was refused.
    assert "read failed" in notes, notes
    assert "written" not in notes, notes
    assert "in place: refused" in notes and "replace: refused" in notes, notes
    fetch = json.loads((volume / "fetch" / "outputs.json").read_text())
    assert _sha256(volume / "fetch" / "dataset.npz") == fetch["artifacts"]["dataset"]["sha256"]
    # So the run measured the real data: a constant-class model scores about 1 in 10.
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = _outcome(root, run)
    assert result["status"] == "succeeded"
    assert result["metrics"]["accuracy"] < 0.3


def _forged_compile_record(root: Path, *args: str) -> None:
    run = add_hostile_run(root, forge_record="compile")
    proc = _run(root, run, *args)
    volume = root / ".work" / run
    assert (volume / "compile" / "tamper.txt").read_text() == "own record: forged"
    compiled = json.loads((volume / "compile" / "outputs.json").read_text())
    assert compiled["records"]["dataset"]["path"] == "compile/forged.npz"  # the lie was told...
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = _outcome(root, run)
    # ...and not believed: install and infer take the dataset from fetch's recorded outputs.
    assert result["status"] == "succeeded"
    assert result["metrics"]["accuracy"] < 0.3


def test_a_compile_stage_cannot_choose_the_evaluation_data(tmp_path):
    _forged_compile_record(copy_example(tmp_path))


@pytest.mark.docker
def test_a_compile_stage_cannot_choose_the_evaluation_data_in_docker(tmp_path, docker_engine):
    _require_stage_image(docker_engine)
    _forged_compile_record(copy_example(tmp_path), "--executor", "docker")


def test_local_executor_cannot_hide_the_test_split_from_a_model(tmp_path):
    """The control for the Docker test below: the ``peek`` model does memorise the test split
    when it can read it (the local executor does not sandbox), and then scores about 1.0 — so a
    low score under Docker is the sandbox's doing, not a broken attack."""
    root = copy_example(tmp_path)
    run = add_hostile_run(root, forge_record="peek")
    proc = _run(root, run)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    notes = (root / ".work" / run / "compile" / "tamper.txt").read_text()
    assert "dataset.npz: 0 test labels" not in notes and "dataset.npz: unreadable" not in notes, notes
    assert "fit.npz: 0 test labels" in notes, notes  # compile's own copy holds no test split
    assert _outcome(root, run)["metrics"]["accuracy"] > 0.9


@pytest.mark.docker
def test_docker_sandbox_withholds_the_test_split_from_a_model(tmp_path, docker_engine):
    _require_stage_image(docker_engine)
    root = copy_example(tmp_path)
    run = add_hostile_run(root, forge_record="peek")
    proc = _run(root, run, "--executor", "docker")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    notes = (root / ".work" / run / "compile" / "tamper.txt").read_text().splitlines()
    # Every place the test split is kept was empty to the model's code: fetch's whole file, its
    # downloaded or extracted sources, and the upload in the repository; compile's own copy has
    # every split but the test one.
    assert "dataset.npz: unreadable (EOFError)" in notes or "dataset.npz: unreadable (ValueError)" in notes, notes
    assert "fit.npz: 0 test labels" in notes, notes
    assert "fetch/dataset/: 0 files" in notes, notes
    assert any(n.startswith("upload: unreadable") for n in notes), notes
    # So the constant model is graded as what it is.
    result = _outcome(root, run)
    assert result["status"] == "succeeded"
    assert result["metrics"]["accuracy"] < 0.3
    # The files themselves are there for the grading stages, unchanged.
    volume = root / ".work" / run
    fetch = json.loads((volume / "fetch" / "outputs.json").read_text())
    assert _sha256(volume / "fetch" / "dataset.npz") == fetch["artifacts"]["dataset"]["sha256"]
