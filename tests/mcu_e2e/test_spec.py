"""The spec rules of ``runtime: c`` and the ``mcu`` device kind, through ``tinymlaas validate``."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from tinymlaas_ci.spec.models import McuDevice, RunSpec

RUN = {
    "schema": 1,
    "model": {"upload": "uploads/m/model.onnx"},
    "dataset": {"upload": "uploads/d/data.zip"},
    "runtime": "c",
}


def test_runtime_c_needs_static_int8():
    with pytest.raises(ValidationError, match="runtime 'c' runs static-int8 models only, not quantization 'fp16'"):
        RunSpec.model_validate({**RUN, "compression": {"quantization": "fp16"}})
    spec = RunSpec.model_validate({**RUN, "compression": {"quantization": "static-int8"}})
    assert spec.runtime.value == "c"


def test_an_mcu_device_names_a_preset_and_serial_needs_a_port():
    dev = McuDevice.model_validate({"schema": 1, "kind": "mcu", "board": "mps3-an547"})
    assert dev.transport == "qemu" and dev.flash_kb is None and dev.stack_bytes == 8192
    with pytest.raises(ValidationError, match="mps2-an386"):
        McuDevice.model_validate({"schema": 1, "kind": "mcu", "board": "esp32"})
    with pytest.raises(ValidationError, match="transport 'serial' needs the board's serial port"):
        McuDevice.model_validate({"schema": 1, "kind": "mcu", "board": "mps2-an386", "transport": "serial"})
    real = McuDevice.model_validate(
        {
            "schema": 1,
            "kind": "mcu",
            "board": "mps2-an386",
            "transport": "serial",
            "serial": {"port": "/dev/ttyACM0", "flash_command": "pyocd flash {hex}"},
        }
    )
    assert real.serial.baudrate == 115200


def test_validate_refuses_an_mcu_device_with_another_runtime(tmp_path):
    (tmp_path / "devices").mkdir()
    (tmp_path / "devices" / "m4.yaml").write_text("schema: 1\nkind: mcu\nboard: mps2-an386\n")
    (tmp_path / "uploads" / "m").mkdir(parents=True)
    (tmp_path / "uploads" / "m" / "model.onnx").write_bytes(b"x")
    (tmp_path / "uploads" / "d").mkdir(parents=True)
    (tmp_path / "uploads" / "d" / "data.zip").write_bytes(b"x")
    (tmp_path / "runs" / "p").mkdir(parents=True)
    # runtime: auto deploys C on a microcontroller, so it needs static-int8 there.
    for name, quantization, runtime in (
        ("ort", "static-int8", "onnxruntime"),
        ("c", "static-int8", "c"),
        ("auto", "static-int8", "auto"),
        ("auto-fp16", "fp16", "auto"),
    ):
        (tmp_path / "runs" / "p" / f"{name}.yaml").write_text(
            "schema: 1\nmodel: {upload: uploads/m/model.onnx}\ndataset: {upload: uploads/d/data.zip}\n"
            f"compression: {{quantization: {quantization}}}\nruntime: {runtime}\ndevice: m4\n"
        )
    out = subprocess.run(
        [sys.executable, "-m", "tinymlaas_ci", "-C", str(tmp_path), "validate"], capture_output=True, text=True
    )
    assert out.returncode == 1
    assert out.stdout.splitlines() == [
        "runs/p/auto-fp16.yaml:4:29: device 'm4' is a microcontroller (mps2-an386): runtime 'auto' deploys "
        "generated C there, which runs static-int8 models only, not 'fp16' "
        "(set 'compression.quantization: static-int8')",
        "runs/p/ort.yaml:5:10: device 'm4' is a microcontroller (mps2-an386): it needs runtime 'c', not "
        "'onnxruntime' (set 'runtime: c' and 'compression.quantization: static-int8')",
    ], out.stdout


def test_device_check_of_an_emulated_board_probes_the_runner(tmp_path):
    import shutil as sh

    from tinymlaas_ci.devices.registry import check

    (tmp_path / "devices").mkdir()
    (tmp_path / "devices" / "m55.yaml").write_text("schema: 1\nkind: mcu\nboard: mps3-an547\n")
    (tmp_path / "devices" / "lab.yaml").write_text(
        "schema: 1\nkind: mcu\nboard: mps2-an386\ntransport: serial\nserial: {port: /dev/tinymlaas-no-such-port}\n"
    )
    findings = check(tmp_path, "m55")
    messages = [f.message for f in findings]
    assert messages[0] == "devices/m55.yaml is valid (mcu, other)"
    have = bool(sh.which("arm-none-eabi-gcc")) and bool(sh.which("qemu-system-arm"))
    assert any(m.startswith("toolchain on the runner: ") for m in messages) == bool(sh.which("arm-none-eabi-gcc"))
    assert all(f.level == "ok" for f in findings) == (have and bool(sh.which("cc") or sh.which("gcc")))
    lab = check(tmp_path, "lab")
    assert [f.message for f in lab if f.level == "error"][
        -1
    ] == "serial port /dev/tinymlaas-no-such-port does not exist"
    assert not any(m.startswith("emulator") for m in (f.message for f in lab))
