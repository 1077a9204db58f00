"""A clock tests move by hand.

Wall time and monotonic time move together with `advance`; `set` moves only the
wall time, as a changed system clock would. A thread that sleeps or waits on this
clock stays blocked until the test advances it far enough (or the awaited event is
set), so a retry loop runs one step per `advance` and never waits in real time.
A timer asked for with `call_later` is handed to its event loop when an `advance`
reaches it, in the order the timers fall due; from a coroutine on that loop, one
`await asyncio.sleep(0)` after the advance lets them run.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

_POLL_S = 0.005  # how often a blocked waiter looks at its event, which cannot notify the clock


def _micros(seconds: float) -> int:
    return round(seconds * 1_000_000)


@dataclass(order=True)
class FakeTimer:
    due_us: int
    order: int  # timers due at the same moment run in the order they were asked for
    loop: asyncio.AbstractEventLoop = field(compare=False)
    callback: Callable[[], object] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True

    def run(self) -> None:
        if not self.cancelled:
            self.callback()


class FakeClock:
    def __init__(self, start: datetime | None = None) -> None:
        self._now = (start or datetime.now(UTC)).replace(microsecond=0)
        self._monotonic_us = 1_000_000_000  # whole microseconds, so that sums of steps land exactly
        self._moved = threading.Condition()
        self._waits: list[float] = []
        self._timers: list[FakeTimer] = []
        self._timer_order = itertools.count()

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._monotonic_us / 1_000_000

    def advance(self, delta: timedelta) -> None:
        with self._moved:
            self._now += delta
            self._monotonic_us += delta // timedelta(microseconds=1)
            due = self._take_due_timers()
            self._moved.notify_all()
        for timer in due:
            timer.loop.call_soon_threadsafe(timer.run)

    def advance_s(self, seconds: float) -> None:
        self.advance(timedelta(seconds=seconds))

    def set(self, when: datetime) -> None:
        self._now = when

    def sleep(self, seconds: float) -> None:
        self.wait(threading.Event(), seconds)

    def wait(self, event: threading.Event, timeout: float) -> bool:
        with self._moved:
            self._waits.append(timeout)
            deadline_us = self._monotonic_us + _micros(timeout)
            while not event.is_set() and self._monotonic_us < deadline_us:
                self._moved.wait(_POLL_S)
        return event.is_set()

    def call_later(
        self, loop: asyncio.AbstractEventLoop, seconds: float, callback: Callable[[], object]
    ) -> FakeTimer:
        with self._moved:
            self._waits.append(seconds)
            timer = FakeTimer(self._monotonic_us + _micros(seconds), next(self._timer_order), loop, callback)
            if seconds > 0:
                self._timers.append(timer)
                return timer
        loop.call_soon_threadsafe(timer.run)
        return timer

    def timers(self) -> list[float]:
        """The seconds until each timer that has neither run nor been cancelled is due, soonest
        first."""
        with self._moved:
            pending = sorted(t for t in self._timers if not t.cancelled)
            return [(t.due_us - self._monotonic_us) / 1_000_000 for t in pending]

    def waits(self, count: int, timeout_s: float = 5.0) -> list[float]:
        """The seconds of every sleep, wait or timer asked of this clock so far, once there are at
        least `count` of them; fails after `timeout_s` of real time (the waiting code runs on a
        thread)."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._moved:
                asked = list(self._waits)
            if len(asked) >= count:
                return asked
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} waits on the clock within {timeout_s}s, got {asked}")
            time.sleep(_POLL_S)

    def _take_due_timers(self) -> list[FakeTimer]:
        due = sorted(t for t in self._timers if t.due_us <= self._monotonic_us)
        self._timers = [t for t in self._timers if t.due_us > self._monotonic_us]
        return due
