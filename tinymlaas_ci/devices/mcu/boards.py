"""Board presets: the Cortex-M boards QEMU emulates, as the firmware build needs them.

Each preset holds what the compiler, the linker script, the firmware and QEMU need to know:
the core and its gcc flags, the memory map (where code and data may go and how much there is),
the vector table address the core boots from, the UART the host protocol runs on, and a
default flash/RAM budget typical of a real part with that core. The FPGA boards QEMU models
have megabytes of memory and no wait states; the budgets (``flash_kb``/``ram_kb`` of the
device file) are what make a build realistic, and the linker enforces them.
"""

from __future__ import annotations

from dataclasses import dataclass

from tinymlaas_ci.errors import DeviceError

__all__ = ["BOARDS", "Board", "Region", "get_board"]


@dataclass(frozen=True)
class Region:
    """A contiguous memory of the board: its name in the linker script, base and size."""

    name: str
    origin: int
    size_kb: int

    @property
    def size(self) -> int:
        return self.size_kb * 1024


@dataclass(frozen=True)
class Board:
    """One emulated (or real MPS2/MPS3 FPGA) board."""

    name: str
    """The preset name, also QEMU's ``-M`` machine."""
    description: str
    cpu: str
    """gcc's ``-mcpu`` and QEMU's CPU model."""
    arch: str
    """Architecture as gcc's multilib knows it, for the report."""
    fpu: str | None
    """gcc's ``-mfpu`` (None: let ``-mcpu`` decide, as for Cortex-M55 with MVE)."""
    float_abi: str
    features: tuple[str, ...]
    """ISA extensions the kernels may use: ``dsp`` (SMLAD dual MACs), ``mve`` (Helium)."""
    flash: Region
    """Where code and constant data (weights) go."""
    ram: Region
    """Where the arena, other variables and the stack go."""
    vector_table: int
    """The address the core reads its initial stack pointer and reset vector from."""
    boot: Region | None
    """A separate region for the vector table when it is not at the start of ``flash``."""
    uart_base: int
    """CMSDK APB UART used for the host protocol (QEMU's first serial port)."""
    uart_pclk_hz: int
    clock_mhz: float
    """Core clock of the FPGA image; the default for ``latency_ms_estimate``."""
    default_flash_kb: int
    default_ram_kb: int
    typical_part: str
    """The kind of real part the default budgets stand for."""
    samples: Region | None = None
    """Memory outside the budgets where the QEMU transport preloads test samples (see harness)."""
    secure: bool = False
    """The core boots in the Secure state (Armv8-M with TrustZone): secure aliases are used."""

    @property
    def gcc_flags(self) -> list[str]:
        flags = [f"-mcpu={self.cpu}", "-mthumb", f"-mfloat-abi={self.float_abi}"]
        if self.fpu:
            flags.append(f"-mfpu={self.fpu}")
        return flags

    @property
    def max_flash_kb(self) -> int:
        return self.flash.size_kb + (self.boot.size_kb if self.boot else 0)

    @property
    def max_ram_kb(self) -> int:
        return self.ram.size_kb

    def describe(self) -> dict:
        """The preset as plain data (for results and the site's memory map)."""
        regions = [r for r in (self.boot, self.flash, self.ram) if r is not None]
        return {
            "name": self.name,
            "description": self.description,
            "cpu": self.cpu,
            "arch": self.arch,
            "fpu": self.fpu or "auto",
            "float_abi": self.float_abi,
            "features": list(self.features),
            "gcc_flags": self.gcc_flags,
            "vector_table": f"0x{self.vector_table:08x}",
            "uart_base": f"0x{self.uart_base:08x}",
            "clock_mhz": self.clock_mhz,
            "regions": [{"name": r.name, "origin": f"0x{r.origin:08x}", "size_kb": r.size_kb} for r in regions],
            "samples": (
                None
                if self.samples is None
                else {"origin": f"0x{self.samples.origin:08x}", "size_kb": self.samples.size_kb}
            ),
            "default_flash_kb": self.default_flash_kb,
            "default_ram_kb": self.default_ram_kb,
            "typical_part": self.typical_part,
        }


BOARDS: dict[str, Board] = {
    b.name: b
    for b in (
        Board(
            name="mps2-an386",
            description="MPS2 with the AN386 FPGA image: Cortex-M4 with FPv4-SP and the DSP extension",
            cpu="cortex-m4",
            arch="armv7e-m",
            fpu="fpv4-sp-d16",
            float_abi="hard",
            features=("dsp",),
            flash=Region("FLASH", 0x00000000, 4096),
            ram=Region("RAM", 0x20000000, 4096),
            vector_table=0x00000000,
            boot=None,
            uart_base=0x40004000,
            uart_pclk_hz=25_000_000,
            clock_mhz=25.0,
            default_flash_kb=1024,
            default_ram_kb=192,
            typical_part="Cortex-M4F microcontroller with 1 MiB flash and 192 KiB SRAM",
            samples=Region("SAMPLES", 0x21000000, 16384),
        ),
        Board(
            name="mps2-an500",
            description="MPS2 with the AN500 FPGA image: Cortex-M7 with FPv5-D16 (double precision)",
            cpu="cortex-m7",
            arch="armv7e-m",
            fpu="fpv5-d16",
            float_abi="hard",
            features=("dsp",),
            flash=Region("FLASH", 0x00000000, 4096),
            ram=Region("RAM", 0x20000000, 4096),
            vector_table=0x00000000,
            boot=None,
            uart_base=0x40004000,
            uart_pclk_hz=25_000_000,
            clock_mhz=25.0,
            default_flash_kb=2048,
            default_ram_kb=512,
            typical_part="Cortex-M7 microcontroller with 2 MiB flash and 512 KiB SRAM",
            samples=Region("SAMPLES", 0x60000000, 16384),
        ),
        Board(
            name="mps2-an505",
            description="MPS2 with the AN505 FPGA image (SSE-200): Cortex-M33 with FPv5-SP and DSP, boots Secure",
            cpu="cortex-m33",
            arch="armv8-m.main",
            fpu="fpv5-sp-d16",
            float_abi="hard",
            features=("dsp",),
            flash=Region("FLASH", 0x10000000, 4096),
            ram=Region("RAM", 0x38000000, 4096),
            vector_table=0x10000000,
            boot=None,
            uart_base=0x50200000,
            uart_pclk_hz=20_000_000,
            clock_mhz=20.0,
            default_flash_kb=1024,
            default_ram_kb=256,
            typical_part="Cortex-M33 microcontroller with 1 MiB flash and 256 KiB SRAM",
            samples=Region("SAMPLES", 0x80000000, 16384),
            secure=True,
        ),
        Board(
            name="mps3-an547",
            description="MPS3 with the AN547 FPGA image (SSE-300): Cortex-M55 with Helium (MVE), boots Secure",
            cpu="cortex-m55",
            arch="armv8.1-m.main+mve",
            fpu=None,
            float_abi="hard",
            features=("dsp", "mve"),
            # The core boots from ITCM; the vector table stays there and everything else goes
            # to the 2 MiB code SRAM, with the data in DTCM.
            boot=Region("BOOT", 0x10000000, 1),
            flash=Region("FLASH", 0x11000000, 2048),
            ram=Region("RAM", 0x30000000, 512),
            vector_table=0x10000000,
            uart_base=0x59303000,
            uart_pclk_hz=32_000_000,
            clock_mhz=32.0,
            default_flash_kb=2048,
            default_ram_kb=512,
            typical_part="Cortex-M55 with Helium, 2 MiB code memory and 512 KiB tightly coupled RAM",
            samples=Region("SAMPLES", 0x70000000, 16384),  # the DDR's secure alias
            secure=True,
        ),
    )
}
"""The presets, by name."""


def get_board(name: str) -> Board:
    """The preset called ``name``; an unknown name fails with the list of presets."""
    try:
        return BOARDS[name]
    except KeyError:
        raise DeviceError(
            f"unknown board {name!r}",
            hint=f"use one of: {', '.join(sorted(BOARDS))}",
        ) from None
