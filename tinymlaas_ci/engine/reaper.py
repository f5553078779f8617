"""A stage container's reaper: removes the container when the runner that started it dies.

A Docker stage runs in a container of the Docker engine, not in a child of ``tinymlaas run``:
when the runner is killed (``kill -9`` included), nothing would stop it, and it would go on
writing the run's folder. So the Docker executor starts one small reaper process per stage
container. The reaper asks Linux for a parent-death signal (``PR_SET_PDEATHSIG``, as the local
executor's stage worker does); when its runner dies it removes the container (``docker rm -f``)
and exits. When the stage ends normally the runner removes the container itself and kills the
reaper. The reaper imports the Docker SDK only when it has to act, so it costs a bare Python
start per stage.

    python -m tinymlaas_ci.engine.reaper RUNNER_PID CONTAINER_ID [DOCKER_HOST]
"""

from __future__ import annotations

import os
import signal
import sys

__all__ = ["main"]

READY = "reaper ready"
"""The line the reaper prints once its parent-death signal is set."""


def _reap(container_id: str, host: str | None) -> None:
    from tinymlaas_ci.devices.docker_client import client_for

    try:
        client = client_for(host, timeout=30)
        client.containers.get(container_id).remove(force=True, v=True)
    except Exception as exc:  # the container may be gone already; nobody is left to tell
        print(f"reaper: could not remove container {container_id[:12]}: {exc}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    from tinymlaas_ci.engine.worker import set_parent_death_signal

    args = list(sys.argv[1:] if argv is None else argv)
    runner, container = int(args[0]), args[1]
    host = args[2] if len(args) > 2 and args[2] else None

    def on_signal(_sig, _frame) -> None:
        _reap(container, host)
        os._exit(0)

    signal.signal(signal.SIGTERM, on_signal)
    set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != runner:  # the runner died before the signal was set
        on_signal(None, None)
    print(READY, flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
