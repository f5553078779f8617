"""Helpers for the C generator tests: torch models exported to ONNX, quantized by ONNX Runtime to
the QDQ form, generated as C and built with the real host compiler.

A missing C compiler skips these tests on a laptop and fails them under ``CI=true``.
"""

from __future__ import annotations

import platform
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.docker_support import unavailable
from tinymlaas_ci.hostinfo import cpu_info

ROOT = Path(__file__).resolve().parents[2]


# Every kernel path the host can build and run: the native one (AVX-512 VNNI / AVX2 on x86-64),
# AVX2 alone, the portable C loop, and the Arm DSP and MVE paths with C definitions of their
# intrinsics (their loop logic; the instructions themselves run under QEMU in the firmware tests).
PATHS = {
    "native": ["-O3", "-march=native"],
    "portable": ["-O3", "-DTINYML_FORCE_PORTABLE"],
    "dsp-emulated": ["-O2", "-DTINYML_EMULATE_DSP"],
    "mve-emulated": ["-O2", "-DTINYML_EMULATE_MVE"],
}
if platform.machine() in ("x86_64", "AMD64"):
    PATHS["avx2"] = ["-O3", "-mavx2", "-mfma"]
    if {"avx512_vnni", "avx512vbmi"} <= set(cpu_info()["isa_flags"]):
        # The AVX-512 VNNI path of a CPU without VBMI (Cascade Lake): the Add without its tables.
        PATHS["avx512-no-vbmi"] = ["-O3", "-march=native", "-mno-avx512vbmi"]


def need_compiler() -> str:
    for cc in ("cc", "gcc", "clang"):
        if shutil.which(cc):
            return cc
    unavailable("no host C compiler (cc/gcc/clang) on PATH: apt-get install gcc")
    raise AssertionError  # pragma: no cover


@pytest.fixture(scope="session")
def cc() -> str:
    """The host C compiler."""
    return need_compiler()


def export(module, shape, path: Path) -> Path:
    """Export a torch module with the project's exporter (input ``input``, dynamic batch)."""
    from tinymlaas_ci.ml import formats

    formats.export_onnx(module.eval(), path, shape)
    return path


def quantized(module, shape, tmp: Path, *, lo: float = -1.0, hi: float = 1.0, samples: int = 32, seed: int = 0) -> Path:
    """fp32 ONNX of ``module`` quantized to static int8 QDQ on uniform ``[lo, hi)`` calibration data."""
    from tinymlaas_ci.ml.cgen import quantize_qdq

    fp32 = export(module, shape, tmp / "fp32.onnx")
    calib = np.random.default_rng(seed).uniform(lo, hi, (samples, *shape)).astype(np.float32)
    dst = tmp / "int8.onnx"
    quantize_qdq(fp32, dst, calib)
    return dst


def build(onnx_path: Path, tmp: Path, paths=("native",)):
    """Generate C for ``onnx_path``; returns (graph, info, {path name: CModel})."""
    from tinymlaas_ci.ml.cgen import generate_from_graph
    from tinymlaas_ci.ml.cgen.host import CModel, build_shared
    from tinymlaas_ci.ml.cgen.parse import load_graph

    graph = load_graph(onnx_path)
    info = generate_from_graph(graph, tmp / "c")
    models = {name: CModel(build_shared(tmp / "c", tmp / f"lib-{name}.so", flags=PATHS[name])) for name in paths}
    return graph, info, models


def reference_outputs(graph, xs: np.ndarray) -> np.ndarray:
    from tinymlaas_ci.ml.cgen.reference import run_graph

    return np.stack([run_graph(graph, x) for x in xs])


def random_inputs(graph, n: int, seed: int = 1) -> np.ndarray:
    shape = graph.tensors[graph.input].shape
    return np.random.default_rng(seed).integers(-128, 128, (n, *shape)).astype(np.int8)


def assert_bit_exact(graph, models, n: int = 8, seed: int = 1) -> np.ndarray:
    """Every built path gives exactly the reference's int8 outputs on ``n`` random inputs."""
    xs = random_inputs(graph, n, seed)
    want = reference_outputs(graph, xs)
    for name, model in models.items():
        got = model.run_int8(xs)
        assert got.shape == want.shape
        bad = np.argwhere(got != want)
        if len(bad):
            at = tuple(bad[0])
            raise AssertionError(f"{name}: {len(bad)} outputs differ, first at {list(at)}: {got[at]} != {want[at]}")
    return want
