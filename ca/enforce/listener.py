"""Listening sockets: bound at start (a port in use is a configuration error), accepted on the loop."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable

from ca.enforce.events import RefusalLog
from ca.enforce.loop import READ, EventLoop
from ca.enforce.metrics import EnforcerMetrics
from ca.errors import ConfigError

ACCEPT_BATCH = 64
ACCEPT_PAUSE_S = 0.1  # after EMFILE and the like: let connections close before accepting again
BACKLOG = 4096


def bind(host: str, port: int) -> socket.socket:
    """A non-blocking listening socket on host:port; ConfigError if that is not possible."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as err:
        raise ConfigError(f"cannot listen on {host}:{port}: {err}") from err
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as err:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {err.strerror}; pick a free port or stop what uses it"
        ) from err
    return sock


class Listener:
    """Accepts connections in batches and hands each (non-blocking, TCP_NODELAY) to `on_connection`."""

    def __init__(
        self,
        loop: EventLoop,
        sock: socket.socket,
        *,
        listen_port: int,
        metrics: EnforcerMetrics,
        refusals: RefusalLog,
        on_connection: Callable[[socket.socket, tuple[str, int]], None],
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.listen_port = listen_port
        self._metrics = metrics
        self._refusals = refusals
        self._on_connection = on_connection

    def start(self) -> None:
        self.loop.watch(self.fd, READ, self.on_accept)

    def on_accept(self, fd: int, events: int) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                self._accept_failed(err)
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._on_connection(sock, peer)

    def _accept_failed(self, err: OSError) -> None:
        self._metrics.accept_errors.labels(str(self.listen_port)).inc()
        self._refusals.refused(
            "cannot accept connections", listen_port=self.listen_port, error=os.strerror(err.errno or 0)
        )
        self.loop.watch(self.fd, 0, self.on_accept)
        self.loop.call_later(ACCEPT_PAUSE_S, self._resume)

    def _resume(self) -> None:
        if self.sock.fileno() >= 0:
            self.loop.watch(self.fd, READ, self.on_accept)

    def abort(self) -> None:
        self.close()

    def close(self) -> None:
        self.loop.forget(self.fd)
        with contextlib.suppress(OSError):
            self.sock.close()
