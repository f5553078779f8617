"""Build generated C with the host compiler and run it from Python: ``runtime: c`` on Linux devices.

:func:`build_shared` compiles ``model.c`` (plus a small float wrapper, ``HOST_C``) with
``cc -O3 -march=native -shared -fPIC`` into a shared library; on x86-64
``-march=native`` selects the AVX-512 VNNI or AVX2 dot products when the CPU has them. :class:`CModel` loads it
with ctypes:

* :meth:`CModel.run` takes a float32 batch ``(N, *input_shape)`` and returns float32 logits
  ``(N, classes)`` like the other runtimes' sessions. Quantizing the input
  (``round(x / scale) + zero_point``, ties to even, saturated) and dequantizing the output are
  done in C, one sample at a time, in one ctypes call per batch.
* :meth:`CModel.run_int8` runs already quantized int8 samples: the bit-exact tests use it.

:func:`load_c_session` wraps a model folder as a :class:`tinymlaas_ci.ml.runtime.Session`.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tinymlaas_ci.errors import TinymlError
from tinymlaas_ci.fs import atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from tinymlaas_ci.ml.runtime import Session

__all__ = ["DEFAULT_FLAGS", "CModel", "build_shared", "compiler", "compiler_version", "load_c_session"]

DEFAULT_FLAGS = ("-O3", "-march=native")

HOST_C = r"""/* Float interface for the host build of a generated model. */
#include <math.h>
#include <stdint.h>
#include "model.h"

int tinyml_host_run_f32(int32_t n, const float *x, float *y) {
    int8_t q[TINYML_INPUT_SIZE > 0 ? TINYML_INPUT_SIZE : 1];
    int8_t o[TINYML_OUTPUT_SIZE > 0 ? TINYML_OUTPUT_SIZE : 1];
    const float out_scale = tinyml_output_scale;
    int32_t s, i;
    for (s = 0; s < n; s++) {
        const float *xs = x + (long)s * TINYML_INPUT_SIZE;
        float *ys = y + (long)s * TINYML_OUTPUT_SIZE;
        int rc;
        for (i = 0; i < TINYML_INPUT_SIZE; i++) {
            float v = nearbyintf(xs[i] / tinyml_input_scale) + (float)tinyml_input_zero_point;
            q[i] = (int8_t)(v < -128.0f ? -128.0f : (v > 127.0f ? 127.0f : v));
        }
        rc = tinyml_model_run(q, o);
        if (rc != 0) return rc;
        for (i = 0; i < TINYML_OUTPUT_SIZE; i++) ys[i] = (float)(o[i] - tinyml_output_zero_point) * out_scale;
    }
    return 0;
}

int tinyml_host_run_s8(int32_t n, const int8_t *x, int8_t *y) {
    int32_t s;
    for (s = 0; s < n; s++) {
        int rc = tinyml_model_run(x + (long)s * TINYML_INPUT_SIZE, y + (long)s * TINYML_OUTPUT_SIZE);
        if (rc != 0) return rc;
    }
    return 0;
}

/* The compiler that built this library, so that a device without one (a Docker device's
   image) can still say what built the code it runs. */
#ifndef TINYML_HOST_COMPILER
#define TINYML_HOST_COMPILER __VERSION__
#endif
const char tinyml_host_compiler[] = TINYML_HOST_COMPILER;

long tinyml_host_info(int32_t what) {
    switch (what) {
    case 0: return TINYML_INPUT_SIZE;
    case 1: return TINYML_OUTPUT_SIZE;
    case 2: return TINYML_ARENA_SIZE;
    default: return -1;
    }
}
"""


def compiler() -> str:
    """The host C compiler: ``$CC``, else ``cc``, ``gcc`` or ``clang`` on PATH."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    raise TinymlError(
        "no C compiler found for runtime c",
        hint="install a C compiler on the device (apt-get install gcc) or set CC",
    )


def compiler_version(cc: str | None = None) -> str:
    """First line of ``cc --version``."""
    cc = cc or compiler()
    out = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).splitlines()[0].strip() if (out.stdout or out.stderr) else cc


def build_shared(
    model_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    flags: tuple[str, ...] | list[str] = DEFAULT_FLAGS,
    cc: str | None = None,
) -> Path:
    """Compile the generated model in ``model_dir`` into a shared library; returns its path."""
    model_dir = Path(model_dir)
    for name in ("model.h", "model.c", "kernels.h"):
        if not (model_dir / name).is_file():
            raise TinymlError(f"{model_dir / name} does not exist", hint="generate the C model first (generate_c)")
    cc = cc or compiler()
    out = Path(out) if out is not None else model_dir / "libtinyml_model.so"
    tmp = out.with_name(out.name + ".tmp")
    # The float wrapper is compiled from a scratch folder, so the model folder keeps exactly the
    # generated files (a firmware build may compile every .c in it).
    with tempfile.TemporaryDirectory(prefix="tinymlaas-cgen-host-") as scratch:
        host_c = Path(scratch) / "tinyml_host.c"
        atomic_write_text(host_c, HOST_C)
        version = compiler_version(cc).replace("\\", "\\\\").replace('"', '\\"')
        cmd = [cc, *flags, "-std=c99", "-shared", "-fPIC", f'-DTINYML_HOST_COMPILER="{version}"']
        cmd += ["-I", str(model_dir), str(model_dir / "model.c")]
        cmd += [str(host_c), "-o", str(tmp), "-lm"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise TinymlError(
            f"the C compiler failed on {model_dir / 'model.c'} (exit {proc.returncode}): {proc.stderr[-1500:]}",
            hint="check the compiler and flags; run: " + " ".join(cmd),
        )
    os.replace(tmp, out)
    return out


class CModel:
    """A generated model loaded from its shared library."""

    def __init__(self, library: str | os.PathLike) -> None:
        self.path = Path(library)
        try:
            # PyDLL keeps the GIL across the call: an inference of a few microseconds costs less
            # than releasing and re-taking it, which on a busy machine can mean a context switch.
            self._lib = ctypes.PyDLL(str(self.path))
        except OSError as exc:
            raise TinymlError(f"cannot load {self.path}: {exc}", hint="rebuild it with build_shared") from exc
        lib = self._lib
        lib.tinyml_host_run_f32.argtypes = [ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p]
        lib.tinyml_host_run_f32.restype = ctypes.c_int
        lib.tinyml_host_run_s8.argtypes = [ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p]
        lib.tinyml_host_run_s8.restype = ctypes.c_int
        lib.tinyml_host_info.argtypes = [ctypes.c_int32]
        lib.tinyml_host_info.restype = ctypes.c_long
        self.input_size = int(lib.tinyml_host_info(0))
        self.output_size = int(lib.tinyml_host_info(1))
        self.arena_bytes = int(lib.tinyml_host_info(2))
        self.input_scale = ctypes.c_float.in_dll(lib, "tinyml_input_scale").value
        self.input_zero_point = ctypes.c_int.in_dll(lib, "tinyml_input_zero_point").value
        self.output_scale = ctypes.c_float.in_dll(lib, "tinyml_output_scale").value
        self.output_zero_point = ctypes.c_int.in_dll(lib, "tinyml_output_zero_point").value
        self.macs = ctypes.c_ulong.in_dll(lib, "tinyml_macs").value
        self.weights_bytes = ctypes.c_ulong.in_dll(lib, "tinyml_weights_bytes").value
        self.compiler = ctypes.c_char_p(
            ctypes.addressof(ctypes.c_char.in_dll(lib, "tinyml_host_compiler"))
        ).value.decode(errors="replace")
        """The compiler that built the library (``cc --version``'s first line)."""
        self.kernel_path = ctypes.c_char_p(
            ctypes.addressof(ctypes.c_char.in_dll(lib, "tinyml_kernel_path"))
        ).value.decode()
        self._f32 = lib.tinyml_host_run_f32
        self._s8 = lib.tinyml_host_run_s8
        # Per-sample calls dominate on small models: one persistent sample buffer per input
        # shape, so a batch of one costs a copy and a ctypes call with two fixed pointers.
        self._one: dict[tuple[int, ...], tuple[np.ndarray, int]] = {}
        self._one_out = None

    def _check(self, x: np.ndarray) -> int:
        n = x.size // self.input_size if self.input_size else 0
        if x.size != n * self.input_size or (x.ndim > 1 and x[0].size != self.input_size):
            raise TinymlError(
                f"input of shape {x.shape} does not hold samples of {self.input_size} values",
                hint="pass a batch (N, *input_shape) in the model's own layout",
            )
        return n

    def run(self, x: np.ndarray) -> np.ndarray:
        """float32 batch in, float32 logits ``(N, output_size)`` out."""
        import numpy as np

        if x.shape[:1] == (1,) and x.size == self.input_size:
            slot = self._one.get(x.shape)
            if slot is None:
                buf = np.zeros(x.shape, np.float32)
                slot = self._one[x.shape] = (buf, buf.ctypes.data)
                if self._one_out is None:
                    out = np.zeros((1, self.output_size), np.float32)
                    self._one_out = (out, out.ctypes.data)
            np.copyto(slot[0], x, casting="same_kind")
            rc = self._f32(1, slot[1], self._one_out[1])
            y = self._one_out[0].copy()
        else:
            x = np.ascontiguousarray(x, dtype=np.float32)
            n = self._check(x)
            y = np.empty((n, self.output_size), np.float32)
            rc = self._f32(n, x.ctypes.data, y.ctypes.data)
        if rc != 0:
            raise TinymlError(f"tinyml_model_run returned {rc}", hint="the generated model reported an error")
        return y

    def run_int8(self, x: np.ndarray) -> np.ndarray:
        """int8 samples in (any shape holding whole samples), int8 outputs ``(N, output_size)`` out."""
        import numpy as np

        x = np.ascontiguousarray(x, dtype=np.int8)
        n = self._check(x)
        y = np.empty((n, self.output_size), np.int8)
        rc = self._s8(n, x.ctypes.data, y.ctypes.data)
        if rc != 0:
            raise TinymlError(f"tinyml_model_run returned {rc}", hint="the generated model reported an error")
        return y


def load_c_session(model_dir: str | os.PathLike, *, flags: tuple[str, ...] | list[str] = DEFAULT_FLAGS) -> Session:
    """Build (if needed) and load the generated model in ``model_dir`` as a runtime ``Session``."""
    from tinymlaas_ci.ml.runtime import Session

    model_dir = Path(model_dir)
    started = time.perf_counter_ns()
    lib = model_dir / "libtinyml_model.so"
    if not lib.is_file() or lib.stat().st_mtime < (model_dir / "model.c").stat().st_mtime:
        build_shared(model_dir, lib, flags=flags)
    model = CModel(lib)
    load_ms = (time.perf_counter_ns() - started) / 1e6
    return Session("c", model.compiler, 1, model.run, load_ms, providers=[f"kernels:{model.kernel_path}"])
