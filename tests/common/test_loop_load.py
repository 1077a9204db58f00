"""The loop's busy share, from the time its selector waited."""

from __future__ import annotations

import asyncio
import socket

from ca.common.loop_load import IdleTimingSelector, LoopLoad


class Ticks:
    """A monotonic clock the test sets; times are binary fractions, so sums are exact."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_busy_share_is_that_of_the_last_complete_window() -> None:
    t = Ticks()
    load = LoopLoad(t, window_s=0.5, threshold=0.85)
    assert load.busy_share == 0.0 and not load.saturated()
    # 0.375 s of work, then a 0.125 s wait: 75% busy, below the threshold.
    t.now = 0.5
    load.waited(0.375, 0.5)
    assert load.busy_share == 0.75
    assert not load.saturated()
    # 0.46875 s of work, a 0.03125 s wait: 93.75% busy, but the window before was not.
    t.now = 1.0
    load.waited(0.96875, 1.0)
    assert load.busy_share == 0.9375
    assert not load.saturated()
    # Another busy window: short of CPU.
    t.now = 1.5
    load.waited(1.5, 1.5)
    assert load.busy_share == 1.0
    assert load.saturated()


def test_one_busy_window_between_quiet_ones_is_a_burst_not_a_shortage() -> None:
    t = Ticks()
    load = LoopLoad(t, window_s=0.5, threshold=0.85)
    shares = []
    for end, waited in ((0.5, 0.25), (1.0, 0.0), (1.5, 0.25), (2.0, 0.0), (2.5, 0.25)):
        t.now = end
        load.waited(end - waited, end)
        shares.append(load.saturated())
    assert shares == [False, False, False, False, False]


def test_a_window_counts_only_when_complete() -> None:
    t = Ticks()
    load = LoopLoad(t, window_s=0.5)
    t.now = 0.25
    load.waited(0.25, 0.25)  # half way into the window, all busy: nothing decided yet
    assert load.busy_share == 0.0


def test_a_loop_that_has_not_come_back_from_waiting_is_not_saturated() -> None:
    t = Ticks()
    load = LoopLoad(t, window_s=0.5)
    for end in (0.5, 1.0):
        t.now = end
        load.waited(end, end)
    assert load.saturated()
    t.now = 1.25  # still within two windows of the last one closing
    assert load.saturated()
    # The loop then waits in select for a long time: no window closes, but it is idle.
    t.now = 2.0
    assert not load.saturated()


def test_a_long_wait_makes_the_window_idle() -> None:
    t = Ticks()
    load = LoopLoad(t, window_s=0.5)
    t.now = 8.0
    load.waited(0.125, 8.0)
    assert load.busy_share == 0.015625
    assert not load.saturated()


def test_the_selector_reports_each_wait_of_a_real_event_loop() -> None:
    waits: list[float] = []

    class Recording(LoopLoad):
        def waited(self, started: float, ended: float) -> None:
            waits.append(ended - started)
            super().waited(started, ended)

    load = Recording()
    loop = asyncio.SelectorEventLoop(IdleTimingSelector(load))
    a, b = socket.socketpair()
    try:
        got: asyncio.Future[bytes] = loop.create_future()
        loop.add_reader(a.fileno(), lambda: got.set_result(a.recv(1)))
        loop.call_soon(b.send, b"x")
        assert loop.run_until_complete(got) == b"x"
    finally:
        loop.close()
        a.close()
        b.close()
    assert waits and all(w >= 0 for w in waits)
