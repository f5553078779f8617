"""The example digits CNN as the compile stage writes it: C predictions against ONNX Runtime int8."""

from __future__ import annotations

import numpy as np
import pytest

from tests.cgen.conftest import assert_bit_exact
from tests.digits_example import DIGITS_MODEL, digits_arrays
from tinymlaas_ci.ml import measure
from tinymlaas_ci.ml.cgen import generate_c
from tinymlaas_ci.ml.cgen.host import CModel, build_shared, load_c_session
from tinymlaas_ci.ml.cgen.parse import load_graph
from tinymlaas_ci.ml.runtime import load_session

pytestmark = pytest.mark.usefixtures("cc")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    data = digits_arrays()
    from tinymlaas_ci.ml.c_runtime import compile_c
    from tinymlaas_ci.spec.models import Compression

    # What the compile stage does for runtime c: the fp32 baseline, the generator's own int8
    # quantization (int8 activations, per-channel weights), then the C.
    out = tmp_path_factory.mktemp("digits")
    outcome = compile_c(
        DIGITS_MODEL,
        out / "compiled",
        compression=Compression(quantization="static-int8", per_channel=True, calibration_samples=256),
        data=data,
    )
    info = generate_c(outcome.compiled.deployed, out / "c")
    return data, outcome.compiled, info, out


def test_c_agrees_with_onnx_runtime_int8_on_the_test_split(digits):
    data, compiled, _info, out = digits
    x, y = measure.eval_split(data, "test")
    ort = load_session(compiled.deployed, threads=1)
    c = load_c_session(out / "c")
    assert c.runtime == "c" and c.providers[0].startswith("kernels:")
    ort_pred = ort.run(x).argmax(axis=1)
    # One sample per call, as a device runs it, and the whole split in one call.
    c_logits = np.concatenate([c.run(x[i : i + 1]) for i in range(len(x))])
    assert np.array_equal(c_logits, c.run(x))
    c_pred = c_logits.argmax(axis=1)
    agreement = float((c_pred == ort_pred).mean())
    assert agreement >= 0.99, agreement
    ort_acc, c_acc = float((ort_pred == y).mean()), float((c_pred == y).mean())
    assert c_acc >= 0.96 and abs(c_acc - ort_acc) <= 0.01


def test_the_compiled_model_is_bit_exact_and_small(digits):
    _data, compiled, info, out = digits
    graph = load_graph(compiled.deployed)
    model = CModel(build_shared(out / "c", out / "portable.so", flags=["-O2", "-DTINYML_FORCE_PORTABLE"]))
    assert_bit_exact(graph, {"native": CModel(out / "c" / "libtinyml_model.so"), "portable": model}, n=16)
    assert [op["kernel"] for op in info.ops] == ["conv", "conv", "maxpool", "reshape", "fc", "fc"]
    assert info.input_shape == (1, 8, 8) and info.output_size == 10
    assert info.macs == 16 * 9 * 64 + 32 * 16 * 9 * 64 + 512 * 64 + 64 * 10
    assert info.weights_bytes == 38_282 - 122 + 4 * 122
    # A chain of layers: input and output are the caller's, the arena holds the largest pair.
    assert info.arena_bytes == info.arena_lower_bound
