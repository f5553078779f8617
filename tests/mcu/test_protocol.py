"""The framed UART protocol on the host side: framing, CRC, resynchronisation, decoding."""

from __future__ import annotations

import struct
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinymlaas_ci.devices.mcu.protocol import (
    MSG,
    BoardFault,
    BoardInfo,
    FrameReader,
    ProtocolError,
    Session,
    crc16,
    decode_frame,
    encode_frame,
)


class FakeStream:
    """Bytes queued by the test; writes recorded. Stands in for the UART, not the protocol."""

    def __init__(self, data: bytes = b"") -> None:
        self.data = bytearray(data)
        self.written = bytearray()

    def read(self, n: int, timeout: float) -> bytes:
        if not self.data:
            time.sleep(min(timeout, 0.01))
            return b""
        out, self.data = bytes(self.data[:n]), self.data[n:]
        return out

    def write(self, data: bytes) -> None:
        self.written += data


def test_crc_is_ccitt_false():
    # The standard check value of CRC-16/CCITT-FALSE.
    assert crc16(b"123456789") == 0x29B1


@given(st.integers(0, 255), st.binary(max_size=600))
def test_frames_round_trip(msg_type, payload):
    frame = decode_frame(encode_frame(msg_type, payload))
    assert (frame.type, frame.payload) == (msg_type, payload)


@given(st.binary(min_size=1, max_size=64), st.data())
def test_every_single_byte_corruption_is_rejected(payload, data):
    raw = bytearray(encode_frame(MSG.INFER, payload))
    index = data.draw(st.integers(1, len(raw) - 1))  # any byte after the sync byte
    flip = data.draw(st.integers(1, 255))
    raw[index] ^= flip
    with pytest.raises(ProtocolError):
        decode_frame(bytes(raw))


def test_reader_skips_noise_before_a_frame_and_reads_back_to_back_frames():
    stream = FakeStream(b"\x00boot\xffnoise" + encode_frame(MSG.READY, b"\x01") + encode_frame(MSG.OUTPUT, b"xy"))
    reader = FrameReader(stream)
    assert reader.read_frame(1.0).type == MSG.READY
    assert reader.skipped == len(b"\x00boot\xffnoise")
    assert reader.read_frame(1.0).payload == b"xy"


def test_a_truncated_frame_times_out_with_a_message():
    stream = FakeStream(encode_frame(MSG.OUTPUT, b"abcdef")[:-3])
    with pytest.raises(ProtocolError, match="stopped answering"):
        FrameReader(stream).read_frame(0.2)


def test_session_reports_board_errors_and_faults():
    error = encode_frame(MSG.ERROR, b"\x01frame CRC mismatch")
    session = Session(FakeStream(error), timeout=1.0)
    with pytest.raises(ProtocolError, match="CRC mismatch"):
        session.info()
    assert decode_frame(bytes(session.stream.written)).type == MSG.INFO

    regs = struct.pack("<9I", 6, 1 << 20, 0, 0, 0, 0x1234, 0x5678, 0xFFFFFFF9, 8192)
    session = Session(FakeStream(encode_frame(MSG.FAULT, regs)), timeout=1.0)
    with pytest.raises(BoardFault, match=r"UsageFault at pc=0x00001234.*stack overflowed") as caught:
        session.infer(b"\0" * 4)
    assert caught.value.registers["pc"] == 0x1234


def test_info_reply_decodes_and_checks_the_protocol_version():
    fields = struct.pack("<7Ififi", 64, 10, 128, 4736, 5624, 8192, 300, 0.5, -3, 0.25, 7)
    info = BoardInfo.decode(b"\x01\0\0\0" + fields)
    assert (info.input_size, info.output_zero_point, info.input_scale) == (64, 7, 0.5)
    session = Session(FakeStream(encode_frame(MSG.INFO_REPLY, b"\x02\0\0\0" + fields)), timeout=1.0)
    with pytest.raises(ProtocolError, match="protocol 2"):
        session.info()


def test_output_status_other_than_zero_is_an_error():
    payload = struct.pack("<iI", -2, 0) + b"\x05"
    session = Session(FakeStream(encode_frame(MSG.OUTPUT, payload)), timeout=1.0)
    with pytest.raises(Exception, match="returned -2"):
        session.infer(b"\0")


def test_a_sample_larger_than_a_frame_is_refused_before_sending():
    stream = FakeStream()
    with pytest.raises(ProtocolError, match="does not fit one frame"):
        Session(stream, timeout=1.0).infer(b"\0" * 70000)
    assert stream.written == b""
