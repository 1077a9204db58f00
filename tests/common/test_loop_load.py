"""The loop's busy share, from its thread's demand for CPU (time run plus time waiting to run)."""

from __future__ import annotations

import os
import threading
import time

import pytest

from ca.common.loop_load import SCHEDSTAT, LoopLoad, ThreadCpuDemand
from tests.support.cpu import spin


class Ticks:
    """A monotonic clock the test sets; times are binary fractions, so sums are exact."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Demand:
    """The loop thread's cumulative demand, as the test sets it."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __call__(self) -> float:
        return self.seconds


def load_at(window_s: float = 0.5) -> tuple[LoopLoad, Ticks, Demand]:
    t, d = Ticks(), Demand()
    load = LoopLoad(d, t, window_s=window_s, threshold=0.85)
    assert not load.saturated()  # the first question opens the first window
    return load, t, d


def advance(load: LoopLoad, t: Ticks, d: Demand, seconds: float, busy: float) -> bool:
    t.now += seconds
    d.seconds += busy
    return load.saturated()


def test_the_busy_share_is_that_of_the_last_complete_window() -> None:
    load, t, d = load_at()
    # 0.375 s of demand in 0.5 s: 75% busy, below the threshold.
    assert not advance(load, t, d, 0.5, 0.375)
    assert load.busy_share == 0.75
    # 93.75% busy, but the window before was not.
    assert not advance(load, t, d, 0.5, 0.46875)
    assert load.busy_share == 0.9375
    # Another busy window: short of CPU.
    assert advance(load, t, d, 0.5, 0.5)
    assert load.busy_share == 1.0


def test_time_waiting_for_the_core_counts_as_busy_and_the_share_stops_at_one() -> None:
    load, t, d = load_at()
    # The kernel's demand is run time plus run-queue time; a thread that ran half the window and
    # waited for the core the other half wanted all of it.
    assert not advance(load, t, d, 0.5, 0.25 + 0.25)
    assert advance(load, t, d, 0.5, 0.75)
    assert load.busy_share == 1.0


def test_one_busy_window_between_quiet_ones_is_a_burst_not_a_shortage() -> None:
    load, t, d = load_at()
    busy = [0.25, 0.5, 0.25, 0.5, 0.25]
    assert [advance(load, t, d, 0.5, b) for b in busy] == [False] * 5


def test_short_of_cpu_only_once_every_window_of_the_sustained_span_was_busy() -> None:
    t, d = Ticks(), Demand()
    load = LoopLoad(d, t, window_s=0.0625, threshold=0.875, sustained_s=0.5)
    assert not load.saturated()
    # Eight busy windows of 1/16 s make half a second: short of CPU at the eighth, not before.
    assert [advance(load, t, d, 0.0625, 0.0625) for _ in range(8)] == [False] * 7 + [True]
    # One window with time to spare ends it, and the next run of busy windows starts over.
    assert not advance(load, t, d, 0.0625, 0.03125)
    assert [advance(load, t, d, 0.0625, 0.0625) for _ in range(8)] == [False] * 7 + [True]


def test_the_catch_up_after_a_stall_is_not_a_shortage() -> None:
    t, d = Ticks(), Demand()
    load = LoopLoad(d, t, window_s=0.0625, threshold=0.875, sustained_s=0.5)
    assert not load.saturated()
    # At half load a 30 ms stall leaves a backlog the loop works off in a few busy windows.
    half, busy = [0.03125] * 4, [0.0625] * 4
    assert not any(advance(load, t, d, 0.0625, b) for b in [*half, *busy, *half, *busy, *half])


def test_a_window_counts_only_when_complete() -> None:
    load, t, d = load_at()
    assert not advance(load, t, d, 0.25, 0.25)  # half way into the window, all busy
    assert load.busy_share == 0.0
    assert not advance(load, t, d, 0.25, 0.25)
    assert load.busy_share == 1.0


def test_a_long_quiet_spell_closes_one_idle_window() -> None:
    load, t, d = load_at()
    assert not advance(load, t, d, 0.5, 0.5)
    assert advance(load, t, d, 0.5, 0.5)
    # Nobody asked for 7.5 s, and the loop slept: the window that closes now spans it all.
    assert not advance(load, t, d, 7.5, 0.125)
    assert load.busy_share == 0.125 / 7.5


def blocked(native_id: int) -> bool:
    """Whether the thread sleeps (state S in /proc): it neither runs nor waits for a core."""
    with open(f"/proc/self/task/{native_id}/stat") as stat:
        return stat.read().rpartition(")")[2].split()[0] == "S"


@pytest.mark.skipif(not os.path.exists(SCHEDSTAT), reason="the kernel has no per-thread schedstat")
def test_the_demand_is_that_of_the_thread_that_opened_it() -> None:
    opened: list[tuple[ThreadCpuDemand, int]] = []
    ready, release, go = threading.Event(), threading.Event(), threading.Event()

    def loop_thread() -> None:
        demand = ThreadCpuDemand.of_this_thread()
        assert isinstance(demand, ThreadCpuDemand)
        opened.append((demand, threading.get_native_id()))
        ready.set()
        go.wait()
        spin(0.2)  # the thread works ...
        ready.set()
        release.wait()  # ... then blocks, with nothing to do

    thread = threading.Thread(target=loop_thread)
    thread.start()
    try:
        assert ready.wait(10)
        ready.clear()
        demand, native_id = opened[0]
        before = demand()  # read from another thread: still the loop thread's figure
        go.set()
        assert ready.wait(10)
        worked = demand() - before
        while not blocked(native_id):  # until it has reached release.wait()
            time.sleep(0.001)
        settled = demand()
        spin(0.2)  # this thread works while the loop thread is blocked
        idle = demand() - settled
    finally:
        release.set()
        thread.join(10)
        opened[0][0].close()
    assert worked >= 0.19
    assert idle < 0.01
