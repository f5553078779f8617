"""Channels-last preparation before int8 quantization: the rewrites keep every output, the
Transposes ONNX Runtime would add around its NHWC integer kernels cancel, and a rewrite that
does not cancel is not kept. Real torch, real ONNX Runtime."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tinymlaas_ci.ml import channels_last
from tinymlaas_ci.ml.quantize import _quantize_static, optimized_graph, static_recipes
from tinymlaas_ci.ml.runtime import load_session


def _export(model, shape, path):
    import torch

    torch.onnx.export(
        model.eval(),
        torch.randn(*shape),
        str(path),
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
        dynamo=False,
    )
    return path


def _cnn(in_ch: int, head: str):
    import torch
    from torch import nn

    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(in_ch, 8, 3, padding=1)
            self.pool = nn.MaxPool2d(2)
            self.fc = nn.Linear(8 * 4 * 4, 5)

        def forward(self, x):
            y = self.pool(torch.relu(self.conv(x)))
            if head == "flatten":
                y = torch.flatten(y, 1)
            elif head == "view":
                y = y.reshape(-1, 8 * 4 * 4)
            else:  # matmul: a constant weight [K, out]
                return torch.flatten(y, 1) @ self.fc.weight.T
            return self.fc(y)

    return Net()


def _run(path, x):
    session = load_session(path, "onnxruntime", threads=1)
    return np.asarray(session.run(x))


@pytest.mark.parametrize("head", ["flatten", "view", "matmul"])
def test_rewrites_keep_every_fp32_output(tmp_path, head):
    src = _export(_cnn(1, head), (2, 1, 8, 8), tmp_path / "m.onnx")
    done = channels_last.prepare(src, tmp_path / "cl.onnx")
    assert any(line.startswith("input 'x'") for line in done), done
    assert any("flattened in NHWC order" in line for line in done), done
    x = np.random.default_rng(0).random((7, 1, 8, 8), dtype=np.float32)
    np.testing.assert_allclose(_run(tmp_path / "cl.onnx", x), _run(src, x), rtol=1e-5, atol=1e-5)


def test_a_three_channel_input_is_left_alone(tmp_path):
    src = _export(_cnn(3, "flatten"), (2, 3, 8, 8), tmp_path / "m.onnx")
    done = channels_last.prepare(src, tmp_path / "cl.onnx")
    assert not any(line.startswith("input") for line in done)
    assert len(done) == 1  # the flatten only: a 3-channel NCHW input is a real transpose
    x = np.random.default_rng(1).random((3, 3, 8, 8), dtype=np.float32)
    np.testing.assert_allclose(_run(tmp_path / "cl.onnx", x), _run(src, x), rtol=1e-5, atol=1e-5)


def test_a_graph_without_the_patterns_is_not_written(tmp_path):
    from torch import nn

    src = _export(nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2)), (2, 6), tmp_path / "mlp.onnx")
    assert channels_last.prepare(src, tmp_path / "cl.onnx") == []
    assert not (tmp_path / "cl.onnx").exists()


def test_the_int8_graph_runs_without_transposes_and_agrees(tmp_path):
    from tinymlaas_ci.ml.quantize import _preprocess

    src = _export(_cnn(1, "flatten"), (2, 1, 8, 8), tmp_path / "m.onnx")
    prepared = _preprocess(src, tmp_path / "prepared.onnx")
    calib = np.random.default_rng(2).random((64, 1, 8, 8), dtype=np.float32)
    # The 7-bit weights of the recipe for x86 CPUs without VNNI: no int16 saturation in ONNX
    # Runtime's U8S8 kernels on any x86 CPU, so the sums do not depend on the order of the weights.
    recipe = static_recipes("amd64", ["avx2"])[0]
    assert recipe.reduce_range
    plain = dataclasses.replace(recipe, channels_last=False)
    kept = _quantize_static(prepared, tmp_path / "cl.onnx", calib, recipe)
    assert _quantize_static(prepared, tmp_path / "plain.onnx", calib, plain) == []
    assert len(kept) == 2, kept
    ops = lambda p: [n.op_type for n in optimized_graph(p).graph.node]  # noqa: E731
    assert ops(tmp_path / "plain.onnx").count("Transpose") == 2
    assert "Transpose" not in ops(tmp_path / "cl.onnx")
    assert len(ops(tmp_path / "cl.onnx")) == len(ops(tmp_path / "plain.onnx")) - 1  # two Transposes, one Reshape
    x = np.random.default_rng(3).random((200, 1, 8, 8), dtype=np.float32)
    a, b = _run(tmp_path / "cl.onnx", x), _run(tmp_path / "plain.onnx", x)
    # Same quantization parameters, the same integer sums in another order: the same outputs, up
    # to the last bits of the output scale (calibrated from fp32 sums in another order).
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert (a.argmax(1) == b.argmax(1)).all()


def test_a_rewrite_that_does_not_cancel_is_not_kept(tmp_path):
    # In an fp32 graph nothing runs channels-last: the inserted Transposes survive ONNX Runtime's
    # optimizer, and `surviving` names them.
    src = _export(_cnn(1, "flatten"), (2, 1, 8, 8), tmp_path / "m.onnx")
    assert channels_last.prepare(src, tmp_path / "cl.onnx")
    left = channels_last.surviving(optimized_graph(tmp_path / "cl.onnx"))
    assert left and all(channels_last.MARK in name for name in left)


def test_the_digits_record_says_what_was_rewritten(compiled):
    rec = compiled("static-int8").record
    assert len(rec["layout"]) == 2, rec["layout"]
    assert "Transpose" not in [n.op_type for n in optimized_graph(compiled("static-int8").deployed).graph.node]
