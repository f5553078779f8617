"""Build the firmware for one board from a generated model folder, within flash and RAM budgets.

:func:`build_firmware` compiles the model (``model.h``, ``model.c`` and any other ``.c`` in
its folder) with the firmware in ``firmware/`` for a board preset, writes a linker script whose
FLASH and RAM regions are exactly the device's ``flash_kb`` and ``ram_kb`` budgets, links, and
reads the sizes back from the linked image. The linker enforces the budgets: a model that does
not fit fails here, naming the region, what it needs and what the board has.

Layout of RAM, lowest address first: the stack (so an overflow runs off the bottom of RAM, and
on Armv8-M hits the stack limit register), then ``.data``, then ``.bss`` (the model's arena).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tinymlaas_ci.devices.mcu.boards import Board, get_board
from tinymlaas_ci.devices.mcu.elf import ElfImage
from tinymlaas_ci.errors import DeviceError
from tinymlaas_ci.fs import atomic_write_text, canonical_json

__all__ = ["FIRMWARE_DIR", "FIRMWARE_JSON", "FirmwareInfo", "build_firmware", "linker_script", "toolchain_version"]

FIRMWARE_DIR = Path(__file__).with_name("firmware")
"""The board-independent firmware sources (startup, UART driver, protocol loop)."""

GCC = "arm-none-eabi-gcc"
_INSTALL_HINT = (
    "install the Arm embedded toolchain: apt-get install --no-install-recommends "
    "gcc-arm-none-eabi libnewlib-arm-none-eabi"
)
_FLASH_SECTIONS = (".vectors", ".text", ".rodata", ".ARM.extab", ".ARM.exidx", ".init_array", ".fini_array")
_OVERFLOW_RE = re.compile(r"region [`'](\w+)' overflowed by (\d+) bytes")
_DEFAULT_STACK_BYTES = 8 * 1024
_TIMEOUT = 600
FIRMWARE_JSON = "firmware.json"


@dataclass
class FirmwareInfo:
    """What was built and how big it is. Sizes are bytes, read from the linked image."""

    board: str
    elf: str
    bin: str
    hex: str
    flash_budget_bytes: int
    ram_budget_bytes: int
    flash_bytes: int
    """Everything the image puts in flash: vectors, code, constants, .data's initial values."""
    model_flash_bytes: int
    """The model's share of ``flash_bytes``: its code and its weights."""
    weights_bytes: int
    """``tinyml_weights_bytes`` of the model: its constant tensors."""
    ram_bytes: int
    """Static RAM: .data + .bss (the arena and the firmware's buffers), without the stack."""
    model_ram_bytes: int
    """The model's share of ``ram_bytes`` (its arena and any other variables)."""
    arena_bytes: int
    stack_bytes: int
    """Stack reserved in RAM by the linker script (the measured high-water is a run result)."""
    input_size: int
    output_size: int
    macs: int
    input_scale: float
    input_zero_point: int
    output_scale: float
    output_zero_point: int
    marker_begin: int
    marker_end: int
    toolchain: str
    cflags: list[str]
    sections: list[dict] = field(default_factory=list)
    """Allocated sections of the image: name, address, size, region."""
    regions: list[dict] = field(default_factory=list)
    """The linker script's memory regions with their budget and use."""

    def to_dict(self) -> dict:
        """Plain data; the image paths are file names relative to the firmware's folder."""
        data = asdict(self)
        for key in ("elf", "bin", "hex"):
            data[key] = Path(data[key]).name
        return data

    @classmethod
    def from_dict(cls, data: dict, folder: str | os.PathLike) -> FirmwareInfo:
        """The inverse of :meth:`to_dict`, with the image files found in ``folder``."""
        data = dict(data)
        for key in ("elf", "bin", "hex"):
            data[key] = str(Path(folder) / data[key])
        return cls(**data)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> FirmwareInfo:
        """The firmware :func:`build_firmware` wrote to ``folder`` (its ``firmware.json``).

        The folder may have moved since the build (another stage's volume, another machine).
        """
        path = Path(folder) / FIRMWARE_JSON
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DeviceError(f"cannot read {path}: {exc}", hint="run the install stage first") from exc
        info = cls.from_dict(data, folder)
        if not Path(info.elf).is_file():
            raise DeviceError(f"{path} names {info.elf}, which does not exist")
        return info


def toolchain_version() -> str:
    """``arm-none-eabi-gcc`` version line; fails with how to install it when it is missing."""
    gcc = shutil.which(GCC)
    if gcc is None:
        raise DeviceError(f"{GCC} is not installed on this machine", hint=_INSTALL_HINT)
    out = subprocess.run([gcc, "--version"], capture_output=True, text=True, timeout=60)
    return out.stdout.splitlines()[0].strip() if out.stdout else GCC


def _regions(board: Board, flash_kb: int, ram_kb: int) -> list[tuple[str, str, int, int]]:
    """(name, attributes, origin, length) of the script's MEMORY, the budgets applied."""
    flash = flash_kb * 1024
    out = []
    if board.boot is not None:
        out.append((board.boot.name, "rx", board.boot.origin, board.boot.size))
        flash -= board.boot.size
    out.append((board.flash.name, "rx", board.flash.origin, flash))
    out.append((board.ram.name, "rwx", board.ram.origin, ram_kb * 1024))
    return out


def linker_script(board: Board, flash_kb: int, ram_kb: int, stack_bytes: int) -> str:
    """The GNU ld script for ``board`` with regions of exactly the budgets."""
    memory = "\n".join(
        f"  {name} ({attrs}) : ORIGIN = 0x{origin:08x}, LENGTH = {length}"
        for name, attrs, origin, length in _regions(board, flash_kb, ram_kb)
    )
    vectors = board.boot.name if board.boot is not None else board.flash.name
    return f"""/* Generated for {board.name}: flash budget {flash_kb} KiB, RAM budget {ram_kb} KiB. */
ENTRY(Reset_Handler)
MEMORY
{{
{memory}
}}
SECTIONS
{{
  .vectors : {{ KEEP(*(.vectors)) }} > {vectors}
  .text : ALIGN(4) {{ *(.text .text.*) *(.glue_7) *(.glue_7t) *(.vfp11_veneer) *(.v4_bx) }} > FLASH
  .rodata : ALIGN(4) {{ KEEP(*(.rodata.tinyml_facts)) *(.rodata .rodata.*) . = ALIGN(4); }} > FLASH
  .ARM.extab : {{ *(.ARM.extab* .gnu.linkonce.armextab.*) }} > FLASH
  .ARM.exidx : {{ *(.ARM.exidx* .gnu.linkonce.armexidx.*) }} > FLASH
  .init_array : {{ KEEP(*(SORT(.init_array.*))) KEEP(*(.init_array)) }} > FLASH
  .fini_array : {{ KEEP(*(SORT(.fini_array.*))) KEEP(*(.fini_array)) }} > FLASH
  .stack (NOLOAD) : ALIGN(8)
  {{
    __stack_bottom = .;
    . = . + {stack_bytes};
    . = ALIGN(8);
    __stack_top = .;
  }} > RAM
  .data : ALIGN(4)
  {{
    __data_start = .;
    *(.data .data.*)
    . = ALIGN(4);
    __data_end = .;
  }} > RAM AT > FLASH
  __data_load = LOADADDR(.data);
  .bss (NOLOAD) : ALIGN(4)
  {{
    __bss_start = .;
    *(.bss .bss.*)
    *(COMMON)
    . = ALIGN(4);
    __bss_end = .;
  }} > RAM
  __flash_end = LOADADDR(.data) + SIZEOF(.data);
}}
"""


def _run(argv: list[str], what: str, cwd: Path) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=_TIMEOUT)
    except FileNotFoundError as exc:
        raise DeviceError(f"{argv[0]} is not installed", hint=_INSTALL_HINT) from exc
    except subprocess.TimeoutExpired as exc:
        raise DeviceError(f"{what} took longer than {_TIMEOUT} s: {' '.join(argv)}") from exc
    return proc


def _overflow_error(board: Board, stderr: str, flash_kb: int, ram_kb: int, stack_bytes: int) -> DeviceError | None:
    found = {m.group(1): int(m.group(2)) for m in _OVERFLOW_RE.finditer(stderr)}
    if not found:
        return None
    parts = []
    for region, over in found.items():
        if region == "RAM":
            have = ram_kb * 1024
            parts.append(
                f"needs {_kib(have + over)} KiB of RAM, the board has {ram_kb} KiB "
                f"(over by {over} bytes; the stack reserves {stack_bytes} bytes of it)"
            )
        else:
            have = flash_kb * 1024
            parts.append(f"needs {_kib(have + over)} KiB of flash, the board has {flash_kb} KiB (over by {over} bytes)")
    return DeviceError(
        f"the model does not fit on {board.name}: " + "; ".join(parts),
        hint="raise flash_kb/ram_kb if the part has more, or shrink the model (pruning, a smaller "
        "architecture, int8 quantization)",
    )


def _kib(nbytes: int) -> str:
    return f"{nbytes / 1024:.1f}".rstrip("0").rstrip(".")


def _map_sizes(map_path: Path, model_objects: set[str]) -> tuple[int, int]:
    """(flash, RAM) bytes of the model's objects, from the linker's map file."""
    flash = ram = 0
    output = None
    pending = None
    started = False
    for line in map_path.read_text(errors="replace").splitlines():
        if not started:
            started = line.startswith("Linker script and memory map")
            continue
        if line and not line[0].isspace():
            output = line.split()[0]
            continue
        parts = line.split()
        if len(parts) == 1 and line.startswith(" ") and not line.startswith("  "):
            pending = parts[0]
            continue
        if pending is not None and len(parts) >= 3 and parts[0].startswith("0x"):
            parts = [pending, *parts]
        pending = None
        if len(parts) < 4 or not parts[1].startswith("0x") or not parts[2].startswith("0x"):
            continue
        path = " ".join(parts[3:])
        if path not in model_objects:
            continue
        size = int(parts[2], 16)
        if output in _FLASH_SECTIONS:
            flash += size
        elif output == ".data":
            flash += size
            ram += size
        elif output == ".bss":
            ram += size
    return flash, ram


def build_firmware(
    model_dir: str | os.PathLike,
    board: str | Board,
    flash_kb: int | None = None,
    ram_kb: int | None = None,
    out_dir: str | os.PathLike = "firmware",
    *,
    stack_bytes: int = _DEFAULT_STACK_BYTES,
    opt: str = "-O2",
    extra_cflags: tuple[str, ...] = (),
    baud: int = 115200,
) -> FirmwareInfo:
    """Compile and link the firmware for ``board`` in ``out_dir``; fail if it exceeds the budgets.

    ``model_dir`` holds the generated ``model.h`` and ``model.c`` (and any other ``.c``);
    ``flash_kb``/``ram_kb`` default to the board's typical part. The result is also written to
    ``out_dir/firmware.json``.
    """
    preset = board if isinstance(board, Board) else get_board(board)
    flash_kb = preset.default_flash_kb if flash_kb is None else int(flash_kb)
    ram_kb = preset.default_ram_kb if ram_kb is None else int(ram_kb)
    _check_budgets(preset, flash_kb, ram_kb, stack_bytes)
    model_dir = Path(model_dir).resolve()
    if not (model_dir / "model.h").is_file() or not (model_dir / "model.c").is_file():
        raise DeviceError(
            f"{model_dir} has no model.h and model.c",
            hint="the compile stage's 'runtime: c' writes them; build from its output folder",
        )
    version = toolchain_version()
    out = Path(out_dir).resolve()
    obj_dir = out / "obj"
    model_obj_dir = obj_dir / "model"
    for d in (obj_dir, model_obj_dir):
        d.mkdir(parents=True, exist_ok=True)
    cflags = [
        *preset.gcc_flags,
        opt,
        "-g",
        "-std=gnu11",
        "-ffunction-sections",
        "-fdata-sections",
        "-fno-common",
        "-Wall",
        f"-DTINYML_UART_BASE=0x{preset.uart_base:08x}u",
        f"-DTINYML_UART_PCLK_HZ={preset.uart_pclk_hz}u",
        f"-DTINYML_BAUD={baud}u",
        "-DTINYML_BOARD_" + re.sub(r"\W", "_", preset.name).upper(),
        *(
            [f"-DTINYML_SAMPLE_BASE=0x{preset.samples.origin:08x}u", f"-DTINYML_SAMPLE_BYTES={preset.samples.size}u"]
            if preset.samples is not None
            else []
        ),
        *extra_cflags,
    ]
    includes = [f"-I{model_dir}", f"-I{FIRMWARE_DIR}"]
    objects = []
    model_objects = set()
    sources = [(src, model_obj_dir) for src in sorted(model_dir.glob("*.c"))]
    sources += [(src, obj_dir) for src in sorted(FIRMWARE_DIR.glob("*.c"))]
    for src, dest in sources:
        obj = dest / (src.stem + ".o")
        proc = _run([GCC, *cflags, *includes, "-c", str(src), "-o", str(obj)], f"compiling {src.name}", out)
        if proc.returncode != 0:
            raise DeviceError(
                f"compiling {src.name} for {preset.name} failed:\n{proc.stderr.strip()}",
                hint="the generated model must be C99 with the tinyml_model_run interface of model.h",
            )
        objects.append(str(obj))
        if dest is model_obj_dir:
            model_objects.add(str(obj))
    script = out / "link.ld"
    atomic_write_text(script, linker_script(preset, flash_kb, ram_kb, stack_bytes))
    elf = out / "firmware.elf"
    map_path = out / "firmware.map"
    proc = _run(
        [
            GCC,
            *preset.gcc_flags,
            "--specs=nano.specs",
            "-nostartfiles",
            f"-T{script}",
            "-Wl,--gc-sections",
            f"-Wl,-Map={map_path}",
            "-o",
            str(elf),
            *objects,
            "-Wl,--start-group",
            "-lc",
            "-lm",
            "-lgcc",
            "-Wl,--end-group",
        ],
        "linking",
        out,
    )
    if proc.returncode != 0:
        overflow = _overflow_error(preset, proc.stderr, flash_kb, ram_kb, stack_bytes)
        if overflow is not None:
            raise overflow
        hint = None
        if "_sbrk" in proc.stderr or "malloc" in proc.stderr:
            hint = "the firmware has no heap: the model must use its static arena, not malloc"
        raise DeviceError(f"linking the firmware for {preset.name} failed:\n{proc.stderr.strip()}", hint=hint)
    bin_path, hex_path = out / "firmware.bin", out / "firmware.hex"
    for fmt, path in (("binary", bin_path), ("ihex", hex_path)):
        proc = _run(["arm-none-eabi-objcopy", "-O", fmt, str(elf), str(path)], "objcopy", out)
        if proc.returncode != 0:
            raise DeviceError(f"arm-none-eabi-objcopy -O {fmt} failed:\n{proc.stderr.strip()}")
    info = _describe(preset, elf, bin_path, hex_path, map_path, model_objects, flash_kb, ram_kb, version, cflags)
    atomic_write_text(out / FIRMWARE_JSON, canonical_json(info.to_dict()))
    return info


def _check_budgets(board: Board, flash_kb: int, ram_kb: int, stack_bytes: int) -> None:
    if not 0 < flash_kb <= board.max_flash_kb:
        raise DeviceError(
            f"flash_kb={flash_kb} is outside what {board.name} has (1..{board.max_flash_kb} KiB)",
            hint="set flash_kb to the flash of the real part the board stands for",
        )
    if not 0 < ram_kb <= board.max_ram_kb:
        raise DeviceError(
            f"ram_kb={ram_kb} is outside what {board.name} has (1..{board.max_ram_kb} KiB)",
            hint="set ram_kb to the SRAM of the real part the board stands for",
        )
    if board.boot is not None and flash_kb <= board.boot.size_kb:
        raise DeviceError(f"flash_kb={flash_kb} leaves no room for code on {board.name}")
    if stack_bytes < 1024 or stack_bytes % 8:
        raise DeviceError(f"stack_bytes={stack_bytes} must be a multiple of 8 and at least 1024")


def _describe(
    board: Board,
    elf_path: Path,
    bin_path: Path,
    hex_path: Path,
    map_path: Path,
    model_objects: set[str],
    flash_kb: int,
    ram_kb: int,
    version: str,
    cflags: list[str],
) -> FirmwareInfo:
    elf = ElfImage(elf_path)
    sym = {
        name: elf.symbol(name).value
        for name in (
            "__stack_bottom",
            "__stack_top",
            "__data_start",
            "__data_end",
            "__bss_start",
            "__bss_end",
            "__flash_end",
            "tinyml_mark_begin",
            "tinyml_mark_end",
        )
    }
    input_size, output_size, arena, _protocol = elf.read_symbol("tinyml_fw_facts", "IIII")
    (macs,) = elf.read_symbol("tinyml_macs", "I")
    (weights,) = elf.read_symbol("tinyml_weights_bytes", "I")
    (in_scale,) = elf.read_symbol("tinyml_input_scale", "f")
    (in_zp,) = elf.read_symbol("tinyml_input_zero_point", "i")
    (out_scale,) = elf.read_symbol("tinyml_output_scale", "f")
    (out_zp,) = elf.read_symbol("tinyml_output_zero_point", "i")
    vectors = next(s for s in elf.sections if s.name == ".vectors")
    flash_bytes = sym["__flash_end"] - board.flash.origin
    if board.boot is not None:
        flash_bytes += vectors.size
    ram_static = sym["__bss_end"] - sym["__stack_top"]
    model_flash, model_ram = _map_sizes(map_path, model_objects)
    regions_used = {
        board.flash.name: sym["__flash_end"] - board.flash.origin,
        board.ram.name: sym["__bss_end"] - board.ram.origin,
    }
    if board.boot is not None:
        regions_used[board.boot.name] = vectors.size
    regions = [
        {"name": name, "origin": f"0x{origin:08x}", "length": length, "used": regions_used.get(name, 0)}
        for name, _attrs, origin, length in _regions(board, flash_kb, ram_kb)
    ]
    sections = []
    for s in elf.sections:
        if not s.allocated or s.size == 0:
            continue
        region = next(
            (r["name"] for r in regions if int(r["origin"], 16) <= s.address < int(r["origin"], 16) + r["length"]),
            None,
        )
        sections.append({"name": s.name, "address": f"0x{s.address:08x}", "size": s.size, "region": region})
    return FirmwareInfo(
        board=board.name,
        elf=str(elf_path),
        bin=str(bin_path),
        hex=str(hex_path),
        flash_budget_bytes=flash_kb * 1024,
        ram_budget_bytes=ram_kb * 1024,
        flash_bytes=flash_bytes,
        model_flash_bytes=model_flash,
        weights_bytes=weights,
        ram_bytes=ram_static,
        model_ram_bytes=model_ram,
        arena_bytes=arena,
        stack_bytes=sym["__stack_top"] - sym["__stack_bottom"],
        input_size=input_size,
        output_size=output_size,
        macs=macs,
        input_scale=in_scale,
        input_zero_point=in_zp,
        output_scale=out_scale,
        output_zero_point=out_zp,
        marker_begin=sym["tinyml_mark_begin"] & ~1,
        marker_end=sym["tinyml_mark_end"] & ~1,
        toolchain=version,
        cflags=cflags,
        sections=sections,
        regions=regions,
    )
