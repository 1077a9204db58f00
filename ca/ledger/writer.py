"""Group commit: requests hand entries to one writer thread and wait for their commit.

Under load many requests' entries share one transaction, so the ledger's cost
per certificate falls as the rate rises instead of capping it at the disk's
commits per second.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from typing import Any

from ca.errors import MeshcaError, UnavailableError
from ca.ledger.entries import Entry

log = logging.getLogger("meshca.ledger")

Append = Callable[[Sequence[Mapping[str, Any]]], list[Entry]]
_Item = tuple[Mapping[str, Any], "Future[Entry]"]


def _settle(future: Future[Entry], *, entry: Entry | None = None, error: BaseException | None = None) -> None:
    """Resolve a waiter's future; one its client already gave up on (cancelled) is left alone."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(entry)  # type: ignore[arg-type]
    except InvalidStateError:
        pass


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
        future: Future[Entry] = Future()
        if self._closed:
            future.set_exception(UnavailableError("the ledger is shut down", reason="ledger_unavailable"))
            return future
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
            try:
                written = self._append([content for content, _ in batch])
            except MeshcaError as err:
                log.error("ledger write failed", extra={"detail": err.message, "entries": len(batch)})
                for _, future in batch:
                    _settle(future, error=err)
                continue
            except Exception as err:
                log.exception("ledger write failed unexpectedly")
                failure = UnavailableError(f"the issuance ledger failed ({err})", reason="ledger_unavailable")
                for _, future in batch:
                    _settle(future, error=failure)
                continue
            for (_, future), entry in zip(batch, written, strict=True):
                _settle(future, entry=entry)
            if self._on_commit is not None:
                self._on_commit(written[-1])

    def close(self, timeout_s: float = 10.0) -> None:
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout_s)
