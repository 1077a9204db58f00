"""Group commit: the thread writer, and the event-loop writer with its ledger process."""

from __future__ import annotations

import asyncio
import functools
import os
import re
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from ca.common.backoff import Backoff
from ca.errors import UnavailableError
from ca.ledger.chain import Entry
from ca.ledger.process_writer import LedgerProcess
from ca.ledger.writer import LedgerWriter, LoopLedgerWriter
from tests.support.recording_appender import RecordingAppender, recorded_batches


class RecordingStore:
    """Appends like LedgerStore, in this process; remembers batches."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.seq = 0

    def append(self, contents: Sequence[Mapping[str, Any]]) -> list[Entry]:
        self.batches.append([str(c["id"]) for c in contents])
        written = []
        for _ in contents:
            self.seq += 1
            written.append(Entry(seq=self.seq, content_json="{}", prev_hash="", entry_hash=str(self.seq)))
        return written


@pytest.fixture
def ledger_process(tmp_path: Path) -> Iterator[LedgerProcess]:
    process = LedgerProcess(functools.partial(RecordingAppender, str(tmp_path)))
    process.start()
    process.wait_ready(60)
    yield process
    process.stop()


def _writer(process: LedgerProcess, **settings: Any) -> LoopLedgerWriter:
    return LoopLedgerWriter(process, asyncio.get_running_loop(), **settings)


async def _record(writer: LoopLedgerWriter, ids: Sequence[object]) -> list[Entry]:
    waiters = [writer.submit({"id": i}) for i in ids]
    return [await w if isinstance(w, asyncio.Future) else await asyncio.wrap_future(w) for w in waiters]


async def _refused_with(writer: LoopLedgerWriter, pattern: str, within_s: float = 20.0) -> None:
    """Records until the writer refuses one with `pattern`; every attempt meanwhile must be refused."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    last = "no attempt yet"
    while loop.time() < deadline:
        with pytest.raises(UnavailableError) as refused:
            await _record(writer, ["refused"])
        if re.search(pattern, str(refused.value)):
            return
        last = str(refused.value)
        await asyncio.sleep(0.05)
    raise AssertionError(f"not refused with {pattern!r} within {within_s}s; last refusal: {last}")


def test_records_submitted_together_share_one_commit_made_by_the_ledger_process(
    ledger_process: LedgerProcess, tmp_path: Path
) -> None:
    async def scenario() -> None:
        writer = _writer(ledger_process)
        entries = await _record(writer, range(5))
        assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
        writer.close()

    asyncio.run(scenario())
    [(pid, ids)] = recorded_batches(tmp_path, with_pid=True)
    assert ids == ["0", "1", "2", "3", "4"] and pid != os.getpid()


def test_records_that_arrive_during_a_commit_form_the_next_batch(
    ledger_process: LedgerProcess, tmp_path: Path
) -> None:
    hold = tmp_path / "hold"
    hold.touch()

    async def scenario() -> None:
        writer = _writer(ledger_process)
        first = writer.submit({"id": "a"})
        await asyncio.sleep(0.05)  # the first batch is with the ledger process, which waits
        later = [writer.submit({"id": x}) for x in "bcd"]
        hold.unlink()
        for waiter in (first, *later):
            assert isinstance(waiter, asyncio.Future)
            await waiter
        writer.close()

    asyncio.run(scenario())
    assert recorded_batches(tmp_path) == [["a"], ["b", "c", "d"]]


def test_a_failed_commit_fails_its_batch_only_and_the_writer_goes_on(
    ledger_process: LedgerProcess, tmp_path: Path
) -> None:
    (tmp_path / "fail-next").touch()

    async def scenario() -> None:
        writer = _writer(ledger_process)
        with pytest.raises(UnavailableError, match="disk on fire"):
            await _record(writer, [1, 2])
        assert [e.seq for e in await _record(writer, [3])] == [1]
        writer.close()

    asyncio.run(scenario())
    assert recorded_batches(tmp_path) == [["3"]]


def test_a_busy_writer_lingers_so_that_batches_grow_and_an_idle_one_does_not(
    ledger_process: LedgerProcess,
) -> None:
    linger = 0.2

    async def scenario() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        writer = _writer(ledger_process, linger_s=linger)
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


def test_records_from_other_threads_get_thread_futures_and_close_drains_them(
    ledger_process: LedgerProcess, tmp_path: Path
) -> None:
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    try:
        writer = LoopLedgerWriter(ledger_process, loop, linger_s=0.05)
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
    assert sum(len(b) for b in recorded_batches(tmp_path)) == 3


def test_close_after_the_loop_stopped_writes_what_is_left(
    ledger_process: LedgerProcess, tmp_path: Path
) -> None:
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    writer = LoopLedgerWriter(ledger_process, loop)
    first = writer.submit({"id": "first"})
    assert isinstance(first, Future)
    first.result(timeout=10)
    (tmp_path / "hold").touch()
    in_flight = writer.submit({"id": "in-flight"})  # sent at once: the writer is idle
    time.sleep(0.1)
    lingering = writer.submit({"id": "lingering"})  # waits for that commit
    loop.call_soon_threadsafe(loop.stop)
    runner.join(5)
    (tmp_path / "hold").unlink()
    writer.close()  # the loop is gone: finished here
    loop.close()
    for future in (in_flight, lingering):
        assert isinstance(future, Future) and future.result(timeout=0).seq > 0
    assert recorded_batches(tmp_path) == [["first"], ["in-flight"], ["lingering"]]


def test_a_waiter_that_gave_up_does_not_stop_the_others(
    ledger_process: LedgerProcess, tmp_path: Path
) -> None:
    async def scenario() -> None:
        writer = _writer(ledger_process)
        gone = writer.submit({"id": "gone"})
        kept = writer.submit({"id": "kept"})
        assert isinstance(gone, asyncio.Future) and isinstance(kept, asyncio.Future)
        gone.cancel()
        assert (await kept).seq == 2
        writer.close()

    asyncio.run(scenario())
    assert recorded_batches(tmp_path) == [["gone", "kept"]]


def test_a_hung_ledger_process_fails_its_waiters_at_the_deadline_and_is_replaced(
    ledger_process: LedgerProcess, tmp_path: Path
) -> None:
    hold = tmp_path / "hold"
    hold.touch()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        writer = _writer(ledger_process, deadline_s=0.3)
        started = loop.time()
        stuck = writer.submit({"id": "stuck"})
        await asyncio.sleep(0.05)  # "stuck" is with the ledger process, which hangs
        queued = writer.submit({"id": "queued"})
        for waiter in (stuck, queued):
            with pytest.raises(UnavailableError, match=r"has not confirmed a commit for over 0\.3s"):
                await waiter
        assert 0.3 <= loop.time() - started < 2.0
        late = writer.submit({"id": "late"})
        assert isinstance(late, asyncio.Future) and late.done()  # failed at once, not queued
        with pytest.raises(UnavailableError):
            late.result()
        hold.unlink()
        assert (await _record_when_back(writer, "after"))[0].seq == 1
        writer.close()

    asyncio.run(scenario())
    # The hung process was killed before it wrote anything; its replacement wrote "after".
    assert recorded_batches(tmp_path) == [["after"]]


def test_a_ledger_process_that_dies_fails_its_batch_and_is_replaced(
    ledger_process: LedgerProcess, tmp_path: Path
) -> None:
    (tmp_path / "exit-next").touch()

    async def scenario() -> None:
        writer = _writer(ledger_process)
        with pytest.raises(UnavailableError, match=r"writer process exited \(exit code 3\)"):
            await _record(writer, ["lost"])
        assert (await _record_when_back(writer, "after"))[0].seq == 1
        writer.close()

    asyncio.run(scenario())
    [(pid, ids)] = recorded_batches(tmp_path, with_pid=True)
    assert ids == ["after"] and pid != os.getpid()


def test_a_replacement_that_cannot_open_the_ledger_or_hangs_opening_it_is_replaced_until_one_can(
    ledger_process: LedgerProcess, tmp_path: Path
) -> None:
    (tmp_path / "exit-next").touch()
    (tmp_path / "refuse-open").touch()

    async def scenario() -> None:
        # Replacements every 0.05-0.4 s, without jitter, so each phase below is reached quickly.
        backoff = Backoff(initial_s=0.05, maximum_s=0.4, jitter=0.0)
        writer = _writer(ledger_process, start_timeout_s=0.5, restart_backoff=backoff)
        with pytest.raises(UnavailableError, match="exited"):
            await _record(writer, ["lost"])
        # Replacements start and fail to open the ledger.
        await _refused_with(writer, r"could not open the ledger \(the test refuses")
        (tmp_path / "hang-open").touch()
        (tmp_path / "refuse-open").unlink()
        # The next one hangs while opening; it is given 0.5 s.
        await _refused_with(writer, r"did not start within 0\.5s")
        (tmp_path / "hang-open").unlink()
        assert (await _record_when_back(writer, "after"))[0].seq == 1
        writer.close()

    asyncio.run(scenario())
    assert recorded_batches(tmp_path) == [["after"]]


def test_a_backlog_is_bounded_in_size_and_in_age(ledger_process: LedgerProcess, tmp_path: Path) -> None:
    (tmp_path / "delay").write_text("0.25")

    async def scenario() -> None:
        writer = _writer(ledger_process, max_batch=2, max_pending=5, deadline_s=0.4)
        waiters = [writer.submit({"id": i}) for i in range(7)]  # 2 sent, 5 wait, 0 room
        outcomes = await asyncio.gather(*waiters, return_exceptions=True)
        written = [o.seq for o in outcomes if isinstance(o, Entry)]
        refused = [str(o) for o in outcomes if isinstance(o, UnavailableError)]
        # 0-1 go first; 2-3 after 0.25 s; 4-5 would go after 0.5 s, past the deadline; 6 had no room.
        assert written == [1, 2, 3, 4], outcomes
        assert len(refused) == 3 and all("entries behind" in r for r in refused), refused
        writer.close()

    asyncio.run(scenario())
    assert recorded_batches(tmp_path) == [["0", "1"], ["2", "3"]]


def test_the_ledger_process_ignores_sigterm_so_that_the_ca_can_drain_it(
    ledger_process: LedgerProcess, tmp_path: Path
) -> None:
    assert ledger_process.pid is not None
    os.kill(ledger_process.pid, signal.SIGTERM)  # as a SIGTERM to the whole process group would

    async def scenario() -> None:
        writer = _writer(ledger_process)
        await asyncio.sleep(0.2)
        assert [e.seq for e in await _record(writer, ["after-sigterm"])] == [1]
        writer.close()

    asyncio.run(scenario())
    [(pid, ids)] = recorded_batches(tmp_path, with_pid=True)
    assert (pid, ids) == (ledger_process.pid, ["after-sigterm"])


async def _record_when_back(writer: LoopLedgerWriter, record_id: str, timeout_s: float = 60) -> list[Entry]:
    """Record once the replaced ledger process is ready (until then, entries fail at once)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await _record(writer, [record_id])
        except UnavailableError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


def test_the_thread_writer_settles_every_waiter() -> None:
    store = RecordingStore()
    writer = LedgerWriter(store.append)
    futures = [writer.submit({"id": i}) for i in range(20)]
    assert sorted(f.result(timeout=5).seq for f in futures) == list(range(1, 21))
    writer.close()
    assert sorted(int(i) for b in store.batches for i in b) == list(range(20))


class _UnstartableProcess:
    """A ledger process that cannot be reached, and whose replacements cannot be started."""

    conn = None

    def send(self, records: object) -> None:
        raise OSError("broken pipe")

    def start(self) -> None:
        raise OSError("cannot fork")

    def kill(self) -> None:
        pass


class _Timer:
    def cancel(self) -> None:
        pass


class _TimerLoop:
    """Runs callbacks at once and keeps timers for the test to fire; records their delays."""

    def __init__(self) -> None:
        self.timers: list[tuple[float, Any]] = []

    def time(self) -> float:
        return 0.0

    def call_soon(self, callback: Any, *args: Any) -> None:
        callback(*args)

    call_soon_threadsafe = call_soon

    def call_later(self, delay_s: float, callback: Any) -> _Timer:
        self.timers.append((delay_s, callback))
        return _Timer()

    def restart_delays(self, restarts: int) -> list[float]:
        delays: list[float] = []
        while len(delays) < restarts:
            delay_s, callback = self.timers.pop(0)
            if callback.__name__ == "_restart":
                delays.append(delay_s)
                callback()
        return delays


@pytest.mark.parametrize(
    ("random_draw", "expected"),
    [
        (1.0, [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0]),  # the whole step
        (0.0, [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]),  # the least wait: half of it
    ],
)
def test_replacements_of_a_lost_ledger_process_back_off_with_jitter_up_to_ten_seconds(
    random_draw: float, expected: list[float]
) -> None:
    loop = _TimerLoop()
    writer = LoopLedgerWriter(
        _UnstartableProcess(),  # type: ignore[arg-type]
        loop,  # type: ignore[arg-type]
        random=lambda: random_draw,
    )
    lost = writer.submit({"id": "lost"})
    assert isinstance(lost, Future) and isinstance(lost.exception(0), UnavailableError)
    assert loop.restart_delays(8) == pytest.approx(expected)
