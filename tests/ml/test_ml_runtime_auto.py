"""``runtime: auto``: the generated C timed as one more static-int8 candidate, side by side with
ONNX Runtime's recipes and fp32, and kept only when its accuracy holds and it is clearly faster.

Real ONNX Runtime, the real C generator and the host compiler. The seams replaced are a
candidate's speed, accuracy or build, one at a time, to see each branch of the choice.
"""

from __future__ import annotations

import time

import numpy as np
import onnx
import pytest

from tests.cgen.conftest import need_compiler
from tests.digits_example import DIGITS_MODEL
from tinymlaas_ci.errors import TinymlError
from tinymlaas_ci.ml.c_runtime import CCandidate
from tinymlaas_ci.ml.compress import compile_model
from tinymlaas_ci.ml.quantize import SWITCH_MARGIN
from tinymlaas_ci.results.models import CompressionRecord
from tinymlaas_ci.spec.models import Compression

STATIC = Compression(quantization="static-int8", calibration_samples=128)
FLAGS = ["-O3", "-march=native"]


@pytest.fixture(scope="module")
def cc():
    return need_compiler()


def _compile(tmp_path, digits_data, candidate):
    out = compile_model(
        DIGITS_MODEL,
        tmp_path / "out",
        compression=STATIC,
        data=digits_data,
        runtimes=[candidate.candidate() if isinstance(candidate, CCandidate) else candidate],
    )
    rec = out.record
    CompressionRecord.model_validate(rec)
    return out, rec


def _input_zero_point_type(path) -> int:
    """Element type of the first QuantizeLinear's zero point: int8 (C's recipe) or uint8 (ORT's on x86)."""
    proto = onnx.load(str(path))
    q = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear")
    inits = {i.name: i for i in proto.graph.initializer}
    return inits[q.input[2]].data_type


def test_the_c_is_timed_with_the_recipes_and_the_choice_follows_the_rule(tmp_path, digits_data, cc):
    c = CCandidate(tmp_path / "c", FLAGS)
    out, rec = _compile(tmp_path, digits_data, c)
    cands = rec["recipe_candidates"]
    mine = [x for x in cands if x.get("runtime") == "c"]
    assert len(mine) == 1 and mine[0]["recipe"] == CCandidate.RECIPE
    assert mine[0]["integer_ops"] == {"integer": 4, "total": 4}  # 2 Conv + 2 Gemm, all C kernels
    assert mine[0]["holds"] and mine[0]["speedup_vs_fp32"] > 0 and len(mine[0]["ci95_vs_default"]) == 2
    kept = [x for x in cands if x["kept"]]
    assert len(kept) == 1 and kept[0]["recipe"] == rec["recipe"]
    assert rec["runtime"] == kept[0].get("runtime", "onnxruntime")
    assert rec["integer_ops"] == kept[0]["integer_ops"]
    clearly_faster = mine[0]["ci95_vs_default"][0] > 1 + SWITCH_MARGIN
    assert (rec["runtime"] == "c") == clearly_faster, (rec["runtime_reason"], mine[0])
    deployed_type = _input_zero_point_type(out.deployed)
    if rec["runtime"] == "c":
        # The deployed model is the one the C was generated from, and the C is there.
        assert deployed_type == onnx.TensorProto.INT8
        assert c.info is not None and sorted(c.info.files) == ["kernels.h", "model.c", "model.h"]
        assert all((c.c_dir / f).is_file() for f in c.info.files)
        assert rec["runtime_reason"].startswith("runtime c: ") and "95% interval" in rec["runtime_reason"]
        assert rec["per_channel"] is True and rec["layout"] == []
    else:
        assert deployed_type == onnx.TensorProto.UINT8
        assert "not more than" in rec["runtime_reason"]


def _slowed(c: CCandidate, seconds: float):
    """``c``'s candidate with each call of its model made ``seconds`` slower."""
    cand = c.candidate()
    build = cand.build

    def slow_build(fp32, calibration, work):
        path, run, facts = build(fp32, calibration, work)

        def run_slowly(x):
            time.sleep(seconds)
            return run(x)

        return path, run_slowly, facts

    cand.build = slow_build
    return cand


def test_a_slower_c_is_not_kept(tmp_path, digits_data, cc):
    c = CCandidate(tmp_path / "c", FLAGS)
    out, rec = _compile(tmp_path, digits_data, _slowed(c, 0.002))
    mine = next(x for x in rec["recipe_candidates"] if x.get("runtime") == "c")
    assert not mine["kept"] and mine["holds"]
    assert mine["ci95_vs_default"][1] < 1  # 2 ms a call: slower than any ORT recipe of a 15 us model
    assert rec["runtime"] == "onnxruntime" and rec["recipe"].startswith("qdq-u8s8")
    assert rec["runtime_reason"].startswith("runtime c timed ") and "not more than 5% faster" in rec["runtime_reason"]
    assert _input_zero_point_type(out.deployed) == onnx.TensorProto.UINT8


def test_a_c_that_loses_accuracy_is_not_kept_however_fast(tmp_path, digits_data, cc):
    c = CCandidate(tmp_path / "c", FLAGS)
    cand = c.candidate()
    build = cand.build

    def wrong_build(fp32, calibration, work):
        path, run, facts = build(fp32, calibration, work)
        return path, (lambda x: np.roll(run(x), 1, axis=1)), facts  # every prediction off by one class

    cand.build = wrong_build
    _out, rec = _compile(tmp_path, digits_data, cand)
    mine = next(x for x in rec["recipe_candidates"] if x.get("runtime") == "c")
    assert not mine["holds"] and not mine["kept"] and mine["accuracy_drop"] > 0.5
    assert rec["runtime"] == "onnxruntime"
    assert "runtime c lost" in rec["runtime_reason"] and "of accuracy" in rec["runtime_reason"]


def test_a_model_the_c_cannot_run_keeps_onnx_runtime_and_says_why(tmp_path, digits_data, cc):
    c = CCandidate(tmp_path / "c", FLAGS)
    cand = c.candidate()

    def unsupported(fp32, calibration, work):
        raise TinymlError("node 'x' (Einsum): operator Einsum is not supported by the C generator")

    cand.build = unsupported
    _out, rec = _compile(tmp_path, digits_data, cand)
    mine = next(x for x in rec["recipe_candidates"] if x.get("runtime") == "c")
    assert mine["kept"] is False and "Einsum" in mine["error"]
    assert rec["runtime"] == "onnxruntime"
    assert rec["runtime_reason"].startswith("runtime c cannot run this model: node 'x' (Einsum)")
    assert not c.c_dir.exists()
