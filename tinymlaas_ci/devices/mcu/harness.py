"""The host harness: build firmware for a board, stream a test split through it, collect numbers.

What the ``mcu`` device kind's stages call:

* install: :func:`build_firmware` (re-exported from :mod:`.build`) — compile and link within
  the device's ``flash_kb``/``ram_kb``; fails with "needs X KiB of flash, the board has Y".
* infer: :func:`run_on_board` — start the board (``transport="qemu"``, or ``"serial"`` with the
  device file's port and flash command), check it runs the model that was built, send every
  sample, and return a :class:`BoardRun` with the outputs, predictions, exact instruction
  counts per inference (QEMU), cycles (real boards), the stack high-water, and
  :meth:`BoardRun.metrics` for the stage's ``outputs.json``.

``latency_ms_estimate`` is instructions divided by the clock: an estimate, because QEMU has no
timing model (one instruction is not one cycle on a real core, and memory has no wait states).
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tinymlaas_ci.devices.mcu.boards import get_board
from tinymlaas_ci.devices.mcu.build import FirmwareInfo, build_firmware, toolchain_version
from tinymlaas_ci.devices.mcu.protocol import BoardInfo
from tinymlaas_ci.devices.mcu.transport import BoardConnection, QemuBoard, SerialBoard, qemu_version
from tinymlaas_ci.errors import DeviceError

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "BoardRun",
    "FirmwareInfo",
    "build_firmware",
    "connect",
    "dequantize_outputs",
    "qemu_version",
    "quantize_inputs",
    "run_on_board",
    "summary",
    "toolchain_version",
]


def quantize_inputs(x: np.ndarray, firmware: FirmwareInfo) -> np.ndarray:
    """float samples [n, ...] → int8 [n, input_size] with the model's input scale and zero point.

    Rounds half to even and saturates, as ONNX ``QuantizeLinear`` does, so the board sees the
    same int8 input ONNX Runtime would.
    """
    import numpy as np

    flat = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    if flat.shape[1] != firmware.input_size:
        raise DeviceError(
            f"a sample has {flat.shape[1]} values, the model takes {firmware.input_size}",
            hint="check the dataset matches the model's input shape",
        )
    q = np.rint(flat / np.float32(firmware.input_scale)) + firmware.input_zero_point
    return np.clip(q, -128, 127).astype(np.int8)


def dequantize_outputs(q: np.ndarray, firmware: FirmwareInfo) -> np.ndarray:
    """int8 outputs → float, with the model's output scale and zero point."""
    import numpy as np

    return (q.astype(np.float32) - firmware.output_zero_point) * np.float32(firmware.output_scale)


def summary(values: list[int] | list[float]) -> dict[str, float] | None:
    """median/min/max/n of a list (None when empty)."""
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


@dataclass
class BoardRun:
    """Everything one pass of the test split through a board measured."""

    board: str
    transport: dict[str, Any]
    firmware: FirmwareInfo
    board_info: BoardInfo
    outputs: np.ndarray
    """int8 [n, output_size], as the board returned them."""
    instructions: list[int] = field(default_factory=list)
    """Exact instructions between the markers, per inference (QEMU with the plugin).

    They include the call of ``tinyml_model_run`` and the begin marker: 12 instructions for a
    model that returns at once, on every preset."""
    cycles: list[int] = field(default_factory=list)
    """Cycles per inference on a board without exact instruction counts (a real board): the DWT
    cycle counter, or SysTick where the core has no DWT counter (0s left out: too long to tell)."""
    clock_mhz: float = 0.0
    stack_before_inference_bytes: int = 0
    """Stack high-water of the firmware alone (boot and protocol), before the first inference."""

    @property
    def predictions(self) -> list[int]:
        """Arg-max class per sample (the first maximum, as numpy's argmax)."""
        return [int(i) for i in self.outputs.argmax(axis=1)] if len(self.outputs) else []

    @property
    def stack_high_water_bytes(self) -> int:
        return self.board_info.stack_high_water

    @property
    def ram_bytes(self) -> int:
        """Static RAM (arena, buffers, variables) plus the measured stack high-water."""
        return self.firmware.ram_bytes + self.stack_high_water_bytes

    def latency_ms_estimate(self) -> dict[str, float] | None:
        """Instructions / clock (median/min/max, ms): an estimate, QEMU has no timing model."""
        if not self.instructions or self.clock_mhz <= 0:
            return None
        stats = summary(self.instructions)
        return {k: (v / (self.clock_mhz * 1000.0) if k != "n" else v) for k, v in stats.items()}

    def latency_ms_measured(self) -> dict[str, float] | None:
        """Cycles / clock on a real board (median/min/max, ms)."""
        if not self.cycles or self.clock_mhz <= 0:
            return None
        stats = summary(self.cycles)
        return {k: (v / (self.clock_mhz * 1000.0) if k != "n" else v) for k, v in stats.items()}

    def metrics(self) -> dict[str, Any]:
        """The numbers the infer stage records, under the names of the result's ``metrics``."""
        fw = self.firmware
        ipi = summary(self.instructions)
        out = {
            "flash_bytes": {"model": fw.model_flash_bytes, "firmware": fw.flash_bytes, "budget": fw.flash_budget_bytes},
            "weights_bytes": fw.weights_bytes,
            "arena_bytes": fw.arena_bytes,
            "ram_bytes": {
                "total": self.ram_bytes,
                "static": fw.ram_bytes,
                "stack_high_water": self.stack_high_water_bytes,
                "stack_before_inference": self.stack_before_inference_bytes,
                "stack_reserved": fw.stack_bytes,
                "budget": fw.ram_budget_bytes,
            },
            "macs": fw.macs,
            "instructions_per_inference": ipi,
            "instructions_per_mac": (ipi["median"] / fw.macs) if ipi and fw.macs else None,
            "latency_ms_estimate": self.latency_ms_estimate(),
            "clock_mhz": self.clock_mhz,
            "samples": len(self.outputs),
        }
        measured = self.latency_ms_measured()
        if measured is not None:
            out["latency_ms"] = measured
            out["cycles_per_inference"] = summary(self.cycles)
        return out


def connect(
    firmware: FirmwareInfo,
    transport: str = "qemu",
    *,
    count_instructions: bool = True,
    serial: dict[str, Any] | None = None,
    timeout: float = 60.0,
    work_dir: str | os.PathLike | None = None,
    device: str | None = None,
) -> BoardConnection:
    """A (not yet opened) connection to the board the firmware was built for.

    ``serial`` is the device file's serial settings: ``port`` (required), ``baudrate`` and
    ``flash_command``. ``work_dir`` receives QEMU's log, the instruction counts and the
    plugin (default: the firmware's folder).
    """
    if transport == "qemu":
        return QemuBoard(
            firmware, count_instructions=count_instructions, timeout=timeout, work_dir=work_dir, device=device
        )
    if transport == "serial":
        settings = dict(serial or {})
        if not settings.get("port"):
            raise DeviceError("a serial board needs 'serial: {port: ...}' in its device file", device=device)
        return SerialBoard(
            firmware,
            port=str(settings["port"]),
            baudrate=int(settings.get("baudrate") or 115200),
            flash_command=settings.get("flash_command"),
            timeout=timeout,
            device=device,
        )
    raise DeviceError(f"unknown transport {transport!r}", device=device, hint="use 'qemu' or 'serial'")


def _check_same_model(info: BoardInfo, firmware: FirmwareInfo, label: str) -> None:
    pairs = {
        "input_size": (info.input_size, firmware.input_size),
        "output_size": (info.output_size, firmware.output_size),
        "arena_bytes": (info.arena_bytes, firmware.arena_bytes),
        "macs": (info.macs, firmware.macs),
        "weights_bytes": (info.weights_bytes, firmware.weights_bytes),
    }
    wrong = {k: v for k, v in pairs.items() if v[0] != v[1]}
    if wrong:
        detail = ", ".join(f"{k}: board {a}, image {b}" for k, (a, b) in wrong.items())
        raise DeviceError(
            f"{label} runs a different model than the one built ({detail})",
            hint="the flash command did not flash this image; check it and the board",
        )


def _sample_bytes(samples: np.ndarray | Iterable[bytes], firmware: FirmwareInfo, device: str | None) -> list[bytes]:
    out = []
    for sample in samples:
        data = sample.tobytes() if hasattr(sample, "tobytes") else bytes(sample)
        if len(data) != firmware.input_size:
            raise DeviceError(f"a sample has {len(data)} bytes, the model takes {firmware.input_size}", device=device)
        out.append(data)
    return out


@dataclass
class _Pass:
    outputs: list[bytes] = field(default_factory=list)
    instructions: list[int] = field(default_factory=list)
    cycles: list[int] = field(default_factory=list)
    info: BoardInfo | None = None
    stack_before: int = 0
    described: dict[str, Any] = field(default_factory=dict)


def _run_pass(
    conn: BoardConnection, firmware: FirmwareInfo, items: list[bytes], stored: bool, marked: bool, acc: _Pass
):
    owns = not conn.is_open  # a connection the caller opened stays open for its next use
    if owns:
        conn.open()
    try:
        session = conn.session
        before = session.info()
        _check_same_model(before, firmware, conn.label)
        acc.stack_before = max(acc.stack_before, before.stack_high_water)
        for index, data in enumerate(items):
            if stored:
                out, cycles = session.infer_stored(index * firmware.input_size, marked=marked)
            else:
                out, cycles = session.infer(data, marked=marked)
            acc.outputs.append(out)
            if marked:
                count = conn.last_instruction_count()
                if count is not None:
                    acc.instructions.append(count)
                elif cycles:
                    # Only without exact counts: an emulated board's cycle counter follows the host.
                    acc.cycles.append(cycles)
        info = session.info()
        if acc.info is None or info.stack_high_water > acc.info.stack_high_water:
            acc.info = info
        acc.described = conn.describe()
    finally:
        if owns:
            conn.close()


def run_on_board(
    firmware: FirmwareInfo,
    samples: np.ndarray | Iterable[bytes],
    *,
    transport: str | BoardConnection = "qemu",
    count_instructions: bool = True,
    clock_mhz: float | None = None,
    serial: dict[str, Any] | None = None,
    timeout: float = 60.0,
    work_dir: str | os.PathLike | None = None,
    preload: bool = True,
    samples_per_start: int | None = None,
    device: str | None = None,
) -> BoardRun:
    """Send every int8 sample through the board and return what it computed and measured.

    ``samples`` is int8 [n, input_size] (see :func:`quantize_inputs`) or an iterable of byte
    strings. ``clock_mhz`` (default: the board preset's) turns instruction counts into the
    latency estimate. With ``count_instructions`` every inference is a marked one. QEMU's files
    go to ``work_dir`` (default: the firmware's folder; a stage passes its own folder).

    With ``transport="qemu"`` and ``preload`` the samples are preloaded into the emulated
    board's sample memory (16 MiB per QEMU start; more samples take several starts) and the
    board is told which one to run, because QEMU's UART is slow; the samples take the UART with
    ``preload=False`` and always on a real board. ``samples_per_start`` caps the samples per
    QEMU start (default: as many as the sample memory holds). ``transport`` may also be a
    :class:`BoardConnection`; one that is not open yet is opened and closed here.
    """
    import numpy as np

    items = _sample_bytes(samples, firmware, device)
    clock = float(clock_mhz) if clock_mhz else get_board(firmware.board).clock_mhz
    region = get_board(firmware.board).samples
    acc = _Pass()
    if transport == "qemu" and preload and region is not None and items:
        per_start = region.size // firmware.input_size
        if samples_per_start:
            per_start = min(per_start, int(samples_per_start))
        for first in range(0, len(items), per_start):
            chunk = items[first : first + per_start]
            conn = QemuBoard(
                firmware,
                count_instructions=count_instructions,
                timeout=timeout,
                work_dir=work_dir,
                samples=b"".join(chunk),
                device=device,
            )
            _run_pass(conn, firmware, chunk, True, count_instructions, acc)
    else:
        conn = (
            transport
            if isinstance(transport, BoardConnection)
            else connect(
                firmware,
                transport,
                count_instructions=count_instructions,
                serial=serial,
                timeout=timeout,
                work_dir=work_dir,
                device=device,
            )
        )
        _run_pass(conn, firmware, items, False, count_instructions, acc)
    info = acc.info
    if info.stack_high_water >= info.stack_bytes:
        raise DeviceError(
            f"the firmware used all {info.stack_bytes} bytes of its stack (a stack overflow); its results "
            "cannot be trusted",
            device=device,
            hint="build the firmware with a larger stack_bytes",
        )
    array = np.frombuffer(b"".join(acc.outputs), dtype=np.int8).reshape(len(acc.outputs), firmware.output_size)
    return BoardRun(
        board=firmware.board,
        transport=acc.described,
        firmware=firmware,
        board_info=info,
        outputs=array.copy(),
        instructions=acc.instructions,
        cycles=acc.cycles,
        clock_mhz=clock,
        stack_before_inference_bytes=acc.stack_before,
    )
