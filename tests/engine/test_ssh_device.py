"""A run on an ``ssh`` device: a real sshd on loopback stands in for the board."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from tests.engine.example_repo import copy_example
from tests.ssh_support import ssh_board  # noqa: F401 (fixture)

RUN = "digits/cnn-static-int8"


def _board(root, endpoint: dict, **over) -> None:
    ssh = {k: endpoint[k] for k in ("host", "port", "user", "identity_file", "known_hosts")}
    ssh.update(python=sys.executable, work_dir=str(root / "board"))
    ssh.update(over)
    (root / "devices/board.yaml").write_text(yaml.safe_dump({"schema": 1, "kind": "ssh", "arch": "amd64", "ssh": ssh}))


def _run(root, device: str | None = None):
    """``tinymlaas run`` of the example's run, on ``device`` when given (else as the spec says)."""
    if device is not None:
        spec = root / "runs/digits/cnn.yaml"
        spec.write_text(spec.read_text().replace("device: host", f"device: {device}"))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tinymlaas_ci",
            "-C",
            str(root),
            "run",
            "--select",
            RUN,
            "--work-dir",
            str(root / ".work"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_run_on_an_ssh_board_matches_the_local_run(tmp_path, ssh_board):
    local = copy_example(tmp_path / "local")
    assert _run(local, "host").returncode == 0
    expected = json.loads((local / "runs/digits/results/cnn-static-int8.json").read_text())

    root = copy_example(tmp_path / "ssh")
    _board(root, ssh_board)
    proc = _run(root, "board")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((root / "runs/digits/results/cnn-static-int8.json").read_text())
    executors = {s["name"]: s["executor"] for s in result["stages"]}
    assert executors == {"fetch": "local", "compile": "local", "install": "local", "infer": "ssh"}
    for key in ("accuracy", "baseline_accuracy", "model_size_bytes", "confusion_matrix"):
        assert result["metrics"][key] == expected["metrics"][key], key
    assert result["device"]["name"] == "board" and result["device"]["kind"] == "ssh"
    # The board kept its copy; the runner's volume got the stage's outputs back.
    board = root / "board/work/digits/cnn-static-int8"
    assert (board / "install/bundle/manifest.json").is_file()
    assert (board / "infer/outputs.json").read_text() == (root / f".work/{RUN}/infer/outputs.json").read_text()
    assert "infer" in (root / f".work/{RUN}/infer/log.txt").read_text()


def test_a_board_without_the_runtime_fails_install_with_the_fix(tmp_path, ssh_board):
    root = copy_example(tmp_path)
    _board(root, ssh_board, python="/usr/bin/python3")  # the system Python: no packages
    proc = _run(root, "board")
    assert proc.returncode == 1
    assert "failed: digits/cnn-static-int8 at stage install" in proc.stderr
    assert "lacks tinymlaas_ci" in proc.stderr and "pip install tinymlaas-ci onnxruntime numpy" in proc.stderr


def test_an_unreachable_board_fails_install_clearly(tmp_path, ssh_board):
    root = copy_example(tmp_path)
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    _board(root, ssh_board, port=closed)
    proc = _run(root, "board")
    assert proc.returncode == 1
    assert "at stage install" in proc.stderr
    assert f"root@127.0.0.1:{closed}" in proc.stderr and "sshd runs" in proc.stderr


def test_device_check_logs_in_and_probes_the_board(tmp_path, ssh_board):
    root = copy_example(tmp_path)
    _board(root, ssh_board)
    check = [sys.executable, "-m", "tinymlaas_ci", "-C", str(root), "device", "check", "board"]
    proc = subprocess.run(check, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"logged in to root@127.0.0.1:{ssh_board['port']}" in proc.stdout
    assert "onnxruntime" in proc.stdout and "are installed" in proc.stdout
    _board(root, ssh_board, python="/usr/bin/python3")
    proc = subprocess.run(check, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "lacks tinymlaas_ci" in proc.stdout and "pip install tinymlaas-ci onnxruntime numpy" in proc.stdout


def test_runtime_c_is_built_and_measured_on_the_ssh_board(tmp_path, ssh_board):
    """``runtime: c`` on an ssh device: the bundle carries the generated C, the board builds it
    with its own compiler at infer and runs it next to ONNX Runtime's int8 model."""
    root = copy_example(tmp_path)
    _board(root, ssh_board)
    spec = yaml.safe_load((root / "runs/digits/cnn.yaml").read_text())
    spec.update(runtime="c", device="board")
    spec["compression"]["quantization"] = "static-int8"
    spec["matrix"] = {"compression.quantization": ["static-int8"]}  # keeps the run's name
    (root / "runs/digits/cnn.yaml").write_text(yaml.safe_dump(spec))
    proc = _run(root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((root / "runs/digits/results/cnn-static-int8.json").read_text())
    executors = {s["name"]: s["executor"] for s in result["stages"]}
    assert executors["infer"] == "ssh" and result["device"]["kind"] == "ssh"
    assert result["runtime"]["name"] == "c"
    m = result["metrics"]
    assert m["latency_source"] == "measured" and m["latency_ms"]["p50"] > 0
    assert m["agreement_with_onnxruntime"] >= 0.99 and m["accuracy"] >= 0.95 and m["samples"] == 360
    # Built on the board, in its copy of the bundle.
    board = root / "board/work/digits/cnn-static-int8"
    assert list((board / "install/bundle").rglob("*.so")), sorted(p.name for p in board.rglob("*"))
