"""What the C generator refuses, and how it says so, before any file is written."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tests.cgen.conftest import export, quantized
from tinymlaas_ci.errors import TinymlError
from tinymlaas_ci.ml.cgen import generate_c


class WithSigmoid(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)

    def forward(self, x):
        return torch.sigmoid(self.conv(x))


def test_an_unsupported_operator_names_the_node_and_writes_nothing(tmp_path):
    path = quantized(WithSigmoid(), (2, 6, 6), tmp_path)
    out = tmp_path / "c"
    with pytest.raises(
        TinymlError, match=r"node '[^']*Sigmoid[^']*' \(Sigmoid\): operator Sigmoid is not supported"
    ) as err:
        generate_c(path, out)
    assert "Conv" in err.value.hint and "Concat" in err.value.hint
    assert not out.exists()


def test_a_float_model_is_refused(tmp_path):
    path = export(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()), (1, 5, 5), tmp_path / "fp32.onnx")
    with pytest.raises(TinymlError, match="not quantized|never quantized|not a dequantized"):
        generate_c(path, tmp_path / "c")


def test_dynamic_quantization_is_refused(tmp_path):
    from tinymlaas_ci.ml.compress import quantize_onnx

    # dynamic-int8 quantizes MatMul/Gemm layers only: the model needs one.
    fp32 = export(nn.Sequential(nn.Flatten(), nn.Linear(25, 3)), (1, 5, 5), tmp_path / "fp32.onnx")
    quantize_onnx(fp32, tmp_path / "dyn.onnx", "dynamic-int8")
    with pytest.raises(TinymlError, match="is not supported by the C generator"):
        generate_c(tmp_path / "dyn.onnx", tmp_path / "c")


def test_uint8_activations_are_refused(tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    fp32 = export(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()), (1, 5, 5), tmp_path / "fp32.onnx")
    calib = np.random.default_rng(0).random((4, 1, 1, 5, 5), dtype=np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"input": x}

    quantize_static(
        str(fp32),
        str(tmp_path / "u8.onnx"),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    with pytest.raises(TinymlError, match="quantized to uint8, the C kernels need int8") as err:
        generate_c(tmp_path / "u8.onnx", tmp_path / "c")
    assert "quantize_qdq" in err.value.hint


def test_a_missing_file_says_so(tmp_path):
    with pytest.raises(TinymlError, match="cannot read ONNX model"):
        generate_c(tmp_path / "nope.onnx", tmp_path / "c")
