"""``StageContext.runtime``: the spec's runtime, or for ``runtime: auto`` the compile stage's choice."""

from __future__ import annotations

import pytest

from tinymlaas_ci.errors import TinymlError
from tinymlaas_ci.spec.models import Runtime
from tinymlaas_ci.stages.contract import StageConfig, StageContext, StageOutputs

SPEC = {"schema": 1, "model": {"upload": "uploads/m/model.onnx"}, "dataset": {"upload": "uploads/d/d.zip"}}
DEVICE = {"schema": 1, "name": "host", "kind": "local", "arch": "amd64"}


def _ctx(tmp_path, runtime: str, compile_records: dict | None, builtin: str = "install") -> StageContext:
    inputs = {}
    if compile_records is not None:
        inputs["compile"] = StageOutputs(stage="compile", builtin="compile", records=compile_records)
    config = StageConfig(
        stage=builtin,
        builtin=builtin,
        run={"project": "p", "name": "r"},
        spec={**SPEC, "runtime": runtime, "compression": {"quantization": "static-int8"}},
        device=DEVICE,
        inputs=inputs,
    )
    return StageContext(volume=tmp_path, name=builtin, config=config)


def test_a_declared_runtime_is_the_runtime(tmp_path):
    assert _ctx(tmp_path, "c", {"compression": {"runtime": "onnxruntime"}}).runtime is Runtime.c
    assert _ctx(tmp_path, "onnxruntime", None).runtime is Runtime.onnxruntime


def test_auto_is_what_compile_chose(tmp_path):
    assert _ctx(tmp_path, "auto", {"compression": {"runtime": "c"}}).runtime is Runtime.c
    assert _ctx(tmp_path, "auto", {"compression": {"runtime": "onnxruntime"}}).runtime is Runtime.onnxruntime
    # A compile stage of the user's own that records no choice deployed an ONNX Runtime model.
    assert _ctx(tmp_path, "auto", {}).runtime is Runtime.onnxruntime


def test_auto_without_a_choice_to_read_says_what_to_fix(tmp_path):
    with pytest.raises(TinymlError, match="no compile stage upstream") as info:
        _ = _ctx(tmp_path, "auto", None).runtime
    assert "add 'compile' to the stage's needs" in info.value.hint
    with pytest.raises(TinymlError, match="recorded runtime 'auto', which is not a runtime"):
        _ = _ctx(tmp_path, "auto", {"compression": {"runtime": "auto"}}).runtime
    with pytest.raises(TinymlError, match="recorded runtime 'tflite'"):
        _ = _ctx(tmp_path, "auto", {"compression": {"runtime": "tflite"}}).runtime
