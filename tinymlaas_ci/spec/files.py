"""What can be known about a run's uploads from the files alone, before anything runs.

``tinymlaas validate`` reports these with the spec's other problems: a model file whose
extension contradicts ``model.format``, formats the pipeline cannot read (Keras, TFLite), bare
weights without an architecture, a ``model.code`` or ``architecture.python`` file that is not
next to the model, and a dataset archive without a train or val split for a compression that
needs one. Only names and a few bytes are read; nothing is imported or unpacked.
"""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path

from tinymlaas_ci.spec.models import RunSpec

__all__ = ["upload_problems"]

_EXPECTED = {
    "onnx": (".onnx",),
    "exported-program": (".pt2",),
    "safetensors": (".safetensors",),
    "torchscript": (".pt", ".pth", ".jit", ".torchscript", ".zip", ""),
    "pytorch": (".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt", ""),
}
_FOREIGN = {
    ".h5": "a Keras model: convert it to ONNX (python -m tf2onnx.convert --keras model.h5 --output model.onnx)",
    ".keras": "a Keras model: convert it to ONNX (tf2onnx)",
    ".tflite": "a TensorFlow Lite model: convert it to ONNX (python -m tf2onnx.convert --tflite model.tflite ...)",
    ".pb": "a TensorFlow graph: convert it to ONNX (tf2onnx)",
    ".mlmodel": "a Core ML model: export the original model to ONNX instead",
}
_WEIGHTS_ONLY = (".safetensors",)


def _split_names(path: Path) -> set[str] | None:
    """Top split folders of a dataset archive (``train``, ``val``, ``test``), or ``None`` if unknown."""
    names: list[str] = []
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        elif path.name.endswith((".tar", ".tar.gz", ".tgz")) and path.stat().st_size < 512 * 1024 * 1024:
            with tarfile.open(path) as tf:
                names = tf.getnames()
        else:
            return None
    except (OSError, zipfile.BadZipFile, tarfile.TarError):
        return None
    aliases = {"validation": "val", "valid": "val", "dev": "val", "training": "train", "testing": "test"}
    found = set()
    for name in names:
        for part in name.replace("\\", "/").split("/")[:3]:
            stem = part.lower().split(".")[0].split("-")[0]
            stem = aliases.get(stem, stem)
            if stem in ("train", "val", "test"):
                found.add(stem)
    return found


def upload_problems(spec: RunSpec, root: Path) -> list[tuple[tuple, str, str]]:
    """``(location, message, hint)`` for each problem the upload files show."""
    out: list[tuple[tuple, str, str]] = []
    model = spec.model
    if model.upload:
        path = root / model.upload
        suffix = path.suffix.lower()
        declared = model.format.value
        if suffix in _FOREIGN:
            out.append(
                (
                    ("model", "upload"),
                    f"{path.name} is {_FOREIGN[suffix].split(':')[0]}",
                    _FOREIGN[suffix].split(": ", 1)[1],
                )
            )
        elif declared != "auto" and suffix not in _EXPECTED.get(declared, (suffix,)):
            out.append(
                (
                    ("model", "format"),
                    f"model.format is {declared}, but {path.name} has the extension of another format",
                    "set model.format: auto (the file's content decides), or fix the file name",
                )
            )
        if (
            (suffix in _WEIGHTS_ONLY or declared == "safetensors")
            and model.architecture is None
            and not (path.parent / "config.json").is_file()
        ):
            out.append(
                (
                    ("model", "upload"),
                    f"{path.name} holds weights only, and neither model.architecture nor a config.json next to it "
                    "says which network they belong to",
                    "set model.architecture, e.g. {timm: resnet18, kwargs: {num_classes: 10}} "
                    "or {python: 'net.py:Net'}",
                )
            )
        files = [("code", model.code)] if model.code else []
        if model.architecture is not None and model.architecture.python:
            files.append(("architecture", model.architecture.python.partition(":")[0]))
        for field, rel in files:
            if rel and not (path.parent / rel).is_file():
                out.append(
                    (
                        ("model", field),
                        f"model.{field} names {rel!r}, which is not next to {model.upload}",
                        f"commit {rel} in {Path(model.upload).parent.as_posix()}/",
                    )
                )
    dataset = spec.dataset
    needs_train = spec.compression.quantization.value == "static-int8" or (
        spec.compression.pruning is not None and spec.compression.pruning.fine_tune_epochs > 0
    )
    if dataset.upload and needs_train:
        splits = _split_names(root / dataset.upload)
        if splits is not None and splits and not ({"train", "val"} & splits):
            what = "static-int8 calibration" if spec.compression.quantization.value == "static-int8" else "fine-tuning"
            out.append(
                (
                    ("dataset", "upload"),
                    f"{dataset.upload} has only a {', '.join(sorted(splits))} split, "
                    f"but {what} needs a train (or val) split",
                    "add train/ to the archive, or use quantization none, dynamic-int8 or fp16 (without fine-tuning)",
                )
            )
    return out
