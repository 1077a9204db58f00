"""A single-threaded epoll event loop: readiness callbacks, timers, and calls from other threads.

Why not asyncio: its TLS (sslproto over memory BIOs) and per-callback machinery
cost several times more CPU per handshake and per record than calling the TLS
library on non-blocking sockets directly, and the enforcer's throughput on one
core is bounded by exactly that (see scripts/bench_enforcer.py). The loop is
level-triggered; handlers set the interest of their file descriptors
explicitly and are called with the fd and the epoll event mask.

All handlers run on the loop thread. Other threads hand work over with
`call_soon_threadsafe` (a wake-up through an eventfd-like pipe).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)

READ = select.EPOLLIN
WRITE = select.EPOLLOUT
ERROR = select.EPOLLERR | select.EPOLLHUP
SCRATCH_BYTES = 1024 * 1024  # larger batches: a fifth less CPU per byte than 256 KiB (measured)
MAX_EVENTS = 512

# Handlers are bound methods; if one raises, the loop calls `abort()` on the object it is bound to.
Handler = Callable[[int, int], None]


class Timer:
    __slots__ = ("callback", "cancelled", "deadline")

    def __init__(self, deadline: float, callback: Callable[[], None]) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class DeadlineQueue:
    """Callbacks due a fixed delay after they were added: a FIFO, no heap, no cancelling.

    For the per-connection timeouts (first byte, handshake, connect) that every
    connection sets and almost every connection outlives: adding is one append,
    and the callback checks for itself whether it still matters.
    """

    __slots__ = ("delay", "entries", "monotonic")

    def __init__(self, delay: float, monotonic: Callable[[], float]) -> None:
        self.delay = delay
        self.monotonic = monotonic
        self.entries: deque[tuple[float, Callable[[], None]]] = deque()

    def add(self, callback: Callable[[], None]) -> None:
        self.entries.append((self.monotonic() + self.delay, callback))


class EventLoop:
    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.monotonic = monotonic
        self._epoll = select.epoll()
        self._handlers: dict[int, Handler] = {}
        self._masks: dict[int, int] = {}
        self._timers: list[tuple[float, int, Timer]] = []
        self._deadlines: list[DeadlineQueue] = []
        self._sequence = itertools.count()
        self._soon: deque[Callable[[], None]] = deque()
        self._posted: deque[Callable[[], None]] = deque()
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._epoll.register(self._wake_read, READ)
        self._stopping = False
        self._thread: threading.Thread | None = None
        # One buffer for every read: a connection's data is written on before the next read.
        self.scratch = bytearray(SCRATCH_BYTES)
        self.scratch_view = memoryview(self.scratch)

    # ----------------------------------------------------------------- interest

    def watch(self, fd: int, mask: int, handler: Handler) -> None:
        """Call `handler(fd, events)` when `fd` is ready for `mask` (0: stop watching for now).

        An fd with nothing to wait for is unregistered rather than kept with an empty mask:
        epoll reports hang-ups and errors even for an empty mask, and level-triggered, an
        fd nobody acts on would wake the loop forever.
        """
        old = self._masks.get(fd)
        self._handlers[fd] = handler
        if old == mask:
            return
        if old is None:
            if mask:
                self._epoll.register(fd, mask)
                self._masks[fd] = mask
        elif mask:
            self._epoll.modify(fd, mask)
            self._masks[fd] = mask
        else:
            self._epoll.unregister(fd)
            del self._masks[fd]

    def forget(self, fd: int, *, closing: bool = True) -> None:
        """No more callbacks for `fd`. Closing an fd removes it from epoll by itself, so only
        an fd that stays open (`closing=False`) is unregistered explicitly."""
        self._handlers.pop(fd, None)
        if self._masks.pop(fd, None) is not None and not closing:
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)

    # ----------------------------------------------------------------- timers and calls

    def deadline_queue(self, delay: float) -> DeadlineQueue:
        queue = DeadlineQueue(delay, self.monotonic)
        self._deadlines.append(queue)
        return queue

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(self.monotonic() + delay, callback)
        heapq.heappush(self._timers, (timer.deadline, next(self._sequence), timer))
        return timer

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run `callback` on the loop thread after the current batch of events."""
        self._soon.append(callback)

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        self._posted.append(callback)
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_write, b"\0")

    # ----------------------------------------------------------------- running

    def start(self, name: str = "enforce-loop") -> None:
        self._thread = threading.Thread(target=self.run, name=name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.call_soon_threadsafe(self._request_stop)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def close(self) -> None:
        """Release the loop's own descriptors when it never ran (run() does it otherwise)."""
        if self._thread is None:
            self._epoll.close()
            os.close(self._wake_read)
            os.close(self._wake_write)

    def _request_stop(self) -> None:
        self._stopping = True

    def run(self) -> None:
        try:
            while not self._stopping:
                self._run_once()
        finally:
            self._epoll.close()
            os.close(self._wake_read)
            os.close(self._wake_write)

    def _timeout(self) -> float:
        if self._soon or self._posted:
            return 0.0
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        earliest = self._timers[0][0] if self._timers else None
        for queue in self._deadlines:
            if queue.entries and (earliest is None or queue.entries[0][0] < earliest):
                earliest = queue.entries[0][0]
        if earliest is None:
            return 1.0
        return max(0.0, min(1.0, earliest - self.monotonic()))

    def _run_once(self) -> None:
        try:
            events = self._epoll.poll(self._timeout(), MAX_EVENTS)
        except InterruptedError:
            events = []
        handlers = self._handlers
        for fd, mask in events:
            if fd == self._wake_read:
                self._drain_wake()
                continue
            handler = handlers.get(fd)
            if handler is not None:
                self._guarded(handler, fd, mask)
        self._run_timers()
        self._run_soon()

    def _guarded(self, handler: Handler, fd: int, mask: int) -> None:
        try:
            handler(fd, mask)
        except Exception:
            # A bug must cost one connection, not the enforcer: the handler's owner aborts it.
            log.exception("connection handler failed; the connection is dropped", extra={"fd": fd})
            self._abandon(handler, fd)

    def _abandon(self, handler: Handler, fd: int) -> None:
        abort = getattr(getattr(handler, "__self__", None), "abort", None)
        if callable(abort):
            try:
                abort()
            except Exception:
                log.exception("aborting a failed connection failed too", extra={"fd": fd})
        self.forget(fd)

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_read, 4096):
                pass
        while self._posted:
            self._soon.append(self._posted.popleft())

    def _run_timers(self) -> None:
        now = self.monotonic()
        for queue in self._deadlines:
            entries = queue.entries
            while entries and entries[0][0] <= now:
                self._call(entries.popleft()[1])
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, timer = heapq.heappop(timers)
            if not timer.cancelled:
                timer.cancelled = True
                self._call(timer.callback)

    def _run_soon(self) -> None:
        for _ in range(len(self._soon)):
            self._call(self._soon.popleft())

    @staticmethod
    def _call(callback: Callable[[], None]) -> None:
        try:
            callback()
        except Exception:
            log.exception("a scheduled enforcer callback failed")
