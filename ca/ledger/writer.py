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
import logging
import math
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError

from ca.errors import MeshcaError, UnavailableError
from ca.ledger.entries import Entry, Record
from ca.ledger.process_writer import READY, WRITTEN, LedgerProcess

log = logging.getLogger("meshca.ledger")

_FIRST_RESTART_S = 0.2  # then doubling, up to:
_LAST_RESTART_S = 10.0

Append = Callable[[Sequence[Record]], list[Entry]]
# What a caller waits on: a thread's future, or an asyncio future for code on the writer's loop.
Recorded = Future[Entry] | asyncio.Future[Entry]
_Item = tuple[Record, Recorded]


def _settle(future: Recorded, *, entry: Entry | None = None, error: BaseException | None = None) -> None:
    """Resolve a waiter's future; one its client already gave up on (cancelled) is left alone."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(entry)  # type: ignore[arg-type]
    except (InvalidStateError, asyncio.InvalidStateError):
        pass


def _fail(batch: Sequence[_Item], err: BaseException) -> None:
    if isinstance(err, MeshcaError):
        log.error("ledger write failed", extra={"detail": err.message, "entries": len(batch)})
    else:
        log.error("ledger write failed unexpectedly", exc_info=err)
        err = UnavailableError(f"the issuance ledger failed ({err})", reason="ledger_unavailable")
    for _, future in batch:
        _settle(future, error=err)


def _succeed(
    batch: Sequence[_Item], written: Sequence[Entry], on_commit: Callable[[Entry], None] | None
) -> None:
    for (_, future), entry in zip(batch, written, strict=True):
        _settle(future, entry=entry)
    if on_commit is not None:
        on_commit(written[-1])


def commit_batch(append: Append, batch: Sequence[_Item], on_commit: Callable[[Entry], None] | None) -> None:
    """Append a batch as one transaction and settle every waiter with its entry or the error."""
    try:
        written = append([content for content, _ in batch])
    except Exception as err:
        _fail(batch, err)
        return
    _succeed(batch, written, on_commit)


def _shut_down() -> Future[Entry]:
    future: Future[Entry] = Future()
    future.set_exception(UnavailableError("the ledger is shut down", reason="ledger_unavailable"))
    return future


class LedgerWriter:
    def __init__(
        self, append: Append, *, max_batch: int = 512, on_commit: Callable[[Entry], None] | None = None
    ) -> None:
        self._append = append
        self._max_batch = max_batch
        self._on_commit = on_commit
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self._closed = False
        self._thread.start()

    def submit(self, content: Record) -> Future[Entry]:
        if self._closed:
            return _shut_down()
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
            commit_batch(self._append, batch, self._on_commit)

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

    Every waiter is settled within `deadline_s`, so callers await its futures without a
    timeout of their own. A ledger process that has not answered by then, or that exits,
    fails its batch and everything pending with UnavailableError and is replaced; until
    the new one is ready, new entries fail at once instead of queueing behind it.
    """

    def __init__(
        self,
        process: LedgerProcess,
        loop: asyncio.AbstractEventLoop,
        *,
        max_batch: int = 512,
        linger_s: float = 0.0,
        deadline_s: float = 10.0,
        on_commit: Callable[[Entry], None] | None = None,
    ) -> None:
        """`process` has been started and is ready."""
        self._process = process
        self._loop = loop
        self._max_batch = max_batch
        self._linger_s = linger_s
        self._deadline_s = deadline_s
        self._on_commit = on_commit
        self._pending: list[_Item] = []
        self._committing: list[_Item] | None = None  # the batch the process is writing
        self._down: UnavailableError | None = None  # why entries fail at once, while they do
        self._restart_delay_s = _FIRST_RESTART_S
        self._overdue: asyncio.TimerHandle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_commit = -math.inf
        self._first_pending_at = 0.0
        self._closed = False
        loop.call_soon_threadsafe(self._attach)

    def submit(self, content: Record) -> Recorded:
        """On the loop, an asyncio future (settling it needs no wake-up of the loop); from
        other threads, a thread's future."""
        if self._closed:
            return _shut_down()
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
        assert self._process.conn is not None
        self._loop.add_reader(self._process.conn.fileno(), self._on_reply)

    def _detach(self) -> None:
        if self._process.conn is not None:
            self._loop.remove_reader(self._process.conn.fileno())

    def _enqueue(self, item: _Item) -> None:
        if self._down is not None:
            _settle(item[1], error=self._down)  # logged once, when it went down
            return
        self._pending.append(item)
        if len(self._pending) == 1:
            self._first_pending_at = self._loop.time()
            if self._committing is None:
                self._schedule()
        elif len(self._pending) == self._max_batch and self._committing is None:
            self._schedule(now=True)

    def _schedule(self, *, now: bool = False) -> None:
        """Send the pending entries at once when idle, or when the oldest has waited
        `linger_s` if the last commit was that recent (busy)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        busy = self._loop.time() - self._last_commit < self._linger_s
        if busy and not now:
            self._timer = self._loop.call_at(self._first_pending_at + self._linger_s, self._send_next)
        else:
            self._loop.call_soon(self._send_next)

    def _send_next(self) -> None:
        self._timer = None
        if self._committing is not None or not self._pending or self._down is not None:
            return
        batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
        self._first_pending_at = self._loop.time()
        self._committing = batch
        self._overdue = self._loop.call_later(self._deadline_s, self._commit_overdue)
        try:
            self._process.send([record for record, _ in batch])
        except (OSError, ValueError) as err:
            self._lost(f"could not be reached ({err})")

    def _on_reply(self) -> None:
        try:
            reply = self._process.receive()
        except (EOFError, OSError):
            self._lost(f"exited (exit code {self._process.exit_code()})")
            return
        if reply[0] == READY:
            self._down = None
            self._restart_delay_s = _FIRST_RESTART_S
            log.info("the ledger process is back")
            self._schedule()
            return
        batch, self._committing = self._committing, None
        self._cancel_overdue()
        self._last_commit = self._loop.time()
        if batch is not None:
            if reply[0] == WRITTEN:
                _succeed(batch, reply[1], self._on_commit)
            else:
                _fail(batch, UnavailableError(str(reply[1]), reason="ledger_unavailable"))
        self._schedule()

    def _cancel_overdue(self) -> None:
        if self._overdue is not None:
            self._overdue.cancel()
            self._overdue = None

    def _commit_overdue(self) -> None:
        self._overdue = None
        if self._committing is not None:
            self._lost(f"has not confirmed a commit for over {self._deadline_s:g}s (a hung disk?)")

    def _lost(self, what: str) -> None:
        """The ledger process died or hangs: fail everyone waiting on it, replace it."""
        self._cancel_overdue()
        self._detach()
        self._process.kill()
        self._down = UnavailableError(
            f"the issuance ledger's writer process {what}; no certificate is returned until it is "
            "replaced, which happens by itself; if this repeats, check the ledger's disk",
            reason="ledger_unavailable",
        )
        waiting = [*(self._committing or []), *self._pending]
        self._committing, self._pending = None, []
        _fail(waiting, self._down)
        if not waiting:
            log.error("ledger write failed", extra={"detail": self._down.message, "entries": 0})
        if not self._closed:
            self._loop.call_later(self._restart_delay_s, self._restart)

    def _restart(self) -> None:
        if self._closed:
            return
        self._restart_delay_s = min(self._restart_delay_s * 2, _LAST_RESTART_S)
        try:
            self._process.start()  # it says READY when it has opened the ledger
            self._attach()
        except Exception as err:
            log.error("could not start the ledger process", extra={"detail": str(err)})
            self._loop.call_later(self._restart_delay_s, self._restart)

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop taking entries; those already submitted are written first."""
        self._closed = True
        if self._loop.is_running() and not self._on_loop_thread():
            drained = asyncio.run_coroutine_threadsafe(self._drained(), self._loop)
            try:
                drained.result(timeout_s)
            except Exception as err:
                log.warning("could not drain the ledger writer", extra={"detail": str(err)})
        else:
            self._drain_without_loop(timeout_s)
        self._process.stop()

    async def _drained(self) -> None:
        while (self._pending or self._committing is not None) and self._down is None:
            await asyncio.sleep(0.005)
        self._detach()

    def _drain_without_loop(self, timeout_s: float) -> None:
        """The loop is gone: read the answer for the batch in flight and write the rest here."""
        try:
            if self._down is None:
                self._detach()
            if self._committing is not None:
                self._settle_sync(self._committing, timeout_s)
                self._committing = None
            if self._pending and self._down is None:
                batch, self._pending = self._pending, []
                self._process.send([record for record, _ in batch])
                self._settle_sync(batch, timeout_s)
        except (EOFError, OSError) as err:
            _fail([*(self._committing or []), *self._pending], err)

    def _settle_sync(self, batch: list[_Item], timeout_s: float) -> None:
        reply = self._process.receive(timeout_s)
        if reply[0] == WRITTEN:
            _succeed(batch, reply[1], self._on_commit)
        else:
            _fail(batch, UnavailableError(str(reply[1]), reason="ledger_unavailable"))
