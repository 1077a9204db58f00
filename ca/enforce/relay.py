"""Moving bytes both ways between a caller and the application, on the event loop.

Each direction reads into the loop's shared scratch buffer (up to 1 MiB per
readiness event: a TLS source is read record by record until it would block),
optionally passes the bytes through the HTTP session, and writes them on at
once; only what the destination does not take is copied aside, and until that
is sent the source is not read again (back-pressure). End of stream in one
direction is passed on as a half-close (close_notify + FIN); the connection is
closed when both directions have ended, on any error, or when the HTTP session
says so.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from typing import Protocol

from ca.enforce.http_session import Actions, HttpSession
from ca.enforce.loop import READ, SCRATCH_BYTES, WRITE, EventLoop
from ca.enforce.tls import WANT_READ, WANT_WRITE, TlsFailure


class Endpoint(Protocol):
    def fileno(self) -> int: ...

    def read_into(self, buffer: memoryview) -> int: ...

    def write(self, data: bytes | memoryview) -> int: ...

    def shutdown_write(self) -> None: ...

    def close(self) -> None: ...


class PlainEndpoint:
    """A plain TCP socket with the TLS connection's result conventions."""

    __slots__ = ("sock",)
    drains_in_one_read = True

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def read_into(self, buffer: memoryview) -> int:
        try:
            return self.sock.recv_into(buffer)
        except (BlockingIOError, InterruptedError):
            return WANT_READ

    def write(self, data: bytes | memoryview) -> int:
        try:
            return self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            return WANT_WRITE

    def shutdown_write(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()


Pieces = list[bytes | memoryview]


class Direction:
    __slots__ = (
        "dst",
        "dst_fd",
        "eof",
        "moved",
        "one_read",
        "pending",
        "read_wait",
        "shut",
        "src",
        "src_fd",
        "write_wait",
    )

    def __init__(self, src: Endpoint, dst: Endpoint) -> None:
        self.src, self.dst = src, dst
        self.src_fd, self.dst_fd = src.fileno(), dst.fileno()
        # A plain socket hands over everything it has in one read; TLS one record per read.
        self.one_read: bool = getattr(src, "drains_in_one_read", False)
        self.pending = b""
        self.eof = False  # the source ended
        self.shut = False  # ... and that was passed on
        self.read_wait = READ
        self.write_wait = WRITE
        self.moved = 0


class Relay:
    """`client` <-> `app`; `on_close(relay)` is called once, after both are closed.

    Readiness errors (EPOLLERR, EPOLLHUP) need no case of their own: they wake the
    handler, and the next read or write on the socket reports the failure.
    """

    def __init__(
        self,
        loop: EventLoop,
        client: Endpoint,
        app: Endpoint,
        *,
        on_close: Callable[[Relay], None],
        session: HttpSession | None = None,
        to_app_first: bytes = b"",
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        self.loop = loop
        self.client, self.app = client, app
        self.up = Direction(client, app)
        self.down = Direction(app, client)
        self.session = session
        self.closed = False
        self.error: str | None = None
        self._on_close = on_close
        self._clock = monotonic or loop.monotonic
        self.last_active = self._clock()
        self.up.pending = to_app_first
        self._client_fd, self._app_fd = self.up.src_fd, self.up.dst_fd
        self._masks = (-1, -1)

    def start(self) -> None:
        if self.up.pending:
            self._flush(self.up)
        if not self.closed:
            self._pump(self.up)  # TLS may already hold application data read with the handshake
        self._settle()

    # ----------------------------------------------------------------- events

    def on_event(self, fd: int, events: int) -> None:
        if self.closed:
            return
        self.last_active = self._clock()
        try:
            for direction in (self.up, self.down):
                if direction.pending:
                    if direction.dst_fd == fd:
                        self._flush(direction)
                elif direction.src_fd == fd and self._can_read(direction):
                    self._pump(direction)
                if self.closed:
                    return
        except (OSError, TlsFailure) as err:
            self._fail(err)
            return
        self._settle()

    def resume(self, direction: Direction) -> None:
        """Continue reading a source that filled the scratch buffer (TLS may hold more, unseen by epoll)."""
        if self.closed or direction.pending or not self._can_read(direction):
            return
        try:
            self._pump(direction)
        except (OSError, TlsFailure) as err:
            self._fail(err)
            return
        self._settle()

    def abort(self) -> None:
        self.close("aborted")

    # ----------------------------------------------------------------- moving bytes

    def _can_read(self, direction: Direction) -> bool:
        if direction.eof:
            return False
        session = self.session
        if session is None:
            return True
        if session.finishing:
            return False
        return session.client_wants_input if direction is self.up else True

    def _pump(self, direction: Direction) -> None:
        view = self.loop.scratch_view
        src = direction.src
        total = 0
        one_read = direction.one_read
        while total < SCRATCH_BYTES:
            count = src.read_into(view[total:])
            if count > 0:
                total += count
                if one_read:
                    break
                continue
            if count == 0:
                direction.eof = True
            else:
                direction.read_wait = WRITE if count == WANT_WRITE else READ
            break
        if total:
            direction.moved += total
            self._send(direction, self._transform(direction, view[:total]))
            self._apply_session()
            if total == SCRATCH_BYTES and not direction.pending and not direction.eof:
                self.loop.call_soon(lambda: self.resume(direction))
        if direction.eof and direction is self.down and self.session is not None:
            self.session.app_closed()
            self._apply_session()

    def _transform(self, direction: Direction, data: memoryview) -> Pieces:
        session = self.session
        if session is None:
            return [data]
        if direction is self.up:
            return session.from_client(data)
        return session.from_app(data)

    def _send(self, direction: Direction, pieces: Pieces) -> None:
        if direction.pending:  # keep the order: behind what is already waiting
            direction.pending += b"".join(bytes(p) for p in pieces)
            return
        dst = direction.dst
        for index, piece in enumerate(pieces):
            while piece:
                count = dst.write(piece)
                if count < 0:
                    direction.write_wait = READ if count == WANT_READ else WRITE
                    direction.pending = b"".join([bytes(piece), *(bytes(p) for p in pieces[index + 1 :])])
                    return
                piece = piece[count:]

    def _flush(self, direction: Direction) -> None:
        data, direction.pending = direction.pending, b""
        self._send(direction, [memoryview(data)])
        if not direction.pending and self._can_read(direction):
            self._pump(direction)  # the source may hold data that arrived while we waited

    def _apply_session(self) -> None:
        if self.session is None:
            return
        actions: Actions = self.session.take()
        if actions.to_app:
            self._send(self.up, actions.to_app)
        if actions.to_client:
            self._send(self.down, actions.to_client)

    # ----------------------------------------------------------------- state

    def _settle(self) -> None:
        """Pass on ends of stream, close when done, and set the fds' interest."""
        if self.closed:
            return
        for direction in (self.up, self.down):
            if direction.eof and not direction.shut and not direction.pending:
                direction.shut = True
                direction.dst.shutdown_write()
        finishing = self.session is not None and self.session.finishing
        drained = not self.up.pending and not self.down.pending
        if (self.up.shut and self.down.shut) or (finishing and drained):
            self.close(None)
            return
        self._set_interest()

    def _set_interest(self) -> None:
        client_mask = app_mask = 0
        for direction in (self.up, self.down):
            if direction.pending:
                wanted, fd = direction.write_wait, direction.dst_fd
            elif self._can_read(direction):
                wanted, fd = direction.read_wait, direction.src_fd
            else:
                continue
            if fd == self._client_fd:
                client_mask |= wanted
            else:
                app_mask |= wanted
        if (client_mask, app_mask) != self._masks:
            self._masks = (client_mask, app_mask)
            self.loop.watch(self._client_fd, client_mask, self.on_event)
            self.loop.watch(self._app_fd, app_mask, self.on_event)

    def _fail(self, err: Exception) -> None:
        detail = err.reason if isinstance(err, TlsFailure) else type(err).__name__
        self.close(detail)

    def close(self, error: str | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.error = error
        for fd in (self._client_fd, self._app_fd):
            self.loop.forget(fd)
        for endpoint in (self.client, self.app):
            with contextlib.suppress(OSError):
                endpoint.close()
        self._on_close(self)
