"""The host side of the framed UART protocol between the harness and the firmware.

A frame is ``SYNC TYPE LEN PAYLOAD CRC``: one sync byte ``0xA5``, a type byte, the payload
length as a little-endian u16, the payload, and a CRC-16/CCITT-FALSE (polynomial 0x1021,
initial value 0xFFFF, little-endian on the wire) over type, length and payload. The board
answers each request with exactly one frame; it announces itself with ``READY`` after reset.

Requests: ``INFO`` (no payload), ``INFER`` and ``INFER_MARKED`` (the int8 input sample; the
marked one runs between the two marker functions the instruction counter watches), and, on
emulated boards, ``INFER_STORED`` (u32 offset of a sample preloaded into memory, u8 marked). Answers:
``INFO_REPLY``, ``OUTPUT`` (i32 status, u32 DWT cycles, the int8 output), ``ERROR`` (code + text) and
``FAULT`` (the board took a fault: exception number, fault status registers, faulting PC).

The same code serves QEMU's socket and a real serial port: it only needs ``read(n)`` and
``write(data)`` from a :class:`ByteStream`.
"""

from __future__ import annotations

import binascii
import struct
import time
from dataclasses import dataclass
from typing import Protocol

from tinymlaas_ci.errors import DeviceError

__all__ = [
    "MSG",
    "BoardFault",
    "BoardInfo",
    "ByteStream",
    "Frame",
    "FrameReader",
    "ProtocolError",
    "Session",
    "crc16",
    "decode_frame",
    "describe_fault",
    "encode_frame",
]

SYNC = 0xA5
PROTOCOL_VERSION = 1
MAX_PAYLOAD = 0xFFFF


class MSG:
    """Message types."""

    INFO = 0x01
    INFER = 0x02
    INFER_MARKED = 0x03
    INFER_STORED = 0x04
    READY = 0x80
    INFO_REPLY = 0x81
    OUTPUT = 0x82
    FAULT = 0xFE
    ERROR = 0xFF


_ERRORS = {1: "CRC mismatch", 2: "wrong length", 3: "unknown message type", 4: "out of range"}
_EXCEPTIONS = {2: "NMI", 3: "HardFault", 4: "MemManage", 5: "BusFault", 6: "UsageFault", 7: "SecureFault"}


class ProtocolError(DeviceError):
    """A frame was corrupt or unexpected, or the board stopped answering."""


class BoardFault(DeviceError):
    """The firmware took a fault (its FAULT frame decoded)."""

    def __init__(self, message: str, *, registers: dict[str, int], device: str | None = None):
        self.registers = registers
        super().__init__(message, device=device)


def crc16(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE of ``data`` (``binascii.crc_hqx`` is exactly that polynomial)."""
    return binascii.crc_hqx(data, crc)


@dataclass(frozen=True)
class Frame:
    type: int
    payload: bytes


def encode_frame(msg_type: int, payload: bytes = b"") -> bytes:
    """The bytes of one frame."""
    if not 0 <= msg_type <= 0xFF:
        raise ValueError(f"message type {msg_type} is not a byte")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    body = struct.pack("<BH", msg_type, len(payload)) + bytes(payload)
    return bytes([SYNC]) + body + struct.pack("<H", crc16(body))


def decode_frame(data: bytes) -> Frame:
    """Decode exactly one frame; corrupt, short or trailing bytes raise :class:`ProtocolError`."""
    if len(data) < 6 or data[0] != SYNC:
        raise ProtocolError(f"not a frame: {data[:8].hex()}")
    msg_type, length = struct.unpack_from("<BH", data, 1)
    if len(data) != 6 + length:
        raise ProtocolError(f"frame length {len(data)} does not match its header ({6 + length})")
    (got,) = struct.unpack_from("<H", data, 4 + length)
    want = crc16(data[1 : 4 + length])
    if got != want:
        raise ProtocolError(f"frame CRC mismatch: got 0x{got:04x}, computed 0x{want:04x}")
    return Frame(msg_type, bytes(data[4 : 4 + length]))


class ByteStream(Protocol):
    """What a transport gives the protocol: blocking reads with a timeout, and writes."""

    def read(self, n: int, timeout: float) -> bytes:
        """Up to ``n`` bytes; fewer (possibly none) only when ``timeout`` seconds passed."""

    def write(self, data: bytes) -> None: ...


class FrameReader:
    """Reads frames from a stream; skips noise before the sync byte (a board's boot chatter)."""

    def __init__(self, stream: ByteStream) -> None:
        self.stream = stream
        self.skipped = 0

    def _exactly(self, n: int, deadline: float) -> bytes:
        out = bytearray()
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProtocolError(f"the board stopped answering: {len(out)} of {n} bytes after the timeout")
            out += self.stream.read(n - len(out), left)
        return bytes(out)

    def read_frame(self, timeout: float) -> Frame:
        deadline = time.monotonic() + timeout
        while self._exactly(1, deadline)[0] != SYNC:
            self.skipped += 1
        head = self._exactly(3, deadline)
        (length,) = struct.unpack_from("<H", head, 1)
        rest = self._exactly(length + 2, deadline)
        return decode_frame(bytes([SYNC]) + head + rest)


@dataclass(frozen=True)
class BoardInfo:
    """The firmware's INFO reply."""

    protocol: int
    input_size: int
    output_size: int
    arena_bytes: int
    macs: int
    weights_bytes: int
    stack_bytes: int
    stack_high_water: int
    input_scale: float
    input_zero_point: int
    output_scale: float
    output_zero_point: int

    @classmethod
    def decode(cls, payload: bytes) -> BoardInfo:
        if len(payload) != 48:
            raise ProtocolError(f"INFO reply of {len(payload)} bytes, expected 48")
        protocol = payload[0]
        fields = struct.unpack_from("<7Ififi", payload, 4)
        in_size, out_size, arena, macs, weights, stack, high, in_scale, in_zp, out_scale, out_zp = fields
        return cls(protocol, in_size, out_size, arena, macs, weights, stack, high, in_scale, in_zp, out_scale, out_zp)


def describe_fault(payload: bytes) -> tuple[str, dict[str, int]]:
    """A readable message and the registers of a FAULT frame."""
    names = ("exception", "cfsr", "hfsr", "mmfar", "bfar", "pc", "lr", "exc_return", "stack_high_water")
    values = struct.unpack_from(f"<{len(names)}I", payload.ljust(4 * len(names), b"\0"))
    regs = dict(zip(names, values, strict=False))
    kind = _EXCEPTIONS.get(regs["exception"], f"exception {regs['exception']}")
    text = (
        f"the board took a {kind} at pc=0x{regs['pc']:08x} (lr=0x{regs['lr']:08x}, "
        f"CFSR=0x{regs['cfsr']:08x}, HFSR=0x{regs['hfsr']:08x}, BFAR=0x{regs['bfar']:08x})"
    )
    if regs["cfsr"] & (1 << 20):  # UFSR.STKOF, Armv8-M stack limit
        text += "; the stack overflowed its limit: build with a larger stack_bytes"
    return text, regs


class Session:
    """A request/answer conversation with one board over one :class:`ByteStream`."""

    def __init__(self, stream: ByteStream, *, timeout: float = 60.0, device: str | None = None) -> None:
        self.stream = stream
        self.reader = FrameReader(stream)
        self.timeout = timeout
        self.device = device

    def wait_ready(self, timeout: float | None = None) -> None:
        """Wait for the READY frame the firmware sends after reset."""
        frame = self._next(timeout)
        if frame.type != MSG.READY:
            raise ProtocolError(f"expected READY after reset, got message 0x{frame.type:02x}", device=self.device)
        if frame.payload[:1] != bytes([PROTOCOL_VERSION]):
            raise ProtocolError(
                f"the firmware speaks protocol {frame.payload[:1].hex()}, the host {PROTOCOL_VERSION}",
                device=self.device,
                hint="rebuild and reflash the firmware with this version of tinymlaas-ci",
            )

    def _next(self, timeout: float | None = None) -> Frame:
        frame = self.reader.read_frame(self.timeout if timeout is None else timeout)
        if frame.type == MSG.FAULT:
            message, regs = describe_fault(frame.payload)
            raise BoardFault(message, registers=regs, device=self.device)
        return frame

    def request(self, msg_type: int, payload: bytes = b"", *, expect: int) -> bytes:
        self.stream.write(encode_frame(msg_type, payload))
        while True:
            frame = self._next()
            if frame.type == MSG.READY:
                continue  # a board that was reset by its flash tool announces itself late
            break
        if frame.type == MSG.ERROR:
            code = frame.payload[0] if frame.payload else 0
            detail = frame.payload[1:].decode("ascii", "replace")
            raise ProtocolError(
                f"the board refused message 0x{msg_type:02x}: {_ERRORS.get(code, code)} ({detail})",
                device=self.device,
            )
        if frame.type != expect:
            raise ProtocolError(f"expected message 0x{expect:02x}, got 0x{frame.type:02x}", device=self.device)
        return frame.payload

    def info(self) -> BoardInfo:
        info = BoardInfo.decode(self.request(MSG.INFO, expect=MSG.INFO_REPLY))
        if info.protocol != PROTOCOL_VERSION:
            raise ProtocolError(
                f"the firmware speaks protocol {info.protocol}, the host {PROTOCOL_VERSION}",
                device=self.device,
                hint="rebuild and reflash the firmware with this version of tinymlaas-ci",
            )
        return info

    def infer_stored(self, offset: int, *, marked: bool = False) -> tuple[bytes, int]:
        """Like :meth:`infer` for the sample preloaded at ``offset`` in the board's sample memory."""
        payload = self.request(MSG.INFER_STORED, struct.pack("<IB", offset, int(marked)), expect=MSG.OUTPUT)
        return self._output(payload)

    def infer(self, sample: bytes, *, marked: bool = False) -> tuple[bytes, int]:
        """The int8 output (bytes) for one int8 input sample, and the DWT cycles it took.

        Cycles are counted only for a marked inference and only on a real core; QEMU has no
        timing model and its counter reads 0.
        """
        if len(sample) > MAX_PAYLOAD:
            raise ProtocolError(
                f"a sample of {len(sample)} bytes does not fit one frame (at most {MAX_PAYLOAD})",
                device=self.device,
                hint="under QEMU let the harness preload the samples (preload=True)",
            )
        payload = self.request(MSG.INFER_MARKED if marked else MSG.INFER, sample, expect=MSG.OUTPUT)
        return self._output(payload)

    def _output(self, payload: bytes) -> tuple[bytes, int]:
        if len(payload) < 8:
            raise ProtocolError(f"OUTPUT of {len(payload)} bytes is shorter than its header", device=self.device)
        status, cycles = struct.unpack_from("<iI", payload)
        if status != 0:
            raise DeviceError(f"tinyml_model_run returned {status}", device=self.device)
        return payload[8:], cycles
