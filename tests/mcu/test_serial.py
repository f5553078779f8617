"""The serial transport, through pyserial, against the firmware on a pseudo-terminal.

QEMU's ``-serial pty`` gives the emulated board a real tty, which stands in for a USB serial
adapter: the harness opens it with pyserial exactly as it would ``/dev/ttyACM0``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.mcu.conftest import unavailable
from tinymlaas_ci.devices.mcu import get_board, run_on_board
from tinymlaas_ci.devices.mcu.transport import SerialBoard
from tinymlaas_ci.errors import DeviceError


@pytest.fixture
def pyserial():
    try:
        import serial  # noqa: F401
    except ModuleNotFoundError:
        unavailable("pyserial is not installed (pip install pyserial)")


@pytest.fixture
def board_on_a_pty(qemu_arm, firmware_for):
    """The an386 firmware running in QEMU with its UART on a pty; yields (firmware, tty path)."""
    fw = firmware_for("mps2-an386")
    proc = subprocess.Popen(
        [
            qemu_arm,
            "-M",
            get_board(fw.board).name,
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "pty",
            "-kernel",
            fw.elf,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        found = re.search(r"char device redirected to (/dev/pts/\d+)", line)
        assert found, f"QEMU did not report its pty: {line!r}"
        yield fw, found.group(1)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_board_on_a_serial_port_runs_the_split(pyserial, board_on_a_pty, mlp, samples, tmp_path):
    fw, tty = board_on_a_pty
    flashed = tmp_path / "flashed"
    flash = [sys.executable, "-c", "import sys; open(sys.argv[1], 'w').write(sys.argv[2])", str(flashed), "{elf}"]
    board = SerialBoard(fw, port=tty, flash_command=flash, boot_timeout=1.5)
    run = run_on_board(fw, samples[:12], transport=board)
    assert flashed.read_text() == fw.elf
    np.testing.assert_array_equal(run.outputs, mlp.reference(samples[:12]))
    # No instruction counter on a serial board. QEMU has no DWT cycle counter, so the firmware
    # falls back to SysTick (which QEMU runs on the host's clock): one count per inference.
    assert run.instructions == [] and len(run.cycles) == 12 and min(run.cycles) > 0
    assert run.transport == {"transport": "serial", "label": f"serial {tty}", "baudrate": 115200}


def test_a_failing_flash_command_names_its_exit_code(pyserial, firmware_for, arm_toolchain):
    fw = firmware_for("mps2-an386")
    board = SerialBoard(fw, port="/dev/null", flash_command=[sys.executable, "-c", "raise SystemExit(3)"])
    started = time.monotonic()
    with pytest.raises(DeviceError, match="the flash command failed with exit code 3"):
        board.open()
    assert time.monotonic() - started < 30


def test_flash_command_placeholders(firmware_for, arm_toolchain):
    fw = firmware_for("mps3-an547")
    board = SerialBoard(fw, port="/dev/ttyACM0", flash_command="pyocd flash -t corstone300 {hex} --base {bin}")
    assert board.flash_argv() == ["pyocd", "flash", "-t", "corstone300", fw.hex, "--base", fw.bin]


def test_the_serial_settings_of_a_device_file_reach_the_board(pyserial, board_on_a_pty, mlp, samples):
    fw, tty = board_on_a_pty
    run = run_on_board(fw, samples[:3], transport="serial", serial={"port": tty, "baudrate": 115200}, timeout=10)
    np.testing.assert_array_equal(run.outputs, mlp.reference(samples[:3]))
    assert run.metrics()["instructions_per_inference"] is None


def test_a_serial_device_without_a_port_is_refused(firmware_for, arm_toolchain):
    with pytest.raises(DeviceError, match="needs 'serial: {port: ...}'"):
        run_on_board(firmware_for("mps2-an386"), [], transport="serial", serial={"baudrate": 9600})
