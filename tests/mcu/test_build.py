"""Firmware builds: budgets enforced by the linker, sizes read back from the image."""

from __future__ import annotations

import re

import pytest

from tests.mcu.fixture_model import make_mlp
from tinymlaas_ci.devices.mcu import BOARDS, build_firmware, get_board
from tinymlaas_ci.devices.mcu.build import _kib, linker_script
from tinymlaas_ci.errors import DeviceError


def test_linker_script_regions_are_the_budgets():
    board = get_board("mps3-an547")
    script = linker_script(board, 1024, 256, 4096)
    assert "BOOT (rx) : ORIGIN = 0x10000000, LENGTH = 1024" in script
    # The boot region's KiB comes out of the flash budget.
    assert f"FLASH (rx) : ORIGIN = 0x11000000, LENGTH = {1023 * 1024}" in script
    assert f"RAM (rwx) : ORIGIN = 0x30000000, LENGTH = {256 * 1024}" in script
    assert ". = . + 4096;" in script


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_sizes_come_from_the_image(board, firmware_for, mlp):
    fw = firmware_for(board)
    preset = get_board(board)
    assert fw.weights_bytes == mlp.weights_bytes
    assert fw.macs == mlp.macs
    assert fw.arena_bytes == mlp.arena_bytes
    assert (fw.input_size, fw.output_size) == (64, 10)
    # The model's flash share holds its weights and its code; the firmware adds a little.
    assert mlp.weights_bytes < fw.model_flash_bytes < mlp.weights_bytes + 2048
    assert fw.model_flash_bytes < fw.flash_bytes < fw.model_flash_bytes + 4096
    assert fw.model_ram_bytes == mlp.arena_bytes
    assert fw.arena_bytes <= fw.ram_bytes
    assert fw.flash_budget_bytes == preset.default_flash_kb * 1024
    names = {s["name"]: s for s in fw.sections}
    assert names[".vectors"]["address"] == f"0x{preset.vector_table:08x}"
    assert names[".stack"]["size"] == fw.stack_bytes
    for s in fw.sections:
        assert s["region"] is not None, s
    for region in fw.regions:
        assert 0 < region["used"] <= region["length"]


def test_a_model_over_the_flash_budget_fails_naming_what_it_needs(arm_toolchain, tmp_path):
    big = make_mlp((64, 1024, 10), seed=1).write(tmp_path / "big")
    fits = build_firmware(big, "mps2-an386", flash_kb=1024, ram_kb=192, out_dir=tmp_path / "fits")
    with pytest.raises(DeviceError) as caught:
        build_firmware(big, "mps2-an386", flash_kb=64, ram_kb=192, out_dir=tmp_path / "over")
    message = str(caught.value)
    over = fits.flash_bytes - 64 * 1024
    assert f"needs {_kib(fits.flash_bytes)} KiB of flash, the board has 64 KiB (over by {over} bytes)" in message
    assert "mps2-an386" in message


def test_a_model_over_the_ram_budget_fails_naming_what_it_needs(arm_toolchain, tmp_path):
    wide = make_mlp((64, 2048, 10), seed=2).write(tmp_path / "wide")
    fits = build_firmware(wide, "mps3-an547", ram_kb=64, out_dir=tmp_path / "fits")
    needed = fits.stack_bytes + fits.ram_bytes
    with pytest.raises(DeviceError, match=r"needs [\d.]+ KiB of RAM, the board has 10 KiB") as caught:
        build_firmware(wide, "mps3-an547", ram_kb=10, out_dir=tmp_path / "over")
    over = int(re.search(r"over by (\d+) bytes", str(caught.value)).group(1))
    assert over == needed - 10 * 1024


def test_budgets_beyond_the_board_and_unknown_boards_are_refused(tmp_path):
    with pytest.raises(DeviceError, match=r"flash_kb=8192 is outside what mps2-an386 has \(1..4096 KiB\)"):
        build_firmware(tmp_path, "mps2-an386", flash_kb=8192, out_dir=tmp_path / "x")
    with pytest.raises(DeviceError, match=r"ram_kb=1024 is outside what mps3-an547 has"):
        build_firmware(tmp_path, "mps3-an547", ram_kb=1024, out_dir=tmp_path / "x")
    with pytest.raises(DeviceError, match="(?s)unknown board 'mps2-an999'.*mps2-an386"):
        build_firmware(tmp_path, "mps2-an999", out_dir=tmp_path / "x")


def test_a_folder_without_a_generated_model_is_refused(arm_toolchain, tmp_path):
    with pytest.raises(DeviceError, match="has no model.h and model.c"):
        build_firmware(tmp_path, "mps2-an386", out_dir=tmp_path / "x")


def test_a_model_that_calls_malloc_fails_to_link_with_a_hint(arm_toolchain, mlp_dir, tmp_path):
    model = tmp_path / "heap"
    model.mkdir()
    (model / "model.h").write_text((mlp_dir / "model.h").read_text())
    (model / "model.c").write_text((mlp_dir / "model.c").read_text())
    (model / "scratch.c").write_text(
        "#include <stdlib.h>\nvoid *tinyml_scratch(void) { return malloc(16); }\n"
        "int tinyml_use(void) { return tinyml_scratch() != 0; }\n"
    )
    (model / "model.c").write_text(
        (mlp_dir / "model.c")
        .read_text()
        .replace("    return 0;\n}", "    return tinyml_use() ? 0 : 0;\n}")
        .replace('#include "model.h"', '#include "model.h"\nint tinyml_use(void);')
    )
    with pytest.raises(DeviceError, match="linking the firmware") as caught:
        build_firmware(model, "mps2-an386", out_dir=tmp_path / "x")
    assert "no heap" in str(caught.value)
