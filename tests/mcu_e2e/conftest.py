"""One real ``tinymlaas run`` of the digits CNN with ``runtime: c``, shared by the tests here.

A copy of the example repository in a temp dir gets a project of runs, all executed in one
``tinymlaas run --keep-going`` with the local executor (mcu install and infer run on the
runner whatever the executor): the Cortex-M4F and Cortex-M55 boards under QEMU, the host build,
a Cortex-M4F device whose flash budget is too small, a model with an operator the C generator
does not support, and those last two again with ``runtime: auto``. Missing tools skip the tests
on a laptop and fail them under ``CI=true``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docker_support import unavailable
from tests.mcu.qemu_serial_board import stop as stop_qemu

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "mcu"
BOARD_RUNS = {"cnn-m4": "mps2-an386", "cnn-m55": "mps3-an547"}
_APT = "apt-get install --no-install-recommends gcc gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm"

SPEC = """\
schema: 1
name: cnn-{suffix}
model: {{upload: uploads/digits-cnn/model.pkl, format: pytorch, input_shape: [1, 8, 8]}}
dataset: {{upload: uploads/digits/dataset.zip, split: test}}
compression: {{quantization: static-int8, calibration_samples: 128}}
runtime: c
device: {device}
measure: {{warmup: 5, min_iterations: 50, min_seconds: 0.1}}
"""

BAD_OP_SPEC = """\
schema: 1
name: sigmoid
model: {upload: uploads/sigmoid/model.onnx, format: onnx}
dataset: {upload: uploads/digits/dataset.zip, split: test}
compression: {quantization: static-int8, calibration_samples: 32}
runtime: c
device: host
"""


def _tools() -> None:
    for tool in ("arm-none-eabi-gcc", "qemu-system-arm"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} is not installed ({_APT})")
    if not any(shutil.which(cc) for cc in ("cc", "gcc", "clang")):
        unavailable("no host C compiler (apt-get install gcc)")


def _sigmoid_model(path: Path) -> None:
    """An ONNX model on the digits' 1x8x8 inputs ending in Sigmoid, which the generator lacks."""
    import torch
    from torch import nn

    from tinymlaas_ci.ml import formats

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.Sigmoid())
    formats.export_onnx(model.eval(), path, (1, 8, 8))


def _serial_board(root: Path) -> None:
    """A device on the serial transport: the flash command boots the image in QEMU with its UART
    on a pty linked at the device file's port, as a real board on /dev/ttyACM0 would be reached."""
    try:
        import serial  # noqa: F401
    except ModuleNotFoundError:
        unavailable("pyserial is not installed (pip install pyserial, or the mcu extra)")
    flash = [sys.executable, str(ROOT / "tests/mcu/qemu_serial_board.py"), "--board", "mps2-an386"]
    flash += ["--port", str(root / "board-tty"), "--pidfile", str(root / "board.pid"), "{elf}"]
    device = {
        "schema": 1,
        "kind": "mcu",
        "board": "mps2-an386",
        "description": "A Cortex-M4F board on a serial port (QEMU on a pty, flashed by a command).",
        "transport": "serial",
        "serial": {"port": str(root / "board-tty"), "baudrate": 115200, "flash_command": flash},
    }
    (root / "devices" / "serial-m4.yaml").write_text(json.dumps(device, indent=2))


@pytest.fixture(scope="session")
def mcu_repo(tmp_path_factory, request):
    """(repo root, work dir, CLI process, outcomes by run) after the one run of every spec."""
    _tools()
    root = tmp_path_factory.mktemp("mcu-repo")
    for name in ("pipelines", "uploads"):
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("results"))
    (root / "devices").mkdir()
    for name in ("host", *BOARD_RUNS.values()):
        shutil.copy2(ROOT / "devices" / f"{name}.yaml", root / "devices" / f"{name}.yaml")
    (root / "devices" / "tiny-m4.yaml").write_text(
        "schema: 1\nkind: mcu\nboard: mps2-an386\nflash_kb: 32\nram_kb: 64\n"
        "description: A Cortex-M4F part with 32 KiB of flash, too little for the digits CNN.\n"
    )
    _serial_board(root)
    runs = root / "runs" / PROJECT
    runs.mkdir(parents=True)
    runs_and_devices = (*((k[4:], v) for k, v in BOARD_RUNS.items()), ("host", "host"), ("tiny", "tiny-m4"))
    for suffix, device in (*runs_and_devices, ("serial", "serial-m4")):
        (runs / f"cnn-{suffix}.yaml").write_text(SPEC.format(suffix=suffix, device=device))
    (root / "uploads" / "sigmoid").mkdir()
    _sigmoid_model(root / "uploads" / "sigmoid" / "model.onnx")
    (runs / "sigmoid.yaml").write_text(BAD_OP_SPEC)
    # runtime auto: generated C on a microcontroller (this one fails at install, over budget, before
    # the board runs anything); ONNX Runtime for a model the C generator cannot take.
    auto = SPEC.format(suffix="tiny-auto", device="tiny-m4").replace("runtime: c", "runtime: auto")
    (runs / "cnn-tiny-auto.yaml").write_text(auto)
    (runs / "sigmoid-auto.yaml").write_text(
        BAD_OP_SPEC.replace("name: sigmoid", "name: sigmoid-auto").replace("runtime: c", "runtime: auto")
    )
    work = root / ".work"
    request.addfinalizer(lambda: stop_qemu(root / "board.pid"))
    proc = subprocess.run(
        [sys.executable, "-m", "tinymlaas_ci", "-C", str(root), "run", "--work-dir", str(work), "--keep-going"]
        + ["--json", str(root / "outcomes.json")],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    summary = root / "outcomes.json"
    assert summary.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    outcomes = {o["run"].split("/", 1)[1]: o for o in json.loads(summary.read_text())["outcomes"]}
    return root, work, proc, outcomes


def result_of(root: Path, run: str) -> dict:
    """The committed result of a run of the project."""
    return json.loads((root / "runs" / PROJECT / "results" / f"{run}.json").read_text())


def stage_error(work: Path, run: str, stage: str) -> dict:
    """The ``error.json`` a failed stage wrote."""
    return json.loads((work / PROJECT / run / stage / "error.json").read_text())
