"""A bound on log lines whose number is set by someone else (a peer opening connections, say).

Events are grouped by a key (for example a refusal reason). The first
`per_interval` events of a key in an interval are logged; the rest only
counted, and once the interval is over the count comes back as one summary
for that key. The next event of the key starts a new interval, logged again
from its first line. Time is the injected monotonic clock, so tests drive it.
Counters kept elsewhere (metrics) stay exact: this only decides about lines.

Not thread-safe: one owner calls it (the enforcer's event loop).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

PER_INTERVAL = 5
INTERVAL_S = 10.0

Key = TypeVar("Key", bound=Hashable)


@dataclass(frozen=True)
class Suppressed(Generic[Key]):
    """The lines of one key that an interval did not log."""

    key: Key
    count: int
    interval_s: float


@dataclass
class _Interval:
    ends: float
    logged: int = 0
    suppressed: int = 0


class LogLimiter(Generic[Key]):
    def __init__(
        self,
        monotonic: Callable[[], float],
        *,
        per_interval: int = PER_INTERVAL,
        interval_s: float = INTERVAL_S,
    ) -> None:
        self._monotonic = monotonic
        self.per_interval = per_interval
        self.interval_s = interval_s
        self._intervals: dict[Key, _Interval] = {}
        self._ended: list[Suppressed[Key]] = []

    def allow(self, key: Key) -> bool:
        """True if this event of `key` is to be logged; False if it is only counted."""
        now = self._monotonic()
        interval = self._intervals.get(key)
        if interval is None or now >= interval.ends:
            if interval is not None:
                self._close(key, interval)
            interval = self._intervals[key] = _Interval(ends=now + self.interval_s)
        if interval.logged < self.per_interval:
            interval.logged += 1
            return True
        interval.suppressed += 1
        return False

    def ended(self) -> list[Suppressed[Key]]:
        """Summaries of the intervals over by now that suppressed something, each reported once."""
        return self._take(self._monotonic())

    def end_all(self) -> list[Suppressed[Key]]:
        """Ends every interval now (at shutdown, so that no count goes unreported)."""
        return self._take(math.inf)

    def _take(self, now: float) -> list[Suppressed[Key]]:
        for key, interval in list(self._intervals.items()):
            if now >= interval.ends:
                del self._intervals[key]
                self._close(key, interval)
        summaries, self._ended = self._ended, []
        return summaries

    def _close(self, key: Key, interval: _Interval) -> None:
        if interval.suppressed:
            self._ended.append(Suppressed(key, interval.suppressed, self.interval_s))
