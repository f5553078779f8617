"""Just enough of an ELF32 little-endian reader to read a firmware image's symbols and constants.

The build reads facts back from the linked image instead of trusting its inputs: the linker's
symbols (where the stack, .data and .bss ended up) and the model's constants (MACs, weight
bytes, quantization), so the numbers reported are those of the binary that runs.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from tinymlaas_ci.errors import DeviceError

__all__ = ["ElfImage", "Section", "Symbol"]

_SHT_SYMTAB = 2
_SHT_NOBITS = 8
_SHF_ALLOC = 0x2


@dataclass(frozen=True)
class Section:
    name: str
    address: int
    size: int
    offset: int
    kind: int
    flags: int

    @property
    def allocated(self) -> bool:
        return bool(self.flags & _SHF_ALLOC)

    @property
    def has_bytes(self) -> bool:
        return self.kind != _SHT_NOBITS


@dataclass(frozen=True)
class Symbol:
    name: str
    value: int
    size: int


class ElfImage:
    """A parsed ELF32 LE file: its sections and symbols, and bytes at a virtual address."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        data = self.path.read_bytes()
        if data[:4] != b"\x7fELF" or data[4] != 1 or data[5] != 1:
            raise DeviceError(f"{self.path} is not a 32-bit little-endian ELF file")
        self._data = data
        (shoff,) = struct.unpack_from("<I", data, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x2E)
        raw = [struct.unpack_from("<IIIIIIIIII", data, shoff + i * shentsize) for i in range(shnum)]
        names = raw[shstrndx]

        def text(table_offset: int, index: int) -> str:
            end = data.index(b"\0", table_offset + index)
            return data[table_offset + index : end].decode("ascii", "replace")

        self.sections = [Section(text(names[4], r[0]), r[3], r[5], r[4], r[1], r[2]) for r in raw]
        self.symbols: dict[str, Symbol] = {}
        for r in raw:
            if r[1] != _SHT_SYMTAB:
                continue
            strtab = raw[r[6]][4]
            for offset in range(r[4], r[4] + r[5], 16):
                name_index, value, size, _info, _other, _shndx = struct.unpack_from("<IIIBBH", data, offset)
                if name_index:
                    name = text(strtab, name_index)
                    self.symbols.setdefault(name, Symbol(name, value, size))

    def symbol(self, name: str) -> Symbol:
        try:
            return self.symbols[name]
        except KeyError:
            raise DeviceError(f"{self.path.name} has no symbol {name!r}") from None

    def read(self, address: int, size: int) -> bytes:
        """``size`` bytes of initialised data at virtual ``address``."""
        for s in self.sections:
            if s.allocated and s.has_bytes and s.address <= address and address + size <= s.address + s.size:
                start = s.offset + address - s.address
                return self._data[start : start + size]
        raise DeviceError(f"{self.path.name}: no initialised section holds 0x{address:08x}+{size}")

    def read_symbol(self, name: str, fmt: str) -> tuple:
        sym = self.symbol(name)
        return struct.unpack("<" + fmt, self.read(sym.value, struct.calcsize("<" + fmt)))
