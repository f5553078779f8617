"""Compile correctness on the digits example: real torch, real ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tinymlaas_ci.errors import TinymlError
from tinymlaas_ci.ml import measure
from tinymlaas_ci.ml.compress import compile_model
from tinymlaas_ci.ml.runtime import load_session
from tinymlaas_ci.results.models import CompressionRecord
from tinymlaas_ci.spec.models import Compression

DIGITS_MODEL = Path(__file__).resolve().parents[2] / "uploads" / "digits-cnn" / "model.pkl"


def accuracy(path, data, split="test"):
    session = load_session(path, threads=1)
    x, y = measure.eval_split(data, split)
    return measure.evaluate(session.run, x, y, num_classes=10)["accuracy"]


def test_baseline_matches_the_trained_model(compiled, digits_data):
    out = compiled("none")
    assert out.source_format == "pytorch"
    assert out.parameters == 38282
    assert out.input_shape == (1, 8, 8)
    # A copy of the baseline is deployed; both score what train.py reported (0.983).
    assert out.deployed.read_bytes() == out.baseline.read_bytes()
    assert accuracy(out.deployed, digits_data) >= 0.97
    CompressionRecord.model_validate(out.record)


def test_static_int8_is_small_and_keeps_accuracy(compiled, digits_data):
    fp32 = accuracy(compiled("none").baseline, digits_data)
    out = compiled("static-int8")
    rec = CompressionRecord.model_validate(out.record)
    assert abs(accuracy(out.deployed, digits_data) - fp32) <= 0.01
    assert rec.baseline_bytes / rec.compressed_bytes >= 2.5
    assert rec.calibration_samples == 256
    assert rec.ops_quantized["QuantizeLinear"] > 0 and rec.ops_quantized["Conv.int8"] == 2


def test_fp16_halves_the_model(compiled, digits_data):
    out = compiled("fp16")
    ratio = out.record["baseline_bytes"] / out.record["compressed_bytes"]
    assert 1.7 <= ratio <= 2.1
    assert out.record["ops_quantized"]["Conv.fp16"] == 2
    # float32 in, float32 out: the same data feeds every variant.
    session = load_session(out.deployed)
    assert session.run(digits_data["x_test"][:3]).dtype == np.float32
    assert abs(accuracy(out.deployed, digits_data) - accuracy(out.baseline, digits_data)) <= 0.01


def test_dynamic_int8_runs(compiled, digits_data):
    out = compiled("dynamic-int8")
    # The two Gemms become MatMulInteger; the Convs stay fp32 (ConvInteger is slow on CNNs).
    assert out.record["ops_quantized"].get("MatMulInteger") == 2
    assert "ConvInteger" not in out.record["ops_quantized"]
    assert accuracy(out.deployed, digits_data) >= 0.95


def test_pruning_reaches_target_sparsity_and_gzip_shrinks(compiled, digits_data):
    out = compiled("pruned-80")
    rec = out.record
    assert abs(rec["achieved_sparsity"] - 0.8) <= 0.01
    assert rec["target_sparsity"] == 0.8
    # A dense file keeps its size; only the compressed bytes show the zeros.
    assert rec["compressed_gzip_bytes"] < 0.6 * rec["baseline_gzip_bytes"]
    assert abs(rec["compressed_bytes"] - rec["baseline_bytes"]) < 0.02 * rec["baseline_bytes"]
    import onnx
    from onnx import numpy_helper

    weights = [
        numpy_helper.to_array(i) for i in onnx.load(str(out.deployed)).graph.initializer if i.dims and len(i.dims) >= 2
    ]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.size for w in weights)
    assert abs(zeros - 0.8) <= 0.01


def test_fine_tuning_restores_accuracy(compiled, digits_data):
    fp32 = accuracy(compiled("none").baseline, digits_data)
    pruned = accuracy(compiled("pruned-80").deployed, digits_data)
    tuned_out = compiled("pruned-80-ft")
    tuned = accuracy(tuned_out.deployed, digits_data)
    assert pruned < fp32 - 0.05  # 80% pruning hurts...
    assert tuned >= fp32 - 0.02  # ...and two epochs bring it back
    assert abs(tuned_out.record["achieved_sparsity"] - 0.8) <= 0.01  # fine-tuning kept the zeros
    assert tuned_out.record["fine_tune_epochs"] == 2


@pytest.mark.parametrize(
    "variant, op",
    [
        ("torch-none", None),
        ("torch-dynamic-int8", "Linear.dynamic-int8"),
        ("torch-fp16", "Conv2d.fp16"),
    ],
)
def test_pytorch_runtime_torchscript(compiled, digits_data, variant, op):
    out = compiled(variant)
    assert out.deployed.suffix == ".pt"
    if op:
        assert out.record["ops_quantized"][op] == 2
    assert accuracy(out.deployed, digits_data) >= 0.97


def test_static_int8_without_data_is_refused(tmp_path):
    with pytest.raises(TinymlError, match="no train or val split") as info:
        compile_model(DIGITS_MODEL, tmp_path, compression=Compression(quantization="static-int8"), data={})
    assert "dynamic-int8 or fp16" in info.value.hint


def test_pruning_an_onnx_model_is_refused(compiled, tmp_path):
    with pytest.raises(TinymlError, match="pruning needs a PyTorch model"):
        compile_model(compiled("none").baseline, tmp_path, compression=Compression(pruning={"sparsity": 0.5}))
