"""Progress of long work (verifying or exporting a large ledger), reported to a callback (pure).

The work counts what it has done and calls the callback now and then, every `every`
items and once at the end, never per item, so that reporting costs nothing next to
the work. What the callback does with it (a bar on a terminal) is the caller's
business.
"""

from __future__ import annotations

import sys
from typing import Protocol

PROGRESS_EVERY = 10_000


class ProgressCallback(Protocol):
    def __call__(self, done: int, total: int) -> None:
        """`done` of `total` items are through; `done` only grows, and the last call has done == total
        when the work ran to its end (a total can grow while work runs, such as entries appended)."""


class Ticker:
    """Tells a callback how far the work is, every `every` items and at the end.

    The loop compares its count with `next_at` itself (a comparison per item, not a call)
    and calls `tick` when it is reached.
    """

    def __init__(self, callback: ProgressCallback | None, total: int, every: int = PROGRESS_EVERY) -> None:
        if every < 1:
            raise ValueError(f"progress every {every} items: give 1 or more")
        self._callback = callback
        self._every = every
        self.total = total
        self.next_at = every if callback is not None else sys.maxsize
        self._reported = -1

    def tick(self, done: int) -> None:
        """Report `done`, and wait `every` more items before the next report."""
        self.next_at = done + self._every
        self._report(done)

    def finish(self, done: int) -> None:
        """The work is over at `done` (the total when it ran to its end): report it unless just reported."""
        if done != self._reported:
            self._report(done)

    def _report(self, done: int) -> None:
        if self._callback is None:
            return
        self.total = max(self.total, done)
        self._callback(done, self.total)
        self._reported = done
