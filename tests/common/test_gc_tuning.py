"""The collector tuning: start-up objects frozen, young collections less often, cycles still freed;
and for a short run, young collections rarely, the thresholds as they were after it."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from ca.common.gc_tuning import (
    MIDDLE_THRESHOLD,
    OLD_THRESHOLD,
    SHORT_RUN_YOUNG_THRESHOLD,
    YOUNG_THRESHOLD,
    collecting_rarely,
    tune_for_long_running_server,
)


@pytest.fixture
def restored_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_startup_objects_are_frozen_and_full_collections_come_less_often(restored_collector: None) -> None:
    tune_for_long_running_server()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)
    # As many net allocations before a full collection as before the young threshold came down
    # (10,000 x 10 x 10), and young collections short.
    assert YOUNG_THRESHOLD * MIDDLE_THRESHOLD * OLD_THRESHOLD == 1_000_000
    assert YOUNG_THRESHOLD <= 1_000


def test_cycles_made_after_tuning_are_still_collected(restored_collector: None) -> None:
    tune_for_long_running_server()
    first, second = Node(), Node()
    first.other, second.other = second, first
    gone = weakref.ref(first)
    del first, second
    gc.collect()
    assert gone() is None


def young_collections_while(allocate: int) -> int:
    """Young collections while `allocate` objects the collector tracks are made and kept."""
    started = gc.get_stats()[0]["collections"]
    kept = [[] for _ in range(allocate)]
    assert len(kept) == allocate
    return int(gc.get_stats()[0]["collections"] - started)


def test_a_short_run_collects_rarely_and_restores_the_thresholds(restored_collector: None) -> None:
    before = gc.get_threshold()
    with collecting_rarely():
        assert gc.get_threshold() == (SHORT_RUN_YOUNG_THRESHOLD, before[1], before[2])
        assert young_collections_while(SHORT_RUN_YOUNG_THRESHOLD // 2) == 0
    assert gc.get_threshold() == before
    assert young_collections_while(10 * before[0]) > 0


def test_a_short_run_that_fails_restores_the_thresholds(restored_collector: None) -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), collecting_rarely():
        raise RuntimeError("the run failed")
    assert gc.get_threshold() == before


def test_cycles_made_in_a_short_run_are_still_collected(restored_collector: None) -> None:
    with collecting_rarely():
        first, second = Node(), Node()
        first.other, second.other = second, first
        gone = weakref.ref(first)
        del first, second
        young_collections_while(2 * SHORT_RUN_YOUNG_THRESHOLD)
        assert gone() is None
