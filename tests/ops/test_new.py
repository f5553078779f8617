"""``tinymlaas new``: specs written from a look at the model and the dataset validate and run,
for several model/dataset pairs (the digits pickle, an ONNX export, a Hub model and dataset)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.hubserver import fake_hub  # noqa: F401 - the fixture
from tests.ops.conftest import cli


@pytest.fixture
def repo(tmp_path) -> Path:
    dest = tmp_path / "adopter"
    proc = cli("init", str(dest), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return dest


def _spec(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_digits_pickle_and_zip_give_a_spec_that_validates_and_runs(repo: Path):
    proc = cli(
        "new",
        "runs/mine/cnn.yaml",
        "--model",
        "uploads/digits-cnn/model.pkl",
        "--dataset",
        "uploads/digits/dataset.zip",
        cwd=repo,
    )
    assert proc.returncode == 0, proc.stderr
    assert "wrote runs/mine/cnn.yaml: 1 run" in proc.stdout
    text = (repo / "runs/mine/cnn.yaml").read_text()
    spec = yaml.safe_load(text)
    assert spec["model"] == {"upload": "uploads/digits-cnn/model.pkl", "format": "pytorch", "input_shape": [1, 8, 8]}
    assert spec["dataset"] == {"upload": "uploads/digits/dataset.zip", "split": "test"}
    assert spec["device"] == "host"
    # The comments say what was found.
    assert "# found: format pytorch, 38,282 parameters" in text
    assert "# found: imagefolder, splits train 1078, val 359, test 360, samples of shape [1, 8, 8]" in text
    assert "# labels (index = position): 0, 1, 2, 3, 4, 5, 6, 7, 8, 9" in text
    assert cli("validate", "runs/mine/cnn.yaml", cwd=repo).returncode == 0
    run = cli("run", "runs/mine/cnn.yaml", "--work-dir", str(repo / ".work"), cwd=repo, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads((repo / "runs/mine/results/cnn.json").read_text())
    assert result["status"] == "succeeded" and result["metrics"]["accuracy"] > 0.9


def test_an_onnx_model_with_a_quantization_sweep(repo: Path):
    from tinymlaas_ci.ml.formats import export_onnx, load_torch_model

    model = load_torch_model(repo / "uploads/digits-cnn/model.pkl", "pytorch")
    (repo / "uploads/onnx").mkdir()
    export_onnx(model, repo / "uploads/onnx/cnn.onnx", (1, 8, 8))
    proc = cli(
        "new",
        "runs/onnx/cnn.yaml",
        "--model",
        "uploads/onnx/cnn.onnx",
        "--dataset",
        "uploads/digits/dataset.zip",
        "--sweep",
        "quantization",
        cwd=repo,
    )
    assert proc.returncode == 0, proc.stderr
    assert "4 runs" in proc.stdout
    text = (repo / "runs/onnx/cnn.yaml").read_text()
    spec = yaml.safe_load(text)
    assert spec["model"]["format"] == "onnx"
    assert spec["matrix"] == {"compression.quantization": ["none", "dynamic-int8", "static-int8", "fp16"]}
    plan = cli("plan", "--format", "json", "runs/onnx/cnn.yaml", cwd=repo)
    assert plan.returncode == 0, plan.stderr
    ids = [r["id"] for r in json.loads(plan.stdout)["runs"]]
    assert ids == ["onnx/cnn-none", "onnx/cnn-dynamic-int8", "onnx/cnn-static-int8", "onnx/cnn-fp16"]


def _imagefolder_files(zip_path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(zip_path.read_bytes())) as zf:
        return {n: zf.read(n) for n in zf.namelist() if not n.endswith("/") and "/val/" not in f"/{n}"}


def test_hub_model_and_dataset(repo: Path, fake_hub):
    onnx_path = repo / "cnn.onnx"
    from tinymlaas_ci.ml.formats import export_onnx, load_torch_model

    export_onnx(load_torch_model(repo / "uploads/digits-cnn/model.pkl", "pytorch"), onnx_path, (1, 8, 8))
    fake_hub.add_repo(
        "acme/digits-cnn",
        files={"README.md": b"# cnn\n", "onnx/model.onnx": onnx_path.read_bytes()},
        large=["onnx/model.onnx"],
    )
    onnx_path.unlink()
    data = _imagefolder_files(repo / "uploads/digits/dataset.zip")
    fake_hub.add_repo("acme/digits", repo_type="dataset", files=data)
    env = {"HF_ENDPOINT": fake_hub.endpoint, "HF_HUB_OFFLINE": "0", "HF_HOME": str(repo / ".hf")}
    proc = cli("new", "runs/hub/cnn.yaml", "--model", "acme/digits-cnn", "--dataset", "acme/digits", cwd=repo, env=env)
    assert proc.returncode == 0, proc.stderr
    text = (repo / "runs/hub/cnn.yaml").read_text()
    spec = yaml.safe_load(text)
    assert spec["model"] == {
        "huggingface": "acme/digits-cnn",
        "file": "onnx/model.onnx",
        "revision": "main",
        "format": "onnx",
        "input_shape": [1, 8, 8],
    }
    assert spec["dataset"] == {"huggingface": "acme/digits", "revision": "main", "split": "test"}
    assert "# Hub model acme/digits-cnn at main (commit" in text
    assert "splits train 1078, test 360" in text
    assert cli("validate", "runs/hub/cnn.yaml", cwd=repo).returncode == 0


def test_mistakes_are_usage_errors_that_say_what_to_do(repo: Path):
    args = ["--model", "uploads/digits-cnn/model.pkl", "--dataset", "uploads/digits/dataset.zip"]
    outside = cli("new", "specs/cnn.yaml", *args, cwd=repo)
    assert outside.returncode == 2 and "runs/<project>/<run>.yaml" in outside.stderr
    missing = cli(
        "new", "runs/p/a.yaml", "--model", "uploads/nope.onnx", "--dataset", "uploads/digits/dataset.zip", cwd=repo
    )
    assert missing.returncode == 2 and "no such file, and not a Hugging Face Hub id" in missing.stderr
    assert cli("new", "runs/p/a.yaml", *args, cwd=repo).returncode == 0
    again = cli("new", "runs/p/a.yaml", *args, cwd=repo)
    assert again.returncode == 2 and "exists" in again.stderr and "--force" in again.stderr
    device = cli("new", "runs/p/b.yaml", *args, "--device", "rpi9", cwd=repo)
    assert device.returncode == 2 and "devices/rpi9.yaml" in device.stderr
    folder = cli(
        "new", "runs/p/c.yaml", "--model", "uploads/digits-cnn/model.pkl", "--dataset", "uploads/digits", cwd=repo
    )
    assert folder.returncode == 2 and "is a folder" in folder.stderr
