"""Connections to a board: QEMU emulating it, or a real board on a serial port.

Both give the harness a :class:`~tinymlaas_ci.devices.mcu.protocol.Session` over the board's
UART, so everything above this module is the same for an emulated and a real board.

* :class:`QemuBoard` starts ``qemu-system-arm`` with the firmware, the board's first UART on a
  Unix socket (QEMU waits for the harness to connect before the core starts, so no byte is
  lost), when instructions are counted the instruction-count plugin, and optionally a block of
  test samples preloaded into memory outside the budgets (QEMU's ``-device loader``), because
  its emulated UART receives only about 14 KB/s. QEMU is always run
  with a timeout on every exchange and is terminated (then killed) when the connection closes.
* :class:`SerialBoard` runs the device file's flash command (``pyocd flash ...``,
  ``openocd ...``; ``{elf}``, ``{bin}`` and ``{hex}`` are replaced by the image's paths), then
  opens the serial port with pyserial (imported only here).
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tinymlaas_ci.devices.mcu.boards import get_board
from tinymlaas_ci.devices.mcu.build import FirmwareInfo
from tinymlaas_ci.devices.mcu.icount import build_plugin
from tinymlaas_ci.devices.mcu.protocol import ProtocolError, Session
from tinymlaas_ci.errors import DeviceError

__all__ = ["BoardConnection", "QemuBoard", "SerialBoard", "qemu_version"]

QEMU = "qemu-system-arm"
_QEMU_HINT = "install QEMU: apt-get install --no-install-recommends qemu-system-arm"


@functools.lru_cache(maxsize=8)
def qemu_version(binary: str = QEMU) -> str:
    """``qemu-system-arm --version``'s first line; fails with how to install it when missing."""
    path = shutil.which(binary)
    if path is None:
        raise DeviceError(f"{binary} is not installed on this machine", hint=_QEMU_HINT)
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
    return out.stdout.splitlines()[0].strip() if out.stdout else binary


class BoardConnection:
    """A running board with a protocol session; use as a context manager."""

    session: Session
    label: str
    counts_instructions: bool = False

    def __enter__(self) -> BoardConnection:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    @property
    def is_open(self) -> bool:
        raise NotImplementedError

    def last_instruction_count(self) -> int | None:
        """Instructions of the last marked inference, when this connection can count them."""
        return None

    def describe(self) -> dict:
        return {"transport": type(self).__name__, "label": self.label}


class _SocketStream:
    def __init__(self, sock: socket.socket, on_eof) -> None:
        self.sock = sock
        self.on_eof = on_eof

    def read(self, n: int, timeout: float) -> bytes:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(n)
        except (TimeoutError, BlockingIOError):
            return b""
        if not data:
            raise self.on_eof()
        return data

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)


class QemuBoard(BoardConnection):
    """The firmware running under ``qemu-system-arm -M <board>``.

    ``work_dir`` receives ``qemu.log``, ``instructions.txt`` (one count per marked inference),
    ``samples.bin`` (preloaded samples) and the plugin; use one connection per folder at a time.
    """

    def __init__(
        self,
        firmware: FirmwareInfo,
        *,
        work_dir: str | os.PathLike | None = None,
        count_instructions: bool = True,
        timeout: float = 60.0,
        boot_timeout: float = 30.0,
        qemu: str = QEMU,
        samples: bytes | None = None,
        device: str | None = None,
    ) -> None:
        self.firmware = firmware
        self.board = get_board(firmware.board)
        self.work_dir = Path(work_dir) if work_dir is not None else Path(firmware.elf).parent
        self.counts_instructions = count_instructions
        self.timeout = timeout
        self.boot_timeout = boot_timeout
        self.qemu = qemu
        self.device = device
        self.label = f"qemu {firmware.board}"
        self.version = qemu_version(qemu)
        self._proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._counts = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.log_path = self.work_dir / "qemu.log"
        self.samples = samples
        if samples is not None:
            region = self.board.samples
            if region is None:
                raise DeviceError(f"{self.board.name} has no sample memory to preload", device=device)
            if len(samples) > region.size:
                raise DeviceError(
                    f"{len(samples)} bytes of samples exceed the {region.size_kb} KiB sample memory", device=device
                )

    def argv(
        self, socket_path: str, counts_path: str | None, plugin: Path | None, samples_path: Path | None = None
    ) -> list[str]:
        argv = [
            shutil.which(self.qemu) or self.qemu,
            "-M",
            self.board.name,
            "-display",
            "none",
            "-monitor",
            "none",
            "-chardev",
            f"socket,id=uart0,path={socket_path},server=on,wait=on",
            "-serial",
            "chardev:uart0",
            "-kernel",
            self.firmware.elf,
        ]
        if samples_path is not None:
            argv += ["-device", f"loader,file={samples_path},addr=0x{self.board.samples.origin:08x},force-raw=on"]
        if plugin is not None:
            argv += [
                "-plugin",
                f"{plugin},begin=0x{self.firmware.marker_begin:x},end=0x{self.firmware.marker_end:x},out={counts_path}",
            ]
        return argv

    def _log_tail(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip()
        except OSError:
            return ""
        return text[-1500:]

    def _died(self) -> DeviceError:
        code = self._proc.poll() if self._proc else None
        tail = self._log_tail()
        return ProtocolError(
            f"QEMU ({self.board.name}) closed the UART"
            + (f" and exited with {code}" if code is not None else "")
            + (f"; its log says:\n{tail}" if tail else ""),
            device=self.device,
        )

    def open(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        # A short private directory: Unix socket paths are limited to ~100 bytes.
        self._tmp = tempfile.TemporaryDirectory(prefix="tinymlaas-qemu-")
        socket_path = os.path.join(self._tmp.name, "uart0")
        counts_path = plugin = None
        if self.counts_instructions:
            plugin = build_plugin(self.work_dir)
            counts_path = str(self.work_dir / "instructions.txt")
            Path(counts_path).write_bytes(b"")
            self._counts = open(counts_path)  # noqa: SIM115 (read as the plugin appends)
        samples_path = None
        if self.samples is not None:
            samples_path = self.work_dir / "samples.bin"
            samples_path.write_bytes(self.samples)
        argv = self.argv(socket_path, counts_path, plugin, samples_path)
        setpriv = shutil.which("setpriv")
        if setpriv is not None:
            # QEMU gets SIGTERM if this process dies without closing it (killed, crashed).
            argv = [setpriv, "--pdeathsig", "TERM", "--", *argv]
        log = open(self.log_path, "wb")  # noqa: SIM115 (handed to the child, closed in close())
        try:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        except OSError as exc:
            log.close()
            raise DeviceError(f"cannot start {self.qemu}: {exc}", device=self.device, hint=_QEMU_HINT) from exc
        self._log = log
        try:
            self._connect(socket_path)
            self.session = Session(_SocketStream(self._sock, self._died), timeout=self.timeout, device=self.device)
            self.session.wait_ready(self.boot_timeout)
        except BaseException:
            self.close()
            raise

    def _connect(self, socket_path: str) -> None:
        deadline = time.monotonic() + self.boot_timeout
        while True:
            if self._proc.poll() is not None:
                raise self._died()
            if os.path.exists(socket_path):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.connect(socket_path)
                    self._sock = sock
                    return
                except OSError:
                    sock.close()
            if time.monotonic() > deadline:
                raise DeviceError(
                    f"QEMU did not open the board's UART within {self.boot_timeout} s", device=self.device
                )
            time.sleep(0.02)

    @property
    def is_open(self) -> bool:
        return self._proc is not None

    def last_instruction_count(self) -> int | None:
        if self._counts is None:
            return None
        line = self._counts.readline()
        if not line.endswith("\n"):
            raise DeviceError("the instruction-count plugin reported no count for the inference", device=self.device)
        return int(line)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(timeout=5)
            self._proc = None
        for handle in ("_counts", "_log"):
            fh = getattr(self, handle, None)
            if fh is not None:
                fh.close()
                setattr(self, handle, None)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def describe(self) -> dict:
        return {"transport": "qemu", "label": self.label, "qemu": self.version, "machine": self.board.name}


class _SerialStream:
    def __init__(self, port) -> None:
        self.port = port

    def read(self, n: int, timeout: float) -> bytes:
        self.port.timeout = max(min(timeout, 1.0), 0.001)
        return self.port.read(n)

    def write(self, data: bytes) -> None:
        self.port.write(data)
        self.port.flush()


class SerialBoard(BoardConnection):
    """A real board: flashed by the device file's command, then spoken to on its serial port."""

    def __init__(
        self,
        firmware: FirmwareInfo,
        *,
        port: str,
        baudrate: int = 115200,
        flash_command: str | Sequence[str] | None = None,
        flash_timeout: float = 300.0,
        timeout: float = 60.0,
        boot_timeout: float = 10.0,
        device: str | None = None,
    ) -> None:
        self.firmware = firmware
        self.port_name = port
        self.baudrate = baudrate
        self.flash_command = flash_command
        self.flash_timeout = flash_timeout
        self.timeout = timeout
        self.boot_timeout = boot_timeout
        self.device = device
        self.label = f"serial {port}"
        self._port = None

    def flash_argv(self) -> list[str] | None:
        if not self.flash_command:
            return None
        parts = shlex.split(self.flash_command) if isinstance(self.flash_command, str) else list(self.flash_command)
        paths = {"elf": self.firmware.elf, "bin": self.firmware.bin, "hex": self.firmware.hex}
        return [p.format(**paths) for p in parts]

    def flash(self) -> None:
        argv = self.flash_argv()
        if argv is None:
            return
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=self.flash_timeout)
        except FileNotFoundError as exc:
            raise DeviceError(f"the flash command {argv[0]!r} is not installed", device=self.device) from exc
        except subprocess.TimeoutExpired as exc:
            raise DeviceError(f"flashing took longer than {self.flash_timeout} s", device=self.device) from exc
        if proc.returncode != 0:
            out = (proc.stdout + proc.stderr).strip()[-1500:]
            raise DeviceError(
                f"the flash command failed with exit code {proc.returncode}: {shlex.join(argv)}\n{out}",
                device=self.device,
                hint="check the probe is connected and the command works from a shell",
            )

    def open(self) -> None:
        try:
            import serial
        except ModuleNotFoundError as exc:
            raise DeviceError(
                "the serial transport needs pyserial", device=self.device, hint="pip install pyserial"
            ) from exc
        self.flash()
        try:
            self._port = serial.Serial(self.port_name, self.baudrate, timeout=1.0)
        except (serial.SerialException, OSError) as exc:
            raise DeviceError(f"cannot open serial port {self.port_name}: {exc}", device=self.device) from exc
        self.session = Session(_SerialStream(self._port), timeout=self.timeout, device=self.device)
        try:
            self.session.wait_ready(self.boot_timeout)
        except ProtocolError:
            # The board booted before the port was open and its READY went nowhere: ask it.
            self._port.reset_input_buffer()
            self.session.info()

    @property
    def is_open(self) -> bool:
        return self._port is not None

    def close(self) -> None:
        if self._port is not None:
            self._port.close()
            self._port = None

    def describe(self) -> dict:
        return {"transport": "serial", "label": self.label, "baudrate": self.baudrate}
