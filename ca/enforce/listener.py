"""Listening sockets: bound first thing at start (a port in use is a configuration error), listening
once the enforcer is ready, accepted on the loop."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable

from ca.enforce.events import RefusalLog
from ca.enforce.loop import READ, EventLoop
from ca.enforce.metrics import EnforcerMetrics
from ca.net.listening import listen_error

ACCEPT_BATCH = 64
ACCEPT_PAUSE_S = 0.1  # after EMFILE and the like: let connections close before accepting again
BACKLOG = 4096


def bind(host: str, port: int, *, flag: str) -> socket.socket:
    """A non-blocking socket bound to host:port (port 0: a free one), not listening yet: the port is
    ours, but a client is refused rather than queued until `Listener.listen`. A ConfigError naming
    `flag`, the setting that gave the address, if the port cannot be had."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as err:
        raise listen_error(flag, f"{host}:{port}", err) from err
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.setblocking(False)
    except OSError as err:
        sock.close()
        raise listen_error(flag, f"{host}:{port}", err) from err
    return sock


def bound_port(sock: socket.socket) -> int:
    port: int = sock.getsockname()[1]
    return port


class Listener:
    """Accepts connections in batches and hands each (non-blocking, TCP_NODELAY) to `on_connection`."""

    def __init__(
        self,
        loop: EventLoop,
        sock: socket.socket,
        *,
        listen_port: int,
        flag: str,
        metrics: EnforcerMetrics,
        refusals: RefusalLog,
        on_connection: Callable[[socket.socket, tuple[str, int]], None],
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.listen_port = listen_port
        self._flag = flag
        self._metrics = metrics
        self._refusals = refusals
        self._on_connection = on_connection

    def listen(self) -> None:
        try:
            self.sock.listen(BACKLOG)
        except OSError as err:  # another socket bound with SO_REUSEADDR took to listening first
            host = self.sock.getsockname()[0]
            raise listen_error(self._flag, f"{host}:{self.listen_port}", err) from err

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
