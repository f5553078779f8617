"""The model bundle: what the install stage puts on a device and the infer stage measures.

A bundle is a folder with the deployed model, the fp32 baseline, the evaluation split of the
dataset (``eval.npz``) and ``manifest.json`` (:class:`BundleManifest`)::

    {"schema": 1, "runtime": "onnxruntime", "model": "model.onnx", "baseline": "baseline.onnx",
     "data": "eval.npz", "eval_split": "test", "samples": 360, "input_shape": [1, 8, 8],
     "labels": [...], "measure": {...}, "sha256": {"model.onnx": ..., ...},
     "device": {"name": ..., "kind": ..., "arch": ...}}

Written by the install stage (:func:`write_manifest`); read by the infer stage and by
``tinymlaas export`` (:func:`read_manifest`). The standalone runtime of an exported image reads
the same file as plain JSON, so its shape is part of the contract.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tinymlaas_ci.errors import TinymlError
from tinymlaas_ci.fs import atomic_write_json
from tinymlaas_ci.spec.models import Measure, Runtime

__all__ = ["BUNDLE_SCHEMA", "MANIFEST", "BundleDevice", "BundleManifest", "read_manifest", "write_manifest"]

MANIFEST = "manifest.json"
BUNDLE_SCHEMA = 1


class BundleDevice(BaseModel):
    """The device a bundle was installed for."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    kind: str | None = None
    arch: str | None = None


class BundleManifest(BaseModel):
    """``manifest.json`` of a model bundle."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_: Literal[1] = Field(default=BUNDLE_SCHEMA, alias="schema")
    """Version of this file format."""
    runtime: Runtime
    """The runtime that runs ``model`` on the device."""
    model: str
    """File name of the deployed model in the bundle."""
    baseline: str
    """File name of the fp32, uncompressed ONNX baseline in the bundle."""
    data: str = "eval.npz"
    """File name of the evaluation data (``x``, ``y``, ``labels``) in the bundle."""
    eval_split: str
    """The dataset split ``data`` holds."""
    samples: int = Field(ge=0)
    """Number of samples in ``data``."""
    input_shape: list[int]
    """Shape of one input sample, without the batch axis."""
    labels: list[str] = Field(default_factory=list)
    """Class labels by model output index."""
    label_source: str | None = None
    """Where the label order came from (``dataset.labels``, ``config.json id2label``, ``folders (integers)``, ...)."""
    preprocess: dict[str, Any] | None = None
    """How the raw samples of ``data`` become model inputs (channels, resize, scale, mean, std,
    layout, reshape); applied the same way by the infer stage and the exported ``infer.py``."""
    measure: Measure = Measure()
    """How latency is measured on the device (the run spec's ``measure``)."""
    sha256: dict[str, str] = Field(default_factory=dict)
    """sha256 of each file of the bundle, by file name."""
    device: BundleDevice = BundleDevice()
    """The device the bundle was installed for."""


def write_manifest(bundle: Path, manifest: BundleManifest) -> None:
    """Write ``bundle/manifest.json``."""
    atomic_write_json(bundle / MANIFEST, manifest.model_dump(mode="json", by_alias=True))


def read_manifest(bundle: Path) -> BundleManifest:
    """Read ``bundle/manifest.json``; a missing or malformed one is a :class:`TinymlError`."""
    try:
        return BundleManifest.model_validate(json.loads((bundle / MANIFEST).read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise TinymlError(
            f"cannot read the bundle manifest {bundle / MANIFEST}: {exc}", hint="re-run the install stage"
        ) from exc
