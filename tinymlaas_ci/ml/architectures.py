"""Networks for bare weights, and what a model publishes about itself.

A weights file (``model.safetensors``, ``pytorch_model.bin``, a saved ``state_dict``) holds
no architecture. It comes from the run spec's ``model.architecture`` (torchvision, timm,
transformers or a class in a Python file next to the model), else from the repository's
``config.json`` (timm: ``architecture``, ``num_classes``, ``in_chans``; transformers:
``architectures``). The libraries are optional extras: each is imported only when a model
needs it, and a missing one is named in the error with the install command.

:class:`ModelMeta` gathers what the files next to the model say: labels (transformers'
``id2label``, timm's ``label_names``, a fastai Learner's vocab) and preprocessing (timm's
``pretrained_cfg`` ``mean``/``std``/``input_size``, ``preprocessor_config.json``, a Learner's
``Normalize``).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinymlaas_ci.errors import TinymlError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "ModelMeta",
    "build_architecture",
    "import_extra",
    "load_state_dict_file",
    "read_model_meta",
    "unwrap_learner",
]

log = logging.getLogger(__name__)

EXTRAS = {
    "timm": "timm",
    "torchvision": "torchvision",
    "transformers": "transformers",
    "safetensors": "safetensors",
    "fastai": "fastai",
}
_GENERIC_LABEL = re.compile(r"^(LABEL_)?\d+$")


@dataclass
class ModelMeta:
    """What a model and the files next to it say about its inputs and outputs."""

    labels: list[str] | None = None
    """Output names by index, when the model publishes them."""
    label_source: str | None = None
    """Where ``labels`` came from (``config.json id2label``, ``fastai vocab``, ...)."""
    preprocess: dict[str, Any] = field(default_factory=dict)
    """``mean``, ``std``, ``resize``, ``channels`` the model was trained with, where published."""
    input_shape: tuple[int, ...] | None = None
    """One sample's shape, when the metadata says (timm ``input_size``)."""
    preprocess_source: str | None = None
    """Where ``preprocess`` came from."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "labels": self.labels,
            "label_source": self.label_source,
            "preprocess": dict(self.preprocess),
            "preprocess_source": self.preprocess_source,
            "input_shape": list(self.input_shape) if self.input_shape else None,
        }


def import_extra(name: str, why: str) -> Any:
    """Import an optional library, or say which extra installs it."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        dist = EXTRAS.get(name.split(".")[0], name)
        raise TinymlError(
            f"{why} needs {dist}, which is not installed ({exc})",
            hint=f"pip install 'tinymlaas-ci[{dist}]' (or pip install {dist}); the stage image has it",
        ) from exc
    except RuntimeError as exc:  # e.g. torchvision built for another torch: "operator ... does not exist"
        dist = EXTRAS.get(name.split(".")[0], name)
        raise TinymlError(
            f"{why} needs {dist}, which is installed but does not import: {exc}",
            hint=f"install the {dist} release built for this torch ({_torch_version()})",
        ) from exc


def _torch_version() -> str:
    torch = sys.modules.get("torch")
    return getattr(torch, "__version__", "?")


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or ``None`` when absent or not an object."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        log.warning("%s is not valid JSON; ignored", path.name)
        return None
    return data if isinstance(data, dict) else None


def _useful_labels(names: list[str]) -> list[str] | None:
    # transformers writes LABEL_0.. when nobody named the classes: that says nothing.
    if not names or all(_GENERIC_LABEL.match(n) for n in names):
        return None
    return names


def read_model_meta(folder: Path) -> ModelMeta:
    """Labels and preprocessing from ``config.json`` and ``preprocessor_config.json`` in ``folder``."""
    meta = ModelMeta()
    config = read_json(folder / "config.json") or {}
    id2label = config.get("id2label")
    if isinstance(id2label, dict) and id2label:
        try:
            names = [str(id2label[k]) for k in sorted(id2label, key=lambda k: int(k))]
        except (TypeError, ValueError):
            names = []
        if _useful_labels(names):
            meta.labels, meta.label_source = names, "config.json id2label"
    names = config.get("label_names") or (config.get("pretrained_cfg") or {}).get("label_names")
    if meta.labels is None and isinstance(names, list) and _useful_labels([str(n) for n in names]):
        meta.labels, meta.label_source = [str(n) for n in names], "config.json label_names"
    cfg = config.get("pretrained_cfg") if isinstance(config.get("pretrained_cfg"), dict) else None
    if cfg:
        pre: dict[str, Any] = {}
        if cfg.get("mean") and cfg.get("std"):
            pre["mean"], pre["std"] = [float(v) for v in cfg["mean"]], [float(v) for v in cfg["std"]]
        size = cfg.get("test_input_size") or cfg.get("input_size")
        if isinstance(size, list) and len(size) == 3:
            meta.input_shape = tuple(int(v) for v in size)
            pre["resize"] = [int(size[1]), int(size[2])]
            pre["channels"] = int(size[0]) if int(size[0]) in (1, 3) else None
        if pre:
            meta.preprocess, meta.preprocess_source = pre, "config.json pretrained_cfg"
    proc = read_json(folder / "preprocessor_config.json")
    if proc and not meta.preprocess:
        pre = {}
        if proc.get("do_normalize", True) and proc.get("image_mean") and proc.get("image_std"):
            mean, std = proc["image_mean"], proc["image_std"]
            pre["mean"] = [float(v) for v in (mean if isinstance(mean, list) else [mean])]
            pre["std"] = [float(v) for v in (std if isinstance(std, list) else [std])]
        if proc.get("do_rescale", True) and proc.get("rescale_factor"):
            pre["scale"] = float(proc["rescale_factor"])
        size = proc.get("crop_size") if proc.get("do_center_crop") else None
        size = size or proc.get("size")
        if isinstance(size, dict) and "height" in size and "width" in size:
            pre["resize"] = [int(size["height"]), int(size["width"])]
        elif isinstance(size, dict) and "shortest_edge" in size:
            pre["resize"] = [int(size["shortest_edge"])] * 2
        elif isinstance(size, int):
            pre["resize"] = [size, size]
        if pre:
            meta.preprocess, meta.preprocess_source = pre, "preprocessor_config.json"
    return meta


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file."""
    st = import_extra("safetensors.torch", f"reading {path.name}")
    try:
        return st.load_file(str(path), device="cpu")
    except Exception as exc:
        raise TinymlError(
            f"cannot read {path.name} as safetensors: {exc}",
            hint="the file must be a safetensors file (safetensors.torch.save_file)",
        ) from exc


def _from_config(folder: Path) -> tuple[str, dict[str, Any], dict[str, Any]] | None:
    """(kind, name-or-auto, kwargs) from ``config.json``, or ``None``."""
    config = read_json(folder / "config.json")
    if not config:
        return None
    if config.get("model_type") and "architecture" not in config:
        return "transformers", {"name": "auto"}, {}
    arch = config.get("architecture")
    if isinstance(arch, str):
        kwargs: dict[str, Any] = {}
        for key in ("num_classes", "in_chans"):
            if isinstance(config.get(key), int):
                kwargs[key] = config[key]
        kwargs.update(config.get("model_args") or {})
        return "timm", {"name": arch}, kwargs
    return None


def _import_python(folder: Path, target: str) -> type:
    file, _, cls_name = target.partition(":")
    path = (folder / file).resolve()
    if not path.is_file() or folder.resolve() not in path.parents:
        raise TinymlError(
            f"model.architecture.python names {file!r}, which is not a file next to the model",
            hint="put the .py file next to the model (same upload folder or Hub repository)",
        )
    mod_name = "tinymlaas_user_" + re.sub(r"\W", "_", path.stem)
    if str(folder.resolve()) not in sys.path:
        sys.path.insert(0, str(folder.resolve()))  # the file may import its siblings
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise TinymlError(f"importing {file} failed: {type(exc).__name__}: {exc}", hint=f"fix {file}") from exc
    cls = getattr(module, cls_name, None)
    if cls is None:
        raise TinymlError(
            f"{file} defines no {cls_name!r}",
            hint=f"classes in {file}: {', '.join(n for n, v in vars(module).items() if isinstance(v, type)) or 'none'}",
        )
    return cls


class _LogitsOnly:
    """Marker base; see :func:`_logits_wrapper`."""


def _logits_wrapper(model: Any) -> Any:
    import torch

    class LogitsOf(torch.nn.Module, _LogitsOnly):
        """A transformers model returning only ``logits`` (a tensor exports and runs everywhere)."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner
            self.config = getattr(inner, "config", None)

        def forward(self, x):
            out = self.inner(x)
            return out.logits if hasattr(out, "logits") else out[0]

    return LogitsOf(model)


def build_architecture(
    architecture: Any | None, folder: Path, state_dict: dict[str, Any] | None, *, where: str
) -> torch.nn.Module:
    """The network named by ``architecture`` (a spec :class:`Architecture` or ``None`` for
    ``config.json``), with ``state_dict`` loaded strictly when given."""
    if architecture is not None:
        kind = architecture.kind
        name = getattr(architecture, kind)
        kwargs = dict(architecture.kwargs)
    else:
        found = _from_config(folder)
        if found is None:
            raise TinymlError(
                f"{where} holds weights only (a state_dict), and nothing says which network they belong to",
                hint="set model.architecture, e.g. {timm: resnet18, kwargs: {num_classes: 10}}, "
                "{torchvision: mobilenet_v2}, {transformers: auto} or {python: 'net.py:Net'}; "
                "or publish the config.json the weights came with",
            )
        kind, named, kwargs = found
        name = named["name"]
    if kind == "timm":
        timm = import_extra("timm", f"model.architecture timm:{name}")
        try:
            model = timm.create_model(name, pretrained=False, **kwargs)
        except Exception as exc:
            raise TinymlError(
                f"timm cannot create {name!r} with {kwargs}: {exc}", hint="check the name and kwargs"
            ) from exc
    elif kind == "torchvision":
        tvm = import_extra("torchvision.models", f"model.architecture torchvision:{name}")
        try:
            model = tvm.get_model(name, weights=None, **kwargs)
        except Exception as exc:
            raise TinymlError(
                f"torchvision cannot build {name!r} with {kwargs}: {exc}",
                hint="use a name from torchvision.models.list_models()",
            ) from exc
    elif kind == "transformers":
        transformers = import_extra("transformers", "model.architecture transformers")
        try:
            config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True, **kwargs)
            arch_name = (config.architectures or [None])[0]
            cls = getattr(transformers, arch_name, None) if arch_name else None
            if cls is None:
                cls = transformers.AutoModelForImageClassification
            model = cls.from_config(config)
        except TinymlError:
            raise
        except Exception as exc:
            raise TinymlError(
                f"transformers cannot build the model of {folder.name}/config.json: {type(exc).__name__}: {exc}",
                hint="the repository's config.json must name the architecture (architectures, model_type)",
            ) from exc
        if state_dict is not None:
            _load_strict(model, _strip_prefix(model, state_dict), where)
        model.eval()
        return _logits_wrapper(model)
    elif kind == "python":
        cls = _import_python(folder, name)
        try:
            model = cls(**kwargs)
        except Exception as exc:
            raise TinymlError(
                f"{name}(**{kwargs}) failed: {type(exc).__name__}: {exc}",
                hint="give the constructor's arguments in model.architecture.kwargs",
            ) from exc
    else:  # pragma: no cover - the spec allows only the kinds above
        raise TinymlError(f"unknown architecture kind {kind!r}")
    if state_dict is not None:
        _load_strict(model, state_dict, where)
    return model


def _strip_prefix(model: Any, sd: dict[str, Any]) -> dict[str, Any]:
    # Hub checkpoints of a task model sometimes store the bare backbone's keys, or vice versa.
    keys = set(model.state_dict())
    if set(sd) <= keys:
        return sd
    prefix = getattr(model, "base_model_prefix", "")
    if prefix:
        added = {f"{prefix}.{k}" if f"{prefix}.{k}" in keys else k: v for k, v in sd.items()}
        if set(added) <= keys:
            return added
    return sd


def _load_strict(model: Any, sd: dict[str, Any], where: str) -> None:
    try:
        result = model.load_state_dict(sd, strict=False)
    except RuntimeError as exc:  # size mismatches
        first = str(exc).splitlines()[:3]
        raise TinymlError(
            f"the weights in {where} do not fit the architecture: {' '.join(first)}",
            hint="set model.architecture.kwargs to what the weights were trained with (e.g. num_classes, in_chans)",
        ) from exc
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise TinymlError(
            f"the weights in {where} do not fit the architecture: {len(missing)} missing "
            f"(e.g. {missing[:3]}), {len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:3]})",
            hint="check model.architecture (name and kwargs) against the network the weights were saved from",
        )


def unwrap_learner(obj: Any) -> tuple[Any, ModelMeta] | None:
    """``(learn.model, meta)`` for a fastai Learner (vocab -> labels, Normalize -> mean/std)."""
    cls = type(obj)
    if cls.__name__ != "Learner" or not hasattr(obj, "model"):
        return None
    meta = ModelMeta()
    dls = getattr(obj, "dls", None)
    vocab = getattr(dls, "vocab", None) if dls is not None else None
    if vocab is not None:
        try:
            items = list(vocab)
            if items and isinstance(items[0], (list, tuple)):  # multi-category: (inputs, targets)
                items = list(items[-1])
            meta.labels, meta.label_source = [str(v) for v in items], "fastai vocab"
        except TypeError:
            pass
    for tfm in _iter_tfms(getattr(dls, "after_batch", None)):
        if type(tfm).__name__ == "Normalize" and getattr(tfm, "mean", None) is not None:
            mean = _flat(tfm.mean)
            std = _flat(tfm.std)
            if mean and std:
                meta.preprocess = {"mean": mean, "std": std}
                meta.preprocess_source = "fastai Normalize"
    return obj.model, meta


def _iter_tfms(pipeline: Any) -> list[Any]:
    if pipeline is None:
        return []
    fs = getattr(pipeline, "fs", pipeline)
    try:
        return list(fs)
    except TypeError:
        return []


def _flat(value: Any) -> list[float]:
    try:
        import numpy as np

        return [float(v) for v in np.asarray(value.detach().cpu() if hasattr(value, "detach") else value).ravel()]
    except (TypeError, ValueError):
        return []
