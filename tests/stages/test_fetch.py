"""The fetch stage end to end, as a real subprocess: uploads, and the fake Hub via HF_ENDPOINT."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # so that `tests.*` imports however pytest is started
    sys.path.insert(0, str(ROOT))

from tests.hubserver import FakeHub
from tests.sources.builders import (
    digit_pixels,
    imagefolder_files,
    parquet_bytes,
    png_bytes,
    write_tree,
    zip_bytes,
)
from tinymlaas_ci.errors import SourceError
from tinymlaas_ci.ml.model_format import detect_model_format
from tinymlaas_ci.results.models import DatasetInput, ModelInput

COUNTS = {"train": {"0": 3, "1": 3}, "val": {"0": 1, "1": 1}, "test": {"0": 2, "1": 2}}


@pytest.fixture
def hub():
    with FakeHub() as server:
        yield server


def _spec(model: dict, dataset: dict) -> dict:
    return {
        "schema": 1,
        "name": "cnn",
        "model": {"format": "auto", "revision": "main", "input_shape": [1, 8, 8], **model},
        "dataset": {
            "revision": "main",
            "split": "test",
            "format": "auto",
            "image_column": "image",
            "label_column": "label",
            **dataset,
        },
        "device": "host",
        "runtime": "onnxruntime",
    }


def _run(volume: Path, repo: Path, spec: dict, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    stage = volume / "fetch"
    stage.mkdir(parents=True, exist_ok=True)
    (stage / "stage.json").write_text(
        json.dumps(
            {
                "schema": 1,
                "stage": "fetch",
                "builtin": "fetch",
                "run": {"project": "digits", "name": "cnn"},
                "repo": str(repo),
                "params": {},
                "spec": spec,
                "device": {"schema": 1, "name": "host", "kind": "local"},
                "inputs": {},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "tinymlaas_ci.stages.fetch", str(volume), "--name", "fetch"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _outputs(volume: Path) -> dict:
    return json.loads((volume / "fetch" / "outputs.json").read_text())


def _error(volume: Path) -> dict:
    return json.loads((volume / "fetch" / "error.json").read_text())


def test_uploads_end_to_end(tmp_path):
    repo = tmp_path / "repo"
    write_tree(
        repo,
        {
            "uploads/digits-cnn/model.pkl": b"\x80\x04pickled-model",
            "uploads/digits-cnn/net.py": b"class Net: pass\n",
            "uploads/digits/dataset.zip": zip_bytes(imagefolder_files(COUNTS, prefix="digits/")),
        },
    )
    volume = tmp_path / "run"
    proc = _run(
        volume,
        repo,
        _spec({"upload": "uploads/digits-cnn/model.pkl"}, {"upload": "uploads/digits/dataset.zip"}),
    )
    assert proc.returncode == 0, proc.stderr
    out = _outputs(volume)
    assert out["artifacts"]["model"]["path"] == "fetch/model/model.pkl"
    assert out["artifacts"]["dataset"]["path"] == "fetch/dataset.npz"
    assert (volume / "fetch/model/net.py").read_text() == "class Net: pass\n"
    model = ModelInput.model_validate(out["records"]["model"])
    assert (model.kind, model.path, model.format, model.bytes) == (
        "upload",
        "uploads/digits-cnn/model.pkl",
        "pytorch",
        15,
    )
    assert model.sha256 == out["artifacts"]["model"]["sha256"]
    dataset = DatasetInput.model_validate(out["records"]["dataset"])
    assert dataset.splits == {"train": 6, "val": 2, "test": 4}
    assert dataset.labels == ["0", "1"] and dataset.eval_split == "test" and dataset.format == "imagefolder"
    assert "huggingface_hub" in out["records"]["tools"]
    with np.load(volume / "fetch/dataset.npz") as data:
        assert (
            data["x_test"].shape == (4, 1, 8, 8) and data["x_test"].dtype == np.uint8
        )  # raw pixels; preprocessing scales them
    assert "[fetch] dataset: extracted 12 files" in proc.stdout
    # compile gets every split but the evaluation one; the whole file and the sources are withheld
    assert out["artifacts"]["fit_dataset"]["path"] == "fetch/fit.npz"
    with np.load(volume / "fetch/fit.npz") as fit, np.load(volume / "fetch/dataset.npz") as full:
        assert fit["x_test"].shape == (0, 1, 8, 8) and fit["y_test"].shape == (0,)
        assert fit["x_test"].dtype == full["x_test"].dtype
        for key in ("x_train", "y_train", "x_val", "y_val", "labels"):
            np.testing.assert_array_equal(fit[key], full[key])
    assert sorted(out["withheld"]) == ["fetch/dataset", "fetch/dataset.npz"]
    assert "the test split is withheld from compile (it gets train 6, val 2)" in proc.stdout
    # the stage wrote only under its own folder
    assert sorted(p.name for p in volume.iterdir()) == ["fetch"]


def test_hub_end_to_end_private_model_and_parquet_dataset(tmp_path, hub):
    model_repo = hub.add_repo("acme/digits-cnn", private=True)
    tagged = model_repo.commit({"onnx/model.onnx": b"onnx-bytes-v1"}, large=["onnx/model.onnx"])
    model_repo.tag("v1.0")
    model_repo.commit({"onnx/model.onnx": b"onnx-bytes-v2"})
    images = [{"bytes": png_bytes(digit_pixels(i)), "path": None} for i in range(4)]
    data_repo = hub.add_repo(
        "acme/digits",
        repo_type="dataset",
        files={
            "data/train-00000-of-00001.parquet": parquet_bytes(images[:2], [0, 1], names=["zero", "one"]),
            "data/validation-00000-of-00001.parquet": parquet_bytes(images[2:], [1, 0], names=["zero", "one"]),
            "README.md": b"---\nlicense: mit\n---\n",
        },
    )
    volume = tmp_path / "run"
    spec = _spec(
        {"huggingface": "acme/digits-cnn", "revision": "v1.0", "file": "onnx/model.onnx"},
        {"huggingface": "acme/digits", "split": "validation"},
    )
    proc = _run(volume, tmp_path, spec, {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token})
    assert proc.returncode == 0, proc.stderr
    out = _outputs(volume)
    model = ModelInput.model_validate(out["records"]["model"])
    assert (model.repo, model.revision, model.commit, model.file) == (
        "acme/digits-cnn",
        "v1.0",
        tagged,
        "onnx/model.onnx",
    )
    assert model.format == "onnx"
    assert (volume / "fetch/model/model.onnx").read_bytes() == b"onnx-bytes-v1"
    dataset = DatasetInput.model_validate(out["records"]["dataset"])
    assert dataset.commit == data_repo.head and dataset.revision == "main"
    assert dataset.labels == ["zero", "one"] and dataset.eval_split == "val"
    assert dataset.splits == {"train": 2, "val": 2, "test": 0}
    # the token was used (private repo) but is written nowhere
    assert any(r.authorized for r in hub.requests_to("acme/digits-cnn"))
    everything = (
        proc.stdout
        + proc.stderr
        + "".join(
            p.read_text(errors="replace")
            for p in volume.rglob("*")
            if p.is_file() and p.suffix in (".json", ".log", "")
        )
    )
    assert hub.token not in everything
    assert not (volume / "fetch/.hf-home").exists() and not (volume / "fetch/.download").exists()


def test_gated_model_without_token_fails_with_error_json(tmp_path, hub):
    hub.add_repo("acme/gated", gated=True, files={"model.onnx": b"m"})
    volume = tmp_path / "run"
    proc = _run(
        volume,
        tmp_path,
        _spec({"huggingface": "acme/gated", "file": "model.onnx"}, {"huggingface": "acme/none"}),
        {"HF_ENDPOINT": hub.endpoint},
    )
    assert proc.returncode == 1
    err = _error(volume)
    assert err["type"] == "SourceError" and "'acme/gated'" in err["message"] and "gated" in err["message"]
    assert "HF_TOKEN" in err["hint"]
    assert "traceback" not in err and "Traceback" not in proc.stderr
    assert not (volume / "fetch/outputs.json").exists()


def test_missing_eval_split_lists_the_splits_found(tmp_path):
    repo = tmp_path / "repo"
    write_tree(
        repo,
        {
            "uploads/m/model.onnx": b"onnx",
            "uploads/d/data.tar.gz": b"",
        },
    )
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in imagefolder_files({"train": {"a": 2}, "val": {"b": 1}}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    (repo / "uploads/d/data.tar.gz").write_bytes(buf.getvalue())
    volume = tmp_path / "run"
    proc = _run(volume, repo, _spec({"upload": "uploads/m/model.onnx"}, {"upload": "uploads/d/data.tar.gz"}))
    assert proc.returncode == 1
    err = _error(volume)
    assert "no samples in the evaluation split 'test'; splits found: train (2), val (1)" in err["message"]
    assert "dataset.split" in err["hint"]


def test_model_format_detection(tmp_path):
    ts = tmp_path / "model.pt"
    with zipfile.ZipFile(ts, "w") as zf:
        zf.writestr("model/code/__torch__/net.py", "")
        zf.writestr("model/constants.pkl", b"")
    assert detect_model_format(ts) == "torchscript"
    saved = tmp_path / "weights.pth"
    with zipfile.ZipFile(saved, "w") as zf:
        zf.writestr("weights/data.pkl", b"")
    assert detect_model_format(saved) == "pytorch"
    (tmp_path / "m.pkl").write_bytes(b"\x80\x04")
    assert detect_model_format(tmp_path / "m.pkl") == "pytorch"
    assert detect_model_format(tmp_path / "m.pkl", "torchscript") == "torchscript"  # the spec wins
    (tmp_path / "m.pt2").write_bytes(b"")
    assert detect_model_format(tmp_path / "m.pt2") == "exported-program"
    with pytest.raises(SourceError, match="cannot tell the format of model file 'm.bin'") as info:
        (tmp_path / "m.bin").write_bytes(b"")
        detect_model_format(tmp_path / "m.bin")
    assert "model.format" in info.value.hint
