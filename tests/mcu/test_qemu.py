"""Firmware on emulated boards: bit-exact outputs, exact instruction counts, faults, framing."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tinymlaas_ci.devices.mcu import BOARDS, FirmwareInfo, build_firmware, run_on_board
from tinymlaas_ci.devices.mcu.protocol import MSG, BoardFault, ProtocolError, encode_frame
from tinymlaas_ci.devices.mcu.transport import QemuBoard
from tinymlaas_ci.errors import DeviceError

_RUN_HEAD = "int tinyml_model_run(const int8_t *input, int8_t *output)\n{"


def _variant(mlp_dir, folder, prelude: str, first_statement: str):
    """The fixture model with code added at the start of tinyml_model_run."""
    folder.mkdir()
    (folder / "model.h").write_text((mlp_dir / "model.h").read_text())
    source = (mlp_dir / "model.c").read_text()
    (folder / "model.c").write_text(source.replace(_RUN_HEAD, prelude + "\n" + _RUN_HEAD + "\n    " + first_statement))
    return folder


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_outputs_are_bit_identical_to_the_numpy_reference(board, qemu_arm, firmware_for, mlp, samples):
    fw = firmware_for(board)
    run = run_on_board(fw, samples)
    np.testing.assert_array_equal(run.outputs, mlp.reference(samples))
    assert run.predictions == [int(i) for i in mlp.reference(samples).argmax(axis=1)]
    assert len(run.instructions) == len(samples)
    # Each MAC costs at least one instruction and the plain C loop fewer than ten.
    assert mlp.macs < min(run.instructions) <= max(run.instructions) < 10 * mlp.macs
    assert 0 < run.stack_before_inference_bytes < run.stack_high_water_bytes < fw.stack_bytes
    metrics = run.metrics()
    assert metrics["ram_bytes"]["total"] == fw.ram_bytes + run.stack_high_water_bytes
    assert metrics["instructions_per_inference"]["n"] == len(samples)
    median = metrics["instructions_per_inference"]["median"]
    assert metrics["latency_ms_estimate"]["median"] == pytest.approx(median / (BOARDS[board].clock_mhz * 1000))
    assert run.cycles == []  # QEMU's DWT cycle counter reads 0
    assert run.transport["qemu"].startswith("QEMU emulator version")


@pytest.mark.parametrize("board", ["mps2-an386", "mps3-an547"])
def test_instruction_counts_are_identical_across_runs(board, qemu_arm, firmware_for, samples):
    fw = firmware_for(board)
    first = run_on_board(fw, samples[:10]).instructions
    second = run_on_board(fw, samples[:10]).instructions
    assert first == second
    # Data-dependent branches (saturation) make samples differ a little, not runs.
    assert len(set(first)) > 1


def test_uninstrumented_inference_gives_the_same_outputs(qemu_arm, firmware_for, mlp, samples):
    run = run_on_board(firmware_for("mps2-an386"), samples[:8], count_instructions=False)
    np.testing.assert_array_equal(run.outputs, mlp.reference(samples[:8]))
    assert run.instructions == [] and run.metrics()["latency_ms_estimate"] is None


def test_the_firmware_rejects_corrupt_frames_and_keeps_serving(qemu_arm, firmware_for, mlp, samples):
    fw = firmware_for("mps3-an547")
    with QemuBoard(fw, count_instructions=False) as board:
        stream = board.session.stream
        bad = bytearray(encode_frame(MSG.INFER, samples[0].tobytes()))
        bad[10] ^= 0x40
        stream.write(bytes(bad))
        with pytest.raises(ProtocolError, match="CRC mismatch"):
            board.session.request(MSG.INFO, expect=MSG.INFO_REPLY)  # reads the answer to the bad frame
        # The INFO request written above is answered next.
        assert board.session.reader.read_frame(10).type == MSG.INFO_REPLY
        with pytest.raises(ProtocolError, match="wrong length"):
            board.session.infer(samples[0].tobytes()[:-1])
        with pytest.raises(ProtocolError, match="unknown message type"):
            board.session.request(0x42, expect=MSG.INFO_REPLY)
        out, _ = board.session.infer(samples[0].tobytes())
        assert np.frombuffer(out, np.int8).tolist() == mlp.reference(samples[:1])[0].tolist()


def test_a_fault_in_the_model_is_reported_with_its_address(qemu_arm, mlp_dir, tmp_path, samples):
    model = _variant(mlp_dir, tmp_path / "trap", "", "__builtin_trap();")
    fw = build_firmware(model, "mps2-an386", out_dir=tmp_path / "fw")
    with pytest.raises(BoardFault, match=r"the board took a UsageFault at pc=0x[0-9a-f]{8}") as caught:
        run_on_board(fw, samples[:1])
    pc = caught.value.registers["pc"]
    assert fw.sections[1]["name"] == ".text"
    text = fw.sections[1]
    assert int(text["address"], 16) <= pc < int(text["address"], 16) + text["size"]


def test_a_stack_overflow_hits_the_armv8m_stack_limit(qemu_arm, mlp_dir, tmp_path, samples):
    prelude = (
        "__attribute__((noipa)) static int deep(int n)\n{\n    volatile char pad[256];\n"
        "    pad[0] = (char)n;\n    return n ? deep(n - 1) + pad[0] : 0;\n}"
    )
    model = _variant(mlp_dir, tmp_path / "deep", prelude, "output[0] = (int8_t)deep(200);")
    fw = build_firmware(model, "mps3-an547", stack_bytes=4096, out_dir=tmp_path / "fw")
    with pytest.raises(BoardFault, match="stack overflowed its limit"):
        run_on_board(fw, samples[:1])


def test_a_board_running_another_model_is_refused(qemu_arm, firmware_for, samples):
    fw = dataclasses.replace(firmware_for("mps2-an386"), macs=1)
    with pytest.raises(DeviceError, match=r"runs a different model than the one built \(macs: board 4736, image 1\)"):
        run_on_board(fw, samples[:1])


def test_qemu_is_stopped_when_the_connection_closes(qemu_arm, firmware_for):
    board = QemuBoard(firmware_for("mps2-an386"), count_instructions=False)
    with board:
        pid = board._proc.pid
        assert board.session.info().input_size == 64
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_the_infer_stage_flow_with_a_moved_firmware_folder(qemu_arm, firmware_for, mlp, samples, tmp_path):
    """install writes firmware.json; infer loads it from another place and writes only its own folder."""
    built = firmware_for("mps3-an547")
    moved = tmp_path / "install"
    shutil.copytree(Path(built.elf).parent, moved, ignore=shutil.ignore_patterns("obj", "*.so", "*.log", "*.txt"))
    fw = FirmwareInfo.load(moved)
    assert fw.elf == str(moved / "firmware.elf") and fw.macs == built.macs
    before = sorted(p.name for p in moved.iterdir())
    infer_dir = tmp_path / "infer"
    run = run_on_board(fw, samples[:5], work_dir=infer_dir)
    np.testing.assert_array_equal(run.outputs, mlp.reference(samples[:5]))
    assert sorted(p.name for p in moved.iterdir()) == before
    assert (infer_dir / "qemu.log").is_file()
    assert len((infer_dir / "instructions.txt").read_text().split()) == 5


def test_loading_firmware_that_was_never_built_says_so(tmp_path):
    with pytest.raises(DeviceError, match="run the install stage first"):
        FirmwareInfo.load(tmp_path)


def test_preloaded_samples_and_the_uart_give_the_same_results(qemu_arm, firmware_for, mlp, samples):
    fw = firmware_for("mps2-an505")
    over_uart = run_on_board(fw, samples[:15], preload=False)
    # Three QEMU starts of at most 7 preloaded samples each.
    preloaded = run_on_board(fw, samples[:15], samples_per_start=7)
    np.testing.assert_array_equal(over_uart.outputs, mlp.reference(samples[:15]))
    np.testing.assert_array_equal(preloaded.outputs, over_uart.outputs)
    assert preloaded.instructions == over_uart.instructions
    assert (Path(fw.elf).parent / "samples.bin").stat().st_size == 1 * 64  # the last start's one sample


def test_a_stored_sample_outside_the_sample_memory_is_refused(qemu_arm, firmware_for):
    fw = firmware_for("mps2-an386")
    with QemuBoard(fw, count_instructions=False) as board:
        with pytest.raises(ProtocolError, match="out of range"):
            board.session.infer_stored(16 * 1024 * 1024 - 63)
        assert board.session.info().input_size == 64


@pytest.mark.parametrize(("board", "extension"), [("mps2-an386", "SMLAD"), ("mps3-an547", "MVE")])
def test_dsp_and_helium_kernels_run_bit_exact_after_startup(board, extension, qemu_arm, mlp, samples, tmp_path):
    """The startup code enables what SIMD kernels need (FPU/MVE coprocessor access on M55)."""
    model = mlp.write(tmp_path / "simd", simd=True)
    fw = build_firmware(model, board, out_dir=tmp_path / "fw")
    run = run_on_board(fw, samples[:10])
    np.testing.assert_array_equal(run.outputs, mlp.reference(samples[:10]))
    assembly = subprocess.run(
        ["arm-none-eabi-gcc", *fw.cflags, f"-I{model}", "-S", "-o", "-", str(model / "model.c")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert ("smlad" if extension == "SMLAD" else "vmladava") in assembly


def test_a_model_that_never_returns_times_out_and_qemu_is_stopped(qemu_arm, mlp_dir, tmp_path, samples):
    model = _variant(mlp_dir, tmp_path / "hang", "", "for (volatile int spin = 1; spin;) {\n    }")
    fw = build_firmware(model, "mps2-an386", out_dir=tmp_path / "fw")
    board = QemuBoard(fw, count_instructions=False, timeout=1.0)
    with pytest.raises(ProtocolError, match="stopped answering"):
        run_on_board(fw, samples[:1], transport=board)
    assert not board.is_open


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return "\nState:\tZ" not in fh.read()
    except FileNotFoundError:
        return False


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux) for the parent-death signal")
def test_qemu_dies_with_a_harness_that_is_killed(qemu_arm, firmware_for, tmp_path):
    script = (
        "import os, sys\n"
        "from tinymlaas_ci.devices.mcu import FirmwareInfo\n"
        "from tinymlaas_ci.devices.mcu.transport import QemuBoard\n"
        "board = QemuBoard(FirmwareInfo.load(sys.argv[1]), count_instructions=False, work_dir=sys.argv[2])\n"
        "board.open()\n"
        "print(board._proc.pid, flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    fw = firmware_for("mps2-an386")
    proc = subprocess.run(
        [sys.executable, "-c", script, str(Path(fw.elf).parent), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    pid = int(proc.stdout.split()[0])
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)
