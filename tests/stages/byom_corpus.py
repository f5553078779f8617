"""A corpus of models and datasets in the layouts people publish, made at test time with the
real libraries, and a harness that runs every stage (fetch -> compile -> install -> infer) on one.

The task is small and separable (4 classes of coloured 16x16 patterns), so a CNN trains in
seconds; models are trained with a ``Normalize(mean, std)`` preprocessing, as nearly all are.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
NAMES = ["zero", "one", "two", "three"]  # output order; sorted folder names would be different
MEAN = [0.3, 0.4, 0.5]
STD = [0.2, 0.25, 0.3]
SMALL_MEASURE = {"warmup": 1, "min_iterations": 5, "min_seconds": 0, "batch_size": 1}

NET_PY = '''
import torch
from torch import nn


class Net(nn.Module):
    """A small CNN for 3x16x16 inputs."""

    def __init__(self, num_classes=4, in_chans=3):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(8 * 16, num_classes)

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))
'''


def images(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 RGB images ``N,3,16,16`` and labels 0..3: class c lights a channel band."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 4
    x = rng.normal(80, 25, size=(n, 3, 16, 16))
    for i, c in enumerate(y):
        x[i, c % 3, (c // 2) * 8 : (c // 2) * 8 + 8, :] += 140
    return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)


def normalise(x: np.ndarray, mean=MEAN, std=STD) -> np.ndarray:
    """torchvision's ToTensor + Normalize on uint8 ``N,C,H,W``: the model's own preprocessing."""
    m = np.asarray(mean, np.float32)[None, :, None, None]
    s = np.asarray(std, np.float32)[None, :, None, None]
    return ((x.astype(np.float32) / 255.0) - m) / s


def load_net(folder: Path, name: str = "net"):
    """Import ``net.py`` from ``folder`` under ``name`` (as a stage would find it next to a model)."""
    path = folder / "net.py"
    path.write_text(NET_PY)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def train_net(module, *, epochs: int = 25, seed: int = 0):
    """Train ``module.Net`` on normalised images; returns the model in eval mode."""
    import torch

    torch.manual_seed(seed)
    x, y = images(1, 160)
    xt, yt = torch.from_numpy(normalise(x)), torch.from_numpy(y)
    model = module.Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(epochs):
        for i in range(0, len(xt), 32):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[i : i + 32]), yt[i : i + 32]).backward()
            opt.step()
    return model.eval()


def torch_accuracy(model, x_uint8: np.ndarray, y: np.ndarray, **norm) -> float:
    """The model evaluated directly in torch with its own preprocessing."""
    import torch

    with torch.no_grad():
        out = model(torch.from_numpy(normalise(x_uint8, **norm)))
    out = getattr(out, "logits", out)
    return float((out.argmax(1).numpy() == y).mean())


def png(pixels_chw: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels_chw.transpose(1, 2, 0)), "RGB").save(buf, format="PNG")
    return buf.getvalue()


def imagefolder_zip(folder_names: list[str] = NAMES, counts=(("train", 80), ("test", 60))) -> bytes:
    """An ImageFolder archive; class index c is stored in the folder ``folder_names[c]``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for split, n in counts:
            x, y = images(2 if split == "test" else 3, n)
            for i, (img, c) in enumerate(zip(x, y, strict=True)):
                zf.writestr(f"{split}/{folder_names[c]}/{i:04d}.png", png(img))
    return buf.getvalue()


def eval_images() -> tuple[np.ndarray, np.ndarray]:
    """The test split of :func:`imagefolder_zip`, as arrays."""
    return images(2, 60)


# -- the harness -------------------------------------------------------------------------------


def run_stage(volume: Path, repo: Path, builtin: str, spec: dict, inputs: dict, env_extra: dict | None = None):
    """Run one built-in stage as a process; returns ``(proc, outputs or error)``."""
    config = {
        "schema": 1,
        "stage": builtin,
        "builtin": builtin,
        "run": {"project": "byom", "name": spec.get("name", "run")},
        "repo": str(repo),
        "params": {},
        "spec": spec,
        "device": {"schema": 1, "name": "host", "kind": "local", "arch": "amd64"},
        "inputs": inputs,
    }
    (volume / builtin).mkdir(parents=True, exist_ok=True)
    (volume / builtin / "stage.json").write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["TINYMLAAS_SANDBOXED"] = "1"
    env.update(env_extra or {})
    proc = subprocess.run(
        [sys.executable, "-m", f"tinymlaas_ci.stages.{builtin}", str(volume), "--name", builtin],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    out = volume / builtin / ("outputs.json" if proc.returncode == 0 else "error.json")
    assert out.is_file(), proc.stdout + proc.stderr
    return proc, json.loads(out.read_text())


def run_pipeline(volume: Path, repo: Path, raw_spec: dict, env_extra: dict | None = None) -> dict:
    """fetch -> compile -> install -> infer; returns ``{stage: outputs}``, plus ``failed`` (the
    stage name), ``error`` and ``log`` when a stage fails."""
    from tinymlaas_ci.spec.models import RunSpec

    spec = RunSpec.model_validate({"schema": 1, "name": "run", "measure": SMALL_MEASURE, **raw_spec}).model_dump(
        mode="json", by_alias=True
    )
    done: dict = {"log": ""}
    inputs_for = {
        "fetch": lambda: {},
        "compile": lambda: {"fetch": done["fetch"]},
        "install": lambda: {"fetch": done["fetch"], "compile": done["compile"]},
        "infer": lambda: {"install": done["install"]},
    }
    for stage in ("fetch", "compile", "install", "infer"):
        proc, out = run_stage(volume, repo, stage, spec, inputs_for[stage](), env_extra)
        done["log"] += proc.stdout + proc.stderr
        if proc.returncode != 0:
            done.update(failed=stage, error=out)
            return done
        done[stage] = out
    return done
