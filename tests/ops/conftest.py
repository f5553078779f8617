"""A real run of the digits CNN (static int8) in a temporary repository, shared by the export
tests: its run volume holds the install bundle and its committed result the recorded accuracy."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SPEC = """\
schema: 1
description: Static int8 digits CNN, for the export tests.
model: {upload: uploads/digits-cnn/model.pkl, format: pytorch, input_shape: [1, 8, 8]}
dataset: {upload: uploads/digits/dataset.zip, split: test}
compression: {quantization: static-int8, calibration_samples: 128}
device: host
measure: {warmup: 5, min_iterations: 50, min_seconds: 0.05}
"""


def cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``tinymlaas ARGS`` as a real process in ``cwd``."""
    full = {k: v for k, v in os.environ.items() if k != "TINYMLAAS_WORK_DIR"}
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "tinymlaas_ci", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=full,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> Path:
    """A repository where ``tinymlaas run`` made digits/int8 (about 10 s)."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    repo = tmp_path_factory.mktemp("export") / "repo"
    (repo / "runs" / "digits").mkdir(parents=True)
    (repo / "devices").mkdir()
    shutil.copy(ROOT / "devices" / "host.yaml", repo / "devices" / "host.yaml")
    for rel in ("uploads/digits-cnn/model.pkl", "uploads/digits/dataset.zip"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, repo / rel)
    (repo / "runs" / "digits" / "int8.yaml").write_text(SPEC)
    proc = cli("run", "--json", "outcomes.json", cwd=repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((repo / "outcomes.json").read_text())["outcomes"][0]["status"] == "succeeded"
    return repo
