"""``runtime: c``: compile a model to int8 C, build it for the device, and measure it there.

The stages call three steps here; the C generator (:mod:`tinymlaas_ci.ml.cgen`) and the
microcontroller harness (:mod:`tinymlaas_ci.devices.mcu`) do the work:

* compile: :func:`compile_c` exports the fp32 baseline (and prunes) as for every runtime,
  quantizes it to the static-int8 QDQ form the generator reads (:func:`~tinymlaas_ci.ml.cgen.quantize_qdq`:
  int8 activations with zero points, symmetric per-channel int8 weights), and generates
  ``model.h``/``model.c``/``kernels.h``. An operator the generator does not support fails here,
  naming the node and the operator, before anything is built.
* install: :func:`host_build_flags` and :func:`build_host_library` build the generated C with
  the host compiler for a Linux device (``-O3`` and the device's ISA); the ``mcu`` device kind
  builds firmware with :func:`tinymlaas_ci.devices.mcu.build_firmware` instead.
* ``runtime: auto``: :class:`CCandidate` is the generated C as one more static-int8 candidate,
  timed by :func:`~tinymlaas_ci.ml.quantize.quantize_onnx` side by side with ONNX Runtime's
  recipes and kept when it is faster there.
* infer: :func:`ort_agreement` compares the predictions of the board or the host build with
  ONNX Runtime running the same int8 model.

In a bundle the C model lives in ``c/`` (:data:`C_DIR`) and the firmware in ``firmware/``
(:data:`FIRMWARE_DIR`); the bundle's ``model`` is the int8 ONNX model the C was generated from.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinymlaas_ci.errors import TinymlError
from tinymlaas_ci.spec.models import Compression, ModelFormat, Quantization, Runtime

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from tinymlaas_ci.ml.cgen import CModelInfo
    from tinymlaas_ci.ml.compress import CompileOutcome

__all__ = [
    "C_DIR",
    "C_FILES",
    "FIRMWARE_DIR",
    "HOST_LIBRARY",
    "CCandidate",
    "CCompileOutcome",
    "build_host_library",
    "c_record",
    "compile_c",
    "host_build_flags",
    "is_this_machine",
    "ort_agreement",
]

C_DIR = "c"
"""Folder of the generated C model, in the compile stage's folder and in a bundle."""
C_FILES = ("model.h", "model.c", "kernels.h")
"""The files the generator writes."""
FIRMWARE_DIR = "firmware"
"""Folder of the firmware built for an ``mcu`` device, in the install stage's bundle."""
HOST_LIBRARY = "libtinyml_model.so"
"""The host build of the C model, in the bundle's ``c/`` folder."""

# -march for a device that is not this machine: the baseline of its architecture, so the
# library runs on any CPU of that family (the AVX2/AVX-512 kernels need -march=native).
_BASELINE_MARCH = {"amd64": "-march=x86-64-v2", "arm64": "-march=armv8-a", "x86": "-march=i686"}
_MACHINE_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


@dataclass
class CCompileOutcome:
    """What :func:`compile_c` produced."""

    compiled: CompileOutcome
    """The baseline, the deployed int8 ONNX model and the compression record."""
    c_dir: Path
    """Folder holding :data:`C_FILES`."""
    info: CModelInfo
    """Sizes, costs and the operator list of the generated C."""


def compile_c(
    model_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    compression: Compression,
    fmt: ModelFormat | str = ModelFormat.auto,
    input_shape: Sequence[int] | None = None,
    data: Mapping[str, np.ndarray] | None = None,
    seed: int = 0,
    progress: Callable[[str], None] = lambda _msg: None,
    **prepare: Any,
) -> CCompileOutcome:
    """Write ``baseline.onnx`` (fp32), ``model.onnx`` (static int8 QDQ) and ``c/`` into ``out_dir``.

    ``compression.quantization`` must be ``static-int8``; the weights are always quantized per
    output channel, as the generator needs. Pruning is applied before quantization. ``data`` are
    model-ready arrays; or ``prepare`` passes :func:`~tinymlaas_ci.ml.compress.compile_model`'s
    ``dataset``/``preprocess``/``input_layout``/``architecture``/``code`` (a fetched dataset of raw
    samples, prepared the same way as for every other runtime).
    """
    from tinymlaas_ci.ml import compress, formats
    from tinymlaas_ci.ml.cgen import generate_c, quantize_qdq
    from tinymlaas_ci.ml.measure import gzip_size
    from tinymlaas_ci.ml.quantize import count_quantized_ops

    if compression.quantization is not Quantization.static_int8:
        raise TinymlError(
            f"runtime c needs quantization static-int8, not {compression.quantization.value!r}",
            hint="set compression.quantization: static-int8",
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # The fp32 (pruned) model, exactly as for the other runtimes; quantized below.
    fp32_only = compression.model_copy(update={"quantization": Quantization.none, "per_channel": True})
    compiled = compress.compile_model(
        model_path,
        out_dir,
        compression=fp32_only,
        runtime=Runtime.onnxruntime,
        fmt=fmt,
        input_shape=input_shape,
        data=data,
        seed=seed,
        progress=progress,
        calibrate=True,
        **prepare,
    )
    assert compiled.calibration is not None  # calibrate=True: compile_model raised otherwise
    calib, calib_split = compiled.calibration
    deployed = compiled.deployed
    with tempfile.TemporaryDirectory(prefix="tinymlaas-c-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        shutil.move(str(deployed), fp32)
        progress(f"calibrating static int8 (per channel) on {len(calib)} {calib_split} samples")
        quantize_qdq(fp32, deployed, calib)
    c_dir = out_dir / C_DIR
    if c_dir.exists():
        shutil.rmtree(c_dir)
    progress("generating C from the int8 model")
    info = generate_c(deployed, c_dir)
    rec = compiled.record
    rec.update(
        quantization=Quantization.static_int8.value,
        per_channel=True,
        calibration_samples=len(calib),
        ops_quantized=count_quantized_ops(formats.check_onnx(deployed)),
        compressed_bytes=deployed.stat().st_size,
        compressed_gzip_bytes=gzip_size(deployed),
    )
    return CCompileOutcome(compiled=compiled, c_dir=c_dir, info=info)


class CCandidate:
    """The generated C as a static-int8 candidate of ``runtime: auto``, built for this machine.

    :meth:`candidate` is passed to :func:`~tinymlaas_ci.ml.quantize.quantize_onnx`; when it
    builds, the C sources are in ``c_dir`` and :attr:`info` describes them, exactly what
    :func:`compile_c` would have generated from the same fp32 model and calibration samples.
    """

    RECIPE = "qdq-s8s8-per-channel, generated C"

    def __init__(self, c_dir: str | os.PathLike, flags: Sequence[str]) -> None:
        self.c_dir = Path(c_dir)
        self.flags = list(flags)
        self.info: CModelInfo | None = None

    def candidate(self):
        """The :class:`~tinymlaas_ci.ml.quantize.RuntimeCandidate`."""
        from tinymlaas_ci.ml.quantize import RuntimeCandidate

        return RuntimeCandidate(
            runtime=Runtime.c.value,
            recipe=self.RECIPE,
            why=(
                "int8 activations and per-channel weights in C generated for this model, "
                f"built with {' '.join(self.flags)}; no float fallback"
            ),
            build=self._build,
        )

    def _build(self, fp32: Path, calibration: np.ndarray, work: Path):
        from tinymlaas_ci.ml.cgen import generate_c, quantize_qdq
        from tinymlaas_ci.ml.cgen.host import CModel, build_shared

        int8 = work / "model.onnx"
        quantize_qdq(fp32, int8, calibration)
        if self.c_dir.exists():
            shutil.rmtree(self.c_dir)
        try:
            info = generate_c(int8, self.c_dir)
            model = CModel(build_shared(self.c_dir, work / HOST_LIBRARY, flags=tuple(self.flags)))
        except TinymlError:
            shutil.rmtree(self.c_dir, ignore_errors=True)
            raise
        except Exception as exc:
            # A fault of the generator must not fail a run that ONNX Runtime can deploy: it is
            # recorded as this candidate's error (in the result) and ONNX Runtime is kept.
            shutil.rmtree(self.c_dir, ignore_errors=True)
            raise TinymlError(
                f"the C generator failed on this model: {type(exc).__name__}: {exc}",
                hint="deploy with runtime: onnxruntime, or report the model to the project",
            ) from exc
        self.info = info
        dense = sum(1 for op in info.ops if op["onnx_op"] in ("Conv", "Gemm", "MatMul"))
        return int8, model.run, {"integer_ops": {"integer": dense, "total": dense}}

    def discard(self) -> None:
        """Remove the generated sources (ONNX Runtime was kept)."""
        shutil.rmtree(self.c_dir, ignore_errors=True)
        self.info = None


def c_record(info: CModelInfo) -> dict[str, Any]:
    """The generated model's facts for the compile stage's records (no machine paths)."""
    rec = info.record()
    rec.pop("out_dir", None)
    return rec


def _machine_arch() -> str:
    return _MACHINE_ARCH.get(platform.machine().lower(), platform.machine().lower())


def is_this_machine(device_kind: str, docker_host: str | None = None) -> bool:
    """Whether a Linux device runs on this machine's CPU: a ``local`` device, or a ``docker``
    device whose engine is on this machine (no host, or a ``unix://`` socket)."""
    if device_kind == "local":
        return True
    return device_kind == "docker" and (docker_host is None or docker_host.startswith("unix://"))


def host_build_flags(device_kind: str, device_arch: str, *, docker_host: str | None = None) -> list[str]:
    """Compiler flags for the host build of ``runtime: c`` on a Linux device: ``-O3`` and its ISA.

    A ``local`` device, and a ``docker`` device whose engine runs on this machine, is this
    machine: ``-march=native`` (the AVX2 / AVX-512 VNNI kernels where the CPU has them). A remote
    device of the same architecture gets its architecture's baseline; another architecture
    cannot be built here.
    """
    if device_kind == "local":
        return ["-O3", "-march=native"]
    here = _machine_arch()
    if device_arch != here:
        raise TinymlError(
            f"runtime c for a device of architecture {device_arch} cannot be built on this {here} runner",
            hint="use an ssh device (the C model is built on the board), or a runner of the device's architecture",
        )
    if is_this_machine(device_kind, docker_host):
        return ["-O3", "-march=native"]
    march = _BASELINE_MARCH.get(device_arch)
    return ["-O3", march] if march else ["-O3"]


def build_host_library(c_dir: str | os.PathLike, flags: Sequence[str]) -> Path:
    """Build ``c_dir/libtinyml_model.so`` with the host compiler; returns its path."""
    from tinymlaas_ci.ml.cgen.host import build_shared

    c_dir = Path(c_dir)
    return build_shared(c_dir, c_dir / HOST_LIBRARY, flags=tuple(flags))


def ort_agreement(model_path: str | os.PathLike, x: np.ndarray, predictions: Sequence[int]) -> dict[str, Any]:
    """Share of ``predictions`` equal to ONNX Runtime's on the same int8 model and inputs."""
    import numpy as np

    from tinymlaas_ci.ml.runtime import load_session

    session = load_session(model_path, "onnxruntime", threads=1)
    ort_pred = np.concatenate([session.run(x[i : i + 256]) for i in range(0, len(x), 256)]).argmax(axis=1)
    pred = np.asarray(predictions)
    same = int((ort_pred == pred).sum())
    return {"agreement": same / len(pred) if len(pred) else None, "same": same, "samples": len(pred)}
