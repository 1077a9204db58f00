"""Python's cyclic garbage collector, tuned for a long-running server holding many connections
(below), and for a start, or the whole of a command that runs briefly (`collecting_rarely`).

With the default thresholds a young collection runs every 700 net allocations of container
objects, every tenth of those collects the middle generation, and every tenth of those may
be a full collection, which walks every live object. A CA holding thousands of control
streams keeps hundreds of thousands of objects alive: in scripts/bench_rotate.py with 3,000
agents the collector took about 1.0 s of the CA's CPU over the run, 0.8 s of it in seven
full collections. With full collections ten times rarer, and what the CA built while
starting (modules, configuration, the CA material) left out of every later collection, it
took 0.35 s.

Young and middle collections stay small, because each one stops the event loop for as long
as it takes. Every call grpc.aio serves leaves a reference cycle (its method lookup's closure,
with the call's details and metadata), about ten objects that only a collection frees. When
a young collection ran every 10,000 allocations, it freed some 9,900 such objects at a time
and held the loop 6-7 ms, and the middle collection 11 ms: at half load each one put every
certificate issued meanwhile past 5 ms (scripts/bench_ca.py --trace, 2026-12-07). At 1,000
the pauses are a tenth as long, the collector's total work is about the same, and the old
threshold of 100 keeps full collections as rare as before.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

YOUNG_THRESHOLD = 1_000
MIDDLE_THRESHOLD = 10
OLD_THRESHOLD = 100  # a full collection after 1,000,000 net allocations at the most


def tune_for_long_running_server() -> None:
    """Call once the server is built: what exists by then lives as long as the process."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)


SHORT_RUN_YOUNG_THRESHOLD = 100_000


@contextlib.contextmanager
def collecting_rarely() -> Iterator[None]:
    """A young collection every 100,000 net allocations instead of 700 within the block; the
    thresholds as they were after it.

    For a process that starts, does one thing and exits, such as `meshca agent --once on`
    (its pod waits for it): its imports make some 40,000 objects that live as long as the
    process, and with the default thresholds the collector walked them about 50 times before
    the certificate was on disk, and freed nothing. Within the block the collector still runs,
    less often, so a long wait for a CA does not grow without bound; the first collection after
    it walks what the block made once.
    """
    thresholds = gc.get_threshold()
    gc.set_threshold(SHORT_RUN_YOUNG_THRESHOLD, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
