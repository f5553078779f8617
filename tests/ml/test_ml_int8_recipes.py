"""int8 that runs as integer kernels: recipes per architecture, integer_ops in ORT's optimized graph,
dynamic-int8 on MatMul/Gemm only, fp16 on CPUs without fp16 arithmetic. Real torch, real ONNX Runtime."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from tinymlaas_ci.errors import TinymlError
from tinymlaas_ci.hostinfo import arch as host_arch
from tinymlaas_ci.hostinfo import cpu_info
from tinymlaas_ci.ml.quantize import (
    ACCURACY_TOLERANCE,
    SWITCH_MARGIN,
    fp16_native,
    integer_ops,
    quantize_onnx,
    static_recipes,
)
from tinymlaas_ci.results.models import CompressionRecord


def _resnet_like(path, seed: int = 0):
    """A small residual CNN of MLPerf Tiny's image-classification shape (3x32x32), exported to ONNX."""
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout)
            self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1), nn.BatchNorm2d(cout)
            self.sc = nn.Conv2d(cin, cout, 1, stride)

        def forward(self, x):
            y = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
            return torch.relu(y + self.sc(x))

    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, 1, 1), nn.ReLU(), Block(16, 32, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)
    ).eval()
    torch.onnx.export(
        model,
        torch.randn(2, 3, 32, 32),
        str(path),
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
        dynamo=False,
    )
    import onnx

    onnx.save(onnx.load(str(path)), str(path))  # one file, no external data
    return path


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    return _resnet_like(tmp_path_factory.mktemp("resnet") / "fp32.onnx")


def test_recipe_per_architecture():
    amd = static_recipes("amd64", ["avx2", "avx512_vnni"])
    assert [r.name for r in amd] == ["qdq-u8s8-per-channel", "qdq-u8s8-per-tensor"]
    assert amd[0].options()["activation_type"] == "uint8" and amd[0].options()["weight_type"] == "int8"
    # ORT documents S8S8 in QDQ as the default on ARM64; U8S8 is the alternative that gets timed.
    arm = static_recipes("arm64", ["asimd", "asimddp"])
    assert [r.name for r in arm] == ["qdq-s8s8-per-channel", "qdq-u8s8-per-channel"]
    assert "S8S8" in arm[0].why
    # x86 without VNNI: 7-bit weights first, against U8S8 saturation.
    assert static_recipes("amd64", ["avx2", "fma"])[0].name == "qdq-u8s8-per-channel-reduce-range"
    assert static_recipes("x86_64", None)[0].name == "qdq-u8s8-per-channel"  # platform.machine() spelling
    assert all(r.per_channel for r in static_recipes("amd64", None, per_channel_only=True))
    assert [r.name for r in static_recipes("riscv64")] == ["qdq-s8s8-per-channel"]


def test_fp16_native_from_cpu_flags():
    assert fp16_native("amd64", ["avx2", "avx512f", "avx512_vnni", "f16c"]) is False  # f16c only converts
    assert fp16_native("amd64", ["avx512_fp16"]) is True
    assert fp16_native("amd64", ["amx_fp16"]) is True
    assert fp16_native("arm64", ["asimd", "asimdhp"]) is True
    assert fp16_native("arm64", ["fphp"]) is True
    assert fp16_native("arm64", ["asimd"]) is False
    assert fp16_native("arm64", None) is None


def test_integer_ops_of_a_real_quantized_model(compiled):
    static = CompressionRecord.model_validate(compiled("static-int8").record)
    # The digits CNN: 2 Conv + 2 Gemm, all four fused into QLinearConv/QGemm.
    assert static.integer_ops.model_dump() == {"integer": 4, "total": 4}
    assert integer_ops(compiled("none").deployed) == {"integer": 0, "total": 4}
    assert compiled("none").record["integer_ops"] == {"integer": 0, "total": 4}


def test_integer_ops_shows_a_half_quantized_model(resnet, tmp_path):
    calib = np.random.default_rng(0).standard_normal((32, 3, 32, 32)).astype(np.float32)
    # Asked for an arm64 device on another machine: the arm64 default recipe, untimed.
    other = "arm64" if host_arch() != "arm64" else "amd64"
    info = quantize_onnx(resnet, tmp_path / "q.onnx", "static-int8", calibration=calib, arch=other)
    assert info["recipe"] == static_recipes(other)[0].name
    assert "not timed" in info["recipe_reason"] and info["recipe_candidates"] == []
    # 4 Convs + 1 Gemm in the graph.
    counted = integer_ops(tmp_path / "q.onnx")
    assert counted["total"] == 5
    if host_arch() == "amd64" and other == "arm64":
        # On x86, ORT leaves int8-activation Convs unfused (fp32 behind DequantizeLinear): visible.
        assert counted["integer"] < counted["total"]
        amd = quantize_onnx(resnet, tmp_path / "u.onnx", "static-int8", calibration=calib, arch="amd64")
        assert integer_ops(tmp_path / "u.onnx") == {"integer": 5, "total": 5}
        assert amd["recipe"].startswith("qdq-u8s8")


def test_recipes_are_timed_on_the_device_architecture(compiled):
    rec = compiled("static-int8").record
    cands = rec["recipe_candidates"]
    # This machine's own list: its CPU flags decide (no VNNI: the 7-bit reduce-range recipe first).
    expected = [r.name for r in static_recipes(host_arch(), cpu_info()["isa_flags"])]
    assert [c["recipe"] for c in cands] == expected[: len(cands)]
    assert len(cands) >= 2
    kept = [c for c in cands if c["kept"]]
    assert len(kept) == 1 and kept[0]["recipe"] == rec["recipe"]
    assert all(c["speedup_vs_fp32"] > 0 and "integer_ops" in c for c in cands)
    held = [c for c in cands if c["holds"]]
    assert all(c["holds"] == (c["accuracy_drop"] <= ACCURACY_TOLERANCE + 1e-12) for c in cands)
    # The default, unless another recipe whose accuracy holds is faster by more than the margin
    # even at the low end of its interval against the default.
    default = cands[0] if cands[0]["holds"] else max(held, key=lambda c: c["speedup_vs_fp32"])
    others = [c for c in held if c is not default]
    assert all(len(c["ci95_vs_default"]) == 2 for c in others)
    clearly = [c for c in others if c["ci95_vs_default"][0] > 1 + SWITCH_MARGIN]
    if not clearly:
        assert kept[0] is default
    else:
        assert kept[0]["speedup_vs_fp32"] == max(c["speedup_vs_fp32"] for c in clearly)
    assert "timed side by side" in rec["recipe_reason"]


def test_dynamic_int8_quantizes_matmul_gemm_and_leaves_convs_fp32(compiled, resnet, tmp_path):
    import onnx

    out = compiled("dynamic-int8")
    ops = Counter(n.op_type for n in onnx.load(str(out.deployed)).graph.node)
    assert ops["Conv"] == 2 and ops["ConvInteger"] == 0 and ops["MatMulInteger"] == 2
    assert out.record["integer_ops"] == {"integer": 2, "total": 4}
    assert out.record["recipe"] == "dynamic-matmul-gemm"
    info = quantize_onnx(resnet, tmp_path / "d.onnx", "dynamic-int8")
    assert info["recipe"] == "dynamic-matmul-gemm"
    assert integer_ops(tmp_path / "d.onnx") == {"integer": 1, "total": 5}  # the Linear only


def test_dynamic_int8_refuses_a_model_without_matmul(tmp_path):
    import torch

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU()).eval()
    torch.onnx.export(model, torch.randn(2, 1, 8, 8), str(tmp_path / "c.onnx"), dynamo=False)
    with pytest.raises(TinymlError, match="quantizes MatMul/Gemm layers, and this model has none") as info:
        quantize_onnx(tmp_path / "c.onnx", tmp_path / "d.onnx", "dynamic-int8")
    assert "static-int8" in info.value.hint


def test_fp16_says_when_the_cpu_has_no_fp16_arithmetic(compiled, tmp_path):
    from tinymlaas_ci.hostinfo import cpu_info

    rec = compiled("fp16").record
    expected = fp16_native(host_arch(), cpu_info()["isa_flags"])
    assert rec["fp16_native"] is expected
    logged: list[str] = []
    quantize_onnx(compiled("none").baseline, tmp_path / "h.onnx", "fp16", progress=logged.append)
    if expected is False:
        assert any("no fp16 arithmetic" in line for line in logged)
    # For a device of another architecture its flags are unknown here: said so, recorded as None.
    other = "arm64" if host_arch() != "arm64" else "amd64"
    logged.clear()
    info = quantize_onnx(compiled("none").baseline, tmp_path / "h2.onnx", "fp16", arch=other, progress=logged.append)
    assert info["fp16_native"] is None and any("unknown" in line for line in logged)
