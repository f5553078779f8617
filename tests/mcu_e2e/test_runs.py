"""``runtime: c`` end to end: two Cortex-M boards under QEMU and the host, and the two failures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.mcu_e2e.conftest import BOARD_RUNS, result_of, stage_error
from tinymlaas_ci.results.models import Result


@pytest.mark.parametrize("run", sorted(BOARD_RUNS))
def test_a_board_runs_the_whole_test_split_and_reports_its_numbers(mcu_repo, run):
    root, _work, proc, outcomes = mcu_repo
    assert outcomes[run]["status"] == "succeeded", proc.stdout[-3000:] + proc.stderr[-3000:]
    result = Result.model_validate(result_of(root, run))
    m = result.metrics
    assert result.device.kind == "mcu" and m.board == BOARD_RUNS[run]
    assert result.runtime.name == "c"
    # The whole split went through the board, one exact instruction count per inference.
    assert m.samples == 360 and m.instructions_per_inference.n == 360
    assert sum(map(sum, m.confusion_matrix)) == 360
    assert m.accuracy >= 0.95
    assert m.agreement_with_onnxruntime >= 0.99
    # The latency is the estimate from instructions and the clock, and says so.
    assert m.latency_source == "instructions"
    clock = m.clock_mhz
    assert m.latency_ms_estimate.median == pytest.approx(m.instructions_per_inference.median / (clock * 1000))
    assert m.latency_ms.p50 == pytest.approx(m.latency_ms_estimate.median)
    assert m.instructions_per_mac == pytest.approx(m.instructions_per_inference.median / m.macs)
    # Memory against the budgets: the model is inside the firmware, the firmware inside flash.
    assert m.weights_bytes < m.flash_bytes.model <= m.flash_bytes.firmware <= m.flash_bytes.budget
    assert m.ram_bytes.total == m.ram_bytes.static + m.ram_bytes.stack_high_water <= m.ram_bytes.budget
    assert m.arena_bytes <= m.ram_bytes.static
    regions = {r["name"]: r for r in m.memory_map.regions}
    assert regions["FLASH"]["used"] <= regions["FLASH"]["length"]
    assert {s["name"] for s in m.memory_map.sections} >= {".text", ".rodata", ".bss"}


def test_the_cortex_m55_build_needs_fewer_instructions_than_the_cortex_m4(mcu_repo):
    root, _work, _proc, _outcomes = mcu_repo
    m4 = result_of(root, "cnn-m4")["metrics"]
    m55 = result_of(root, "cnn-m55")["metrics"]
    # Same model, same C: the MVE kernels do more MACs per instruction than the DSP ones.
    assert m4["macs"] == m55["macs"] and m4["weights_bytes"] == m55["weights_bytes"]
    assert m55["instructions_per_inference"]["median"] < m4["instructions_per_inference"]["median"]


def test_the_host_build_is_measured_like_onnx_runtime(mcu_repo):
    root, _work, proc, outcomes = mcu_repo
    assert outcomes["cnn-host"]["status"] == "succeeded", proc.stdout[-3000:] + proc.stderr[-3000:]
    result = Result.model_validate(result_of(root, "cnn-host"))
    m = result.metrics
    assert result.runtime.name == "c" and result.device.kind == "local"
    assert m.latency_source == "measured" and m.latency_ms.iterations >= 50
    assert m.agreement_with_onnxruntime >= 0.99 and m.accuracy >= 0.95
    assert m.samples == 360 and m.macs == result_of(root, "cnn-m4")["metrics"]["macs"]
    assert result.compression.quantization == "static-int8" and result.compression.per_channel


def test_boards_and_host_agree_on_every_prediction_they_share(mcu_repo):
    root, _work, _proc, _outcomes = mcu_repo
    # Same int8 model, same integer arithmetic: the confusion matrices are the same.
    matrices = [np.asarray(result_of(root, r)["metrics"]["confusion_matrix"]) for r in (*BOARD_RUNS, "cnn-host")]
    for other in matrices[1:]:
        assert np.array_equal(other, matrices[0])


def test_an_over_budget_board_fails_install_with_what_it_needs(mcu_repo):
    _root, work, proc, outcomes = mcu_repo
    assert outcomes["cnn-tiny"]["status"] == "failed"
    assert outcomes["cnn-tiny"]["failed_stage"] == "install"
    error = stage_error(work, "cnn-tiny", "install")
    assert "the model does not fit on mps2-an386" in error["message"]
    assert "KiB of flash, the board has 32 KiB" in error["message"]
    assert "flash_kb" in error["hint"]
    assert "the board has 32 KiB" in proc.stdout + proc.stderr


def test_an_unsupported_operator_fails_compile_naming_node_and_operator(mcu_repo):
    _root, work, _proc, outcomes = mcu_repo
    assert outcomes["sigmoid"]["status"] == "failed"
    assert outcomes["sigmoid"]["failed_stage"] == "compile"
    error = stage_error(work, "sigmoid", "compile")
    assert "operator Sigmoid is not supported by the C generator" in error["message"]
    assert "(Sigmoid)" in error["message"] and "node '" in error["message"]
    assert not (work / "mcu" / "sigmoid" / "compile" / "c").exists()


def test_runtime_auto_deploys_generated_c_on_a_microcontroller(mcu_repo):
    _root, work, _proc, outcomes = mcu_repo
    # The same over-budget failure as runtime c: the firmware was built for the board.
    assert outcomes["cnn-tiny-auto"]["failed_stage"] == "install"
    assert "the model does not fit on mps2-an386" in stage_error(work, "cnn-tiny-auto", "install")["message"]
    compiled = json.loads((work / "mcu" / "cnn-tiny-auto" / "compile" / "outputs.json").read_text())
    comp = compiled["records"]["compression"]
    assert comp["runtime"] == "c" and "microcontroller" in comp["runtime_reason"]
    assert "c/model.c" in compiled["artifacts"]


def test_runtime_auto_keeps_onnx_runtime_for_a_model_the_c_cannot_run(mcu_repo):
    root, _work, proc, outcomes = mcu_repo
    assert outcomes["sigmoid-auto"]["status"] == "succeeded", proc.stdout[-3000:] + proc.stderr[-3000:]
    result = Result.model_validate(result_of(root, "sigmoid-auto"))
    assert result.runtime.name == "onnxruntime" and result.compression.runtime == "onnxruntime"
    assert result.compression.runtime_reason.startswith("runtime c cannot run this model: ")
    assert "operator Sigmoid is not supported by the C generator" in result.compression.runtime_reason
    c = next(x for x in result.compression.recipe_candidates if x.get("runtime") == "c")
    assert c["kept"] is False and "Sigmoid" in c["error"]
    assert result.compression.recipe.startswith("qdq-u8s8") or result.compression.recipe.startswith("qdq-s8s8")


def test_a_board_on_a_serial_port_runs_through_the_stages(mcu_repo):
    """``transport: serial``: install builds the firmware, infer runs the device file's flash
    command, then streams the split over the port with pyserial (QEMU on a pty here)."""
    root, work, proc, outcomes = mcu_repo
    assert outcomes["cnn-serial"]["status"] == "succeeded", proc.stdout[-3000:] + proc.stderr[-3000:]
    result = Result.model_validate(result_of(root, "cnn-serial"))
    m = result.metrics
    assert result.runtime.providers == ["board:mps2-an386", "transport:serial"]
    assert result.runtime.transport["label"] == f"serial {root / 'board-tty'}"
    # The flash command ran: it left the board (QEMU) running with its UART linked at the port.
    assert (root / "board.pid").is_file() and (root / "board-tty").resolve().as_posix().startswith("/dev/pts/")
    assert "over serial" in (work / "mcu" / "cnn-serial" / "infer" / "log.txt").read_text()
    # The same firmware as the emulated Cortex-M4 run: the same predictions, on every sample.
    assert m.samples == 360
    assert m.confusion_matrix == result_of(root, "cnn-m4")["metrics"]["confusion_matrix"]
    assert m.agreement_with_onnxruntime >= 0.99
    # No instruction counter over a serial port: the latency comes from the board's cycles.
    assert m.instructions_per_inference is None and m.latency_source == "cycles"
    assert m.cycles_per_inference.n == 360 and m.latency_ms.p50 > 0
    assert m.flash_bytes.firmware <= m.flash_bytes.budget
