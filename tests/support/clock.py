"""A clock tests move by hand.

Wall time and monotonic time move together with `advance`; `set` moves only the
wall time, as a changed system clock would. A thread that sleeps or waits on this
clock stays blocked until the test advances it far enough (or the awaited event is
set), so a retry loop runs one step per `advance` and never waits in real time.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

_POLL_S = 0.005  # how often a blocked waiter looks at its event, which cannot notify the clock


class FakeClock:
    def __init__(self, start: datetime | None = None) -> None:
        self._now = (start or datetime.now(UTC)).replace(microsecond=0)
        self._monotonic = 1000.0
        self._moved = threading.Condition()
        self._waits: list[float] = []

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, delta: timedelta) -> None:
        with self._moved:
            self._now += delta
            self._monotonic += delta.total_seconds()
            self._moved.notify_all()

    def advance_s(self, seconds: float) -> None:
        self.advance(timedelta(seconds=seconds))

    def set(self, when: datetime) -> None:
        self._now = when

    def sleep(self, seconds: float) -> None:
        self.wait(threading.Event(), seconds)

    def wait(self, event: threading.Event, timeout: float) -> bool:
        with self._moved:
            self._waits.append(timeout)
            deadline = self._monotonic + timeout
            while not event.is_set() and self._monotonic < deadline:
                self._moved.wait(_POLL_S)
        return event.is_set()

    def waits(self, count: int, timeout_s: float = 5.0) -> list[float]:
        """The seconds of every sleep or wait asked of this clock so far, once there are at least
        `count` of them; fails after `timeout_s` of real time (the waiting code runs on a thread)."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._moved:
                asked = list(self._waits)
            if len(asked) >= count:
                return asked
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} waits on the clock within {timeout_s}s, got {asked}")
            time.sleep(_POLL_S)
