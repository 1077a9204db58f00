"""Group commit: requests hand entries to one writer and wait for their commit.

Under load many requests' entries share one transaction, so the ledger's cost
per certificate falls as the rate rises instead of capping it at the disk's
commits per second.

Two writers share that batching. `LedgerWriter` does all the work on a thread of
its own, for the threaded gRPC server. `LoopLedgerWriter` serves the asyncio
server: the loop batches and a process of its own writes
(ca.ledger.process_writer), because a thread would take its CPU from the loop
through the GIL, and PostgreSQL's round trips must not stall the loop.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import math
import os
import queue
import random
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from typing import Any, Protocol

from ca.common.backoff import Backoff, Retrying, UniformRandom
from ca.common.clock import Clock, SystemClock, Timer
from ca.errors import MeshcaError, UnavailableError
from ca.ledger.chain import Entry
from ca.ledger.entries import Record
from ca.ledger.process_writer import READY, WRITTEN, LedgerProcess

log = logging.getLogger("meshca.ledger")

RESTART_BACKOFF = Backoff(initial_s=0.2, maximum_s=10.0, jitter=0.5)
"""Before replacing a ledger process that died, hangs or cannot open the ledger: 0.2 s doubling
to 10 s; jittered, so that replicas whose shared database went away do not all come back at once."""

Append = Callable[[Sequence[Record]], list[Entry]]


def always() -> bool:
    return True


# What a caller waits on: a thread's future, or an asyncio future for code on the writer's loop.
Recorded = Future[Entry] | asyncio.Future[Entry]
_Item = tuple[Record, Recorded]

# Why entries were not written, as WriteObserver.failed hears it (a closed set: a metric label).
WRITE_FAILED = "write_failed"  # the transaction failed (the database said no, or went away)
BACKLOG = "backlog"  # too many entries waiting, or waiting too long
WRITER_DOWN = "writer_down"  # the ledger process died, hangs or is being replaced
SHUT_DOWN = "shut_down"  # the CA is stopping
FAILURE_REASONS = (WRITE_FAILED, BACKLOG, WRITER_DOWN, SHUT_DOWN)


class WriteObserver(Protocol):
    """Hears how each commit went (the CA's metrics); called on the writer's thread or loop."""

    def committed(self, entries: int, seconds: float) -> None:
        """A batch of `entries` was written in one transaction, confirmed `seconds` after it went."""
        ...

    def failed(self, entries: int, reason: str) -> None:
        """`entries` were not written, for one of FAILURE_REASONS; their waiters got the error."""
        ...


class _Unobserved:
    def committed(self, entries: int, seconds: float) -> None:
        pass

    def failed(self, entries: int, reason: str) -> None:
        pass


UNOBSERVED: WriteObserver = _Unobserved()


def _settle(future: Recorded, *, entry: Entry | None = None, error: BaseException | None = None) -> None:
    """Resolve a waiter's future; one its client already gave up on (cancelled) is left alone."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(entry)  # type: ignore[arg-type]
    except (InvalidStateError, asyncio.InvalidStateError):
        pass


def _fail(batch: Sequence[_Item], err: BaseException, observer: WriteObserver, reason: str) -> None:
    observer.failed(len(batch), reason)
    if isinstance(err, MeshcaError):
        log.error("ledger write failed", extra={"detail": err.message, "entries": len(batch)})
    else:
        log.error("ledger write failed unexpectedly", exc_info=err)
        err = UnavailableError(f"the issuance ledger failed ({err})", reason="ledger_unavailable")
    for _, future in batch:
        _settle(future, error=err)


def _succeed(batch: Sequence[_Item], written: Sequence[Entry]) -> None:
    for (_, future), entry in zip(batch, written, strict=True):
        _settle(future, entry=entry)


def commit_batch(
    append: Append, batch: Sequence[_Item], observer: WriteObserver = UNOBSERVED, clock: Clock | None = None
) -> None:
    """Append a batch as one transaction and settle every waiter with its entry or the error."""
    clock = clock or SystemClock()
    started = clock.monotonic()
    try:
        written = append([content for content, _ in batch])
    except Exception as err:
        _fail(batch, err, observer, WRITE_FAILED)
        return
    observer.committed(len(batch), clock.monotonic() - started)
    _succeed(batch, written)


def _shut_down_error() -> UnavailableError:
    return UnavailableError("the ledger is shut down", reason="ledger_unavailable")


def _shut_down(observer: WriteObserver) -> Future[Entry]:
    observer.failed(1, SHUT_DOWN)
    future: Future[Entry] = Future()
    future.set_exception(_shut_down_error())
    return future


class LedgerWriter:
    def __init__(
        self,
        append: Append,
        *,
        max_batch: int = 512,
        observer: WriteObserver = UNOBSERVED,
        clock: Clock | None = None,
    ) -> None:
        self._append = append
        self._max_batch = max_batch
        self._observer = observer
        self._clock = clock or SystemClock()
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self._closed = False
        self._thread.start()

    def submit(self, content: Record) -> Future[Entry]:
        if self._closed:
            return _shut_down(self._observer)
        future: Future[Entry] = Future()
        self._queue.put((content, future))
        return future

    def _next_batch(self) -> list[_Item] | None:
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        while len(batch) < self._max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)
                break
            batch.append(item)
        return batch

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            commit_batch(self._append, batch, self._observer, self._clock)

    def close(self, timeout_s: float = 10.0) -> None:
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout_s)


class LoopLedgerWriter:
    """Group commit driven by an event loop; the ledger process does the writing.

    Entries submitted on the loop wait in a list; one batch at a time goes to the
    ledger process (see ca.ledger.process_writer), and entries submitted meanwhile
    form the next batch, so the batch grows with the commit's latency and the loop
    never blocks on the disk. Each commit has a fixed cost, so when the last one was
    less than `linger_s` ago (the CA is busy) a new batch waits `linger_s` from its
    first entry for company. An idle CA commits at once.

    Waiters are settled within about `deadline_s` (plus one batch's commit), so callers
    await its futures without a timeout of their own: entries still waiting to be sent
    after `deadline_s` fail, and so does a ledger process that has not answered by then
    or that exits; it fails its batch and everything pending with UnavailableError and
    is replaced. Until the new one is ready, new entries fail at once instead of
    queueing behind it.

    Every interval (the linger, the deadlines, the wait before a replacement) is measured
    and waited out on `clock`, so a test moves a fake clock instead of waiting.
    """

    def __init__(
        self,
        process: LedgerProcess,
        loop: asyncio.AbstractEventLoop,
        *,
        max_batch: int = 512,
        max_pending: int = 16 * 512,
        linger_s: float = 0.0,
        short_of_cpu: Callable[[], bool] = always,
        deadline_s: float = 10.0,
        start_timeout_s: float = 60.0,
        restart_backoff: Backoff = RESTART_BACKOFF,
        random: UniformRandom = random.random,
        clock: Clock | None = None,
        observer: WriteObserver = UNOBSERVED,
    ) -> None:
        """`process` has been started and is ready."""
        self._process = process
        self._loop = loop
        self._clock = clock or SystemClock()
        self._observer = observer
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._linger_s = linger_s
        self._short_of_cpu = short_of_cpu
        self._deadline_s = deadline_s
        self._start_timeout_s = start_timeout_s
        self._pending: list[_Item] = []
        self._pending_since: list[float] = []  # the clock's monotonic time each pending entry came in
        self._committing: list[_Item] | None = None  # the batch the process is writing
        self._sent_at = 0.0  # the clock's monotonic time the batch in flight went to the process
        self._down: UnavailableError | None = None  # why entries fail at once, while they do
        self._restarts = Retrying(restart_backoff, random)
        self._overdue: Timer | None = None  # the batch in flight, or the start
        self._timer: Timer | None = None  # the linger
        self._last_commit = -math.inf
        self._attached = False
        self._closed = False
        self._drained = False
        loop.call_soon_threadsafe(self._attach)

    def submit(self, content: Record) -> Recorded:
        """On the loop, an asyncio future (settling it needs no wake-up of the loop); from
        other threads, a thread's future."""
        if self._closed:
            return _shut_down(self._observer)
        if self._on_loop_thread():
            waiter: asyncio.Future[Entry] = self._loop.create_future()
            self._enqueue((content, waiter))
            return waiter
        future: Future[Entry] = Future()
        self._loop.call_soon_threadsafe(self._enqueue, (content, future))
        return future

    def _on_loop_thread(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _attach(self) -> None:
        if self._process.conn is not None and not self._attached:
            fd = self._process.conn.fileno()
            self._loop.add_reader(fd, self._on_reply)
            # uvloop (libuv) makes a watched descriptor non-blocking; the pipe's whole-message
            # recv and send need it blocking, or a reply or batch larger than the socket's
            # buffer fails half way with BlockingIOError, which reads as the process lost.
            os.set_blocking(fd, True)
            self._attached = True

    def _detach(self) -> None:
        if self._attached and self._process.conn is not None:
            with contextlib.suppress(OSError, ValueError):
                self._loop.remove_reader(self._process.conn.fileno())
        self._attached = False

    def _enqueue(self, item: _Item) -> None:
        if self._drained:
            self._observer.failed(1, SHUT_DOWN)
            _settle(item[1], error=_shut_down_error())
            return
        if self._down is not None:
            self._observer.failed(1, WRITER_DOWN)
            _settle(item[1], error=self._down)  # logged once, when it went down
            return
        if len(self._pending) >= self._max_pending:
            self._observer.failed(1, BACKLOG)
            _settle(item[1], error=_backlog_full(len(self._pending)))
            return
        self._pending.append(item)
        self._pending_since.append(self._clock.monotonic())
        if len(self._pending) == 1:
            if self._committing is None:
                self._schedule()
        elif len(self._pending) == self._max_batch and self._committing is None:
            self._schedule(now=True)

    def _schedule(self, *, now: bool = False) -> None:
        """Send the pending entries at once when idle, or when the oldest has waited
        `linger_s` if the last commit was that recent (busy) and the CA is short of CPU:
        with CPU to spare a commit saved is worth nothing, and the wait is all latency."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        waited = self._clock.monotonic() - self._pending_since[0]
        busy = self._clock.monotonic() - self._last_commit < self._linger_s
        if busy and not now and self._short_of_cpu():
            self._timer = self._after(self._linger_s - waited, self._send_next)
        else:
            self._loop.call_soon(self._send_next)

    def _expire_pending(self) -> None:
        """Fail the entries that have waited `deadline_s` without being sent (a backlog)."""
        count = bisect.bisect_left(self._pending_since, self._clock.monotonic() - self._deadline_s)
        if count:
            expired = self._pending[:count]
            del self._pending[:count], self._pending_since[:count]
            _fail(expired, _backlog_full(len(self._pending) + count), self._observer, BACKLOG)

    def _send_next(self) -> None:
        self._timer = None
        if self._committing is not None or self._down is not None:
            return
        self._expire_pending()
        if not self._pending:
            return
        batch = self._pending[: self._max_batch]
        del self._pending[: self._max_batch], self._pending_since[: self._max_batch]
        self._committing = batch
        self._sent_at = self._clock.monotonic()
        self._overdue = self._after(self._deadline_s, self._commit_overdue)
        try:
            self._process.send([record for record, _ in batch])
        except (OSError, ValueError) as err:
            self._lost(f"could not be reached ({err})")

    def _on_reply(self) -> None:
        try:
            reply = self._process.receive()
        except (EOFError, OSError):
            self._lost(f"exited (exit code {self._process.exit_code(wait_s=0.2)})")
            return
        if self._committing is None:
            self._on_start_reply(reply)
            return
        batch, self._committing = self._committing, None
        self._cancel_overdue()
        self._last_commit = self._clock.monotonic()
        _settle_batch(batch, reply, self._observer, self._last_commit - self._sent_at)
        self._schedule()

    def _on_start_reply(self, reply: tuple[Any, ...]) -> None:
        """A new ledger process says it is ready, or why it could not open the ledger."""
        self._cancel_overdue()
        if reply[0] != READY:
            self._lost(f"could not open the ledger ({reply[1]})")
            return
        self._down = None
        self._restarts.reset()
        log.warning("the ledger process is back; issuing again")
        self._schedule()

    def _cancel_overdue(self) -> None:
        if self._overdue is not None:
            self._overdue.cancel()
            self._overdue = None

    def _commit_overdue(self) -> None:
        self._overdue = None
        if self._committing is not None:
            self._lost(f"has not confirmed a commit for over {self._deadline_s:g}s (a hung disk?)")

    def _start_overdue(self) -> None:
        self._overdue = None
        self._lost(f"did not start within {self._start_timeout_s:g}s")

    def _lost(self, what: str) -> None:
        """The ledger process died, hangs or cannot start: fail everyone waiting on it, replace it."""
        self._cancel_overdue()
        self._detach()
        self._process.kill()
        self._down = UnavailableError(
            f"the issuance ledger's writer process {what}; no certificate is returned until it is "
            "replaced, which happens by itself; if this repeats, check the ledger's disk or database",
            reason="ledger_unavailable",
        )
        waiting = self._take_waiting()
        if waiting:
            _fail(waiting, self._down, self._observer, WRITER_DOWN)
        else:
            log.error("ledger write failed", extra={"detail": self._down.message, "entries": 0})
        if not self._closed:
            self._after(self._restarts.next_delay_s(), self._restart)

    def _take_waiting(self) -> list[_Item]:
        """Everything not yet settled: the batch in flight, then the pending entries."""
        waiting = [*(self._committing or []), *self._pending]
        self._committing, self._pending, self._pending_since = None, [], []
        return waiting

    def _restart(self) -> None:
        if self._closed:
            return
        try:
            self._process.start()  # it says READY once it has opened the ledger
        except Exception as err:
            self._lost(f"could not be started ({err})")
            return
        self._attach()
        self._overdue = self._after(self._start_timeout_s, self._start_overdue)

    def _after(self, seconds: float, callback: Callable[[], None]) -> Timer:
        return self._clock.call_later(self._loop, seconds, callback)

    def close(self, timeout_s: float | None = None) -> None:
        """Stop taking entries; those already submitted are written first."""
        self._closed = True
        timeout_s = self._deadline_s + 5 if timeout_s is None else timeout_s
        if self._loop.is_running() and not self._on_loop_thread():
            drained = asyncio.run_coroutine_threadsafe(self._drain(timeout_s), self._loop)
            try:
                drained.result(timeout_s + 5)
            except Exception as err:
                log.warning("could not drain the ledger writer", extra={"detail": str(err)})
        else:
            self._drain_without_loop(timeout_s)
        self._process.stop()

    async def _drain(self, timeout_s: float) -> None:
        deadline = self._clock.monotonic() + timeout_s
        try:
            while (self._pending or self._committing is not None) and self._down is None:
                if self._clock.monotonic() > deadline:
                    raise TimeoutError(f"entries still unwritten after {timeout_s:g}s")
                await asyncio.sleep(0.005)
        finally:
            self._finish()

    def _finish(self) -> None:
        """No more entries: fail what is left and let go of the process's pipe."""
        self._drained = True
        self._cancel_overdue()
        if self._timer is not None:
            self._timer.cancel()
        left = self._take_waiting()
        if left:
            _fail(
                left,
                UnavailableError("the ledger was shut down first", reason="ledger_unavailable"),
                self._observer,
                SHUT_DOWN,
            )
        self._detach()

    def _drain_without_loop(self, timeout_s: float) -> None:
        """The loop is gone: read the answer for the batch in flight and write the rest here."""
        self._detach()
        try:
            if self._committing is not None:
                self._settle_sync(self._committing, timeout_s)
                self._committing = None
            if self._pending and self._down is None:
                self._sent_at = self._clock.monotonic()
                self._process.send([record for record, _ in self._pending])
                self._settle_sync(self._pending, timeout_s)
                self._pending, self._pending_since = [], []
        except (EOFError, OSError) as err:
            log.error("could not drain the ledger writer", extra={"detail": str(err)})
        self._finish()

    def _settle_sync(self, batch: list[_Item], timeout_s: float) -> None:
        reply = self._process.receive(timeout_s)
        _settle_batch(batch, reply, self._observer, self._clock.monotonic() - self._sent_at)


def _settle_batch(
    batch: Sequence[_Item], reply: tuple[Any, ...], observer: WriteObserver, seconds: float
) -> None:
    """Settle a batch with the ledger process's answer (`seconds` after it was sent): its
    entries, or why it failed."""
    if reply[0] != WRITTEN:
        _fail(batch, UnavailableError(str(reply[1]), reason="ledger_unavailable"), observer, WRITE_FAILED)
        return
    try:
        _succeed(batch, reply[1])
    except Exception as err:  # a reply that does not fit its batch: never leave a waiter
        _fail(batch, err, observer, WRITE_FAILED)
        return
    observer.committed(len(batch), seconds)


def _backlog_full(waiting: int) -> UnavailableError:
    return UnavailableError(
        f"the issuance ledger is {waiting} entries behind; no certificate is returned until it "
        "catches up; retry shortly, and check the ledger's disk or database if this repeats",
        reason="ledger_unavailable",
    )
