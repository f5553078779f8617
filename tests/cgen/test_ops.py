"""Every supported operator: the host-built C equals the numpy integer reference bit for bit.

Each example is a small torch model exported to ONNX and quantized by ONNX Runtime (static
int8, QDQ, per-channel weights) on calibration data whose range hypothesis draws, so the
activation zero points vary too. The C is built for every kernel path the host can run (native,
portable, AVX2, and the Arm DSP and MVE paths with C definitions of their intrinsics).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from tests.cgen.conftest import PATHS, assert_bit_exact, build, quantized

pytestmark = pytest.mark.usefixtures("cc")

SETTINGS = settings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
RANGES = st.sampled_from([(-1.0, 1.0), (0.0, 1.0), (-3.0, 0.5), (-0.2, 2.0)])


def check(module, shape, tmp_path, calib_range, *, ops=None):
    torch.manual_seed(0)
    path = quantized(module, shape, tmp_path, lo=calib_range[0], hi=calib_range[1])
    graph, info, models = build(path, tmp_path, paths=tuple(PATHS))
    if ops is not None:
        assert {op["kernel"] for op in info.ops} >= set(ops), info.ops
    want = assert_bit_exact(graph, models, n=6)
    assert np.ptp(want.astype(int)) > 0, "the outputs are constant: the example tests nothing"
    return graph, info


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3, "dw"]))
    if groups == "dw":
        cin = draw(st.integers(1, 6))
        groups, cout = cin, cin * draw(st.integers(1, 2))
    else:
        cin = groups * draw(st.integers(1, 4))
        cout = groups * draw(st.integers(1, 5))
    k = draw(st.sampled_from([(1, 1), (3, 3), (3, 1), (2, 3), (5, 5)]))
    stride = draw(st.sampled_from([(1, 1), (2, 2), (1, 2)]))
    pad = draw(st.sampled_from([(0, 0), (1, 1), (k[0] // 2, k[1] // 2), (1, 0)]))
    h = draw(st.integers(max(k[0], 2), 9))
    w = draw(st.integers(max(k[1], 2), 9))
    act = draw(st.sampled_from(["none", "relu", "relu6"]))
    return cin, cout, k, stride, pad, groups, (h, w), act


class ConvNet(nn.Module):
    def __init__(self, cin, cout, k, stride, pad, groups, act):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=pad, groups=groups)
        self.act = {"none": nn.Identity(), "relu": nn.ReLU(), "relu6": nn.ReLU6()}[act]

    def forward(self, x):
        return self.act(self.conv(x))


@SETTINGS
@given(case=conv_cases(), calib=RANGES)
def test_conv(tmp_path_factory, case, calib):
    cin, cout, k, stride, pad, groups, (h, w), act = case
    tmp = tmp_path_factory.mktemp("conv")
    graph, info = check(ConvNet(cin, cout, k, stride, pad, groups, act), (cin, h, w), tmp, calib)
    conv = graph.ops[0]
    assert conv.weight.shape == (cout, cin // groups, *k) and conv.groups == groups
    oh = (h + 2 * pad[0] - k[0]) // stride[0] + 1
    ow = (w + 2 * pad[1] - k[1]) // stride[1] + 1
    assert info.macs == cout * (cin // groups) * k[0] * k[1] * oh * ow


class LinearNet(nn.Module):
    def __init__(self, n_in, n_out, bias, act):
        super().__init__()
        self.fc = nn.Linear(n_in, n_out, bias=bias)
        self.act = nn.ReLU() if act else nn.Identity()

    def forward(self, x):
        return self.act(self.fc(torch.flatten(x, 1)))


@SETTINGS
@given(
    c=st.integers(1, 4),
    hw=st.integers(1, 6),
    n_out=st.integers(1, 40),
    bias=st.booleans(),
    act=st.booleans(),
    calib=RANGES,
)
def test_gemm_after_flatten(tmp_path_factory, c, hw, n_out, bias, act, calib):
    tmp = tmp_path_factory.mktemp("gemm")
    _graph, info = check(LinearNet(c * hw * hw, n_out, bias, act), (c, hw, hw), tmp, calib)
    assert info.ops[-1]["kernel"] == "fc" and info.macs == c * hw * hw * n_out


class MatMulNet(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.w = nn.Parameter(torch.randn(n_in, n_out) * 0.3)

    def forward(self, x):
        return torch.matmul(x, self.w)


@SETTINGS
@given(n_in=st.integers(2, 70), n_out=st.integers(1, 20), calib=RANGES)
def test_matmul(tmp_path_factory, n_in, n_out, calib):
    tmp = tmp_path_factory.mktemp("matmul")
    check(MatMulNet(n_in, n_out), (n_in,), tmp, calib, ops=["fc"])


class ResidualAdd(nn.Module):
    def __init__(self, c, relu):
        super().__init__()
        self.a = nn.Conv2d(c, c, 3, padding=1)
        self.b = nn.Conv2d(c, c, 1)
        self.relu = relu

    def forward(self, x):
        y = self.a(x) * 2.0 + self.b(x)
        return torch.relu(y) if self.relu else y


@SETTINGS
@given(c=st.integers(1, 6), hw=st.integers(2, 7), relu=st.booleans(), calib=RANGES)
def test_add(tmp_path_factory, c, hw, relu, calib):
    tmp = tmp_path_factory.mktemp("add")
    check(ResidualAdd(c, relu), (c, hw, hw), tmp, calib, ops=["add"])


@pytest.mark.parametrize(
    "c, hw, relu, calib",
    [(16, 12, False, (-1.0, 1.0)), (9, 10, True, (0.0, 1.0)), (20, 7, False, (-3.0, 0.5))],
)
def test_long_adds(tmp_path, c, hw, relu, calib):
    # 512 values or more: the AVX-512 VBMI path rescales both inputs by table lookup, 64 at a time,
    # then finishes with the 16-value loop and the scalar tail.
    check(ResidualAdd(c, relu), (c, hw, hw), tmp_path, calib, ops=["add"])


class PoolNet(nn.Module):
    def __init__(self, c, kind, k, stride, pad, include_pad):
        super().__init__()
        self.conv = nn.Conv2d(c, c + 1, 1)
        if kind == "max":
            self.pool = nn.MaxPool2d(k, stride, pad)
        elif kind == "avg":
            self.pool = nn.AvgPool2d(k, stride, pad, count_include_pad=include_pad)
        else:
            self.pool = nn.AdaptiveAvgPool2d(1)
        self.kind = kind

    def forward(self, x):
        return self.pool(self.conv(x))


@SETTINGS
@given(
    c=st.integers(1, 5),
    hw=st.integers(3, 9),
    kind=st.sampled_from(["max", "avg", "global"]),
    k=st.sampled_from([2, 3]),
    stride=st.sampled_from([1, 2]),
    pad=st.sampled_from([0, 1]),
    include_pad=st.booleans(),
    calib=RANGES,
)
def test_pools(tmp_path_factory, c, hw, kind, k, stride, pad, include_pad, calib):
    tmp = tmp_path_factory.mktemp("pool")
    want = {"max": "maxpool", "avg": "avgpool", "global": "avgpool"}[kind]
    check(PoolNet(c, kind, k, stride, pad, include_pad), (c, hw, hw), tmp, calib, ops=[want])


class ConcatNet(nn.Module):
    def __init__(self, c, dim):
        super().__init__()
        self.a = nn.Conv2d(c, c + 1, 3, padding=1)
        self.b = nn.Conv2d(c, 2, 1)
        self.c = nn.Conv2d(c, c + 1, 1)
        self.dim = dim

    def forward(self, x):
        if self.dim == 1:
            return torch.cat([self.a(x), self.b(x) * 3.0], dim=1)
        return torch.cat([self.a(x), self.c(x) * 0.5], dim=self.dim)


@SETTINGS
@given(c=st.integers(1, 4), hw=st.integers(2, 6), dim=st.sampled_from([1, 2, 3]), calib=RANGES)
def test_concat(tmp_path_factory, c, hw, dim, calib):
    tmp = tmp_path_factory.mktemp("concat")
    check(ConcatNet(c, dim), (c, hw, hw), tmp, calib, ops=["concat"])


class ClipNet(nn.Module):
    def __init__(self, c, lo, hi):
        super().__init__()
        self.conv = nn.Conv2d(c, c + 2, 3)
        self.lo, self.hi = lo, hi

    def forward(self, x):
        y = torch.clamp(self.conv(x), self.lo, self.hi)
        return torch.flatten(y, 1)


@SETTINGS
@given(
    c=st.integers(1, 4),
    hw=st.integers(3, 7),
    lo=st.sampled_from([-0.5, 0.0, 0.1]),
    hi=st.sampled_from([0.3, 1.0, 6.0]),
    calib=RANGES,
)
def test_clip_and_flatten(tmp_path_factory, c, hw, lo, hi, calib):
    tmp = tmp_path_factory.mktemp("clip")
    check(ClipNet(c, lo, hi), (c, hw, hw), tmp, calib)


class ReshapeNet(nn.Module):
    def __init__(self, c, hw):
        super().__init__()
        self.conv = nn.Conv2d(c, 4, 1)
        self.shape = (-1, 2, 2 * hw, hw)
        self.out = nn.Conv2d(2, 3, 3, padding=1)

    def forward(self, x):
        return self.out(torch.reshape(self.conv(x), self.shape))


@SETTINGS
@given(c=st.integers(1, 4), hw=st.integers(2, 6), calib=RANGES)
def test_reshape_between_images(tmp_path_factory, c, hw, calib):
    tmp = tmp_path_factory.mktemp("reshape")
    check(ReshapeNet(c, hw), (c, hw, hw), tmp, calib)


@pytest.mark.parametrize(
    "cin, cout, k, stride, pad, hw",
    [(8, 16, (3, 3), (1, 1), (1, 1), 9), (4, 40, (3, 3), (2, 2), (0, 0), 11), (16, 20, (1, 1), (2, 1), (0, 0), 7)],
)
def test_conv_reading_kernel_rows_in_place(tmp_path, cin, cout, k, stride, pad, hw):
    # kw * C a multiple of 4: the AVX-512 path reads kernel rows from a padded copy, no im2col.
    check(ConvNet(cin, cout, k, stride, pad, 1, "relu"), (cin, hw, hw), tmp_path, (-1.0, 1.0))


@pytest.mark.parametrize(
    "c, mult, k, stride, pad, hw",
    [
        (5, 1, (3, 3), (1, 1), (1, 1), 6),  # fewer channels than one vector, not a multiple of 4
        (18, 1, (3, 3), (2, 2), (1, 1), 7),  # one 16-channel vector and a tail of 2
        (36, 1, (3, 3), (1, 1), (1, 1), 5),  # two vectors and a tail of 4; a narrow image: mostly border
        (20, 1, (5, 5), (1, 1), (2, 2), 6),
        (6, 2, (3, 3), (1, 1), (1, 1), 5),  # channel multiplier 2
    ],
)
def test_depthwise_channel_counts(tmp_path, c, mult, k, stride, pad, hw):
    check(ConvNet(c, c * mult, k, stride, pad, c, "relu"), (c, hw, hw), tmp_path, (-1.0, 1.0), ops=["depthwise"])


@pytest.mark.parametrize(
    "cin, cout, k, stride, pad, hw",
    [
        (1, 16, (3, 3), (1, 1), (1, 1), 8),  # the digits CNN's first layer: K = 9
        (1, 7, (10, 4), (2, 2), (5, 1), 12),  # DS-CNN's: K = 40, an odd channel count
        (3, 16, (3, 3), (1, 1), (1, 1), 9),  # ResNet-8's: K = 27
        (3, 5, (3, 3), (2, 2), (1, 1), 7),  # odd channels and an odd number of positions
        # AVX-512: 3 or more channels, not a multiple of 4, are padded to one (zero weights)
        (5, 9, (3, 3), (1, 1), (1, 1), 6),
        (7, 33, (2, 3), (2, 1), (1, 0), 9),  # two 16-channel blocks and a tail of 1
        (67, 16, (1, 1), (1, 1), (0, 0), 4),  # more than 64 bytes per pixel once padded
        (2, 16, (3, 3), (1, 1), (1, 1), 7),  # 2 channels: kernel rows of 6 bytes copied
    ],
)
def test_first_convs_with_few_input_channels(tmp_path, cin, cout, k, stride, pad, hw):
    check(ConvNet(cin, cout, k, stride, pad, 1, "none"), (cin, hw, hw), tmp_path, (0.0, 1.0), ops=["conv"])


@pytest.mark.parametrize("c, k, stride, pad", [(19, 2, 2, 0), (35, 3, 2, 1), (6, 3, 1, 1)])
def test_maxpool_channel_counts(tmp_path, c, k, stride, pad):
    # c + 1 channels: whole 16-byte vectors (MVE), 4-byte words (DSP) and a scalar tail.
    check(PoolNet(c, "max", k, stride, pad, False), (c, 7, 7), tmp_path, (-1.0, 1.0), ops=["maxpool"])
