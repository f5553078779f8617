"""A flash command for tests: "flashes" an image by booting it in QEMU with its UART on a pty.

    python tests/mcu/qemu_serial_board.py --board mps2-an386 --port PATH --pidfile PATH IMAGE.elf

It stands in for ``pyocd flash`` or ``openocd`` in a device file with ``transport: serial``:
like a real flash it resets the board (a QEMU it started before is stopped first) and returns
once the new image runs. The board's UART is a pseudo-terminal, linked at ``--port``, where
the runner opens it with pyserial exactly as it would ``/dev/ttyACM0``. The QEMU process id
is written to ``--pidfile``, so whoever set the board up can stop it.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def stop(pidfile: Path) -> None:
    """Stop the QEMU an earlier flash started, if it still runs."""
    try:
        pid = int(pidfile.read_text())
    except (OSError, ValueError):
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.killpg(pid, signal.SIGKILL)


def main() -> int:
    from tinymlaas_ci.devices.mcu import get_board
    from tinymlaas_ci.devices.mcu.transport import QEMU

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--board", required=True)
    parser.add_argument("--port", required=True, type=Path, help="where the pty is linked")
    parser.add_argument("--pidfile", required=True, type=Path)
    parser.add_argument("image", type=Path)
    args = parser.parse_args()

    stop(args.pidfile)
    log = args.pidfile.with_suffix(".log")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [QEMU, "-M", get_board(args.board).name, "-display", "none", "-monitor", "none"]
            + ["-serial", "pty", "-kernel", str(args.image)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    args.pidfile.write_text(str(proc.pid))
    deadline = time.monotonic() + 30
    while True:
        found = re.search(r"char device redirected to (/dev/pts/\d+)", log.read_text(errors="replace"))
        if found:
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            print(f"QEMU did not start:\n{log.read_text(errors='replace')}", file=sys.stderr)
            stop(args.pidfile)
            return 1
        time.sleep(0.05)
    args.port.unlink(missing_ok=True)
    args.port.symlink_to(found.group(1))
    print(f"flashed {args.image.name} to {args.board}; its UART is {found.group(1)}, linked at {args.port}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
