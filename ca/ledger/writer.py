"""Group commit: requests hand entries to one writer and wait for their commit.

Under load many requests' entries share one transaction, so the ledger's cost
per certificate falls as the rate rises instead of capping it at the disk's
commits per second.

Two writers share that batching. `LedgerWriter` does all the work on a thread of
its own: for the threaded gRPC server, and for PostgreSQL, whose round trips
must not stall an event loop. `LoopLedgerWriter` serves the asyncio server with
SQLite: it writes each batch on the loop itself (about 0.05 ms of CPU) and only
the commit's fsync runs on a thread. A writer thread that runs every statement
has to win the GIL back from the busy loop after each one, and that hand-off
cost the loop far more than the statements themselves.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from typing import Any, Protocol

from ca.errors import MeshcaError, UnavailableError
from ca.ledger.entries import Entry

log = logging.getLogger("meshca.ledger")

Append = Callable[[Sequence[Mapping[str, Any]]], list[Entry]]
# What a caller waits on: a thread's future, or an asyncio future for code on the writer's loop.
Recorded = Future[Entry] | asyncio.Future[Entry]
_Item = tuple[Mapping[str, Any], Recorded]


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

    def submit(self, content: Mapping[str, Any]) -> Future[Entry]:
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


class LedgerBusy(Exception):
    """`Stager.stage(wait=False)`: another connection holds the write lock; nothing was staged."""


class Stager(Protocol):
    def stage(self, contents: Sequence[Mapping[str, Any]], *, wait: bool = True) -> list[Entry]: ...

    def commit_staged(self) -> None: ...

    def append(self, contents: Sequence[Mapping[str, Any]]) -> list[Entry]:
        """`stage` (waiting for the lock) and `commit_staged` in one call."""
        ...


class LoopLedgerWriter:
    """Group commit driven by an event loop.

    The loop writes a batch into an open transaction (CPU only, no waiting) and a
    committer thread makes it durable (the fsync). Entries submitted meanwhile wait
    on the loop and form the next batch, so the batch grows with the disk's latency
    and the loop never blocks on it. On a fast disk that alone leaves batches of one
    or two, and each commit has a fixed cost; so when the last commit was less than
    `linger_s` ago (the CA is busy), a new batch waits `linger_s` for company. An idle
    CA commits at once.

    Every waiter is settled within `deadline_s`, so callers await its futures without a
    timeout of their own: a commit that has not returned by then fails its batch and
    everything pending with UnavailableError, and until it returns new entries fail at
    once instead of queueing behind a stuck disk.
    """

    def __init__(
        self,
        store: Stager,
        loop: asyncio.AbstractEventLoop,
        *,
        max_batch: int = 512,
        linger_s: float = 0.0,
        deadline_s: float = 10.0,
        on_commit: Callable[[Entry], None] | None = None,
    ) -> None:
        self._store = store
        self._linger_s = linger_s
        self._deadline_s = deadline_s
        self._loop = loop
        self._max_batch = max_batch
        self._on_commit = on_commit
        self._pending: list[_Item] = []
        self._committing: list[_Item] | None = None  # the batch the committer thread has
        self._stuck = False  # that commit is past the deadline
        self._overdue: asyncio.TimerHandle | None = None
        self._last_commit = -math.inf
        self._first_pending_at = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-commit")

    def submit(self, content: Mapping[str, Any]) -> Recorded:
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

    def _enqueue(self, item: _Item) -> None:
        if self._stuck:
            _settle(item[1], error=self._overdue_error())  # logged once, when it got stuck
            return
        self._pending.append(item)
        if len(self._pending) == 1:
            self._first_pending_at = self._loop.time()
            if self._committing is None:
                self._schedule()
        elif len(self._pending) == self._max_batch and self._committing is None:
            self._schedule(now=True)

    def _schedule(self, *, now: bool = False) -> None:
        """Stage the pending entries at once when idle, or when the oldest has waited
        `linger_s` if the last commit was that recent (busy)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        busy = self._loop.time() - self._last_commit < self._linger_s
        if busy and not now:
            self._timer = self._loop.call_at(self._first_pending_at + self._linger_s, self._stage_next)
        else:
            self._loop.call_soon(self._stage_next)

    def _stage_next(self) -> None:
        self._timer = None
        if self._committing is not None or not self._pending:
            return
        batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
        self._first_pending_at = self._loop.time()
        contents = [content for content, _ in batch]
        job: Callable[[], list[Entry]]
        try:
            written = self._store.stage(contents, wait=False)
            job = functools.partial(self._commit, written)
        except LedgerBusy:
            # Another process or a compaction holds the lock: wait for it on the thread.
            job = functools.partial(self._store.append, contents)
        except Exception as err:
            _fail(batch, err)
            self._schedule(now=True)
            return
        self._committing = batch
        self._overdue = self._loop.call_later(self._deadline_s, self._commit_overdue)
        done = self._committer.submit(job)
        done.add_done_callback(
            lambda finished: self._loop.call_soon_threadsafe(self._committed, batch, finished)
        )

    def _overdue_error(self) -> UnavailableError:
        return UnavailableError(
            f"the issuance ledger has not confirmed a commit for over {self._deadline_s:g}s; no "
            "certificate is returned until it does; check the ledger's disk or database",
            reason="ledger_unavailable",
        )

    def _commit_overdue(self) -> None:
        """The committer thread is stuck (a hung disk): fail everyone waiting on it."""
        self._overdue = None
        if self._committing is None:
            return
        self._stuck = True
        waiting, self._pending = [*self._committing, *self._pending], []
        _fail(waiting, self._overdue_error())

    def _commit(self, written: list[Entry]) -> list[Entry]:
        self._store.commit_staged()
        return written

    def _committed(self, batch: list[_Item], finished: Future[list[Entry]]) -> None:
        self._committing = None
        self._stuck = False
        if self._overdue is not None:
            self._overdue.cancel()
            self._overdue = None
        self._last_commit = self._loop.time()
        error = finished.exception()
        if error is not None:
            _fail(batch, error)
        else:
            _succeed(batch, finished.result(), self._on_commit)
        self._schedule()

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop taking entries; those already submitted are committed first."""
        self._closed = True
        if self._loop.is_running() and not self._on_loop_thread():
            drained = asyncio.run_coroutine_threadsafe(self._drained(), self._loop)
            try:
                drained.result(timeout_s)
            except Exception as err:
                log.warning("could not drain the ledger writer", extra={"detail": str(err)})
        else:
            # The loop is gone: nothing else touches the store now, so commit here.
            batch, self._pending = self._pending, []
            if batch:
                commit_batch(self._store.append, batch, self._on_commit)
        self._committer.shutdown(wait=True)

    async def _drained(self) -> None:
        while self._pending or self._committing is not None:
            await asyncio.sleep(0.005)
