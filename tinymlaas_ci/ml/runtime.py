"""Inference runtimes on the device: ONNX Runtime for ``.onnx``, TorchScript for ``.pt``, and the
host build of generated C (``runtime: c``) for a shared library.

A :class:`Session` takes a float32 batch ``(N, *input_shape)`` and returns logits ``(N, classes)``,
whatever the model's precision inside, so the same data and measurement code serve every variant.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinymlaas_ci.errors import TinymlError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = ["RUNTIMES", "Session", "load_session", "runtime_for"]

RUNTIMES = ("onnxruntime", "pytorch", "c")


@dataclass
class Session:
    """A loaded model, ready to run."""

    runtime: str
    version: str
    threads: int
    run: Callable[[np.ndarray], np.ndarray]
    """float32 batch in, float32 logits out."""
    load_time_ms: float
    providers: list[str] = field(default_factory=list)
    fixed_batch: int | None = None
    """Batch size baked into the model's input, when it is not dynamic."""

    def record(self) -> dict[str, Any]:
        """A dict fitting :class:`tinymlaas_ci.results.models.RuntimeRecord`."""
        return {
            "name": self.runtime,
            "version": self.version,
            "threads": self.threads,
            "providers": list(self.providers),
        }


def runtime_for(path: str | os.PathLike) -> str:
    """The runtime a deployed file needs, by extension: ``.onnx`` -> onnxruntime, ``.pt`` -> pytorch."""
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        return "onnxruntime"
    if suffix in (".pt", ".pth", ".ts"):
        return "pytorch"
    if suffix == ".so":
        return "c"
    raise TinymlError(f"no runtime runs {Path(path).name}", hint="deploy a .onnx or TorchScript .pt file")


def load_session(path: str | os.PathLike, runtime: str | None = None, *, threads: int = 1) -> Session:
    """Load the model at ``path`` into ``runtime`` (default: by extension), timing the load."""
    path = Path(path)
    runtime = runtime or runtime_for(path)
    if runtime == "c":
        return _load_c(path)
    if not path.is_file():
        raise TinymlError(f"model file {path} does not exist", hint="run the install stage first")
    if runtime == "onnxruntime":
        return _load_onnx(path, threads)
    if runtime == "pytorch":
        return _load_torchscript(path, threads)
    raise TinymlError(f"unknown runtime {runtime!r}", hint=f"use one of {', '.join(RUNTIMES)}")


def _load_c(path: Path) -> Session:
    # The library sits next to the generated sources; a bundle copied to a board without it
    # (or with older sources) is built there, with the board's compiler for its own CPU.
    from tinymlaas_ci.ml.cgen.host import load_c_session

    if not (path.parent / "model.c").is_file():
        raise TinymlError(f"{path.parent} holds no generated C model", hint="run the install stage first")
    return load_c_session(path.parent)


def _load_onnx(path: Path, threads: int) -> Session:
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    started = time.perf_counter_ns()
    try:
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as exc:
        raise TinymlError(
            f"ONNX Runtime cannot load {path.name}: {type(exc).__name__}: {exc}",
            hint="the model may use operators this onnxruntime version lacks; check the compile stage's opset",
        ) from exc
    load_ms = (time.perf_counter_ns() - started) / 1e6
    inp = sess.get_inputs()[0]
    out_name = sess.get_outputs()[0].name
    in_name = inp.name
    batch_dim = inp.shape[0] if inp.shape else None
    fixed = batch_dim if isinstance(batch_dim, int) else None

    def run(x: np.ndarray) -> np.ndarray:
        return sess.run([out_name], {in_name: np.ascontiguousarray(x, dtype=np.float32)})[0]

    return Session(
        "onnxruntime",
        ort.__version__,
        int(threads),
        run,
        load_ms,
        providers=list(sess.get_providers()),
        fixed_batch=fixed,
    )


def _load_torchscript(path: Path, threads: int) -> Session:
    import numpy as np
    import torch

    torch.set_num_threads(int(threads))
    started = time.perf_counter_ns()
    try:
        model = torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:
        raise TinymlError(
            f"torch cannot load TorchScript model {path.name}: {type(exc).__name__}: {exc}",
            hint="the model must be saved with torch.jit.save",
        ) from exc
    load_ms = (time.perf_counter_ns() - started) / 1e6

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).float().numpy()

    return Session("pytorch", torch.__version__, int(threads), run, load_ms, providers=["cpu"])
