"""The collector tuning: start-up objects frozen, young collections less often, cycles still freed."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from ca.common.gc_tuning import YOUNG_THRESHOLD, tune_for_long_running_server


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


def test_startup_objects_are_frozen_and_young_collections_come_less_often(restored_collector: None) -> None:
    before = gc.get_threshold()
    tune_for_long_running_server()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (YOUNG_THRESHOLD, before[1], before[2])


def test_cycles_made_after_tuning_are_still_collected(restored_collector: None) -> None:
    tune_for_long_running_server()
    first, second = Node(), Node()
    first.other, second.other = second, first
    gone = weakref.ref(first)
    del first, second
    gc.collect()
    assert gone() is None
