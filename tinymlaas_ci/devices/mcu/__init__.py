"""Cortex-M microcontrollers: board presets, firmware build, and the host harness.

The install stage calls :func:`build_firmware`; the infer stage calls :func:`run_on_board`.
Both live in :mod:`tinymlaas_ci.devices.mcu.harness`; nothing heavy is imported here.
"""

from tinymlaas_ci.devices.mcu.boards import BOARDS, Board, get_board
from tinymlaas_ci.devices.mcu.build import FirmwareInfo, build_firmware
from tinymlaas_ci.devices.mcu.harness import BoardRun, quantize_inputs, run_on_board

__all__ = [
    "BOARDS",
    "Board",
    "BoardRun",
    "FirmwareInfo",
    "build_firmware",
    "get_board",
    "quantize_inputs",
    "run_on_board",
]
