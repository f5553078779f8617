"""The stage worker of the local executor: one long-lived process per ``tinymlaas run`` (per
``--jobs`` slot) that runs stage after stage.

Importing PyTorch, ONNX and ONNX Runtime costs about 3.3 CPU-seconds per process; a sweep of 50
runs paid it in every stage process. The worker is a fork server: it imports what a built-in
stage needs once, then forks a fresh child per stage. The child starts from a clean copy of the
worker (nothing one stage does is seen by the next), runs the stage through its usual entry
point (:func:`tinymlaas_ci.stages.contract.stage_main`: ``stage.json`` in, ``outputs.json`` or
``error.json`` out) and its output is relayed line by line. A user's own stage command is
forked and ``exec``'d the same way.

Processes die with their runner. The worker asks Linux for a parent-death signal
(``PR_SET_PDEATHSIG``) and, when its runner dies for any reason (``kill -9`` included), kills
the process group of the stage it is running; each stage child leads its own process group
(so its children go with it) and has a parent-death signal on the worker in turn. A worker that
dies itself is noticed by the runner (end of its pipe): the runner kills the stage's group,
fails the stage with that message, and starts a new worker for the next stage.

Protocol (one JSON object per line): the runner writes a request ``{"builtin"|"argv", "volume",
"name", "cwd", "env"}`` to the worker's stdin; the worker answers ``{"started": pid}``, then
``{"line": text}`` per output line and ``{"exit": code}`` (negative: killed by that signal).
"""

from __future__ import annotations

import ctypes
import errno
import gc
import importlib
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import suppress
from typing import IO, Any

from tinymlaas_ci.hostinfo import process_alive, process_start_time

__all__ = [
    "PRELOAD",
    "NotStarted",
    "StageWorker",
    "WorkerDied",
    "kill_group",
    "process_alive",
    "process_start_time",
    "set_parent_death_signal",
]

PRELOAD: dict[str, tuple[str, ...]] = {
    "fetch": ("numpy",),
    "compile": ("numpy", "torch", "onnx", "onnxruntime", "onnxruntime.quantization"),
    "install": ("numpy", "onnx"),
    "infer": ("numpy", "onnxruntime"),
}
"""What the worker imports (once) before forking a built-in stage. Only libraries whose import
reads no per-stage setting: ``huggingface_hub`` reads its endpoint and token from the
environment at import time, so the fetch stage imports it itself, in its own child."""

_PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int) -> bool:
    """Ask Linux to send ``sig`` to this process when the thread that started it ends.
    Returns False where that does not exist (other systems)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    """Signal a stage's whole process group; a group that is already gone is fine."""
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class WorkerDied(Exception):
    """The worker process ended while running a stage (it was killed, or crashed)."""


class NotStarted(Exception):
    """A stage command could not be started (``exec`` failed): the message says why."""


# -- the runner's side ----------------------------------------------------------------------------


class StageWorker:
    """The runner's handle on one worker process. Not thread-safe: one per thread (the local
    executor keeps one per ``--jobs`` slot). The worker is started lazily and replaced after it
    dies."""

    def __init__(self, env: dict[str, str]):
        self.env = dict(env)
        self._proc: subprocess.Popen | None = None
        self._thread = threading.get_ident()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def _start(self) -> subprocess.Popen:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tinymlaas_ci.engine.worker", str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=self.env,
            # Its own session: a Ctrl-C in the terminal reaches the runner, which stops the
            # stage itself (SIGTERM first), instead of killing everything mid-write.
            start_new_session=True,
        )
        return self._proc

    def run(
        self,
        request: dict[str, Any],
        sink: Callable[[str], None],
        on_start: Callable[[int], None] | None = None,
    ) -> int:
        """Run one stage; returns its exit code (negative: killed by that signal). Raises
        :class:`WorkerDied` when the worker ended before the stage did (the stage's process
        group is killed first), and :class:`OSError` when no worker can be started."""
        proc = self._start()
        try:
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(request).encode() + b"\n")
            proc.stdin.flush()
        except BrokenPipeError:
            # The idle worker was gone (killed between stages): nothing started yet, so a new
            # worker can take the request.
            self.close()
            proc = self._start()
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(request).encode() + b"\n")
            proc.stdin.flush()
        child: int | None = None
        try:
            for event in self._events(proc):
                if "started" in event:
                    child = int(event["started"])
                    if on_start is not None:
                        on_start(child)
                elif "line" in event:
                    sink(event["line"])
                elif "exit" in event:
                    return int(event["exit"])
                elif "not_started" in event:
                    raise NotStarted(str(event["not_started"]))
                elif "fatal" in event:
                    for line in str(event["fatal"]).splitlines():
                        sink(line)
        except NotStarted:
            raise
        except BaseException:
            # Interrupted (Ctrl-C, an error in the sink): stop the stage, then the worker, whose
            # state is unknown from here on.
            if child is not None:
                kill_group(child, signal.SIGTERM)
            self.close(kill=child is None)
            if child is not None:
                kill_group(child, signal.SIGKILL)
            raise
        if child is not None:
            kill_group(child)
        code = self._reap()
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        raise WorkerDied(f"the stage worker process {how} while running the stage")

    @staticmethod
    def _events(proc: subprocess.Popen) -> Iterator[dict[str, Any]]:
        assert proc.stdout is not None
        for raw in proc.stdout:
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            if isinstance(event, dict):
                yield event

    def _reap(self) -> int:
        proc, self._proc = self._proc, None
        if proc is None:
            return 0
        try:
            return proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()
        finally:
            for stream in (proc.stdin, proc.stdout):
                with suppress(OSError):
                    stream.close()  # type: ignore[union-attr]

    def close(self, kill: bool = False) -> None:
        """End the worker: closing its stdin lets an idle worker exit on its own."""
        proc = self._proc
        if proc is None:
            return
        if kill:
            proc.kill()
        with suppress(OSError):
            proc.stdin.close()  # type: ignore[union-attr]
        self._reap()


# -- the worker's side ----------------------------------------------------------------------------


class _Server:
    def __init__(self, runner_pid: int, proto: IO[bytes], requests: IO[bytes]):
        self.runner_pid = runner_pid
        self.proto = proto
        self.requests = requests
        self.child: int | None = None
        self.preloaded: set[str] = set()

    def send(self, event: dict[str, Any]) -> None:
        self.proto.write(json.dumps(event).encode() + b"\n")
        self.proto.flush()

    def stop(self, *_: Any) -> None:
        if self.child is not None:
            kill_group(self.child)
        os._exit(0)

    def preload(self, builtin: str | None) -> None:
        if builtin is None or builtin in self.preloaded:
            return
        self.preloaded.add(builtin)
        for name in (*PRELOAD.get(builtin, ()), f"tinymlaas_ci.stages.{builtin}"):
            with suppress(Exception):  # the stage imports it again and reports what is wrong
                importlib.import_module(name)
        # What is imported now is shared with every child, copy-on-write; keep the collector
        # from walking (and so copying) those pages in each child.
        gc.collect()
        gc.freeze()

    def serve(self) -> None:
        for raw in self.requests:
            request = json.loads(raw)
            self.preload(request.get("builtin"))
            self.run(request)

    def run(self, request: dict[str, Any]) -> None:
        read, write = os.pipe()
        # Closed by a successful exec (close-on-exec), or carrying errno when exec failed.
        exec_read, exec_write = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover (runs in the child; the tests see its effects)
            os.close(read)
            os.close(exec_read)
            _child(request, write, exec_write, os.getppid())
        os.close(write)
        os.close(exec_write)
        self.child = pid
        failed = os.read(exec_read, 64) if request.get("argv") else b""
        os.close(exec_read)
        if failed:
            os.close(read)
            os.waitpid(pid, 0)
            self.child = None
            self.send({"not_started": os.strerror(int(failed))})
            return
        self.send({"started": pid})
        sel = selectors.DefaultSelector()
        sel.register(read, selectors.EVENT_READ)
        sel.register(self.requests.fileno(), selectors.EVENT_READ)
        pending = b""
        try:
            while True:
                ready = {key.fd for key, _ in sel.select()}
                if self.requests.fileno() in ready:
                    if _hung_up(self.requests.fileno()):
                        self.stop()  # the runner is gone
                    sel.unregister(self.requests.fileno())  # a request mid-stage waits its turn
                if read in ready:
                    chunk = os.read(read, 65536)
                    if not chunk:
                        break
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        self.send({"line": line.decode("utf-8", "replace")})
            if pending:
                self.send({"line": pending.decode("utf-8", "replace")})
        finally:
            sel.close()
            os.close(read)
        _, status = os.waitpid(pid, 0)
        # Anything the stage left running in its group goes with it.
        kill_group(pid)
        self.child = None
        self.send({"exit": os.waitstatus_to_exitcode(status)})


def _hung_up(fd: int) -> bool:
    """Whether the other end of the request pipe closed (the runner is gone)."""
    import select

    poll = select.poll()
    poll.register(fd, select.POLLIN)
    return any(ev & (select.POLLHUP | select.POLLERR) for _, ev in poll.poll(0))


def _child(request: dict[str, Any], out: int, exec_error: int, worker: int) -> None:  # pragma: no cover
    """Become the stage: its own process group, output to the relay pipe, its environment."""
    code = 1
    try:
        os.setpgid(0, 0)
        set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != worker:  # the worker died before the signal was armed
            os._exit(1)
        # As a fresh interpreter has them (a command gets what subprocess gives one).
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL if request.get("argv") else signal.SIG_IGN)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        os.close(devnull)
        os.chdir(request["cwd"])
        env = request["env"]
        if not request.get("argv"):
            os.close(exec_error)
        if request.get("argv"):
            argv = request["argv"]
            try:
                os.execvpe(argv[0], argv, env)
            except OSError as exc:
                os.write(exec_error, str(exc.errno or errno.ENOEXEC).encode())
                os._exit(127)
        os.environ.clear()
        os.environ.update(env)
        sys.stdout = open(1, "w", encoding="utf-8", errors="replace", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", encoding="utf-8", errors="replace", buffering=1, closefd=False)  # noqa: SIM115
        module = f"tinymlaas_ci.stages.{request['builtin']}"
        sys.argv = [module, request["volume"], "--name", request["name"]]
        main = importlib.import_module(module).main
        code = main([request["volume"], "--name", request["name"]])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        with suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 1)


def main(argv: list[str] | None = None) -> int:  # pragma: no cover (runs as the worker process)
    """``python -m tinymlaas_ci.engine.worker RUNNER_PID``: serve stage requests on stdin."""
    args = sys.argv[1:] if argv is None else argv
    runner = int(args[0])
    # The protocol gets its own descriptor; fd 1 points at stderr so nothing a library prints
    # while being imported can garble it.
    proto = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    server = _Server(runner, proto, sys.stdin.buffer)
    signal.signal(signal.SIGTERM, server.stop)
    signal.signal(signal.SIGHUP, server.stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != runner:  # the runner died before the signal was armed
        return 0
    try:
        server.serve()
    except Exception:
        with suppress(Exception):
            server.send({"fatal": traceback.format_exc()})
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
