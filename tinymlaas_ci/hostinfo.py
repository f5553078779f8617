"""Facts about the machine this process runs on: CPU model and ISA flags, core count, memory,
architecture. Used where results record the device (infer) and where devices are probed
(``tinymlaas device register``). Standard library only."""

from __future__ import annotations

import os
import platform
from contextlib import suppress
from pathlib import Path
from typing import Any, Literal, get_args

__all__ = [
    "ARCH_ALIASES",
    "RELEVANT_FLAGS",
    "arch",
    "arch_hint",
    "canonical_arch",
    "cpu_info",
    "memory_mb",
    "normalise_arch",
    "process_alive",
    "process_start_time",
]

RELEVANT_FLAGS = (
    "sse4_1",
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx_vnni",
    "vnni",
    "neon",
    "asimd",
    "asimddp",
    "asimdhp",
    "fphp",
    "sve",
    "sve2",
    "i8mm",
    "bf16",
    "dotprod",
)
"""CPU flags that change inference speed (plus every ``avx512*`` and ``amx*``); the rest of
``/proc/cpuinfo`` is noise for a latency number."""
_RELEVANT_PREFIXES = ("avx512", "amx")

Arch = Literal["amd64", "arm64", "armv7", "riscv64", "x86", "other"]
"""A device spec's ``arch`` value."""
ARCHES: tuple[str, ...] = get_args(Arch)

_ARCHES: dict[str, Arch] = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "armv7",
    "armv7": "armv7",
    "armhf": "armv7",
    "riscv64": "riscv64",
    "i386": "x86",
    "i686": "x86",
    "x86": "x86",
}


ARCH_ALIASES: dict[str, Arch] = _ARCHES
"""Every spelling of an architecture that a device spec accepts (what ``uname -m``, Docker and
Debian print) -> the name the spec uses. The one table: probing and spec checks both use it."""


def canonical_arch(value: str) -> str | None:
    """``value`` as a device spec's ``arch`` (``x86_64`` -> ``amd64``), or None when unknown."""
    low = str(value).strip().lower()
    if low in ARCHES:
        return low
    return _ARCHES.get(low)


def arch_hint(value: str) -> str:
    """A hint for an unknown ``arch``: the architecture of the nearest known *spelling*, so a typo
    of ``x86_64`` suggests ``amd64`` (what it means), never ``x86`` (another architecture)."""
    import difflib

    spellings = sorted({*ARCHES, *_ARCHES} - {"other"})
    close = difflib.get_close_matches(str(value).strip().lower(), spellings, n=1, cutoff=0.6)
    if close:
        target = canonical_arch(close[0])
        also = f" ({close[0]})" if close[0] != target else ""
        return f"did you mean {target!r}{also}?"
    return "the names uname -m prints work too, e.g. x86_64 (amd64) and aarch64 (arm64)"


def cpu_info(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> dict[str, Any]:
    """``{"cpu_model", "isa_flags", "cpu_count"}`` of this machine (or of a saved cpuinfo file)."""
    model = None
    flags: set[str] = set()
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        value = value.strip()
        # ARM boards name the CPU under "Hardware" or "CPU model"; skip bare numbers ("model: 85").
        if key in ("model name", "hardware", "cpu model") and model is None and value and not value.isdigit():
            model = value
        elif key in ("flags", "features"):
            flags.update(value.split())
    relevant = sorted(f for f in flags if f in RELEVANT_FLAGS or f.startswith(_RELEVANT_PREFIXES) or "vnni" in f)
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count()
    return {"cpu_model": model or platform.processor() or None, "isa_flags": relevant, "cpu_count": count}


def memory_mb() -> int | None:
    """Total memory in MiB."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    except (ValueError, OSError, AttributeError):
        return None


def normalise_arch(machine: str | None) -> str:
    """``platform.machine()`` or an engine's architecture -> a device spec's ``arch`` value."""
    return _ARCHES.get((machine or "").lower(), "other")


def arch() -> str:
    """This machine's architecture as a device spec names it."""
    return normalise_arch(platform.machine())


def process_start_time(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), which tells a live
    process apart from a later one that got the same id; None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces: split after it.
    fields = stat[stat.rindex(")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def process_alive(pid: int, started: int | None = None) -> bool:
    """Whether process ``pid`` runs (and, given ``started``, is the one that started then).
    A zombie counts as gone: it runs nothing and holds no folder."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    with suppress(OSError, ValueError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat[stat.rindex(")") + 2 :].split()[0] in ("Z", "X"):
            return False
    return started is None or process_start_time(pid) in (None, started)
