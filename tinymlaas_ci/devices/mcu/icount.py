"""Build the QEMU TCG plugin that counts the instructions of each marked inference.

The plugin (``plugin/insncount.c``) is compiled with the host's C compiler into a shared
library next to the firmware it measures; a copy is reused while its source is unchanged.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from tinymlaas_ci.errors import DeviceError

__all__ = ["PLUGIN_DIR", "build_plugin"]

PLUGIN_DIR = Path(__file__).with_name("plugin")


def _compiler() -> str:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    raise DeviceError(
        "no host C compiler to build the instruction-count plugin for QEMU",
        hint="install one (Debian: apt-get install gcc) or run without instruction counting",
    )


def build_plugin(dest_dir: str | os.PathLike) -> Path:
    """The path of ``libinsncount-<hash>.so`` in ``dest_dir``, compiled if not there yet."""
    sources = [PLUGIN_DIR / "insncount.c", PLUGIN_DIR / "qemu_plugin_api.h"]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:12]
    dest_dir = Path(dest_dir)
    target = dest_dir / f"libinsncount-{digest}.so"
    if target.is_file():
        return target
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    argv = [
        _compiler(),
        "-shared",
        "-fPIC",
        "-O2",
        "-fvisibility=hidden",
        "-Wall",
        f"-I{PLUGIN_DIR}",
        "-o",
        str(tmp),
        str(sources[0]),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise DeviceError(f"building the QEMU instruction-count plugin failed:\n{proc.stderr.strip()}")
    os.replace(tmp, target)
    return target
