"""Time as an injected dependency: only the entry point picks the real clock.

Wall time (`now`) dates certificates and tokens; monotonic time, sleeping and
waiting measure intervals: retry waits, refresh intervals, timeouts. Code that
waits does so through its clock, so a test moves time instead of sleeping.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Protocol


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


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def wait(self, event: threading.Event, timeout: float) -> bool:
        return event.wait(timeout)
