"""How short of CPU an event loop is: the share of recent time its thread ran or waited to run.

The ledger's group commit waits for company only when the CA is short of CPU: then every
commit it saves is CPU given back to issuance. When the loop has time to spare, waiting
only adds latency, because the commit in flight already gathers the next batch.

The kernel keeps, for each thread, the time it ran and the time it spent runnable but
waiting for a CPU (`/proc/thread-self/schedstat`). Their sum is the loop thread's demand
for CPU: time it sleeps in the poller, with nothing to do, is in neither. A loop whose
demand fills the window is short of CPU, whether it ran all that time or lost part of it
to the ledger process or gRPC's threads on the same core. `ThreadCpuDemand` reads it;
`LoopLoad` turns it into the busy share of the last windows.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

WINDOW_S = 0.05  # long enough to span many loop turns, short enough to follow a burst
# The busy share from which a window counts as short of CPU. A saturated core keeps its loop's
# demand at 0.99-1.0 in every window; at half load, run-queue waits behind the ledger process
# and gRPC's threads put a window above 0.85 now and then (2.6% of consecutive pairs in one
# pinned run, 0.5% above 0.9: scripts/bench_ca.py, 2026-12-07).
SATURATED = 0.9
# How long every window must have been that busy before the CA counts as short of CPU. A stall
# at half load (a garbage collection, a scheduled job holding the GIL, a slow commit) leaves
# a backlog that the loop works off at full demand for about as long as the stall lasted, tens
# of milliseconds. Counting that as a shortage made the ledger linger through the catch-up,
# adding its 10 ms to every certificate for 50-100 ms after each stall, and that set the
# half-load p99 (scripts/bench_ca.py --trace, 2026-12-07). A peak keeps every window busy.
SUSTAINED_S = 0.5
SCHEDSTAT = "/proc/thread-self/schedstat"

CpuDemand = Callable[[], float]
"""Cumulative seconds that one thread (the loop's) has run or waited runnable."""


class ThreadCpuDemand:
    """The CPU demand of the thread that opened it, read from the kernel's schedstat: the
    nanoseconds it ran and the nanoseconds it waited on a run queue."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def of_this_thread(cls) -> CpuDemand:
        """Call on the loop's own thread. Where the kernel has no schedstat (not Linux), the
        thread's CPU time alone, which misses the time it waited for a busy core."""
        try:
            fd = os.open(SCHEDSTAT, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return time.thread_time
        return cls(fd)

    def __call__(self) -> float:
        ran_ns, waited_ns = os.pread(self._fd, 128, 0).split()[:2]
        return (int(ran_ns) + int(waited_ns)) / 1e9

    def close(self) -> None:
        os.close(self._fd)


class LoopLoad:
    """The busy share of the last complete window of at least `window_s`; short of CPU means every
    window of the last `sustained_s` was busy, so that a burst (a handful of requests arriving
    together) or the catch-up after a stall does not count.

    Windows close when asked (`saturated`), so an idle loop is not woken to measure itself; a
    window that closes after a long quiet spell spans all of it and counts as idle."""

    def __init__(
        self,
        demand: CpuDemand,
        monotonic: Callable[[], float] = time.monotonic,
        *,
        window_s: float = WINDOW_S,
        threshold: float = SATURATED,
        sustained_s: float = SUSTAINED_S,
    ) -> None:
        self._demand = demand
        self._monotonic = monotonic
        self._window_s = window_s
        self._threshold = threshold
        self._sustained_s = sustained_s
        self._window_start: float | None = None
        self._demand_at_start = 0.0
        self._busy_share = 0.0
        self._busy_since: float | None = None  # the start of the run of busy windows that goes on

    def _sample(self) -> None:
        now = self._monotonic()
        if self._window_start is None:
            self._window_start, self._demand_at_start = now, self._demand()
            return
        elapsed = now - self._window_start
        if elapsed >= self._window_s:
            demand = self._demand()
            self._busy_share = min(1.0, max(0.0, (demand - self._demand_at_start) / elapsed))
            if self._busy_share < self._threshold:
                self._busy_since = None
            elif self._busy_since is None:
                self._busy_since = self._window_start
            self._window_start, self._demand_at_start = now, demand

    @property
    def busy_share(self) -> float:
        return self._busy_share

    def saturated(self) -> bool:
        """True when the loop's thread wanted the CPU at least `threshold` of every window closed
        in the last `sustained_s`, and of at least two. Call it on the loop's thread, whose demand
        this measures."""
        self._sample()
        if self._busy_since is None or self._window_start is None:
            return False
        busy_for = self._window_start - self._busy_since
        return busy_for >= max(self._sustained_s, 2 * self._window_s)
