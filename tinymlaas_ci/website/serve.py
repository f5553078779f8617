"""Serving a built site over HTTP, optionally under a sub-path as GitHub Pages does."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

__all__ = ["make_server", "serve_in_thread"]


class _Handler(http.server.SimpleHTTPRequestHandler):
    base_path = "/"

    def translate_path(self, path: str) -> str:
        # Under a sub-path (/repo/...), only that prefix maps to the folder; the rest is 404.
        if self.base_path != "/":
            if not path.startswith(self.base_path):
                return str(Path(self.directory) / "__outside_base_path__")
            path = "/" + path[len(self.base_path) :]
        return super().translate_path(path)

    def log_message(self, format: str, *args) -> None:  # quiet unless asked
        if getattr(self.server, "verbose", False):
            super().log_message(format, *args)


def make_server(
    directory: Path, host: str = "127.0.0.1", port: int = 8000, base_path: str = "/", verbose: bool = False
) -> http.server.ThreadingHTTPServer:
    """An HTTP server for ``directory``, its pages under ``base_path`` (e.g. ``/repo/``)."""
    base = "/" + base_path.strip("/") + "/" if base_path.strip("/") else "/"
    handler = functools.partial(type("Handler", (_Handler,), {"base_path": base}), directory=str(directory))
    server = http.server.ThreadingHTTPServer((host, port), handler)
    server.verbose = verbose  # type: ignore[attr-defined]
    server.base_path = base  # type: ignore[attr-defined]
    return server


def serve_in_thread(directory: Path, host: str = "127.0.0.1", port: int = 0, base_path: str = "/"):
    """Start a server in a daemon thread; returns ``(server, url)``. Stop it with ``server.shutdown()``."""
    server = make_server(directory, host, port, base_path)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host_, port_ = server.server_address[:2]
    return server, f"http://{host_}:{port_}{server.base_path}"
