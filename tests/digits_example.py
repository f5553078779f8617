"""The example's digits data (``uploads/digits-cnn/train.py``), for the tests and benchmarks that
compile or measure the example model outside a run."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DIGITS_MODEL = ROOT / "uploads" / "digits-cnn" / "model.pkl"

__all__ = ["DIGITS_MODEL", "digits_arrays", "digits_train_module"]


def digits_train_module() -> ModuleType:
    """The example's training script as a module."""
    spec = importlib.util.spec_from_file_location("digits_train", ROOT / "uploads" / "digits-cnn" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def digits_arrays(train: ModuleType | None = None) -> dict[str, Any]:
    """``x_<split>`` (float32 / 255, N x 1 x 8 x 8, as the dataset loader yields them), ``y_<split>``
    and ``labels``, for the train, val and test splits."""
    train = train or digits_train_module()
    splits = train.make_splits()
    data: dict[str, Any] = {f"x_{k}": train.to_inputs(v[0]) for k, v in splits.items()}
    data.update({f"y_{k}": v[1] for k, v in splits.items()})
    data["labels"] = [str(i) for i in range(10)]
    return data
