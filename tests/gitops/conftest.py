"""Fixtures for the gitops tests: real git repositories in temporary folders and realistic
result files.

``make_result`` writes results the way ``tinymlaas run`` does (a full :class:`Result`, sorted
keys, atomic write); ``bare_remote`` is a real bare repository that clones push to.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tinymlaas_ci.results.io import write_result
from tinymlaas_ci.results.models import Result

SPEC = {
    "schema": 1,
    "name": None,
    "description": "Static int8 PTQ of the digits CNN",
    "model": {
        "upload": "uploads/digits-cnn/model.pkl",
        "huggingface": None,
        "revision": "main",
        "file": None,
        "format": "pytorch",
        "input_shape": [1, 8, 8],
    },
    "dataset": {
        "upload": "uploads/digits/dataset.zip",
        "huggingface": None,
        "revision": "main",
        "split": "test",
        "format": "auto",
        "image_column": "image",
        "label_column": "label",
    },
    "compression": {"quantization": "static-int8", "calibration_samples": 256, "per_channel": False, "pruning": None},
    "device": "host",
    "runtime": "onnxruntime",
    "pipeline": "default",
    "measure": {"warmup": 20, "min_iterations": 200, "min_seconds": 0.5, "batch_size": 1, "threads": 1},
    "gates": {
        "min_accuracy": 0.95,
        "max_accuracy_drop": 0.01,
        "max_latency_p50_ms": None,
        "max_latency_p95_ms": 0.05,
        "max_latency_p99_ms": None,
        "max_model_bytes": 64000,
        "max_peak_memory_mb": None,
    },
    "resources": {"memory_mb": None, "cpus": None},
    "notify": [],
}


def git(cwd: Path, *args: str) -> str:
    """Run git in ``cwd`` for test set-up; fail the test with git's stderr."""
    proc = subprocess.run(["git", "-C", str(cwd), *args], check=False, capture_output=True, text=True)
    assert proc.returncode == 0, f"git {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def identity(repo: Path, name: str = "Runner") -> None:
    git(repo, "config", "user.name", name)
    git(repo, "config", "user.email", f"{name.lower()}@example.com")


def result_dict(
    project: str = "digits",
    name: str = "cnn-static-int8",
    *,
    accuracy: float = 0.975,
    p50: float = 0.019,
    size: int = 49_800,
    peak: float = 41.5,
    baseline_accuracy: float = 0.975,
    created_at: str = "2025-03-04T10:00:00Z",
    status: str | None = None,
    spec: dict[str, Any] | None = None,
    spec_hash: str = "0" * 64,
) -> dict[str, Any]:
    """A complete result as the engine writes it: metrics, gates judged against ``spec``."""
    spec = copy.deepcopy(spec or SPEC)
    spec["name"] = spec.get("name")
    p95 = p50 * 1.12
    drop = round(baseline_accuracy - accuracy, 4)
    g = spec["gates"]
    gates = []
    for gate, limit, value, ok in (
        ("min_accuracy", g.get("min_accuracy"), accuracy, lambda v, lim: v >= lim),
        ("max_accuracy_drop", g.get("max_accuracy_drop"), drop, lambda v, lim: v <= lim),
        ("max_latency_p95_ms", g.get("max_latency_p95_ms"), p95, lambda v, lim: v <= lim),
        ("max_model_bytes", g.get("max_model_bytes"), size, lambda v, lim: v <= lim),
    ):
        if limit is None:
            continue
        passed = bool(ok(value, limit))
        gates.append(
            {
                "gate": gate,
                "limit": limit,
                "value": value,
                "passed": passed,
                "message": f"{gate}: measured {value:.4g} {'meets' if passed else 'fails'} the limit {limit:.4g}",
            }
        )
    if status is None:
        status = "succeeded" if all(x["passed"] for x in gates) else "gates-failed"
    data = {
        "schema": 1,
        "run": {
            "project": project,
            "name": name,
            "spec_file": f"runs/{project}/cnn.yaml",
            "spec_hash": spec_hash,
            "spec_commit": None,
            "pipeline": "default",
            "matrix": {"compression.quantization": "static-int8"},
            "actions_run_url": "https://github.com/example/models/actions/runs/9001",
        },
        "status": status,
        "created_at": created_at,
        "spec": spec,
        "inputs": {
            "model": {
                "kind": "upload",
                "path": "uploads/digits-cnn/model.pkl",
                "sha256": "a" * 64,
                "bytes": 155_000,
                "format": "pytorch",
                "parameters": 38_000,
            },
            "dataset": {
                "kind": "upload",
                "path": "uploads/digits/dataset.zip",
                "sha256": "b" * 64,
                "format": "imagefolder",
                "splits": {"train": 1257, "val": 180, "test": 360},
                "labels": [str(i) for i in range(10)],
                "eval_split": "test",
            },
        },
        "compression": {
            "quantization": "static-int8",
            "per_channel": False,
            "calibration_samples": 256,
            "ops_quantized": {"Conv": 2, "Gemm": 1},
            "baseline_bytes": 153_000,
            "compressed_bytes": size,
        },
        "device": {
            "name": "host",
            "kind": "local",
            "arch": "amd64",
            "cpu_model": "AMD EPYC 7B13",
            "isa_flags": ["avx2", "fma"],
            "cpu_count": 2,
            "memory_mb": 24576,
            "os": "Linux 6.1",
        },
        "runtime": {"name": "onnxruntime", "version": "1.20.1", "threads": 1, "providers": ["CPUExecutionProvider"]},
        "metrics": {
            "accuracy": accuracy,
            "top5_accuracy": 0.999,
            "baseline_accuracy": baseline_accuracy,
            "accuracy_drop": drop,
            "samples": 360,
            "latency_ms": {
                "p50": p50,
                "p90": p50 * 1.08,
                "p95": p95,
                "p99": p50 * 1.25,
                "mean": p50 * 1.04,
                "std": p50 * 0.07,
                "min": p50 * 0.93,
                "max": p50 * 2.4,
                "iterations": 26000,
                "seconds": 0.51,
                "warmup": 20,
            },
            "batch_size": 1,
            "throughput_per_s": round(1000.0 / (p50 * 1.04), 1),
            "model_size_bytes": size,
            "model_gzip_bytes": int(size * 0.9),
            "baseline_model_bytes": 153_000,
            "compression_ratio": round(153_000 / size, 3),
            "peak_memory_mb": peak,
            "load_time_ms": 4.2,
            "labels": [str(i) for i in range(10)],
            "confusion_matrix": [],
        },
        "gates": gates,
        "stages": [
            {"name": s, "status": "generated", "duration_s": d, "cache_hit": False, "executor": "local"}
            for s, d in (("fetch", 0.8), ("compile", 6.4), ("install", 0.3), ("infer", 2.0))
        ],
        "error": None,
        "tools": {"tinymlaas_ci": "0.1.0", "python": "3.11.7", "onnxruntime": "1.20.1"},
    }
    Result.model_validate(data)  # the fixture itself must be a valid result
    return data


def write_result_file(root: Path, data: dict[str, Any]) -> str:
    """Write ``data`` where the engine would, and return the path relative to ``root``."""
    rel = f"runs/{data['run']['project']}/results/{data['run']['name']}.json"
    write_result(root / rel, Result.model_validate(data))
    return rel


@pytest.fixture
def bare_remote(tmp_path: Path) -> Path:
    """A bare repository with branch ``main`` holding one commit (a spec file)."""
    bare = tmp_path / "remote.git"
    git(tmp_path, "init", "--quiet", "--bare", "--initial-branch=main", str(bare))
    seed = tmp_path / "seed"
    git(tmp_path, "clone", "--quiet", str(bare), str(seed))
    identity(seed, "Seed")
    (seed / "runs" / "digits").mkdir(parents=True)
    (seed / "runs" / "digits" / "cnn.yaml").write_text("schema: 1\n")
    git(seed, "add", "-A")
    git(seed, "commit", "--quiet", "-m", "seed")
    git(seed, "push", "--quiet", "origin", "HEAD:main")
    return bare


@pytest.fixture
def make_clone(tmp_path: Path, bare_remote: Path):
    """Clone the bare remote into a fresh folder: ``make_clone("a")``."""

    def clone(name: str) -> Path:
        path = tmp_path / name
        git(tmp_path, "clone", "--quiet", "--branch", "main", str(bare_remote), str(path))
        identity(path, name.capitalize())
        return path

    return clone


def tinymlaas(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start the real command line as a subprocess."""
    return subprocess.Popen(
        [sys.executable, "-m", "tinymlaas_ci", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
