"""Time as an injected dependency: only the entry point picks the real clock.

Wall time (`now`) dates certificates and tokens; monotonic time, sleeping,
waiting and timers measure intervals: retry waits, refresh intervals, timeouts.
Code that waits does so through its clock, so a test moves time instead of
sleeping: a thread sleeps or waits on it, an event loop asks it for a timer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # the pure core only names the loop type; it imports no I/O library
    import asyncio


class Timer(Protocol):
    def cancel(self) -> None:
        """The callback does not run, if it has not yet."""
        ...


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware in UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary start; never goes back, whatever happens to the wall time."""
        ...

    def sleep(self, seconds: float) -> None:
        """Returns once `seconds` of monotonic time have passed."""
        ...

    def wait(self, event: threading.Event, timeout: float) -> bool:
        """Returns once `event` is set (True) or `timeout` seconds have passed without it (False)."""
        ...

    def call_later(
        self, loop: asyncio.AbstractEventLoop, seconds: float, callback: Callable[[], object]
    ) -> Timer:
        """Runs `callback` on `loop` once `seconds` of monotonic time have passed. Call it on the
        loop's thread, as the loop's own `call_later`."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def wait(self, event: threading.Event, timeout: float) -> bool:
        return event.wait(timeout)

    def call_later(
        self, loop: asyncio.AbstractEventLoop, seconds: float, callback: Callable[[], object]
    ) -> Timer:
        return loop.call_later(seconds, callback)  # the loop's time is time.monotonic()
