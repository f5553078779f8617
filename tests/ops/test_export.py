"""``tinymlaas export``: the exported bundle runs without tinymlaas-ci and reproduces the
recorded accuracy, with plain Python and as a Docker image."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docker_support import base_image, docker_client, docker_engine  # noqa: F401 (fixtures)
from tests.ops.conftest import cli

EXPECTED = [
    "Dockerfile",
    "README.md",
    "baseline.onnx",
    "certs/README.txt",
    "eval.npz",
    "export.json",
    "infer.py",
    "manifest.json",
    "model.onnx",
    "requirements.txt",
]


GUARDED_RUN = """
import builtins, runpy, sys
real = builtins.__import__
def guard(name, *args, **kwargs):
    assert not name.startswith("tinymlaas_ci"), f"the runner imported {name}"
    return real(name, *args, **kwargs)
builtins.__import__ = guard
sys.argv = ["infer.py", "--seconds", "0.05"]
runpy.run_path("infer.py", run_name="__main__")
"""
"""Run infer.py so that any import of tinymlaas_ci fails."""


def python_i(cwd: Path, *argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -I ARGV`` in ``cwd``: isolated mode, no user site, no cwd on sys.path."""
    return subprocess.run(
        [sys.executable, "-I", *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def recorded(repo: Path) -> dict:
    return json.loads((repo / "runs" / "digits" / "results" / "int8.json").read_text())


@pytest.fixture(scope="module")
def exported(digits_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out") / "int8-export"
    proc = cli("export", "digits/int8", "--out", str(out), cwd=digits_run)
    assert proc.returncode == 0, proc.stderr
    assert "recorded accuracy" in proc.stdout
    return out


def test_export_writes_a_self_contained_bundle(digits_run, exported):
    assert sorted(p.relative_to(exported).as_posix() for p in exported.rglob("*") if p.is_file()) == EXPECTED
    result = recorded(digits_run)
    pins = (exported / "requirements.txt").read_text().splitlines()
    assert f"onnxruntime=={result['runtime']['version']}" in pins
    assert f"numpy=={result['tools']['numpy']}" in pins
    assert "ARG BASE=python:3.11-slim" in (exported / "Dockerfile").read_text()
    readme = (exported / "README.md").read_text()
    assert "docker build" in readme and "pip install -r requirements.txt" in readme
    assert f"{result['metrics']['accuracy']:.4f}" in readme
    assert "tinymlaas_ci" not in (exported / "infer.py").read_text()


def test_standalone_runner_reproduces_the_recorded_accuracy(digits_run, exported):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = python_i(exported, "-c", GUARDED_RUN, env=env)  # from a folder without tinymlaas_ci
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    metrics = recorded(digits_run)["metrics"]
    assert out["accuracy"] == metrics["accuracy"]
    assert out["samples"] == metrics["samples"] == 360
    assert out["latency_ms"]["p50"] > 0
    # Timed as the pipeline times it: side by side with the baseline, in interleaved rounds.
    assert out["baseline_latency_ms"]["p50"] > 0
    low, high = out["speedup_ci95"]
    assert low <= out["speedup_vs_baseline"] <= high
    assert out["rounds"] == len(out["round_ratios"]) == 7
    assert isinstance(out["unstable"], bool) and (out["unstable_reason"] is None) != out["unstable"]
    assert 0 < out["cpu_share"] <= 1 and out["cpus"] == os.cpu_count()


def test_runner_times_a_model_alone_on_request(exported):
    for args in (["--alone"], ["--model", "baseline"]):
        proc = python_i(exported, "infer.py", "--seconds", "0.05", "--iterations", "20", *args)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert out["latency_ms"]["iterations"] >= 20
        assert "speedup_vs_baseline" not in out and "baseline_latency_ms" not in out, args


def test_runner_measures_speed_with_the_pipelines_arithmetic():
    # The bundle cannot import tinymlaas_ci, so it carries its own copy of the comparison; the
    # same rounds must give the same interval, and the same spin-wait models the same verdicts.
    import importlib.util
    import time

    from tinymlaas_ci.ml import measure

    spec = importlib.util.spec_from_file_location("exported_infer", Path(infer_py()))
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    base, dep = [10.0, 11.0, 9.5, 10.2, 10.8, 9.9], [5.0, 5.1, 4.9, 5.3, 5.0, 5.2]
    assert runner.bootstrap_ci95(base, dep) == measure.speedup_ci95(base, dep)
    assert runner.PLACEMENT_NOISE == measure.PLACEMENT_NOISE and runner.MIN_CPU_SHARE == measure.MIN_CPU_SHARE
    assert (runner.runnable_processes() is None) == (measure.runnable_processes() is None)

    def spin(us):
        def call():
            end = time.perf_counter_ns() + us * 1000
            while time.perf_counter_ns() < end:
                pass

        return call

    how = {"rounds": 5, "warmup": 0, "min_iterations": 100, "min_seconds": 0, "max_round_spread": 0.5}
    out = runner.side_by_side(spin(100), spin(300), how)
    assert 2.3 < out["speedup_vs_baseline"] < 3.5, out["round_ratios"]
    assert out["rounds"] == 5 and out["latency_ms"]["iterations"] == 100
    assert out["speedup_ci95"][0] <= out["speedup_vs_baseline"] <= out["speedup_ci95"][1]


def infer_py() -> Path:
    return Path(__file__).resolve().parents[2] / "tinymlaas_ci" / "engine" / "export_runtime" / "infer.py"


def test_runner_predicts_user_inputs(exported, tmp_path):
    import numpy as np

    with np.load(exported / "eval.npz") as npz:
        x, y = npz["x"][:5], npz["y"][:5]
    np.save(tmp_path / "one.npy", x[0])
    np.save(tmp_path / "batch.npy", x[1:])
    proc = python_i(exported, "infer.py", "--inputs", str(tmp_path / "one.npy"), str(tmp_path / "batch.npy"))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["samples"] == 5
    assert sum(p == t for p, t in zip(out["predictions"], y.tolist())) >= 4


def test_export_refuses_a_non_empty_folder_and_a_run_without_volume(digits_run, exported):
    proc = cli("export", "digits/int8", "--out", str(exported), cwd=digits_run)
    assert proc.returncode == 2 and "not empty" in proc.stderr
    proc = cli("export", "digits/nothing", "--out", str(exported.parent / "x"), cwd=digits_run)
    assert proc.returncode == 1
    assert "tinymlaas run --select digits/nothing" in proc.stderr
    proc = cli("export", "digits/int8", "--out", str(exported.parent / "y"), "--save", "a.tar", cwd=digits_run)
    assert proc.returncode == 2 and "--save needs --image" in proc.stderr


@pytest.mark.docker
@pytest.mark.slow
def test_exported_image_reproduces_the_recorded_accuracy(
    digits_run,
    exported,
    docker_client,
    base_image,
    tmp_path,
):
    tag = "tinymlaas-export-test:int8"
    tar = tmp_path / "int8.tar"
    proc = cli(
        "export",
        "digits/int8",
        "--out",
        str(tmp_path / "img"),
        "--image",
        tag,
        "--base",
        base_image,
        "--save",
        str(tar),
        cwd=digits_run,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    try:
        logs = docker_client.containers.run(
            tag, ["--seconds", "0.05"], network_mode="none", read_only=True, cap_drop=["ALL"], remove=True, stderr=False
        )
        out = json.loads(logs)
        assert out["accuracy"] == recorded(digits_run)["metrics"]["accuracy"]
        assert out["samples"] == 360
        assert tar.stat().st_size > 10_000_000
        docker_client.images.remove(tag)
        loaded = docker_client.images.load(tar.read_bytes())
        assert tag in loaded[0].tags
    finally:
        import docker

        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(tag, force=True)
