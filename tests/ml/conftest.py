"""Fixtures for the ml tests: the example's digits data and model, compiled once per session."""

from __future__ import annotations

import pytest

from tests.digits_example import DIGITS_MODEL, digits_arrays, digits_train_module


@pytest.fixture(scope="session")
def digits_train():
    """The example's training script as a module."""
    return digits_train_module()


@pytest.fixture(scope="session")
def digits_data(digits_train):
    """The digits splits exactly as the dataset loader yields them (float32 / 255, N,1,8,8)."""
    return digits_arrays(digits_train)


@pytest.fixture(scope="session")
def compiled(tmp_path_factory, digits_data):
    """Compile the digits CNN once per variant; returns a function name -> CompileOutcome."""
    from tinymlaas_ci.ml.compress import compile_model
    from tinymlaas_ci.spec.models import Compression

    variants = {
        "none": ("onnxruntime", {"quantization": "none"}),
        "static-int8": ("onnxruntime", {"quantization": "static-int8", "calibration_samples": 256}),
        "dynamic-int8": ("onnxruntime", {"quantization": "dynamic-int8"}),
        "fp16": ("onnxruntime", {"quantization": "fp16"}),
        "pruned-80": ("onnxruntime", {"pruning": {"sparsity": 0.8}}),
        "pruned-80-ft": ("onnxruntime", {"pruning": {"sparsity": 0.8, "fine_tune_epochs": 2}}),
        "torch-none": ("pytorch", {"quantization": "none"}),
        "torch-dynamic-int8": ("pytorch", {"quantization": "dynamic-int8"}),
        "torch-fp16": ("pytorch", {"quantization": "fp16"}),
    }
    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            runtime, compression = variants[name]
            out = tmp_path_factory.mktemp(f"compiled-{name}")
            cache[name] = compile_model(
                DIGITS_MODEL, out, compression=Compression(**compression), runtime=runtime, data=digits_data
            )
        return cache[name]

    return get
