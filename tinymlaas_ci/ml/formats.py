"""Model formats: load into torch, export to ONNX, check ONNX (detection: :mod:`.model_format`).

Supported inputs (``model.format`` in a run spec):

* ``pytorch`` - a pickled ``nn.Module`` (``torch.save(model, "model.pkl")``; a class defined in
  a training script's ``__main__`` needs ``model.code``), a fastai ``Learner`` (unwrapped to
  ``learn.model``, with its normalisation and vocab), a checkpoint dict ``{"arch":
  "package.module:Class", "state_dict": {...}, "kwargs": {...}}``, or a bare ``state_dict``
  (``pytorch_model.bin``) loaded into ``model.architecture``;
* ``safetensors`` - a ``.safetensors`` state dict loaded into ``model.architecture`` (or the
  architecture named by the repository's ``config.json``);
* ``torchscript`` - a ``torch.jit.save`` archive;
* ``exported-program`` - a ``torch.export.save`` archive (``.pt2``), exported to ONNX as a program;
* ``onnx`` - an ONNX file, with its external data; an unsorted graph is sorted.

:func:`load_model` also returns what the model publishes about itself (:class:`ModelMeta`):
labels (``id2label``, a Learner's vocab, timm ``label_names``) and preprocessing (timm
``pretrained_cfg``, ``preprocessor_config.json``, a Learner's ``Normalize``). timm, torchvision,
transformers, safetensors and fastai are optional extras, imported only when a model needs them.

Loading a pickle runs code from the file. It is only done inside a stage, which the Docker
executor sandboxes (no network, read-only root, no capabilities); elsewhere a warning is logged.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinymlaas_ci.errors import TinymlError
from tinymlaas_ci.ml.architectures import (
    ModelMeta,
    build_architecture,
    load_state_dict_file,
    read_model_meta,
    unwrap_learner,
)

if TYPE_CHECKING:  # pragma: no cover
    import onnx
    import torch

__all__ = [
    "check_onnx",
    "count_onnx_parameters",
    "count_parameters",
    "export_onnx",
    "load_model",
    "load_torch_model",
    "onnx_external_files",
    "onnx_input_shape",
    "resolve_input_shape",
    "save_onnx_single",
    "sort_graph",
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


def load_torch_model(
    path: str | os.PathLike, fmt: str, *, architecture: Any | None = None, code: str | None = None
) -> torch.nn.Module:
    """Load a torch model (``pytorch``, ``safetensors``, ``torchscript`` or ``exported-program``) in eval mode."""
    return load_model(path, fmt, architecture=architecture, code=code)[0]


def load_model(
    path: str | os.PathLike, fmt: str, *, architecture: Any | None = None, code: str | None = None
) -> tuple[torch.nn.Module, ModelMeta]:
    """Load a torch model and what it publishes about itself (labels, preprocessing).

    ``architecture`` is the run spec's ``model.architecture`` (for bare weights), ``code`` its
    ``model.code`` (the script that defined a pickle's ``__main__`` classes).
    """
    import torch

    path = Path(path)
    meta = read_model_meta(path.parent)
    if fmt == "torchscript":
        try:
            model = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise TinymlError(
                f"cannot load TorchScript model {path.name}: {exc}",
                hint="save it with torch.jit.save(torch.jit.script(model), path), or set model.format",
            ) from exc
        return model.eval(), meta
    if fmt == "exported-program":
        try:
            program = torch.export.load(str(path))
        except Exception as exc:
            raise TinymlError(
                f"cannot load exported program {path.name}: {exc}",
                hint="save it with torch.export.save(torch.export.export(model, args), 'model.pt2')",
            ) from exc
        # The program's module refuses .eval()/.train(): it is already an inference graph, so
        # it is used as is and exported to ONNX as a program (see export_onnx).
        module = program.module()
        module.__dict__["_tinymlaas_program"] = program
        return module, meta
    if fmt == "safetensors":
        state = load_state_dict_file(path)
        return build_architecture(architecture, path.parent, state, where=path.name).eval(), meta
    if fmt != "pytorch":
        raise TinymlError(
            f"a {fmt!r} model cannot be loaded into torch",
            hint="ONNX models run with runtime 'onnxruntime' and cannot be pruned; use a PyTorch model to prune",
        )
    _warn_unsandboxed(path)
    _add_sibling_sources(path)
    try:
        with warnings.catch_warnings(), _main_from(path.parent, code):
            warnings.simplefilter("ignore", FutureWarning)
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError) as exc:
        raise _unpickle_error(path, exc, code) from exc
    except TinymlError:
        raise
    except Exception as exc:
        raise TinymlError(
            f"cannot load PyTorch model {path.name}: {exc}",
            hint="save the whole module with torch.save(model, 'model.pkl')",
        ) from exc
    learner = unwrap_learner(obj)
    if learner is not None:
        obj, learner_meta = learner
        meta.labels = learner_meta.labels or meta.labels
        meta.label_source = learner_meta.label_source if learner_meta.labels else meta.label_source
        if learner_meta.preprocess:
            meta.preprocess, meta.preprocess_source = learner_meta.preprocess, learner_meta.preprocess_source
    return _module_from(obj, path, architecture).eval(), meta


def _unpickle_error(path: Path, exc: Exception, code: str | None) -> TinymlError:
    text = str(exc)
    if "__main__" in text or _pickles_main(path):
        hint = (
            "the model was saved from a script's __main__: set model.code to that script "
            "(e.g. 'code: train.py', next to the model) so its classes can be found"
            if not code
            else f"{code} does not define every class the pickle needs; name the script that saved the model"
        )
    elif "fastai" in text:
        hint = "this is a fastai Learner: install the fastai extra (pip install 'tinymlaas-ci[fastai]')"
    else:
        hint = (
            "the model's class must be importable: put the .py file that defines it next to "
            "the model file (or set model.code), or export the model to TorchScript or ONNX"
        )
    return TinymlError(f"cannot unpickle {path.name}: {exc}", hint=hint)


def _pickles_main(path: Path) -> bool:
    # torch.save stores data.pkl uncompressed: a class pickled from a script names "__main__".
    try:
        with open(path, "rb") as fh:
            return b"__main__" in fh.read(64 * 1024 * 1024)
    except OSError:
        return False


class _main_from:
    """Let a pickle's ``__main__.Class`` resolve to the classes of ``code`` (the training script),
    imported under another name so that its ``if __name__ == "__main__":`` block does not run."""

    def __init__(self, folder: Path, code: str | None) -> None:
        self.folder, self.code, self.saved = folder, code, None

    def __enter__(self):
        if not self.code:
            return self
        import importlib.util

        path = (self.folder / self.code).resolve()
        if not path.is_file() or self.folder.resolve() not in path.parents:
            raise TinymlError(
                f"model.code names {self.code!r}, which is not a file next to the model",
                hint="put the training script next to the model (the upload folder or the Hub repository)",
            )
        spec = importlib.util.spec_from_file_location("tinymlaas_model_code", path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise TinymlError(
                f"importing {self.code} failed: {type(exc).__name__}: {exc}",
                hint=f"{self.code} must import without side effects outside its __main__ block",
            ) from exc
        self.saved = sys.modules.get("__main__")
        sys.modules["__main__"] = module
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            sys.modules["__main__"] = self.saved
        return False


def _module_from(obj: Any, path: Path, architecture: Any | None = None) -> torch.nn.Module:
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
        state = _state_dict_of(obj)
        if state is not None:
            return build_architecture(architecture, path.parent, state, where=path.name)
        raise TinymlError(
            f"{path.name} holds a dict that is neither a state_dict nor a checkpoint (keys: {list(obj)[:8]})",
            hint="save the whole module (torch.save(model, path)), a state_dict with model.architecture, "
            "TorchScript, or ONNX",
        )
    raise TinymlError(
        f"{path.name} holds a {type(obj).__name__}, not a torch nn.Module",
        hint="save the model with torch.save(model, 'model.pkl')",
    )


def _state_dict_of(obj: dict) -> dict | None:
    import torch

    for key in ("state_dict", "model_state_dict", "model", "net"):
        inner = obj.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return inner
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    return None


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
    program = getattr(model, "__dict__", {}).get("_tinymlaas_program")
    if program is not None:
        return _export_program(program, path, opset)
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


def _export_program(program: Any, path: Path, opset: int) -> dict[str, Any]:
    # An exported program is already a graph with its own (static or dynamic) shapes: the
    # dynamo exporter takes it as is; tracing it again would call .train(), which it refuses.
    import torch

    try:
        with warnings.catch_warnings(), _quiet_exporter():
            warnings.simplefilter("ignore")
            torch.onnx.export(program, (), str(path), dynamo=True, opset_version=opset, external_data=False)
        proto = check_onnx(path)
    except TinymlError:
        raise
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise TinymlError(
            f"cannot export the exported program to ONNX: {type(exc).__name__}: {first}",
            hint="export it yourself (torch.onnx.export(program, ...)) and commit the .onnx file",
        ) from exc
    _rename_io(proto, path)
    return {"exporter": "dynamo", "opset": opset}


def _rename_io(proto: Any, path: Path) -> None:
    """Name the single input ``input`` and the first output ``logits``, as every export does."""
    inits = {i.name for i in proto.graph.initializer}
    inp = next(i for i in proto.graph.input if i.name not in inits)
    renames = {inp.name: "input", proto.graph.output[0].name: "logits"}
    renames = {k: v for k, v in renames.items() if k != v}
    if not renames:
        return
    for value in list(proto.graph.input) + list(proto.graph.output):
        value.name = renames.get(value.name, value.name)
    for node in _all_nodes(proto.graph):
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
        for i, name in enumerate(node.output):
            if name in renames:
                node.output[i] = renames[name]
    save_onnx_single(proto, path)


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


def onnx_external_files(
    path: str | os.PathLike, root: str | os.PathLike | None = None, *, unreadable_ok: bool = False
) -> list[str]:
    """The external-data files an ONNX model references (``location`` entries), relative to it.

    Each must stay inside ``root`` (default: the model's folder): an absolute path, ``..``
    escaping it, or a link is refused, because a model file must not make us read (or fetch)
    files elsewhere. ``unreadable_ok``: a file that does not parse has no external data (the
    fetch stage leaves the verdict on a broken file to the compile stage).
    """
    import onnx

    path = Path(path)
    root = Path(root) if root is not None else path.parent
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        if unreadable_ok:
            return []
        raise TinymlError(
            f"{path.name} is not a valid ONNX model: {type(exc).__name__}: {exc}",
            hint="re-export the model (torch.onnx.export) and check it with onnx.checker.check_model",
        ) from exc
    locations: list[str] = []
    tensors = list(model.graph.initializer)
    for node in _all_nodes(model.graph):
        for attr in node.attribute:
            if attr.HasField("t"):
                tensors.append(attr.t)
    for tensor in tensors:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        loc = next((e.value for e in tensor.external_data if e.key == "location"), None)
        if not loc:
            continue
        rel = _safe_location(path, root, loc)
        if rel not in locations:
            locations.append(rel)
    return locations


def _safe_location(path: Path, root: Path, loc: str) -> str:
    import posixpath

    bad = loc.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", loc) or "\\" in loc
    rel_dir = path.parent.resolve().relative_to(root.resolve()).as_posix() if path.parent != root else ""
    joined = posixpath.normpath(posixpath.join(rel_dir, loc)) if not bad else loc
    if bad or joined.startswith("../") or joined == "..":
        raise TinymlError(
            f"{path.name} references external data {loc!r} outside its folder",
            hint="re-save the model with its external data next to it "
            "(onnx.save_model(m, 'model.onnx', save_as_external_data=True, location='model.onnx.data'))",
        )
    return posixpath.relpath(joined, rel_dir or ".")


def _all_nodes(graph: Any) -> list[Any]:
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for attr in node.attribute:
            if attr.HasField("g"):
                nodes.extend(_all_nodes(attr.g))
            for g in attr.graphs:
                nodes.extend(_all_nodes(g))
    return nodes


def sort_graph(graph: Any) -> bool:
    """Sort ``graph``'s nodes topologically in place (stable); returns whether the order changed.

    Converters (Keras/TF, hand-edited graphs) write valid graphs out of order; ONNX Runtime
    runs them, but ``onnx.checker`` and the quantizer want them sorted.
    """
    produced = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    outer = set(produced)
    nodes = list(graph.node)
    producer = {}
    for idx, node in enumerate(nodes):
        for out in node.output:
            producer[out] = idx
    order: list[int] = []
    state = [0] * len(nodes)  # 0 new, 1 visiting, 2 done

    def needs(node: Any) -> list[str]:
        names = list(node.input)
        for attr in node.attribute:  # subgraphs may read outer values
            subs = ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
            for g in subs:
                for sub in _all_nodes(g):
                    names.extend(sub.input)
        return names

    def visit(i: int) -> None:
        stack = [(i, iter(needs(nodes[i])))]
        state[i] = 1
        while stack:
            j, it = stack[-1]
            advanced = False
            for name in it:
                k = producer.get(name)
                if name in outer or k is None or state[k] == 2:
                    continue
                if state[k] == 1:
                    raise TinymlError(
                        "the ONNX graph has a cycle", hint="re-export the model; a valid graph is acyclic"
                    )
                state[k] = 1
                stack.append((k, iter(needs(nodes[k]))))
                advanced = True
                break
            if not advanced:
                stack.pop()
                state[j] = 2
                order.append(j)

    for i in range(len(nodes)):
        if state[i] == 0:
            visit(i)
    if order == list(range(len(nodes))):
        return False
    sorted_nodes = [nodes[i] for i in order]
    copies = [type(n)() for n in sorted_nodes]
    for dst, src in zip(copies, sorted_nodes, strict=True):
        dst.CopyFrom(src)
    del graph.node[:]
    graph.node.extend(copies)
    return True


def check_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """Load (with its external data) and check an ONNX file; an unsorted graph is sorted first.

    A broken file raises a :class:`TinymlError`.
    """
    import onnx

    path = Path(path)
    onnx_external_files(path)  # refuses locations outside the model's folder before reading any
    try:
        model = onnx.load(str(path))
    except Exception as exc:
        missing = ""
        try:
            missing = ", ".join(f for f in onnx_external_files(path) if not (path.parent / f).is_file())
        except TinymlError:
            pass
        raise TinymlError(
            f"{path.name} is not a valid ONNX model: {type(exc).__name__}: {exc}"
            + (f" (its external data {missing} is missing)" if missing else ""),
            hint="keep the external data file (e.g. model.onnx.data) next to the model"
            if missing
            else "re-export the model (torch.onnx.export) and check it with onnx.checker.check_model",
        ) from exc
    if sort_graph(model.graph):
        log.info("%s: graph nodes were not topologically sorted; sorted them", path.name)
    try:
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


def save_onnx_single(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Save ``model`` as one self-contained file (external data inlined), atomically."""
    import onnx

    path = Path(path)
    tmp = path.with_name(f".{path.name}.part")
    if model.ByteSize() > 2_000_000_000:
        raise TinymlError(
            f"the model is {model.ByteSize() / 1e9:.1f} GB; one ONNX file holds at most 2 GB",
            hint="TinyML models are far smaller; use a smaller model",
        )
    onnx.save_model(model, str(tmp), save_as_external_data=False)
    os.replace(tmp, path)


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
