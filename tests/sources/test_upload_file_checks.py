"""What `tinymlaas validate` can tell from the upload files alone, reported with the spec's problems."""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

from tinymlaas_ci.spec.repo import COMPANIONS_SUFFIX, load_repo

ROOT = Path(__file__).resolve().parents[2]


def _repo(tmp_path: Path, spec: str, files: dict[str, bytes]) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "devices", repo / "devices")
    if (ROOT / "pipelines").is_dir():
        shutil.copytree(ROOT / "pipelines", repo / "pipelines")
    (repo / "runs" / "p").mkdir(parents=True)
    (repo / "runs" / "p" / "r.yaml").write_text(spec)
    for rel, data in files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_bytes(data)
    return repo


def _test_only_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("test/0/a.png", b"x")
    return buf.getvalue()


def _messages(repo: Path) -> list[str]:
    return [f"{p.message} | {p.hint}" for p in load_repo(repo, results=False).problems]


def test_files_alone_show_what_cannot_work(tmp_path):
    spec = """schema: 1
model:
  upload: uploads/m/model.safetensors
  format: onnx
  code: train.py
dataset:
  upload: uploads/d/test-only.zip
compression:
  quantization: static-int8
device: host
"""
    repo = _repo(
        tmp_path,
        spec,
        {"uploads/m/model.safetensors": b"weights", "uploads/d/test-only.zip": _test_only_zip()},
    )
    messages = "\n".join(_messages(repo))
    assert "model.format is onnx, but model.safetensors has the extension of another format" in messages
    assert "holds weights only" in messages and "model.architecture" in messages
    assert "model.code names 'train.py', which is not next to uploads/m/model.safetensors" in messages
    assert "has only a test split, but static-int8 calibration needs a train (or val) split" in messages


def test_a_keras_file_is_named_with_the_conversion(tmp_path):
    spec = "schema: 1\nmodel: {upload: uploads/m/model.h5}\ndataset: {upload: uploads/d/d.zip}\ndevice: host\n"
    repo = _repo(tmp_path, spec, {"uploads/m/model.h5": b"HDF", "uploads/d/d.zip": _test_only_zip()})
    (problem,) = [m for m in _messages(repo) if "model.h5" in m]
    assert "a Keras model" in problem and "tf2onnx" in problem


def test_the_files_fetched_with_a_model_have_their_own_digest(tmp_path):
    spec = "schema: 1\nmodel: {upload: uploads/m/model.onnx}\ndataset: {upload: uploads/d/d.zip}\ndevice: host\n"
    files = {
        "uploads/m/model.onnx": b"\x08\x07",
        "uploads/m/model.onnx.data": b"1234",
        "uploads/m/README.md": b"not fetched",
        "uploads/d/d.zip": _test_only_zip(),
    }
    repo = _repo(tmp_path, spec, files)
    first = load_repo(repo, results=False).upload_digests["uploads/m/model.onnx" + COMPANIONS_SUFFIX]
    (repo / "uploads/m/README.md").write_bytes(b"changed")
    assert load_repo(repo, results=False).upload_digests["uploads/m/model.onnx" + COMPANIONS_SUFFIX] == first
    (repo / "uploads/m/model.onnx.data").write_bytes(b"5678")
    assert load_repo(repo, results=False).upload_digests["uploads/m/model.onnx" + COMPANIONS_SUFFIX] != first
