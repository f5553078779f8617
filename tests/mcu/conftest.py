"""Fixtures for the microcontroller tests: the Arm toolchain, QEMU, and built firmware.

A laptop without ``arm-none-eabi-gcc`` or ``qemu-system-arm`` skips these tests with the
reason; under ``CI=true`` (``.ci/run`` installs both) a missing tool is a failure.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from tests.docker_support import in_ci
from tests.mcu.fixture_model import make_mlp


def unavailable(reason: str) -> None:
    """Skip the test (laptop) or fail it (CI) because a tool is missing."""
    if in_ci():
        pytest.fail(f"{reason} (in CI a missing tool is a failure)", pytrace=False)
    pytest.skip(reason)


_APT = "apt-get install --no-install-recommends gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm"


@pytest.fixture(scope="session")
def arm_toolchain() -> str:
    """arm-none-eabi-gcc with newlib; skips (laptop) or fails (CI) when missing."""
    gcc = shutil.which("arm-none-eabi-gcc")
    if gcc is None:
        unavailable(f"arm-none-eabi-gcc is not installed ({_APT})")
    probe = subprocess.run(
        [gcc, "-print-file-name=libc_nano.a", "-mcpu=cortex-m4", "-mthumb"], capture_output=True, text=True
    )
    if "/" not in probe.stdout:
        unavailable(f"newlib for arm-none-eabi is not installed ({_APT})")
    return gcc


@pytest.fixture(scope="session")
def qemu_arm(arm_toolchain) -> str:
    """qemu-system-arm; skips (laptop) or fails (CI) when missing."""
    qemu = shutil.which("qemu-system-arm")
    if qemu is None:
        unavailable(f"qemu-system-arm is not installed ({_APT})")
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        unavailable("no host C compiler for QEMU's instruction-count plugin (apt-get install gcc)")
    return qemu


@pytest.fixture(scope="session")
def mlp():
    """The 64-64-10 int8 MLP fixture."""
    return make_mlp((64, 64, 10), seed=0)


@pytest.fixture(scope="session")
def mlp_dir(mlp, tmp_path_factory):
    return mlp.write(tmp_path_factory.mktemp("mlp-model"))


@pytest.fixture(scope="session")
def samples(mlp) -> np.ndarray:
    """int8 inputs over the whole range, including both extremes."""
    rng = np.random.default_rng(7)
    x = rng.integers(-128, 128, size=(40, mlp.sizes[0])).astype(np.int8)
    x[0, :] = -128
    x[1, :] = 127
    return x


@pytest.fixture(scope="session")
def firmware_for(arm_toolchain, mlp_dir, tmp_path_factory):
    """Builds the fixture's firmware for a board once per session: ``firmware_for("mps2-an386")``."""
    from tinymlaas_ci.devices.mcu import build_firmware

    built = {}

    def build(board: str):
        if board not in built:
            built[board] = build_firmware(mlp_dir, board, out_dir=tmp_path_factory.mktemp(f"fw-{board}"))
        return built[board]

    return build
