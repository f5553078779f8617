"""compile -> install -> infer through the stage entry points, as real processes.

The model is not the example's: ``TinyCNN`` takes 3x16x16 inputs and has 4 classes. The fetch
stage's outputs are written by hand, as the contract describes them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tinymlaas_ci.fs import atomic_write_json, sha256_file
from tinymlaas_ci.results.models import CompressionRecord, DeviceRecord, Metrics, RuntimeRecord
from tinymlaas_ci.spec.models import RunSpec

ROOT = Path(__file__).resolve().parents[2]
LABELS = ["circle", "cross", "square", "stripe"]
SMALL_MEASURE = {"warmup": 2, "min_iterations": 20, "min_seconds": 0, "batch_size": 2}


def make_data(seed: int = 0) -> dict[str, np.ndarray]:
    """A separable 4-class colour task: class c lights up a channel/quadrant pattern."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", 160), ("val", 40), ("test", 48)):
        y = np.arange(n) % 4
        x = rng.normal(0.3, 0.1, size=(n, 3, 16, 16)).astype(np.float32)
        for i, c in enumerate(y):
            x[i, c % 3, (c // 2) * 8 : (c // 2) * 8 + 8, :] += 0.6
        out[f"x_{split}"], out[f"y_{split}"] = x, y.astype(np.int64)
    return out


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory):
    """A trained TinyCNN pickled like an upload, and its data."""
    from tinymlaas_ci.ml.prune import fine_tune, torch_accuracy
    from tinymlaas_ci.ml.zoo import TinyCNN

    torch.manual_seed(0)
    data = make_data()
    model = TinyCNN()
    fine_tune(model, data["x_train"], data["y_train"], epochs=15, learning_rate=1e-2, batch_size=32)
    assert torch_accuracy(model, data["x_test"], data["y_test"]) >= 0.9
    folder = tmp_path_factory.mktemp("tiny")
    torch.save(model, folder / "model.pkl")
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, 3, 16, 16)), folder / "model.pt")
    return folder, data


def spec_json(**overrides) -> dict:
    raw = {
        "schema": 1,
        "name": "tiny",
        "model": {"upload": "uploads/tiny/model.pkl"},
        "dataset": {"upload": "uploads/tiny/data.zip"},
        "measure": SMALL_MEASURE,
    }
    raw.update(overrides)
    return RunSpec.model_validate(raw).model_dump(mode="json", by_alias=True)


def write_fetch(volume: Path, model_file: Path, data: dict, *, fmt: str) -> dict:
    """The fetch stage's outputs, as the contract says it writes them."""
    fetch = volume / "fetch"
    (fetch / "model").mkdir(parents=True)
    model = fetch / "model" / model_file.name
    model.write_bytes(model_file.read_bytes())
    np.savez(fetch / "dataset.npz", labels=np.asarray(LABELS), **data)
    outputs = {
        "schema": 1,
        "stage": "fetch",
        "builtin": "fetch",
        "artifacts": {
            name: {"path": p.relative_to(volume).as_posix(), "sha256": sha256_file(p), "bytes": p.stat().st_size}
            for name, p in (("model", model), ("dataset", fetch / "dataset.npz"))
        },
        "metrics": {},
        "records": {"model": {"format": fmt}, "dataset": {"eval_split": "test", "labels": LABELS}},
    }
    atomic_write_json(fetch / "outputs.json", outputs)
    return outputs


def run_stage(volume: Path, builtin: str, spec: dict, inputs: dict, device: dict | None = None):
    """Write stage.json and run ``python -m tinymlaas_ci.stages.<builtin>``; returns (proc, outputs|error)."""
    config = {
        "schema": 1,
        "stage": builtin,
        "builtin": builtin,
        "run": {"project": "tests", "name": "tiny"},
        "repo": str(ROOT),
        "params": {},
        "spec": spec,
        "device": device or {"schema": 1, "name": "host", "kind": "local", "arch": "amd64"},
        "inputs": inputs,
    }
    atomic_write_json(volume / builtin / "stage.json", config)
    env = dict(os.environ, PYTHONPATH=str(ROOT), TINYMLAAS_SANDBOXED="1")
    proc = subprocess.run(
        [sys.executable, "-m", f"tinymlaas_ci.stages.{builtin}", str(volume), "--name", builtin],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = volume / builtin / ("outputs.json" if proc.returncode == 0 else "error.json")
    assert out.is_file(), proc.stdout + proc.stderr
    return proc, json.loads(out.read_text())


def test_tiny_model_through_compile_install_infer(tmp_path, trained_tiny):
    folder, data = trained_tiny
    volume = tmp_path / "run"
    spec = spec_json(compression={"quantization": "static-int8", "calibration_samples": 64})
    fetch = write_fetch(volume, folder / "model.pkl", data, fmt="pytorch")

    proc, compiled = run_stage(volume, "compile", spec, {"fetch": fetch})
    assert proc.returncode == 0, proc.stderr
    assert "[compile] calibrating static int8 on 64 train samples" in proc.stdout
    assert not (volume / "compile" / "error.json").exists()
    arts = compiled["artifacts"]
    assert arts["model"]["path"] == "compile/model.onnx" and arts["baseline"]["path"] == "compile/baseline.onnx"
    assert sha256_file(volume / arts["model"]["path"]) == arts["model"]["sha256"]
    rec = compiled["records"]
    comp = CompressionRecord.model_validate(rec["compression"])
    assert comp.quantization == "static-int8" and comp.calibration_samples == 64
    # A model this small (~7 KB) can grow under QDQ quantization (scales and zero points per
    # tensor outweigh the saved weight bytes); what must hold is that the graph is quantized.
    assert any(op.endswith(".int8") for op in comp.ops_quantized), comp.ops_quantized
    assert rec["model_parameters"] == sum(
        p.numel() for p in torch.load(folder / "model.pkl", weights_only=False).parameters()
    )
    assert rec["input_shape"] == [3, 16, 16]
    assert {"torch", "onnx", "onnxruntime"} <= set(rec["tools"])

    proc, installed = run_stage(volume, "install", spec, {"compile": compiled})
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((volume / installed["artifacts"]["bundle"]["path"]).read_text())
    assert manifest["labels"] == LABELS and manifest["samples"] == 48 and manifest["input_shape"] == [3, 16, 16]
    assert manifest["sha256"]["model.onnx"] == arts["model"]["sha256"]
    assert installed["records"]["bundle"]["runtime"] == "onnxruntime"

    proc, inferred = run_stage(volume, "infer", spec, {"install": installed})
    assert proc.returncode == 0, proc.stderr
    metrics = Metrics.model_validate(inferred["metrics"])
    assert metrics.samples == 48 and metrics.labels == LABELS
    assert metrics.top5_accuracy is None  # 4 classes
    assert metrics.accuracy >= 0.85 and abs(metrics.accuracy_drop) <= 0.05
    assert metrics.latency_ms.iterations >= 20 and metrics.latency_ms.warmup == 2
    assert metrics.batch_size == 2
    assert metrics.model_size_bytes == arts["model"]["bytes"]
    assert metrics.compression_ratio == pytest.approx(comp.baseline_bytes / comp.compressed_bytes)
    assert sum(map(sum, metrics.confusion_matrix)) == 48
    DeviceRecord.model_validate(inferred["records"]["device"])
    runtime = RuntimeRecord.model_validate(inferred["records"]["runtime"])
    assert runtime.name == "onnxruntime" and runtime.threads == 1


def test_torchscript_on_pytorch_runtime(tmp_path, trained_tiny):
    folder, data = trained_tiny
    volume = tmp_path / "run"
    spec = spec_json(
        model={"upload": "uploads/tiny/model.pt", "input_shape": [3, 16, 16]},
        runtime="pytorch",
        compression={"quantization": "fp16"},
    )
    fetch = write_fetch(volume, folder / "model.pt", data, fmt="torchscript")
    proc, compiled = run_stage(volume, "compile", spec, {"fetch": fetch})
    assert proc.returncode == 0, proc.stderr
    assert compiled["artifacts"]["model"]["path"] == "compile/model.pt"
    proc, installed = run_stage(volume, "install", spec, {"compile": compiled})
    assert proc.returncode == 0, proc.stderr
    # Here the pipeline also hands fetch's outputs to infer: its dataset is used.
    proc, inferred = run_stage(volume, "infer", spec, {"install": installed, "fetch": fetch})
    assert proc.returncode == 0, proc.stderr
    metrics = Metrics.model_validate(inferred["metrics"])
    assert metrics.accuracy >= 0.85
    assert inferred["records"]["runtime"]["name"] == "pytorch"


def test_torchscript_without_input_shape_takes_it_from_the_dataset(tmp_path, trained_tiny):
    folder, data = trained_tiny
    volume = tmp_path / "run"
    spec = spec_json(model={"upload": "uploads/tiny/model.pt"})
    fetch = write_fetch(volume, folder / "model.pt", data, fmt="torchscript")
    proc, error = run_stage(volume, "compile", spec, {"fetch": fetch})
    assert proc.returncode == 0, error
    records = json.loads((volume / "compile" / "outputs.json").read_text())["records"]
    assert records["input_shape"] == list(data["x_test"].shape[1:])
    assert "pre-flight" in proc.stdout


def test_corrupt_onnx_fails_helpfully(tmp_path, trained_tiny):
    _, data = trained_tiny
    volume = tmp_path / "run"
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07not really onnx" * 20)
    spec = spec_json(model={"upload": "uploads/tiny/model.onnx"})
    fetch = write_fetch(volume, bad, data, fmt="onnx")
    proc, error = run_stage(volume, "compile", spec, {"fetch": fetch})
    assert proc.returncode == 1
    assert "model.onnx is not a valid ONNX model" in error["message"]
    assert "re-export" in error["hint"]


def _fake_compile(volume: Path, fetch: dict) -> dict:
    # Install only copies files: any bytes will do, so these tests skip the real compile.
    comp = volume / "compile"
    comp.mkdir(parents=True)
    (comp / "model.onnx").write_bytes(b"model")
    (comp / "baseline.onnx").write_bytes(b"baseline")
    arts = {
        k: {"path": f"compile/{f}", "sha256": sha256_file(comp / f), "bytes": (comp / f).stat().st_size}
        for k, f in (("model", "model.onnx"), ("baseline", "baseline.onnx"))
    }
    return {
        "schema": 1,
        "stage": "compile",
        "builtin": "compile",
        "artifacts": arts,
        "metrics": {},
        "records": {"input_shape": [3, 16, 16], "dataset": fetch["artifacts"]["dataset"]},
    }


def test_install_on_an_unreachable_ssh_board_names_it_and_says_what_to_check(tmp_path, trained_tiny):
    folder, data = trained_tiny
    volume = tmp_path / "run"
    fetch = write_fetch(volume, folder / "model.pkl", data, fmt="pytorch")
    device = {
        "schema": 1,
        "name": "rpi4",
        "kind": "ssh",
        "arch": "arm64",
        "ssh": {"host": "rpi4.invalid", "user": "pi"},
    }
    proc, error = run_stage(volume, "install", spec_json(), {"compile": _fake_compile(volume, fetch)}, device)
    assert proc.returncode == 1
    assert error["type"] == "DeviceError"
    assert error["message"].startswith("device 'rpi4': probing the board on pi@rpi4.invalid:22 failed")
    assert "sshd runs" in error["hint"]


def test_empty_eval_split_is_refused_at_install(tmp_path, trained_tiny):
    folder, data = trained_tiny
    volume = tmp_path / "run"
    data = dict(data, x_val=np.zeros((0, 3, 16, 16), np.float32), y_val=np.zeros(0, np.int64))
    fetch = write_fetch(volume, folder / "model.pkl", data, fmt="pytorch")
    spec = spec_json(dataset={"upload": "uploads/tiny/data.zip", "split": "val"})
    proc, error = run_stage(volume, "install", spec, {"compile": _fake_compile(volume, fetch)})
    assert proc.returncode == 1
    assert "no samples in split 'val'" in error["message"] and "dataset.split" in error["hint"]


def test_runtime_auto_deploys_and_measures_the_runtime_compile_chose(tmp_path, trained_tiny):
    from tests.cgen.conftest import need_compiler

    need_compiler()
    folder, data = trained_tiny
    volume = tmp_path / "run"
    spec = spec_json(runtime="auto", compression={"quantization": "static-int8", "calibration_samples": 64})
    fetch = write_fetch(volume, folder / "model.pkl", data, fmt="pytorch")

    proc, compiled = run_stage(volume, "compile", spec, {"fetch": fetch})
    assert proc.returncode == 0, proc.stderr
    comp = CompressionRecord.model_validate(compiled["records"]["compression"])
    assert comp.runtime in ("onnxruntime", "c") and comp.runtime_reason
    timed = {c.get("runtime", "onnxruntime") for c in comp.recipe_candidates}
    assert timed == {"onnxruntime", "c"}, comp.recipe_candidates
    assert f"runtime auto: kept {comp.runtime}" in proc.stdout
    c_files = {k for k in compiled["artifacts"] if k.startswith("c/")}
    assert c_files == ({"c/model.h", "c/model.c", "c/kernels.h"} if comp.runtime == "c" else set())
    assert ("cgen" in compiled["records"]) == (comp.runtime == "c")
    assert (volume / "compile" / "c").is_dir() == (comp.runtime == "c")

    proc, installed = run_stage(volume, "install", spec, {"compile": compiled})
    assert proc.returncode == 0, proc.stderr
    assert installed["records"]["bundle"]["runtime"] == comp.runtime
    proc, inferred = run_stage(volume, "infer", spec, {"install": installed})
    assert proc.returncode == 0, proc.stderr
    runtime = RuntimeRecord.model_validate(inferred["records"]["runtime"])
    assert runtime.name == comp.runtime
    metrics = inferred["metrics"]
    assert metrics["accuracy"] >= 0.85
    if comp.runtime == "c":
        assert metrics["agreement_with_onnxruntime"] == 1.0


def test_runtime_auto_runs_other_quantizations_in_onnx_runtime(tmp_path, trained_tiny):
    folder, data = trained_tiny
    volume = tmp_path / "run"
    spec = spec_json(runtime="auto", compression={"quantization": "fp16"})
    fetch = write_fetch(volume, folder / "model.pkl", data, fmt="pytorch")
    proc, compiled = run_stage(volume, "compile", spec, {"fetch": fetch})
    assert proc.returncode == 0, proc.stderr
    comp = compiled["records"]["compression"]
    assert comp["runtime"] == "onnxruntime" and "only static-int8" in comp["runtime_reason"]
    assert "runtime auto: onnxruntime (quantization fp16 runs in ONNX Runtime" in proc.stdout
    proc, installed = run_stage(volume, "install", spec, {"compile": compiled})
    assert proc.returncode == 0, proc.stderr
    assert installed["records"]["bundle"]["runtime"] == "onnxruntime"
