"""Group commit: the thread writer, and the event-loop writer with its ledger process.

The event-loop writer measures its linger, deadlines and restart waits on a fake
clock that each test moves; the ledger process is real, so what it does is awaited
by polling for its answer or for the batch its appender holds.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
import uvloop

from ca.common.backoff import Backoff
from ca.errors import UnavailableError
from ca.ledger.chain import Entry
from ca.ledger.entries import Record
from ca.ledger.process_writer import LedgerProcess
from ca.ledger.writer import (
    BACKLOG,
    SHUT_DOWN,
    WRITE_FAILED,
    WRITER_DOWN,
    LedgerWriter,
    LoopLedgerWriter,
    Recorded,
)
from tests.support.clock import FakeClock
from tests.support.recording_appender import RecordingAppender, held_batch, recorded_batches

POLL_S = 0.01  # how often a test looks for what the ledger process has done


class RecordingStore:
    """Appends like LedgerStore, in this process; remembers batches."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.seq = 0

    def append(self, contents: Sequence[Record]) -> list[Entry]:
        self.batches.append([str(c["id"]) for c in contents if isinstance(c, Mapping)])
        written = []
        for _ in contents:
            self.seq += 1
            written.append(Entry(seq=self.seq, content_json="{}", prev_hash="", entry_hash=str(self.seq)))
        return written


class RecordingObserver:
    """What a writer told its observer (the CA's metrics): (entries, seconds) per commit,
    (entries, reason) per failure."""

    def __init__(self) -> None:
        self.commits: list[tuple[int, float]] = []
        self.failures: list[tuple[int, str]] = []

    def committed(self, entries: int, seconds: float) -> None:
        self.commits.append((entries, round(seconds, 6)))

    def failed(self, entries: int, reason: str) -> None:
        self.failures.append((entries, reason))


@pytest.fixture
def ledger_process(tmp_path: Path) -> Iterator[LedgerProcess]:
    process = LedgerProcess(functools.partial(RecordingAppender, str(tmp_path)))
    process.start()
    process.wait_ready(60)
    yield process
    process.stop()


def _writer(process: LedgerProcess, clock: FakeClock | None = None, **settings: Any) -> LoopLedgerWriter:
    return LoopLedgerWriter(process, asyncio.get_running_loop(), clock=clock or FakeClock(), **settings)


async def _advance(clock: FakeClock, seconds: float) -> None:
    """Move the writer's clock; the timers that fell due run on the loop before this returns."""
    clock.advance_s(seconds)
    await asyncio.sleep(0)  # one turn of the loop: the clock handed the due timers to it first


async def _until(check: Callable[[], object], what: str, within_s: float = 20.0) -> None:
    """Wait on the loop's turns until `check()` holds (the ledger process is a real process)."""
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {within_s}s")
        await asyncio.sleep(POLL_S)


def _wait_for(check: Callable[[], object], what: str, within_s: float = 20.0) -> None:
    """`_until` for a test whose loop runs on another thread."""
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {within_s}s")
        time.sleep(POLL_S)


def _awaitable(recorded: Recorded) -> asyncio.Future[Entry]:
    return recorded if isinstance(recorded, asyncio.Future) else asyncio.wrap_future(recorded)


async def _record(writer: LoopLedgerWriter, ids: Sequence[object]) -> list[Entry]:
    waiters = [writer.submit({"id": i}) for i in ids]
    return [await _awaitable(w) for w in waiters]


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
        await asyncio.sleep(POLL_S)
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


def test_on_uvloop_batches_larger_than_the_pipe_buffer_go_through_whole(
    ledger_process: LedgerProcess, tmp_path: Path
) -> None:
    """The CA's loop is uvloop's, which makes a watched descriptor non-blocking: the writer keeps
    the ledger pipe blocking, so a batch of half a megabyte is sent and answered whole."""

    async def scenario() -> None:
        writer = _writer(ledger_process)
        waiters = [writer.submit({"id": i, "pad": "x" * 1024}) for i in range(1024)]
        entries = [await _awaitable(w) for w in waiters]
        assert [e.seq for e in entries] == list(range(1, 1025))
        assert ledger_process.conn is not None  # watched by the loop by now, and still blocking
        assert os.get_blocking(ledger_process.conn.fileno())
        writer.close()

    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert [len(ids) for ids in recorded_batches(tmp_path)] == [512, 512]


def test_records_that_arrive_during_a_commit_form_the_next_batch(
    ledger_process: LedgerProcess, tmp_path: Path
) -> None:
    hold = tmp_path / "hold"
    hold.touch()

    async def scenario() -> None:
        writer = _writer(ledger_process)
        first = writer.submit({"id": "a"})
        await _until(lambda: held_batch(tmp_path) == ["a"], "the first batch with the ledger process")
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
    observer = RecordingObserver()

    async def scenario() -> None:
        writer = _writer(ledger_process, observer=observer)
        with pytest.raises(UnavailableError, match="disk on fire"):
            await _record(writer, [1, 2])
        assert [e.seq for e in await _record(writer, [3])] == [1]
        writer.close()
        with pytest.raises(UnavailableError, match="shut down"):
            await _record(writer, [4])

    asyncio.run(scenario())
    assert recorded_batches(tmp_path) == [["3"]]
    assert observer.failures == [(2, WRITE_FAILED), (1, SHUT_DOWN)]
    assert observer.commits == [(1, 0.0)]  # the fake clock did not move


def test_a_busy_writer_with_cpu_to_spare_commits_at_once_and_lingers_once_short_of_it(
    ledger_process: LedgerProcess, tmp_path: Path
) -> None:
    clock = FakeClock()
    short_of_cpu = [False]

    async def scenario() -> None:
        writer = _writer(ledger_process, clock, linger_s=0.25, short_of_cpu=lambda: short_of_cpu[0])
        await asyncio.wait_for(_record(writer, [1]), 20)
        # Right after a commit (busy), but with CPU to spare: no wait, the clock never moves.
        await asyncio.wait_for(_record(writer, [2]), 20)
        assert clock.timers() == []
        # Short of CPU: the same busy writer waits the linger for company.
        short_of_cpu[0] = True
        lingering = writer.submit({"id": 3})
        assert clock.timers() == [0.25]
        await _advance(clock, 0.25)
        await _awaitable(lingering)
        writer.close()

    asyncio.run(scenario())
    assert recorded_batches(tmp_path) == [["1"], ["2"], ["3"]]


def test_a_busy_writer_lingers_so_that_batches_grow_and_an_idle_one_does_not(
    ledger_process: LedgerProcess, tmp_path: Path
) -> None:
    clock = FakeClock()

    async def scenario() -> None:
        # Binary fractions of a second, so that the clock's sums sit exactly on the linger.
        writer = _writer(ledger_process, clock, linger_s=0.25)
        # Idle: committed at once, the clock never moving (a linger would never end).
        await asyncio.wait_for(_record(writer, [1]), 20)
        assert clock.timers() == []
        # Right after a commit: the batch waits 0.25 s from its first entry for company.
        busy = [writer.submit({"id": 2})]
        assert clock.timers() == [0.25]
        await _advance(clock, 0.125)
        busy.append(writer.submit({"id": 3}))
        assert clock.timers() == [0.125]  # company does not extend the wait
        await _advance(clock, 0.125)
        for waiter in busy:
            assert isinstance(waiter, asyncio.Future)
            await waiter
        # A linger after the last commit the writer is idle again: 4 goes at once.
        await _advance(clock, 0.25)
        (tmp_path / "hold").touch()
        idle = writer.submit({"id": 4})
        await _until(lambda: held_batch(tmp_path) == ["4"], "4 with the ledger process")
        # 5 comes in during that commit, which takes 0.125 s; its wait counts from then.
        later = writer.submit({"id": 5})
        await _advance(clock, 0.125)
        (tmp_path / "hold").unlink()
        await _awaitable(idle)
        assert clock.timers() == [0.125]
        await _advance(clock, 0.125)
        await _awaitable(later)
        writer.close()

    asyncio.run(scenario())
    assert recorded_batches(tmp_path) == [["1"], ["2", "3"], ["4"], ["5"]]


def test_records_from_other_threads_get_thread_futures_and_close_drains_them(
    ledger_process: LedgerProcess, tmp_path: Path
) -> None:
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    try:
        writer = LoopLedgerWriter(ledger_process, loop, clock=FakeClock())
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
    writer = LoopLedgerWriter(ledger_process, loop, clock=FakeClock())
    first = writer.submit({"id": "first"})
    assert isinstance(first, Future)
    first.result(timeout=10)
    (tmp_path / "hold").touch()
    in_flight = writer.submit({"id": "in-flight"})  # sent at once: the writer is idle
    _wait_for(lambda: held_batch(tmp_path) == ["in-flight"], "the batch with the ledger process")
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

    clock = FakeClock()
    observer = RecordingObserver()

    async def scenario() -> None:
        writer = _writer(ledger_process, clock, deadline_s=0.3, random=lambda: 1.0, observer=observer)
        stuck = writer.submit({"id": "stuck"})
        await _until(lambda: held_batch(tmp_path) == ["stuck"], "the batch with the ledger process")
        queued = writer.submit({"id": "queued"})
        assert isinstance(stuck, asyncio.Future) and isinstance(queued, asyncio.Future)
        assert clock.timers() == [0.3]  # the commit's deadline
        await _advance(clock, 0.299)
        assert not stuck.done() and not queued.done()
        await _advance(clock, 0.001)
        for waiter in (stuck, queued):
            with pytest.raises(UnavailableError, match=r"has not confirmed a commit for over 0\.3s"):
                await waiter
        late = writer.submit({"id": "late"})
        assert isinstance(late, asyncio.Future) and late.done()  # failed at once, not queued
        with pytest.raises(UnavailableError):
            late.result()
        hold.unlink()
        assert clock.timers() == [0.2]  # the replacement, after the backoff's first step
        await _advance(clock, 0.2)
        assert (await _record_when_back(writer, "after"))[0].seq == 1
        writer.close()

    asyncio.run(scenario())
    # The hung process was killed before it wrote anything; its replacement wrote "after".
    assert recorded_batches(tmp_path) == [["after"]]
    # The batch and the entry behind it, then "late", then any "after" tried before the
    # replacement was ready.
    assert observer.failures[:2] == [(2, WRITER_DOWN), (1, WRITER_DOWN)]
    assert {reason for _, reason in observer.failures} == {WRITER_DOWN}
    assert [entries for entries, _ in observer.commits] == [1]


def test_a_ledger_process_that_dies_fails_its_batch_and_is_replaced(
    ledger_process: LedgerProcess, tmp_path: Path
) -> None:
    (tmp_path / "exit-next").touch()

    clock = FakeClock()

    async def scenario() -> None:
        writer = _writer(ledger_process, clock, random=lambda: 0.0)
        with pytest.raises(UnavailableError, match=r"writer process exited \(exit code 3\)"):
            await _record(writer, ["lost"])
        assert clock.timers() == [0.1]  # half the backoff's first step: the least wait
        await _advance(clock, 0.1)
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

    clock = FakeClock()

    async def scenario() -> None:
        backoff = Backoff(initial_s=0.05, maximum_s=0.4, jitter=0.0)
        writer = _writer(ledger_process, clock, start_timeout_s=0.5, restart_backoff=backoff)
        with pytest.raises(UnavailableError, match="exited"):
            await _record(writer, ["lost"])
        # A replacement starts and fails to open the ledger.
        assert clock.timers() == [0.05]
        await _advance(clock, 0.05)
        await _refused_with(writer, r"could not open the ledger \(the test refuses")
        (tmp_path / "hang-open").touch()
        (tmp_path / "refuse-open").unlink()
        # The next one, a step later, hangs while opening; it is given 0.5 s.
        assert clock.timers() == [0.1]
        await _advance(clock, 0.1)
        assert clock.timers() == [0.5]
        await _advance(clock, 0.499)
        assert clock.timers() == [0.001]
        await _advance(clock, 0.001)
        await _refused_with(writer, r"did not start within 0\.5s")
        (tmp_path / "hang-open").unlink()
        # The next one, another step later, opens it.
        assert clock.timers() == [0.2]
        await _advance(clock, 0.2)
        assert (await _record_when_back(writer, "after"))[0].seq == 1
        writer.close()

    asyncio.run(scenario())
    assert recorded_batches(tmp_path) == [["after"]]


def test_a_backlog_is_bounded_in_size_and_in_age(ledger_process: LedgerProcess, tmp_path: Path) -> None:
    (tmp_path / "hold").touch()
    clock = FakeClock()
    observer = RecordingObserver()

    async def scenario() -> None:
        writer = _writer(ledger_process, clock, max_batch=2, max_pending=5, deadline_s=0.4, observer=observer)
        waiters = [writer.submit({"id": i}) for i in range(7)]  # 0-4 wait, 5-6 find no room
        assert [w.done() for w in waiters] == [False] * 5 + [True] * 2
        await _until(lambda: held_batch(tmp_path) == ["0", "1"], "0-1 with the ledger process")
        await _advance(clock, 0.3)
        (tmp_path / "held").unlink()  # 0-1 are written 0.3 s in; 2-3 go, within their 0.4 s
        await _until(lambda: held_batch(tmp_path) == ["2", "3"], "2-3 with the ledger process")
        await _advance(clock, 0.2)
        (tmp_path / "held").unlink()  # 2-3 are written 0.5 s in: 4 has waited past its deadline
        outcomes = await asyncio.gather(*map(_awaitable, waiters), return_exceptions=True)
        written = [o.seq for o in outcomes if isinstance(o, Entry)]
        refused = [str(o) for o in outcomes if isinstance(o, UnavailableError)]
        assert written == [1, 2, 3, 4], outcomes
        assert len(refused) == 3 and all("entries behind" in r for r in refused), refused
        writer.close()

    asyncio.run(scenario())
    assert recorded_batches(tmp_path) == [["0", "1"], ["2", "3"]]
    # Each batch's commit took as long as the fake clock moved while the appender held it.
    assert observer.commits == [(2, 0.3), (2, 0.2)]
    assert observer.failures == [(1, BACKLOG), (1, BACKLOG), (1, BACKLOG)]


def test_the_ledger_process_ignores_sigterm_so_that_the_ca_can_drain_it(
    ledger_process: LedgerProcess, tmp_path: Path
) -> None:
    assert ledger_process.pid is not None
    os.kill(ledger_process.pid, signal.SIGTERM)  # as a SIGTERM to the whole process group would

    async def scenario() -> None:
        # No need to wait for the signal to arrive: a SIGTERM that the process does not ignore
        # dooms it as it is sent, so it would never answer this batch.
        writer = _writer(ledger_process)
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
            await asyncio.sleep(POLL_S)


class TimedStore(RecordingStore):
    """A store whose appends take 0.25 s on a fake clock, and fail while `failing` is set."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.failing = False

    def append(self, contents: Sequence[Record]) -> list[Entry]:
        self.clock.advance_s(0.25)
        if self.failing:
            raise UnavailableError("disk on fire", reason="ledger_unavailable")
        return super().append(contents)


def test_the_thread_writer_tells_its_observer_each_commit_and_each_failure() -> None:
    clock = FakeClock()
    store = TimedStore(clock)
    observer = RecordingObserver()
    writer = LedgerWriter(store.append, observer=observer, clock=clock)
    assert writer.submit({"id": 1}).result(timeout=5).seq == 1
    store.failing = True
    with pytest.raises(UnavailableError):
        writer.submit({"id": 2}).result(timeout=5)
    writer.close()
    with pytest.raises(UnavailableError, match="shut down"):
        writer.submit({"id": 3}).result(timeout=5)
    assert observer.commits == [(1, 0.25)]
    assert observer.failures == [(1, WRITE_FAILED), (1, SHUT_DOWN)]


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


class _InlineLoop:
    """Runs what it is handed at once, on the calling thread."""

    def call_soon(self, callback: Any, *args: Any) -> None:
        callback(*args)

    call_soon_threadsafe = call_soon


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
    clock = FakeClock()
    writer = LoopLedgerWriter(
        _UnstartableProcess(),  # type: ignore[arg-type]
        _InlineLoop(),  # type: ignore[arg-type]
        random=lambda: random_draw,
        clock=clock,
    )
    lost = writer.submit({"id": "lost"})
    assert isinstance(lost, Future) and isinstance(lost.exception(0), UnavailableError)
    delays: list[float] = []
    for _ in expected:
        [delay] = clock.timers()  # the next replacement; each one fails to start
        delays.append(delay)
        clock.advance_s(delay)
    assert delays == pytest.approx(expected)
