"""Whole networks of MLPerf Tiny's shapes through every kernel path, and the generated files."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from tests.cgen.conftest import PATHS, assert_bit_exact, build, quantized
from tests.cgen.nets import DSCNN, MobileNetV1, ResNet8
from tinymlaas_ci.ml.cgen import ir
from tinymlaas_ci.ml.cgen.arena import ALIGN

pytestmark = pytest.mark.usefixtures("cc")
NETS = {"resnet8": ResNet8, "ds-cnn": DSCNN, "mobilenet-v1": MobileNetV1}


@pytest.fixture(scope="module", params=sorted(NETS))
def net(request, tmp_path_factory):
    torch.manual_seed(0)
    cls = NETS[request.param]
    tmp = tmp_path_factory.mktemp(request.param)
    path = quantized(cls(), cls.input_shape, tmp, lo=-1.0, hi=1.0, samples=16)
    graph, info, models = build(path, tmp, paths=tuple(PATHS))
    return request.param, graph, info, models, tmp


def test_every_kernel_path_matches_the_reference(net):
    _name, graph, _info, models, _ = net
    want = assert_bit_exact(graph, models, n=3)
    assert np.ptp(want.astype(int)) > 0
    assert {m.kernel_path for m in models.values()} >= {"portable", "dsp", "mve"}


def test_info_counts_what_the_model_holds(net):
    name, graph, info, models, tmp = net
    convs = [op for op in graph.ops if isinstance(op, ir.Conv)]
    expected = {"resnet8": (9, 0), "ds-cnn": (9, 4), "mobilenet-v1": (15, 7)}[name]
    assert (len(convs), sum(op.depthwise for op in convs)) == expected
    macs = sum(op.weight[0].size * op.out_shape[0] * op.out_shape[1] * op.out_shape[2] for op in convs)
    macs += sum(op.weight.size for op in graph.ops if isinstance(op, ir.FullyConnected))
    assert info.macs == macs == models["native"].macs
    weights = sum(op.weight.size + 4 * op.bias.size for op in graph.ops if isinstance(op, (ir.Conv, ir.FullyConnected)))
    assert info.weights_bytes == weights == models["native"].weights_bytes
    assert info.arena_bytes == models["native"].arena_bytes >= info.arena_lower_bound
    header = (tmp / "c" / "model.h").read_text()
    assert f"#define TINYML_ARENA_SIZE  {info.arena_bytes} " in header
    assert f"#define TINYML_INPUT_SIZE  {info.input_size} " in header
    assert re.search(r"int tinyml_model_run\(const int8_t \*input, int8_t \*output\);", header)


def test_a_chain_model_needs_exactly_the_lower_bound(net):
    name, _graph, info, *_ = net
    # Without residual branches a network is a chain of layers: the plan reaches the lower bound.
    if name != "resnet8":
        assert info.arena_bytes == info.arena_lower_bound
    assert info.arena_bytes % ALIGN == 0


@pytest.mark.parametrize(
    "cpu, flags, path",
    [
        ("cortex-m4", ["-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"], "dsp"),
        ("cortex-m7", ["-mfloat-abi=hard", "-mfpu=fpv5-d16"], "dsp"),
        ("cortex-m33", ["-mfloat-abi=hard"], "dsp"),
        ("cortex-m55", ["-mfloat-abi=hard"], "mve"),
        ("cortex-m0", [], "portable"),
    ],
)
def test_generated_code_compiles_for_cortex_m(net, tmp_path, cpu, flags, path):
    gcc = shutil.which("arm-none-eabi-gcc")
    if gcc is None:
        from tests.docker_support import unavailable

        unavailable("arm-none-eabi-gcc is not installed: apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi")
    _name, _graph, info, _models, tmp = net
    obj = tmp_path / "model.o"
    cmd = [gcc, f"-mcpu={cpu}", "-mthumb", *flags, "-O2", "-std=c99", "-Wall", "-Wextra", "-Werror"]
    subprocess.run([*cmd, "-c", str(tmp / "c" / "model.c"), "-o", str(obj)], check=True)
    # The kernel path is chosen by the target's own predefined macros.
    pre = subprocess.run([*cmd, "-E", "-dM", str(tmp / "c" / "kernels.h")], check=True, capture_output=True, text=True)
    assert f'#define TINYML_PATH_NAME "{path}"' in pre.stdout
    size = subprocess.run(["arm-none-eabi-size", str(obj)], check=True, capture_output=True, text=True)
    text, data, bss = (int(v) for v in size.stdout.splitlines()[1].split()[:3])
    # Weights are const (flash) and the arena is the only RAM.
    assert data == 0 and bss == info.arena_bytes
    assert text >= info.weights_bytes + info.quant_bytes
    assert text <= (info.weights_bytes + info.quant_bytes) * 1.05 + 6 * 1024 + 2048 * (info.input_size > 0)


def test_per_tensor_weights(tmp_path):
    # int8 QDQ with one weight scale per tensor (ONNX Runtime's per_channel=False), broadcast per channel.
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from tests.cgen.conftest import export

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(2, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 36, 5)
    )
    fp32 = export(net, (2, 6, 6), tmp_path / "fp32.onnx")
    calib = np.random.default_rng(0).uniform(-1, 1, (16, 2, 6, 6)).astype(np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"input": x[None]}

    quantize_static(
        str(fp32),
        str(tmp_path / "int8.onnx"),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=False,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )
    graph, info, models = build(tmp_path / "int8.onnx", tmp_path, paths=("native", "portable"))
    assert len(set(graph.ops[0].multiplier.tolist())) == 1  # one scale: one multiplier for all channels
    want = assert_bit_exact(graph, models, n=8)
    assert np.ptp(want.astype(int)) > 0 and info.macs == 8 * 2 * 9 * 36 + 8 * 36 * 5
