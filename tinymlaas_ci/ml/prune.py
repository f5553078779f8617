"""Magnitude pruning in torch, fine-tuning, and writing the pruned weights into the ONNX baseline.

Pruning changes values, not shapes: a pruned file is as large as the dense one (only gzip
shows the saving), and its weights can be swapped into the exported baseline graph as is.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinymlaas_ci.errors import TinymlError
from tinymlaas_ci.spec.models import Pruning

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

__all__ = [
    "fine_tune",
    "make_permanent",
    "prunable",
    "prune_and_tune",
    "prune_model",
    "torch_accuracy",
    "weight_sparsity",
    "with_pruned_weights",
]


def prunable(model: torch.nn.Module) -> list[tuple[torch.nn.Module, str]]:
    from torch import nn

    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    return [(m, "weight") for m in model.modules() if isinstance(m, kinds) and getattr(m, "weight", None) is not None]


def weight_sparsity(model: torch.nn.Module) -> float:
    """Fraction of exactly-zero weights over all Conv/Linear weight tensors."""
    layers = prunable(model)
    total = sum(getattr(m, n).numel() for m, n in layers)
    zeros = sum(int((getattr(m, n) == 0).sum()) for m, n in layers)
    return zeros / total if total else 0.0


def prune_model(model: torch.nn.Module, sparsity: float) -> None:
    """Apply L1 magnitude pruning masks to every Conv/Linear weight of ``model``, in place.

    Each layer loses ``sparsity`` of its weights (what the spec promises). The masks stay
    attached (so fine-tuning keeps pruned weights at zero) until :func:`make_permanent`.
    """
    from torch.nn.utils import prune

    layers = prunable(model)
    if not layers:
        raise TinymlError(
            "the model has no Conv or Linear layers to prune",
            hint="remove compression.pruning from the run spec",
        )
    for module, name in layers:
        prune.l1_unstructured(module, name=name, amount=float(sparsity))


def make_permanent(model: torch.nn.Module) -> None:
    """Fold pruning masks into the weights (drops the ``weight_orig``/``weight_mask`` pairs)."""
    from torch.nn.utils import prune

    for module, name in prunable(model):
        if prune.is_pruned(module) and hasattr(module, f"{name}_mask"):
            prune.remove(module, name)


def fine_tune(
    model: torch.nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    learning_rate: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
) -> None:
    """Train ``model`` in place with Adam and cross-entropy; deterministic for a given ``seed``."""
    import torch

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x).float(), torch.from_numpy(y).long()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    for _ in range(int(epochs)):
        order = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad()
            loss_fn(model(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()


def torch_accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    """Top-1 accuracy of a torch model on arrays ``x``/``y``."""
    import torch

    if len(x) == 0:
        return float("nan")
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            logits = model(torch.from_numpy(x[start : start + batch_size]).float())
            correct += int((logits.argmax(1).numpy() == y[start : start + batch_size]).sum())
    return correct / len(x)


def with_pruned_weights(baseline: Path, model: torch.nn.Module, dst: Path) -> bool:
    """Write ``baseline`` with the (pruned, fine-tuned) weights of ``model`` to ``dst``.

    Pruning changes values, not the graph, so swapping the initializers is exact and skips a
    second export. Returns False when initializer names do not map onto the model's parameters
    (the caller then exports again).
    """
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(baseline))
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    layers = {id(m) for m, _ in prunable(model)}
    wanted = {f"{n}.weight" if n else "weight" for n, m in model.named_modules() if id(m) in layers}
    replaced = set()
    for init in proto.graph.initializer:
        value = state.get(init.name)
        if value is not None and tuple(init.dims) == value.shape and init.data_type == onnx.TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(value.astype("float32"), init.name))
            replaced.add(init.name)
    if not wanted <= replaced:
        return False
    onnx.save(proto, str(dst))
    return True


def prune_and_tune(
    model: torch.nn.Module,
    pruning: Pruning,
    data: Mapping[str, np.ndarray],
    record: dict[str, Any],
    details: dict[str, Any],
    seed: int,
    progress: Callable[[str], None],
) -> torch.nn.Module:
    """A pruned (and, with ``fine_tune_epochs``, fine-tuned) copy of ``model``; what was done and
    the validation accuracies along the way go into ``record`` and ``details``."""
    sparsity, epochs = pruning.sparsity, pruning.fine_tune_epochs
    model = copy.deepcopy(model)
    if not any(True for _ in model.parameters()) or not prunable(model):
        raise TinymlError(
            "this model has no prunable Conv/Linear weights (TorchScript models cannot be pruned)",
            hint="remove compression.pruning, or upload the model as a pickled nn.Module",
        )
    x_val, y_val = data.get("x_val"), data.get("y_val")
    has_val = x_val is not None and len(x_val) > 0
    if has_val:
        details["val_accuracy_before_pruning"] = torch_accuracy(model, x_val, y_val)
    progress(f"pruning to sparsity {sparsity:.2f} (layer)")
    prune_model(model, sparsity)
    if has_val:
        details["val_accuracy_after_pruning"] = torch_accuracy(model, x_val, y_val)
    if epochs:
        x_tr, y_tr = data["x_train"], data["y_train"]
        progress(f"fine-tuning {epochs} epoch(s) on {len(x_tr)} train samples")
        fine_tune(model, x_tr, y_tr, epochs=epochs, learning_rate=pruning.learning_rate, seed=seed)
        if has_val:
            details["val_accuracy_after_fine_tune"] = torch_accuracy(model, x_val, y_val)
    make_permanent(model)
    achieved = weight_sparsity(model)
    record.update(target_sparsity=sparsity, achieved_sparsity=round(achieved, 6), fine_tune_epochs=epochs)
    record.update({k: round(v, 6) for k, v in details.items() if k.startswith("val_accuracy")})
    progress(f"achieved sparsity {achieved:.4f}")
    return model
