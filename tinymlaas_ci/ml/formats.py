"""Model formats: load into torch, export to ONNX, check ONNX (detection: :mod:`.model_format`).

Supported inputs (``model.format`` in a run spec):

* ``pytorch`` - a pickled ``nn.Module`` (``torch.save(model, "model.pkl")``), or a checkpoint dict
  ``{"arch": "package.module:Class", "state_dict": {...}, "kwargs": {...}}``;
* ``torchscript`` - a ``torch.jit.save`` archive;
* ``exported-program`` - a ``torch.export.save`` archive (``.pt2``);
* ``onnx`` - an ONNX file; it passes through after ``onnx.checker``.

Loading a pickle runs code from the file. It is only done inside a stage, which the Docker
executor sandboxes (no network, read-only root, no capabilities); elsewhere a warning is logged.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinymlaas_ci.errors import TinymlError

if TYPE_CHECKING:  # pragma: no cover
    import onnx
    import torch

__all__ = [
    "check_onnx",
    "count_onnx_parameters",
    "count_parameters",
    "export_onnx",
    "load_torch_model",
    "onnx_input_shape",
    "resolve_input_shape",
    "torch_input_shape",
]

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18  # the dynamo exporter's native opset: no version conversion


def _warn_unsandboxed(path: Path) -> None:
    if os.environ.get("TINYMLAAS_SANDBOXED") != "1":
        log.warning(
            "unpickling %s runs code from that file, and this process is not sandboxed "
            "(TINYMLAAS_SANDBOXED is not 1); only load models you trust outside the Docker executor",
            path.name,
        )


def _add_sibling_sources(path: Path) -> None:
    # A pickle stores only "module.Class"; a user's class defined in a .py next to the model
    # must be importable for torch.load to rebuild it.
    folder = str(path.parent.resolve())
    if any(path.parent.glob("*.py")) and folder not in sys.path:
        sys.path.insert(0, folder)


def load_torch_model(path: str | os.PathLike, fmt: str) -> torch.nn.Module:
    """Load a torch model (``pytorch``, ``torchscript`` or ``exported-program``) in eval mode."""
    import torch

    path = Path(path)
    if fmt == "torchscript":
        try:
            model = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise TinymlError(
                f"cannot load TorchScript model {path.name}: {exc}",
                hint="save it with torch.jit.save(torch.jit.script(model), path), or set model.format",
            ) from exc
        return model.eval()
    if fmt == "exported-program":
        try:
            program = torch.export.load(str(path))
        except Exception as exc:
            raise TinymlError(
                f"cannot load exported program {path.name}: {exc}",
                hint="save it with torch.export.save(torch.export.export(model, args), 'model.pt2')",
            ) from exc
        module = program.module()
        module.__dict__["_tinymlaas_program"] = program
        return module
    if fmt != "pytorch":
        raise TinymlError(
            f"a {fmt!r} model cannot be loaded into torch",
            hint="ONNX models run with runtime 'onnxruntime' and cannot be pruned; use a PyTorch model to prune",
        )
    _warn_unsandboxed(path)
    _add_sibling_sources(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError) as exc:
        raise TinymlError(
            f"cannot unpickle {path.name}: {exc}",
            hint="the model's class must be importable: put the .py file that defines it next to "
            "the model file, or export the model to TorchScript or ONNX",
        ) from exc
    except Exception as exc:
        raise TinymlError(
            f"cannot load PyTorch model {path.name}: {exc}",
            hint="save the whole module with torch.save(model, 'model.pkl')",
        ) from exc
    return _module_from(obj, path).eval()


def _module_from(obj: Any, path: Path) -> torch.nn.Module:
    import torch

    if isinstance(obj, torch.nn.Module):
        return obj
    if isinstance(obj, dict) and "state_dict" in obj and "arch" in obj:
        target = str(obj["arch"])
        if ":" in target:
            mod_name, _, cls_name = target.partition(":")
        else:
            mod_name, _, cls_name = target.rpartition(".")
        try:
            cls = getattr(importlib.import_module(mod_name), cls_name)
            module = cls(**dict(obj.get("kwargs") or {}))
            module.load_state_dict(obj["state_dict"])
        except Exception as exc:
            raise TinymlError(
                f"cannot rebuild {target!r} from the checkpoint {path.name}: {exc}",
                hint="'arch' must name an importable nn.Module class as 'package.module:Class' whose "
                "'kwargs' build the architecture the state_dict was saved from",
            ) from exc
        return module
    if isinstance(obj, dict):
        raise TinymlError(
            f"{path.name} holds a bare state_dict, which has no architecture",
            hint="save the whole module (torch.save(model, path)), a checkpoint "
            "{'arch': 'pkg.mod:Class', 'state_dict': ..., 'kwargs': {...}}, TorchScript, or ONNX",
        )
    raise TinymlError(
        f"{path.name} holds a {type(obj).__name__}, not a torch nn.Module",
        hint="save the model with torch.save(model, 'model.pkl')",
    )


def torch_input_shape(model: torch.nn.Module) -> tuple[int, ...] | None:
    """The sample shape a torch model declares itself, when it does (else ``None``).

    Exported programs know it from their graph; other modules may carry ``input_shape``.
    """
    program = getattr(model, "__dict__", {}).get("_tinymlaas_program")
    if program is not None:
        user_inputs = set(program.graph_signature.user_inputs)
        for node in program.graph.nodes:
            if node.op == "placeholder" and node.name in user_inputs:
                val = node.meta.get("val")
                if val is not None:
                    try:
                        return tuple(int(d) for d in val.shape[1:])
                    except TypeError:  # symbolic non-batch dims: the spec must say
                        return None
    shape = getattr(model, "input_shape", None)
    if shape is not None:
        try:
            return tuple(int(d) for d in shape)
        except (TypeError, ValueError):
            return None
    return None


def resolve_input_shape(declared: Sequence[int] | None, found: Sequence[int] | None, *, fmt: str) -> tuple[int, ...]:
    """The sample shape to use: the spec's ``model.input_shape`` if given, else what the model says."""
    if declared:
        shape = tuple(int(d) for d in declared)
        if found and tuple(found) != shape:
            log.warning("model.input_shape %s differs from the model's own %s; using the spec's", shape, tuple(found))
        return shape
    if found:
        return tuple(int(d) for d in found)
    raise TinymlError(
        f"the input shape of this {fmt} model is unknown",
        hint="set model.input_shape in the run spec: the shape of one sample without the batch axis, e.g. [1, 8, 8]",
    )


def export_onnx(
    model: torch.nn.Module,
    path: str | os.PathLike,
    input_shape: Sequence[int],
    *,
    opset: int = DEFAULT_OPSET,
) -> dict[str, Any]:
    """Export ``model`` to ONNX at ``path`` with a dynamic batch axis; returns how it was exported.

    The TorchScript exporter is tried first (fast; also takes ScriptModules), then the dynamo
    exporter with an example batch of 2 (a batch of 1 with a dynamic axis fails its range
    check). Input ``input``, output ``logits``.
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros((2, *input_shape), dtype=torch.float32)
    model = model.eval()
    try:
        with torch.no_grad():
            model(example)
    except Exception as exc:
        raise TinymlError(
            f"the model fails on an input of shape {tuple(example.shape)}: {exc}",
            hint="check model.input_shape in the run spec (one sample, without the batch axis)",
        ) from exc
    failures: list[str] = []

    def legacy() -> None:
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )

    def dynamo() -> None:
        with _quiet_exporter():
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=True,
                opset_version=opset,
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                external_data=False,
                verbose=False,
            )

    # The TorchScript exporter first: for the small, standard models of TinyML it gives the
    # same graph ~40x faster (0.09 s vs 3.3 s for the digits CNN), which dominates a compile.
    # The dynamo exporter is the fallback for what TorchScript tracing cannot capture.
    exporters = [("torchscript", legacy)]
    if not isinstance(model, torch.jit.ScriptModule):
        exporters.append(("dynamo", dynamo))
    for name, export in exporters:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                export()
            check_onnx(path)
            return {"exporter": name, "opset": opset}
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else ""
            failures.append(f"{name}: {type(exc).__name__}: {first}")
    raise TinymlError(
        "cannot export the model to ONNX:\n  " + "\n  ".join(failures),
        hint="export it yourself (torch.onnx.export) and commit the .onnx file, with format: onnx",
    )


class _quiet_exporter:
    """Silence the dynamo exporter's progress prints on stdout (they would flood the stage log)."""

    def __enter__(self):
        import contextlib
        import io

        self._redirect = contextlib.redirect_stdout(io.StringIO())
        self._redirect.__enter__()
        self._level = logging.getLogger("torch.onnx").level
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc):
        logging.getLogger("torch.onnx").setLevel(self._level)
        return self._redirect.__exit__(*exc)


def check_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """Load and check an ONNX file; a broken file raises a :class:`TinymlError`."""
    import onnx

    path = Path(path)
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:
        raise TinymlError(
            f"{path.name} is not a valid ONNX model: {type(exc).__name__}: {exc}",
            hint="re-export the model (torch.onnx.export) and check it with onnx.checker.check_model",
        ) from exc
    if (
        len(model.graph.input) - len({i.name for i in model.graph.initializer} & {i.name for i in model.graph.input})
        != 1
    ):
        raise TinymlError(
            f"{path.name} has {len(model.graph.input)} inputs; only single-input models are supported",
            hint="export a model that takes one batched tensor",
        )
    return model


def onnx_input_shape(model: onnx.ModelProto) -> tuple[int, ...] | None:
    """Sample shape (without the batch axis) of an ONNX model's input, if every dimension is fixed."""
    inits = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = inp.type.tensor_type.shape.dim[1:]
        if all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
            return tuple(int(d.dim_value) for d in dims)
        return None
    return None


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters of a torch model (TorchScript included)."""
    return int(sum(p.numel() for p in model.parameters()))


def count_onnx_parameters(model: onnx.ModelProto) -> int:
    """Number of values stored in an ONNX model's initializers."""
    total = 0
    for init in model.graph.initializer:
        n = 1
        for d in init.dims:
            n *= int(d)
        total += n
    return total
