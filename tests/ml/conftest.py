"""Fixtures for the ml tests: the example's digits data and model, compiled once per session."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DIGITS_MODEL = ROOT / "uploads" / "digits-cnn" / "model.pkl"


def _train_module():
    spec = importlib.util.spec_from_file_location("digits_train", ROOT / "uploads" / "digits-cnn" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def digits_train():
    """The example's training script as a module."""
    return _train_module()


@pytest.fixture(scope="session")
def digits_data(digits_train):
    """The digits splits exactly as the dataset loader yields them (float32 / 255, N,1,8,8)."""
    splits = digits_train.make_splits()
    data = {f"x_{k}": digits_train.to_inputs(v[0]) for k, v in splits.items()}
    data.update({f"y_{k}": v[1] for k, v in splits.items()})
    data["labels"] = [str(i) for i in range(10)]
    return data


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
