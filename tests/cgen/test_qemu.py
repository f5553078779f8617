"""The Arm kernel paths on emulated Cortex-M cores: the generated C, cross-compiled with
arm-none-eabi-gcc for a Cortex-M4 (DSP: SMLAD), a Cortex-M33 (DSP) and a Cortex-M55 (Helium
MVE), runs bare-metal under QEMU and must reproduce the numpy reference's int8 outputs exactly.

The firmware here is the smallest that can run the model: a vector table, a reset handler that
copies .data, zeroes .bss and enables the FPU/MVE coprocessors, and a main that compares the
outputs with the expected ones and reports through semihosting (the exit status reaches QEMU).
A missing toolchain or QEMU skips on a laptop and fails under ``CI=true``.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import torch
from torch import nn

from tests.cgen.conftest import quantized, random_inputs, reference_outputs
from tests.docker_support import unavailable
from tinymlaas_ci.ml.cgen import generate_from_graph
from tinymlaas_ci.ml.cgen.parse import load_graph

BOARDS = {
    # board: (cpu flags, expected kernel path, code origin, code size, RAM origin, RAM size)
    "mps2-an386": (["-mcpu=cortex-m4", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"], "dsp", 0x0, "4M", 0x20000000, "4M"),
    "mps2-an505": (["-mcpu=cortex-m33", "-mfloat-abi=hard"], "dsp", 0x10000000, "2M", 0x38000000, "2M"),
    "mps3-an547": (["-mcpu=cortex-m55", "-mfloat-abi=hard"], "mve", 0x10000000, "512K", 0x30000000, "512K"),
}

STARTUP = r"""
#include <stdint.h>
extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;
int main(void);
static int semihost(int op, const void *arg) {
    register int r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}
void tinyml_test_print(const char *s) { semihost(0x04, s); }
void tinyml_test_exit(int ok) { semihost(0x18, (const void *)(ok ? 0x20026u : 0x20023u)); for (;;) {} }
void Reset_Handler(void) {
    uint32_t *src = &_sidata, *dst = &_sdata;
    while (dst < &_edata) *dst++ = *src++;
    for (dst = &_sbss; dst < &_ebss;) *dst++ = 0;
    /* CP10/CP11 full access: the FPU, and MVE on Armv8.1-M. */
    *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20;
    __asm__ volatile("dsb\n isb");
    tinyml_test_exit(main() == 0);
}
static void Default_Handler(void) { tinyml_test_print("fault\n"); tinyml_test_exit(0); }
__attribute__((section(".vectors"), used)) static const void *const vectors[16] = {
    &_estack, (const void *)Reset_Handler, (const void *)Default_Handler, (const void *)Default_Handler,
    (const void *)Default_Handler, (const void *)Default_Handler, (const void *)Default_Handler,
};
"""

LINK = """
MEMORY {{ CODE (rx) : ORIGIN = {code:#x}, LENGTH = {code_size}
         RAM (rwx) : ORIGIN = {ram:#x}, LENGTH = {ram_size} }}
_estack = ORIGIN(RAM) + LENGTH(RAM);
SECTIONS {{
  .text : {{ KEEP(*(.vectors)) *(.text*) *(.rodata*) . = ALIGN(4); }} > CODE
  .data : {{ _sdata = .; *(.data*) . = ALIGN(4); _edata = .; }} > RAM AT > CODE
  _sidata = LOADADDR(.data);
  .bss (NOLOAD) : {{ _sbss = .; *(.bss*) *(COMMON) . = ALIGN(4); _ebss = .; }} > RAM
}}
"""


class Mixed(nn.Module):
    """Every kernel once: conv, grouped and depthwise conv, add, concat, max/avg pooling, Gemm."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1)
        self.group = nn.Conv2d(8, 8, 3, 2, 1, groups=2)
        self.dw = nn.Conv2d(8, 8, 3, 1, 1, groups=8)
        self.pw = nn.Conv2d(8, 8, 1)
        self.side = nn.Conv2d(8, 5, 1)
        # 13 channels: a depthwise kernel's whole vectors and a tail, on every path.
        self.dw2 = nn.Conv2d(13, 13, 3, 1, 1, groups=13)
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.fc = nn.Linear(13 * 3 * 3, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.group(x))
        y = self.pw(torch.relu(self.dw(x)))
        x = torch.relu(x + y)
        x = torch.cat([x, self.side(x)], dim=1)
        x = self.avg(self.pool(torch.relu(self.dw2(x))))
        return self.fc(torch.flatten(x, 1))


def _c_array(name: str, values: np.ndarray) -> str:
    return f"static const int8_t {name}[{values.size}] = {{{', '.join(str(int(v)) for v in values.reshape(-1))}}};\n"


@pytest.fixture(scope="module")
def firmware_model(tmp_path_factory):
    for tool in ("arm-none-eabi-gcc", "qemu-system-arm"):
        if shutil.which(tool) is None:
            unavailable(
                f"{tool} is not installed: apt-get install --no-install-recommends gcc-arm-none-eabi "
                "libnewlib-arm-none-eabi qemu-system-arm"
            )
    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("qemu")
    graph = load_graph(quantized(Mixed(), (3, 12, 12), tmp))
    info = generate_from_graph(graph, tmp / "c")
    xs = random_inputs(graph, 4, seed=3)
    want = reference_outputs(graph, xs)
    assert np.ptp(want.astype(int)) > 0
    main = ['#include "model.h"\n', "void tinyml_test_print(const char *s);\n"]
    main += [_c_array("inputs", xs), _c_array("expected", want)]
    main.append(
        f"""
int main(void) {{
    static int8_t out[TINYML_OUTPUT_SIZE];
    int s, i, bad = 0;
    for (s = 0; s < {len(xs)}; s++) {{
        if (tinyml_model_run(inputs + s * TINYML_INPUT_SIZE, out) != 0) return 1;
#ifdef TINYML_TEST_SABOTAGE
        out[0] ^= 1; /* proves that a wrong output is reported */
#endif
        for (i = 0; i < TINYML_OUTPUT_SIZE; i++) bad += out[i] != expected[s * TINYML_OUTPUT_SIZE + i];
    }}
    tinyml_test_print(bad ? "MISMATCH\\n" : "MATCH\\n");
    tinyml_test_print(tinyml_kernel_path);
    tinyml_test_print("\\n");
    return bad;
}}
"""
    )
    (tmp / "main.c").write_text("".join(main))
    (tmp / "startup.c").write_text(STARTUP)
    return tmp, info


def _run(tmp, board: str, *extra: str) -> subprocess.CompletedProcess:
    flags, _path, code, code_size, ram, ram_size = BOARDS[board]
    ld = tmp / f"{board}.ld"
    ld.write_text(LINK.format(code=code, code_size=code_size, ram=ram, ram_size=ram_size))
    elf = tmp / f"{board}{''.join(extra)}.elf"
    cmd = ["arm-none-eabi-gcc", *flags, *extra, "-mthumb", "-O2", "-std=c99", "-Wall", "-Werror", "-ffunction-sections"]
    cmd += ["-fdata-sections", "-nostartfiles", f"-T{ld}", "-Wl,--gc-sections", f"-I{tmp / 'c'}"]
    cmd += [str(tmp / "startup.c"), str(tmp / "main.c"), str(tmp / "c" / "model.c"), "-o", str(elf), "-lc", "-lgcc"]
    subprocess.run(cmd, check=True)
    qemu = ["qemu-system-arm", "-M", board, "-nographic", "-monitor", "none", "-serial", "none"]
    qemu += ["-semihosting-config", "enable=on,target=native", "-kernel", str(elf)]
    return subprocess.run(qemu, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_the_arm_kernels_match_the_reference_under_qemu(firmware_model, board):
    tmp, _info = firmware_model
    proc = _run(tmp, board)
    # Semihosting console output arrives on QEMU's stderr.
    assert proc.stderr.split() == ["MATCH", BOARDS[board][1]], (proc.returncode, proc.stdout, proc.stderr)
    assert proc.returncode == 0


def test_a_wrong_output_fails_the_firmware(firmware_model):
    tmp, _info = firmware_model
    proc = _run(tmp, "mps2-an386", "-DTINYML_TEST_SABOTAGE")
    assert proc.stderr.split()[0] == "MISMATCH" and proc.returncode != 0
