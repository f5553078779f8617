"""Realistic result files for the site tests and the site benchmark.

``generate_results(n)`` makes ``n`` valid :class:`~tinymlaas_ci.results.Result` dicts: the
digits quantization sweep (every quantization mode and a pruned run), a keyword-spotting
project on a second device with a failed gate, a project with a failed run, and, past those,
sweep projects of 100 runs each. ``write_repo(root, ...)`` writes them under
``runs/<project>/results/`` and, with ``git=True``, commits them several times with changing
numbers so the site has history to show.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["BASE_RUNS", "INVALID_FILE", "generate_results", "write_repo"]

INVALID_FILE = "runs/vww/results/broken.json"

# (project, spec file stem, run name, quantization, pruning sparsity, device, status)
BASE_RUNS = [
    ("digits", "cnn", "cnn-none", "none", None, "host", "succeeded"),
    ("digits", "cnn", "cnn-dynamic-int8", "dynamic-int8", None, "host", "succeeded"),
    ("digits", "cnn", "cnn-static-int8", "static-int8", None, "host", "succeeded"),
    ("digits", "cnn", "cnn-fp16", "fp16", None, "host", "succeeded"),
    ("digits", "cnn-pruned", "cnn-pruned", "static-int8", 0.8, "host", "succeeded"),
    ("kws", "ds-cnn", "ds-cnn-none", "none", None, "rpi4", "succeeded"),
    ("kws", "ds-cnn", "ds-cnn-static-int8", "static-int8", None, "rpi4", "succeeded"),
    ("kws", "ds-cnn", "ds-cnn-dynamic-int8", "dynamic-int8", None, "rpi4", "gates-failed"),
    ("kws", "ds-cnn", "ds-cnn-fp16", "fp16", None, "rpi4", "succeeded"),
    ("vww", "mobilenet", "mobilenet-none", "none", None, "host", "succeeded"),
    ("vww", "mobilenet", "mobilenet-static-int8", "static-int8", None, "host", "failed"),
]

_MODES = ["none", "dynamic-int8", "static-int8", "fp16"]
# Relative to fp32: size factor, latency factor, accuracy change.
_EFFECT = {
    "none": (1.0, 1.0, 0.0),
    "dynamic-int8": (0.27, 8.5, -0.004),
    "static-int8": (0.31, 1.2, -0.002),
    "fp16": (0.51, 1.1, 0.0),
}
_DEVICES = {
    "host": {
        "name": "host",
        "kind": "local",
        "arch": "amd64",
        "cpu_model": "AMD EPYC 7B13",
        "isa_flags": ["avx2", "fma"],
        "cpu_count": 2,
        "memory_mb": 24576,
        "os": "Linux 6.1",
    },
    "rpi4": {
        "name": "rpi4",
        "kind": "docker",
        "arch": "arm64",
        "cpu_model": "Cortex-A72",
        "isa_flags": ["neon", "asimd"],
        "cpu_count": 4,
        "memory_mb": 4096,
        "os": "Linux 6.6",
    },
}
_LABELS = {
    "digits": [str(i) for i in range(10)],
    "kws": ["yes", "no", "up", "down", "left", "right", "_silence_", "_unknown_"],
    "vww": ["no-person", "person"],
}
_BASE = {  # fp32 baseline per project: bytes, p50 ms, accuracy
    "digits": (153_000, 0.0155, 0.975),
    "kws": (95_000, 1.9, 0.912),
    "vww": (1_300_000, 12.5, 0.86),
}


def _sha(*parts: Any) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


def _ts(day: int, second: int = 0) -> str:
    return f"2025-03-{1 + day % 28:02d}T{10 + second // 3600 % 10:02d}:{second // 60 % 60:02d}:{second % 60:02d}Z"


# What compile records for static-int8 with runtime auto: ONNX Runtime's recipes and the C, timed.
_STATIC_CHOICE: dict[str, Any] = {
    "recipe": "qdq-u8s8-per-channel",
    "recipe_reason": "fastest of 2 recipes timed side by side with fp32 whose accuracy holds",
    "integer_ops": {"integer": 3, "total": 3},
    "runtime": "onnxruntime",
    "runtime_reason": "runtime c cannot run this model: node '<b>x</b>' (Einsum) is not supported",
    "recipe_candidates": [
        {
            "recipe": "qdq-u8s8-per-channel",
            "speedup_vs_fp32": 1.62,
            "accuracy_drop": 0.003,
            "holds": True,
            "integer_ops": {"integer": 3, "total": 3},
            "kept": True,
        },
        {
            "recipe": "qdq-u8s8-per-tensor",
            "speedup_vs_fp32": 1.58,
            "accuracy_drop": 0.011,
            "holds": False,
            "integer_ops": {"integer": 3, "total": 3},
            "kept": False,
        },
        {
            "recipe": "qdq-s8s8-per-channel, generated C",
            "runtime": "c",
            "kept": False,
            "error": "node '<b>x</b>' (Einsum) is not supported",
        },
    ],
}


def _result(
    project: str,
    spec_stem: str,
    name: str,
    mode: str,
    sparsity: float | None,
    device: str,
    status: str,
    rng: random.Random,
    version: int = 0,
) -> dict[str, Any]:
    base_bytes, base_p50, base_acc = _BASE.get(project, (400_000, 3.0, 0.9))
    labels = _LABELS.get(project, ["a", "b", "c", "d"])
    size_f, lat_f, acc_d = _EFFECT[mode]
    if device == "rpi4":
        base_p50 *= 1.0
    size = int(base_bytes * size_f * (1 + rng.uniform(-0.02, 0.02)))
    p50 = base_p50 * lat_f * (1 + rng.uniform(-0.08, 0.08)) * (1 + 0.03 * version)
    acc = base_acc + acc_d + rng.uniform(-0.003, 0.003) - (0.01 if sparsity else 0.0)
    acc = round(min(acc, 0.999), 4)
    spec = {
        "schema": 1,
        "name": name,
        "description": f"{mode} {project}",
        "model": {"upload": f"uploads/{project}/model.pkl", "format": "pytorch"},
        "dataset": {"upload": f"uploads/{project}/dataset.zip", "split": "test"},
        "compression": {
            "quantization": mode,
            "calibration_samples": 256,
            **({"pruning": {"sparsity": sparsity, "fine_tune_epochs": 2}} if sparsity else {}),
        },
        "device": device,
        "runtime": "onnxruntime",
        "measure": {"warmup": 20, "min_iterations": 200, "min_seconds": 0.5, "batch_size": 1},
        "gates": {
            "min_accuracy": round(base_acc - 0.05, 2),
            "max_accuracy_drop": 0.03,
            "max_latency_p95_ms": round(base_p50 * 4, 4),
        },
    }
    day, sec = version * 3 + rng.randrange(3), rng.randrange(30000)
    started = 0
    stages = []
    failed_at = "compile" if status == "failed" else None
    reached_failure = False
    for stage, dur in (("fetch", 0.8), ("compile", 6.5), ("install", 0.4), ("infer", 2.1)):
        if reached_failure:
            stages.append({"name": stage, "status": "pending"})
            continue
        dur = round(dur * (1 + rng.uniform(-0.2, 0.2)), 3)
        st = "failed" if stage == failed_at else "generated"
        stages.append(
            {
                "name": stage,
                "status": st,
                "started_at": _ts(day, sec + started),
                "finished_at": _ts(day, sec + started + max(1, int(dur))),
                "duration_s": dur,
                "cache_key": _sha(project, name, stage, version),
                "cache_hit": stage == "fetch" and version > 0,
                "executor": "docker" if device != "host" else "local",
                "image": f"tinymlaas/{stage}:1" if device != "host" else None,
                "image_digest": None,
            }
        )
        started += max(1, int(dur))
        reached_failure = st == "failed"
    result: dict[str, Any] = {
        "schema": 1,
        "run": {
            "project": project,
            "name": name,
            "spec_file": f"runs/{project}/{spec_stem}.yaml",
            "spec_hash": _sha(project, name, mode, sparsity),
            "spec_commit": None,
            "pipeline": "default",
            "matrix": {"compression.quantization": mode} if spec_stem != name else {},
            "actions_run_url": (
                f"https://github.com/example/tinyml-models/actions/runs/{9000 + version}"
                if project == "digits"
                else None
            ),
        },
        "status": status,
        "created_at": _ts(day, sec + started),
        "spec": spec,
        "inputs": {
            "model": {
                "kind": "upload",
                "path": f"uploads/{project}/model.pkl",
                "sha256": _sha(project, "m"),
                "bytes": base_bytes + 2048,
                "format": "pytorch",
                "parameters": base_bytes // 4,
            },
            "dataset": {
                "kind": "upload",
                "path": f"uploads/{project}/dataset.zip",
                "sha256": _sha(project, "d"),
                "format": "imagefolder",
                "splits": {"train": 1257, "val": 180, "test": 360},
                "labels": labels,
                "eval_split": "test",
            },
        },
        "compression": {
            "quantization": mode,
            "per_channel": False,
            "calibration_samples": 256 if mode == "static-int8" else None,
            "target_sparsity": sparsity,
            "achieved_sparsity": sparsity,
            "fine_tune_epochs": 2 if sparsity else None,
            "ops_quantized": {"Conv": 2, "MatMul": 1} if "int8" in mode else {},
            "baseline_bytes": base_bytes,
            "compressed_bytes": size,
            **(_STATIC_CHOICE if mode == "static-int8" else {}),
        },
        "device": _DEVICES[device],
        "runtime": {"name": "onnxruntime", "version": "1.20.1", "threads": 1, "providers": ["CPUExecutionProvider"]},
        "metrics": None,
        "gates": [],
        "stages": stages,
        "error": None,
        "tools": {
            "tinymlaas_ci": "0.1.0",
            "python": "3.11.7",
            "onnx": "1.17.0",
            "onnxruntime": "1.20.1",
            "numpy": "2.1.3",
            "torch": "2.13.0",
        },
    }
    if status == "failed":
        result["error"] = {
            "stage": "compile",
            "message": "static-int8 calibration failed: the dataset has no train or val split",
        }
        return result
    spread = [1.0, 1.08, 1.12, 1.25]
    n = len(labels)
    samples = 360
    cm = [[0] * n for _ in range(n)]
    per = samples // n
    for i in range(n):
        wrong = round(per * (1 - acc) + rng.uniform(0, 1))
        cm[i][i] = per - wrong
        for _ in range(wrong):
            cm[i][rng.randrange(n)] += 1
    correct = sum(cm[i][i] for i in range(n))
    acc = round(correct / sum(map(sum, cm)), 4)
    mean = p50 * 1.04
    result["metrics"] = {
        "accuracy": acc,
        "top5_accuracy": 0.999 if n > 5 else None,
        "baseline_accuracy": base_acc,
        "accuracy_drop": round(base_acc - acc, 4),
        "samples": sum(map(sum, cm)),
        "latency_ms": {
            "p50": p50,
            "p90": p50 * spread[1],
            "p95": p50 * spread[2],
            "p99": p50 * spread[3],
            "mean": mean,
            "std": p50 * 0.07,
            "min": p50 * 0.93,
            "max": p50 * 2.4,
            "iterations": 200 + rng.randrange(5000),
            "seconds": 0.5 + rng.random(),
            "warmup": 20,
        },
        "batch_size": 1,
        "throughput_per_s": 1000.0 / mean,
        "model_size_bytes": size,
        "model_gzip_bytes": int(size * (0.35 if sparsity else 0.9)),
        "baseline_model_bytes": base_bytes,
        "compression_ratio": round(base_bytes / size, 3),
        "peak_memory_mb": 38.0 + rng.random() * 10,
        "load_time_ms": 3.0 + rng.random() * 4,
        "labels": labels,
        "confusion_matrix": cm,
    }
    gates = spec["gates"]
    verdicts = [
        ("min_accuracy", gates["min_accuracy"], acc, acc >= gates["min_accuracy"]),
        (
            "max_accuracy_drop",
            gates["max_accuracy_drop"],
            round(base_acc - acc, 4),
            base_acc - acc <= gates["max_accuracy_drop"],
        ),
        (
            "max_latency_p95_ms",
            gates["max_latency_p95_ms"],
            p50 * spread[2],
            p50 * spread[2] <= gates["max_latency_p95_ms"],
        ),
    ]
    result["gates"] = [
        {
            "gate": g,
            "limit": lim,
            "value": val,
            "passed": ok,
            "message": f"{g}: {val:.4g} {'within' if ok else 'outside'} limit {lim:g}",
        }
        for g, lim, val, ok in verdicts
    ]
    passed = all(v["passed"] for v in result["gates"])
    if status == "gates-failed" and passed:
        # Make the failure real: the latency gate is what dynamic int8 CNNs miss.
        g = result["gates"][2]
        g["limit"] = round(g["value"] / 2, 6)
        g["passed"] = False
        g["message"] = f"max_latency_p95_ms: {g['value']:.4g} outside limit {g['limit']:g}"
    result["status"] = "gates-failed" if not all(v["passed"] for v in result["gates"]) else "succeeded"
    return result


def _runs(n: int) -> list[tuple]:
    runs = list(BASE_RUNS[:n])
    i = 0
    while len(runs) < n:
        project = f"sweep-{i // 100:02d}"
        mode = _MODES[i % 4]
        runs.append(
            (
                project,
                "sweep",
                f"model-{i % 100:03d}-{mode}",
                mode,
                (0.5 if i % 7 == 0 else None),
                "host" if i % 3 else "rpi4",
                "succeeded",
            )
        )
        i += 1
    return runs


def generate_results(n: int = len(BASE_RUNS), *, version: int = 0, seed: int = 7) -> list[dict[str, Any]]:
    """``n`` valid result dicts; ``version`` shifts times and numbers as a later commit would."""
    out = []
    for k, run in enumerate(_runs(n)):
        rng = random.Random(f"{seed}-{k}-{version}")
        out.append(_result(*run, rng=rng, version=version))
    return out


def _git(root: Path, *args: str, date: str | None = None) -> str:
    env = dict(
        os.environ,
        GIT_AUTHOR_NAME="tinymlaas-bot",
        GIT_AUTHOR_EMAIL="bot@example.com",
        GIT_COMMITTER_NAME="tinymlaas-bot",
        GIT_COMMITTER_EMAIL="bot@example.com",
    )
    if date:
        env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = date
    return subprocess.run(["git", *args], cwd=root, env=env, check=True, capture_output=True, text=True).stdout.strip()


def write_repo(
    root: Path, n: int = len(BASE_RUNS), *, commits: int = 3, git: bool = True, invalid: bool = True
) -> list[dict[str, Any]]:
    """Write ``n`` results under ``root/runs`` (``commits`` versions when ``git``); return the last.

    With ``invalid`` one unreadable result file is added, which the site build must report and skip.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if git:
        _git(root, "init", "-q", "-b", "main")
    results: list[dict[str, Any]] = []
    for version in range(commits if git else 1):
        results = generate_results(n, version=version)
        sha = _git(root, "rev-parse", "HEAD") if git and version else None
        for res in results:
            res["run"]["spec_commit"] = sha
            path = root / "runs" / res["run"]["project"] / "results" / f"{res['run']['name']}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(res, sort_keys=True, indent=2) + "\n")
        if git:
            _git(root, "add", "runs")
            _git(root, "commit", "-q", "-m", f"results v{version}", date=f"2025-03-{1 + version * 3:02d}T12:00:00Z")
    if invalid:
        bad = root / INVALID_FILE
        bad.parent.mkdir(parents=True, exist_ok=True)
        bad.write_text('{"schema": 1, "run": {"project": "vww"}, "status": "maybe"}\n')
    return results
