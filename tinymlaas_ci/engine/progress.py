"""Progress display: a live status line in a terminal, grouped lines in GitHub Actions logs,
plain prefixed lines elsewhere (pipes, files, CI systems)."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import TextIO

from tinymlaas_ci.actions import workflow_command

__all__ = ["Progress", "detect_mode"]

_SPIN = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
_MARK = {"generated": "✓", "cached": "↺", "failed": "✗", "skipped": "·"}


def detect_mode(stream: TextIO) -> str:
    if os.environ.get("GITHUB_ACTIONS") == "true":
        return "github"
    if stream.isatty() and os.environ.get("TERM") != "dumb":
        return "tty"
    return "plain"


class Progress:
    """Receives engine events and shows them. ``verbose`` also shows every line stages print
    (always kept in the stage's ``log.txt``).

    Events may come from several threads (``tinymlaas run --jobs N``). Then ``parallel`` is
    set: every line names its run and stage, GitHub log groups (which cannot interleave) are
    not used, and the terminal's status line lists every running stage."""

    def __init__(self, stream: TextIO | None = None, mode: str | None = None, verbose: bool = False):
        self.stream = stream or sys.stderr
        self.mode = mode or detect_mode(self.stream)
        self.verbose = verbose
        self._lock = threading.Lock()
        self.parallel = False
        self._running: dict[tuple[str, str], float] = {}
        self._current: tuple[str, str, float] | None = None
        self._last_line = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self.mode == "tty":
            self._thread = threading.Thread(target=self._spin, daemon=True)
            self._thread.start()

    # -- events --------------------------------------------------------------------------------
    def message(self, text: str) -> None:
        with self._lock:
            self._clear()
            if self.mode == "github" and text.startswith("warning:"):
                self.stream.write(workflow_command("warning", text[len("warning:") :].strip()) + "\n")
            else:
                self.stream.write(text + "\n")
            self.stream.flush()

    def stage_started(self, run_id: str, stage: str) -> None:
        with self._lock:
            self._current = (run_id, stage, time.monotonic())
            self._running[(run_id, stage)] = self._current[2]
            self._last_line = ""
            if self.parallel:
                if self.mode != "tty":
                    self.stream.write(f"[{run_id}] {stage}: running\n")
            elif self.mode == "github":
                self.stream.write(workflow_command("group", f"{run_id} · {stage}") + "\n")
            elif self.mode == "plain":
                self.stream.write(f"[{run_id}] {stage}: running\n")
            self.stream.flush()

    def stage_line(self, run_id: str, stage: str, line: str) -> None:
        with self._lock:
            self._last_line = line
            if self.parallel and (self.mode == "github" or self.verbose):
                self._clear()
                self.stream.write(f"  [{run_id} {stage}] {line}\n")
            elif self.mode == "github":
                self.stream.write(line + "\n")
            elif self.verbose:
                self._clear()
                self.stream.write(f"  {line}\n")
            else:
                return
            self.stream.flush()

    def stage_finished(self, run_id: str, stage: str, outcome: str, seconds: float | None, note: str = "") -> None:
        with self._lock:
            self._clear()
            started = self._running.pop((run_id, stage), None)
            if self.mode == "github" and not self.parallel and started is not None:
                self.stream.write(workflow_command("endgroup") + "\n")
            self._current = None
            took = f" {seconds:.1f}s" if seconds is not None else ""
            extra = f" ({note})" if note else ""
            word = {"cached": "cached, skipped", "generated": "done", "failed": "FAILED", "skipped": "skipped"}[outcome]
            self.stream.write(f"{_MARK[outcome]} {run_id} {stage}: {word}{took}{extra}\n")
            self.stream.flush()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)
        with self._lock:
            self._clear()
            self.stream.flush()

    # -- terminal ------------------------------------------------------------------------------
    def _clear(self) -> None:
        if self.mode == "tty":
            self.stream.write("\r\x1b[2K")

    def _spin(self) -> None:
        i = 0
        while not self._stop.wait(0.1):
            with self._lock:
                if not self._running:
                    continue
                width = 100
                try:
                    width = os.get_terminal_size(self.stream.fileno()).columns
                except (OSError, ValueError):
                    pass
                now = time.monotonic()
                if len(self._running) == 1:
                    ((run_id, stage), started), tail = next(iter(self._running.items())), ""
                    head = f"{_SPIN[i % len(_SPIN)]} {run_id} {stage} {now - started:5.1f}s"
                    tail = f"  {self._last_line}" if self._last_line else ""
                else:
                    head = f"{_SPIN[i % len(_SPIN)]} {len(self._running)} running: " + ", ".join(
                        f"{run_id} {stage} {now - started:.0f}s" for (run_id, stage), started in self._running.items()
                    )
                    tail = ""
                self.stream.write("\r\x1b[2K" + (head + tail)[: max(10, width - 1)])
                self.stream.flush()
            i += 1
