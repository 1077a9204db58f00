"""Group commit: the thread writer and the event-loop writer, against a recording store."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from typing import Any

import pytest

from ca.errors import UnavailableError
from ca.ledger.entries import Entry
from ca.ledger.writer import LedgerBusy, LedgerWriter, LoopLedgerWriter


class RecordingStore:
    """Stages and commits like LedgerStore; remembers batches and can be told to fail."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.staged: list[str] | None = None
        self.fail_next_commit = False
        self.commit_threads: set[str] = set()
        self.stage_threads: set[str] = set()
        self.seq = 0
        self.busy = False
        self.hold_commit: threading.Event | None = None  # commits wait for it: a hung disk

    def stage(self, contents: Sequence[Mapping[str, Any]], *, wait: bool = True) -> list[Entry]:
        assert self.staged is None, "a batch was staged while another was still open"
        if self.busy and not wait:
            self.busy = False
            raise LedgerBusy()
        self.stage_threads.add(threading.current_thread().name)
        self.staged = [str(c["id"]) for c in contents]
        written = []
        for _ in contents:
            self.seq += 1
            written.append(Entry(seq=self.seq, content_json="{}", prev_hash="", entry_hash=str(self.seq)))
        return written

    def commit_staged(self) -> None:
        assert self.staged is not None
        self.commit_threads.add(threading.current_thread().name)
        if self.hold_commit is not None:
            assert self.hold_commit.wait(10), "the test never released the commit"
        staged, self.staged = self.staged, None
        if self.fail_next_commit:
            self.fail_next_commit = False
            raise UnavailableError("disk on fire", reason="ledger_unavailable")
        self.batches.append(staged)

    def append(self, contents: Sequence[Mapping[str, Any]]) -> list[Entry]:
        written = self.stage(contents)
        self.commit_staged()
        return written


async def _record(writer: LoopLedgerWriter, ids: Sequence[int]) -> list[Entry]:
    waiters = [writer.submit({"id": i}) for i in ids]
    return [await w if isinstance(w, asyncio.Future) else await asyncio.wrap_future(w) for w in waiters]


def test_records_submitted_together_share_one_commit_made_off_the_loop() -> None:
    store = RecordingStore()

    async def scenario() -> None:
        writer = LoopLedgerWriter(store, asyncio.get_running_loop())
        entries = await _record(writer, range(5))
        assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
        writer.close()

    asyncio.run(scenario())
    assert store.batches == [["0", "1", "2", "3", "4"]]
    assert store.stage_threads == {"MainThread"}  # staged on the loop
    assert len(store.commit_threads) == 1 and "MainThread" not in store.commit_threads


def test_records_that_arrive_during_a_commit_form_the_next_batch() -> None:
    store = RecordingStore()

    async def scenario() -> None:
        writer = LoopLedgerWriter(store, asyncio.get_running_loop())
        first = writer.submit({"id": "a"})
        await asyncio.sleep(0)  # the first batch is staged and handed to the committer
        later = [writer.submit({"id": x}) for x in "bcd"]
        for waiter in (first, *later):
            assert isinstance(waiter, asyncio.Future)
            await waiter
        writer.close()

    asyncio.run(scenario())
    assert store.batches == [["a"], ["b", "c", "d"]]


def test_a_locked_database_is_waited_for_on_the_committer_thread_not_on_the_loop() -> None:
    store = RecordingStore()
    store.busy = True  # another connection holds the write lock when the loop tries

    async def scenario() -> None:
        writer = LoopLedgerWriter(store, asyncio.get_running_loop())
        assert [e.seq for e in await _record(writer, [1, 2])] == [1, 2]
        writer.close()

    asyncio.run(scenario())
    assert store.batches == [["1", "2"]]
    assert "MainThread" not in store.stage_threads  # staged (and waited) on the committer thread


def test_a_failed_commit_fails_its_batch_only_and_the_writer_goes_on() -> None:
    store = RecordingStore()
    store.fail_next_commit = True

    async def scenario() -> None:
        writer = LoopLedgerWriter(store, asyncio.get_running_loop())
        with pytest.raises(UnavailableError, match="disk on fire"):
            await _record(writer, [1, 2])
        assert [e.seq for e in await _record(writer, [3])] == [3]
        writer.close()

    asyncio.run(scenario())
    assert store.batches == [["3"]]


def test_a_busy_writer_lingers_so_that_batches_grow_and_an_idle_one_does_not() -> None:
    store = RecordingStore()
    linger = 0.2

    async def scenario() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        writer = LoopLedgerWriter(store, loop, linger_s=linger)
        started = loop.time()
        await _record(writer, [1])  # idle: committed at once
        idle = loop.time() - started
        started = loop.time()
        await _record(writer, [2])  # right after a commit: waits for company
        busy = loop.time() - started
        writer.close()
        return idle, busy

    idle, busy = asyncio.run(scenario())
    assert idle < linger / 2, idle
    assert busy >= linger * 0.9, busy


def test_records_from_other_threads_get_thread_futures_and_close_drains_them() -> None:
    store = RecordingStore()
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    try:
        writer = LoopLedgerWriter(store, loop, linger_s=0.05)
        futures = [writer.submit({"id": i}) for i in range(3)]
        assert all(isinstance(f, Future) for f in futures)
        writer.close()  # from this thread, while the loop runs: waits for them
        assert [f.result(timeout=0) for f in futures if isinstance(f, Future)]
        refused = writer.submit({"id": "late"})
        assert isinstance(refused, Future)
        with pytest.raises(UnavailableError, match="shut down"):
            refused.result(timeout=1)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(5)
        loop.close()
    assert sum(len(b) for b in store.batches) == 3


def test_a_waiter_that_gave_up_does_not_stop_the_others() -> None:
    store = RecordingStore()

    async def scenario() -> None:
        writer = LoopLedgerWriter(store, asyncio.get_running_loop())
        gone = writer.submit({"id": "gone"})
        kept = writer.submit({"id": "kept"})
        assert isinstance(gone, asyncio.Future) and isinstance(kept, asyncio.Future)
        gone.cancel()
        assert (await kept).seq == 2
        writer.close()

    asyncio.run(scenario())
    assert store.batches == [["gone", "kept"]]


def test_a_hung_commit_fails_its_waiters_at_the_deadline_and_new_ones_at_once_until_it_returns() -> None:
    store = RecordingStore()
    store.hold_commit = threading.Event()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        writer = LoopLedgerWriter(store, loop, deadline_s=0.2)
        started = loop.time()
        stuck = writer.submit({"id": "stuck"})
        await asyncio.sleep(0.05)  # "stuck" is with the committer, which hangs
        queued = writer.submit({"id": "queued"})
        for waiter in (stuck, queued):
            with pytest.raises(UnavailableError, match=r"has not confirmed a commit for over 0\.2s"):
                await waiter
        assert 0.2 <= loop.time() - started < 1.0
        late = writer.submit({"id": "late"})
        assert isinstance(late, asyncio.Future) and late.done()  # failed at once, not queued
        with pytest.raises(UnavailableError):
            late.result()
        store.hold_commit.set()  # the disk comes back
        store.hold_commit = None
        await asyncio.sleep(0.05)
        assert (await _record(writer, ["after"]))[0].seq == 2
        writer.close()

    asyncio.run(scenario())
    # "stuck" reached the disk (late) although its caller was refused; "queued" and "late" never did.
    assert store.batches == [["stuck"], ["after"]]


def test_the_thread_writer_settles_every_waiter() -> None:
    store = RecordingStore()
    writer = LedgerWriter(store.append)
    futures = [writer.submit({"id": i}) for i in range(20)]
    assert sorted(f.result(timeout=5).seq for f in futures) == list(range(1, 21))
    writer.close()
    assert sorted(int(i) for b in store.batches for i in b) == list(range(20))
