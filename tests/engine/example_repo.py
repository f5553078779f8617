"""A copy of the example repository (digits specs, devices, pipelines, uploads) in a temp dir."""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def copy_example(dest: Path) -> Path:
    # pytest's temp folders are private (0700); the Docker sandbox user must read the checkout.
    dest.mkdir(parents=True, exist_ok=True)
    dest.chmod(0o755)
    for name in ("devices", "pipelines", "uploads"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("results"))
    (dest / "runs" / "digits").mkdir(parents=True)
    for spec in (ROOT / "runs" / "digits").glob("*.yaml"):
        shutil.copy2(spec, dest / "runs" / "digits" / spec.name)
    return dest
