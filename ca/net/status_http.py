"""A process's status endpoint over HTTP: `/metrics` for Prometheus and `/healthz/ready` for probes."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from ca.net.listening import listen_error


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that answers with a whole body and leaves logging to its server."""

    def _send(self, code: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class StatusServer:
    """`/metrics` serves `exposition()`; `/healthz/ready` answers 200 `ready` while `ready()` holds,
    else 503 with `not_ready`. Its threads are named after `thread_name`. An address that cannot be
    listened on is a ConfigError naming `flag`, the setting that gave it."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        flag: str,
        exposition: Callable[[], bytes],
        ready: Callable[[], bool],
        not_ready: str,
        thread_name: str,
    ) -> None:
        not_ready_body = f"{not_ready}\n".encode()

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    self._send(200, exposition(), CONTENT_TYPE_LATEST)
                elif self.path == "/healthz/ready":
                    ok = ready()
                    self._send(200 if ok else 503, b"ready\n" if ok else not_ready_body)
                else:
                    self._send(404, b"not found; try /metrics or /healthz/ready\n")

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as err:
            raise listen_error(flag, f"{host}:{port}", err) from err
        self._thread_name = thread_name
        self.port: int = self._server.server_port
        # A long poll keeps an idle process asleep; stop() does not wait for it to end.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 30.0}, name=thread_name, daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        threading.Thread(target=self._server.shutdown, name=f"{self._thread_name}-stop", daemon=True).start()
        self._server.server_close()
