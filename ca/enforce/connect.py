"""A flow's connection to its next hop, made without blocking the event loop: the application
behind an inbound port, the upstream of an outbound one."""

from __future__ import annotations

import errno
import os
import socket
from typing import Protocol

from ca.enforce.loop import WRITE, DeadlineQueue, EventLoop


def connect_nonblocking(family: int, address: tuple[str, int]) -> tuple[socket.socket | None, int]:
    """A socket connecting to `address`: (socket, 0) when connected, (socket, EINPROGRESS) while
    connecting, (socket or None, errno) when it failed.

    On loopback the kernel usually completes (or refuses) the connection within connect()
    even though a non-blocking connect reports EINPROGRESS; asking at once saves a trip
    through the event loop.
    """
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as err:  # out of file descriptors, for one
        return None, err.errno or errno.EMFILE
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        result = sock.connect_ex(address)
    except OSError as err:
        return sock, err.errno or errno.EIO
    if result != errno.EINPROGRESS:
        return sock, result
    try:
        sock.getpeername()
    except OSError:
        return sock, sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) or errno.EINPROGRESS
    return sock, 0


class ConnectingFlow(Protocol):
    """The flow a connection is made for. `abort()` is what the loop calls when a handler raises."""

    def next_hop_connected(self, sock: socket.socket) -> None: ...

    def next_hop_failed(self, detail: str) -> None: ...

    def abort(self) -> None: ...


class Connecting:
    """One connection attempt, ending in one call to its flow: `next_hop_connected(sock)`, the
    socket then being the flow's, or `next_hop_failed(detail)` once the socket is closed (none
    to be had, refused, unreachable, or no answer within the connect deadline).

    `cancel()`, for a flow that closes while the answer is awaited, closes the socket and
    calls neither.
    """

    __slots__ = ("_deadline", "_flow", "_loop", "_sock", "_to")

    def __init__(self, loop: EventLoop, deadline: DeadlineQueue, flow: ConnectingFlow, *, to: str) -> None:
        self._loop = loop
        self._deadline = deadline
        self._flow = flow
        self._to = to  # for the failure's detail: "the application", "the upstream"
        self._sock: socket.socket | None = None  # while the answer is awaited

    def start(self, family: int, address: tuple[str, int]) -> bool:
        """True while the answer is awaited on the loop; False when the flow has been called."""
        sock, result = connect_nonblocking(family, address)
        if sock is None:
            self._flow.next_hop_failed(f"cannot open a connection: {os.strerror(result)}")
            return False
        if result in (errno.EINPROGRESS, errno.EAGAIN):
            self._sock = sock
            self._loop.watch(sock.fileno(), WRITE, self.on_writable)
            self._deadline.add(self.on_deadline)
            return True
        self._finish(sock, result)
        return False

    def on_writable(self, fd: int, events: int) -> None:
        sock = self._take()
        if sock is not None:
            self._finish(sock, sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))

    def on_deadline(self) -> None:
        sock = self._take()
        if sock is not None:
            self._close(sock)
            self._flow.next_hop_failed(f"connecting to {self._to} timed out")

    def cancel(self) -> None:
        sock = self._take()
        if sock is not None:
            self._close(sock)

    def abort(self) -> None:
        """The loop's call when a handler raised: the attempt and its flow end."""
        self.cancel()
        self._flow.abort()

    def _take(self) -> socket.socket | None:
        sock, self._sock = self._sock, None
        return sock

    def _finish(self, sock: socket.socket, error: int) -> None:
        if error == 0:
            self._flow.next_hop_connected(sock)
            return
        self._close(sock)
        self._flow.next_hop_failed(f"cannot connect to {self._to}: {os.strerror(error)}")

    def _close(self, sock: socket.socket) -> None:
        self._loop.forget(sock.fileno())
        sock.close()
