"""How busy an event loop is: the share of recent time it spent running rather than waiting.

The ledger's group commit waits for company only when the CA is short of CPU: then every
commit it saves is CPU given back to issuance. When the loop has time to spare, waiting
only adds latency, because the commit in flight already gathers the next batch.

The loop's selector is the one place that sees both: time inside `select` is time the loop
had nothing to do. `IdleTimingSelector` wraps the platform's selector and feeds `LoopLoad`,
which keeps the busy share of the last complete window.
"""

from __future__ import annotations

import selectors
import time
from collections.abc import Callable

WINDOW_S = 0.05  # long enough to span many loop turns, short enough to follow a burst
SATURATED = 0.85  # busy share from which the loop counts as short of CPU


class LoopLoad:
    """The busy share of the last complete window of at least `window_s`, and of the one before:
    short of CPU means both were busy, so that a burst (a garbage collection, a handful of
    requests arriving together) at half load does not count."""

    def __init__(
        self,
        monotonic: Callable[[], float] = time.monotonic,
        *,
        window_s: float = WINDOW_S,
        threshold: float = SATURATED,
    ) -> None:
        self._monotonic = monotonic
        self._window_s = window_s
        self._threshold = threshold
        self._window_start = monotonic()
        self._idle_s = 0.0
        self._busy_share = 0.0
        self._previous_share = 0.0

    def waited(self, started: float, ended: float) -> None:
        """The loop waited from `started` to `ended` (monotonic seconds)."""
        self._idle_s += max(0.0, ended - started)
        elapsed = ended - self._window_start
        if elapsed >= self._window_s:
            self._previous_share = self._busy_share
            self._busy_share = max(0.0, 1.0 - self._idle_s / elapsed)
            self._window_start, self._idle_s = ended, 0.0

    @property
    def busy_share(self) -> float:
        return self._busy_share

    def saturated(self) -> bool:
        """True while the loop was busy at least `threshold` of each of the last two windows, and
        the last is recent: a loop that has not come back from `select` since is waiting, not busy."""
        recent = self._monotonic() - self._window_start < 2 * self._window_s
        return recent and min(self._busy_share, self._previous_share) >= self._threshold

    @property
    def monotonic(self) -> Callable[[], float]:
        return self._monotonic


class IdleTimingSelector(selectors.DefaultSelector):
    """The platform's default selector, telling `load` how long each `select` waited."""

    def __init__(self, load: LoopLoad) -> None:
        super().__init__()
        self._load = load

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        clock = self._load.monotonic
        started = clock()
        ready: list[tuple[selectors.SelectorKey, int]] = super().select(timeout)
        self._load.waited(started, clock())
        return ready
