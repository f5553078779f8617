"""Peak memory of the infer stage: MobileNetV2 at 224x224, 600 train and 360 test images.

    python benchmarks/infer_memory.py [--rounds 3] [--out benchmarks/results/infer_memory.json]

The dataset (an ImageFolder archive of PNGs, 10 classes) and the model (MobileNetV2, 3.5 M
parameters, the torchvision layer layout, defined here so that torchvision is not needed) go
through the real fetch, compile and install stages once. Then, in interleaved rounds, two
processes evaluate the same deployed model and baseline over the 360 test images:

* ``stage``: the infer stage (``python -m tinymlaas_ci.stages.infer``): it streams the bundle's
  raw test split and preprocesses each batch;
* ``whole-file``: the previous data path, measured in the same run: the whole dataset file
  (every split, float32 /255, as it used to be stored) read into memory, then the test split
  evaluated in batches of 64.

Peak resident memory is each child's ``ru_maxrss`` (``os.wait4``), taken by a small launcher
process: Linux carries a parent's peak RSS into a forked child, so a child of this (large)
process would report this process's peak. Reports medians and the ratio; the goal is a stage
peak under 300 MiB.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.stages.byom_corpus import run_stage
from tinymlaas_ci.fs import atomic_write_json

MNV2 = """
import torch
from torch import nn


def conv_bn(inp, out, k, s, groups=1, act=True):
    layers = [nn.Conv2d(inp, out, k, s, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(out)]
    return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if act else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, inp, out, stride, expand):
        super().__init__()
        hidden = inp * expand
        self.use_res = stride == 1 and inp == out
        layers = [conv_bn(inp, hidden, 1, 1)] if expand != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), conv_bn(hidden, out, 1, 1, act=False)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2)]
        cfg += [(6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
        layers, inp = [conv_bn(3, 32, 3, 2)], 32
        for t, c, n, s in cfg:
            for i in range(n):
                layers.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
                inp = c
        layers.append(conv_bn(inp, 1280, 1, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x):
        return self.classifier(nn.functional.adaptive_avg_pool2d(self.features(x), 1).flatten(1))
"""

WHOLE_FILE = textwrap.dedent(
    """
    import sys
    import numpy as np
    from tinymlaas_ci.ml import measure
    from tinymlaas_ci.ml.runtime import load_session

    data = measure.read_dataset(sys.argv[1])          # every split, float32, in memory
    x, y = measure.eval_split(data, "test")
    for model in sys.argv[2:]:
        session = load_session(model, "onnxruntime", threads=1)
        measure.evaluate(session.run, x, y, num_classes=10, batch_size=64)
    """
)


def _dataset_zip() -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    from PIL import Image

    base = np.linspace(0, 200, 224, dtype=np.float32)
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for split, n in (("train", 600), ("test", 360)):
            for i in range(n):
                c = i % 10
                img = np.empty((224, 224, 3), np.float32)
                img[...] = base[None, :, None]
                img[..., c % 3] += 20 * (c // 3)
                img += rng.normal(0, 8, size=(224, 224, 1))
                png = io.BytesIO()
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB").save(png, format="PNG")
                zf.writestr(f"{split}/{c}/{i:04d}.png", png.getvalue())
    return buf.getvalue()


LAUNCHER = textwrap.dedent(
    """
    import json, os, subprocess, sys
    proc = subprocess.Popen(json.loads(sys.argv[1]), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode()
    print(json.dumps({"rc": os.waitstatus_to_exitcode(status), "maxrss_kib": usage.ru_maxrss, "stderr": err[-2000:]}))
    """
)


def _peak_mb(cmd: list[str], env: dict, cwd: Path) -> float:
    # Linux keeps a process's peak RSS across fork and exec: a child forked from this process
    # (which holds torch and the dataset) would report at least this process's RSS. A small
    # launcher forks the measured process instead, so its peak is its own.
    out = subprocess.run(
        [sys.executable, "-c", LAUNCHER, json.dumps(cmd)], env=env, cwd=cwd, capture_output=True, text=True, check=True
    )
    report = json.loads(out.stdout)
    if report["rc"] != 0:
        raise SystemExit(f"{cmd[:3]} failed:\n{report['stderr']}")
    return report["maxrss_kib"] / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", metavar="DIR", help="build the run volume in DIR and keep it (for profiling)")
    parser.add_argument("--reuse", action="store_true", help="with --keep: reuse a volume built before")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "infer_memory.json"))
    args = parser.parse_args(argv)

    import torch

    with tempfile.TemporaryDirectory(prefix="tinymlaas-mem-") as tmp:
        tmp = Path(args.keep) if args.keep else Path(tmp)
        repo = tmp / "repo"
        (repo / "uploads" / "mnv2").mkdir(parents=True, exist_ok=True)
        (repo / "uploads" / "data").mkdir(parents=True, exist_ok=True)
        (repo / "uploads" / "mnv2" / "mnv2.py").write_text(MNV2)
        sys.path.insert(0, str(repo / "uploads" / "mnv2"))
        import mnv2

        torch.manual_seed(0)
        if not (args.reuse and (repo / "uploads" / "data" / "data.zip").is_file()):
            torch.save(mnv2.MobileNetV2().eval(), repo / "uploads" / "mnv2" / "model.pkl")
            (repo / "uploads" / "data" / "data.zip").write_bytes(_dataset_zip())
        from tinymlaas_ci.spec.models import RunSpec

        spec = RunSpec.model_validate(
            {
                "schema": 1,
                "name": "mnv2",
                "model": {"upload": "uploads/mnv2/model.pkl"},
                "dataset": {"upload": "uploads/data/data.zip", "preprocess": {"mean": [0.5], "std": [0.25]}},
                "measure": {"warmup": 2, "min_iterations": 10, "min_seconds": 0, "batch_size": 1},
            }
        ).model_dump(mode="json", by_alias=True)
        volume = tmp / "run"
        done = {}
        stages = (
            ("fetch", lambda: {}),
            ("compile", lambda: {"fetch": done["fetch"]}),
            ("install", lambda: {"fetch": done["fetch"], "compile": done["compile"]}),
        )
        for stage, inputs in stages:
            if args.reuse and (volume / stage / "outputs.json").is_file():
                done[stage] = json.loads((volume / stage / "outputs.json").read_text())
                continue
            proc, out = run_stage(volume, repo, stage, spec, inputs())
            if proc.returncode != 0:
                raise SystemExit(f"{stage} failed: {out}")
            done[stage] = out
        config = {
            "schema": 1,
            "stage": "infer",
            "builtin": "infer",
            "run": {"project": "bench", "name": "mnv2"},
            "repo": str(repo),
            "params": {},
            "spec": spec,
            "device": {"schema": 1, "name": "host", "kind": "local", "arch": "amd64"},
            "inputs": {"install": done["install"]},
        }
        (volume / "infer").mkdir(exist_ok=True)
        (volume / "infer" / "stage.json").write_text(json.dumps(config))
        # The dataset file as it used to be stored: every split float32 in [0, 1].
        float_npz = tmp / "dataset-float32.npz"
        with np.load(volume / "fetch" / "dataset.npz", allow_pickle=False) as npz:
            arrays = {k: (npz[k].astype(np.float32) / 255 if k.startswith("x_") else npz[k]) for k in npz.files}
        np.savez(float_npz, **arrays)
        del arrays
        env = dict(os.environ, PYTHONPATH=str(ROOT), TINYMLAAS_SANDBOXED="1")
        stage_cmd = [sys.executable, "-m", "tinymlaas_ci.stages.infer", str(volume), "--name", "infer"]
        whole_cmd = [
            sys.executable,
            "-c",
            WHOLE_FILE,
            str(float_npz),
            str(volume / "compile" / "model.onnx"),
            str(volume / "compile" / "baseline.onnx"),
        ]
        peaks: dict[str, list[float]] = {"stage": [], "whole-file": []}
        for _ in range(args.rounds):
            peaks["whole-file"].append(_peak_mb(whole_cmd, env, repo))
            peaks["stage"].append(_peak_mb(stage_cmd, env, repo))
        metrics = json.loads((volume / "infer" / "outputs.json").read_text())["metrics"]
    med = {k: statistics.median(v) for k, v in peaks.items()}
    result = {
        "model": "MobileNetV2 (3.5 M parameters), 224x224, fp32",
        "dataset": {"train": 600, "test": 360},
        "rounds": args.rounds,
        "peak_rss_mib": peaks,
        "median_peak_rss_mib": med,
        "ratio_stage_vs_whole_file": med["stage"] / med["whole-file"],
        "goal_mib": 300,
        "goal_met": med["stage"] < 300,
        "samples_evaluated": metrics["samples"],
        "stage_reported_peak_mib": metrics.get("peak_memory_mb"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    print(f"| path | median peak RSS (MiB) |\n|---|---|\n| whole file in memory | {med['whole-file']:.0f} |")
    print(f"| infer stage (streamed) | {med['stage']:.0f} |")
    print(
        f"ratio {result['ratio_stage_vs_whole_file']:.2f}; goal < 300 MiB: {'met' if result['goal_met'] else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
