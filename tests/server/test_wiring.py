"""Wiring of forced rotation in the CA: the push coordinator's first load and the change watch
that follows it leave no gap, and the CA's rotation parts share one store."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ca.ledger.rotation import Order, Selector
from ca.ledger.rotation_store import SqlRotationStore
from ca.ledger.store import sqlite_url
from ca.server.wiring import follow_rotation_changes
from tests.support.ca_server import start_ca
from tests.support.clock import FakeClock

T0 = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlRotationStore]:
    opened = SqlRotationStore.open(sqlite_url(tmp_path / "ledger.db"))
    try:
        yield opened
    finally:
        opened.dispose()


class LoadingFollower:
    """A push coordinator whose first load takes long enough for another process to place an
    order meanwhile (after the tables were read, before the watch began)."""

    def __init__(self, store: SqlRotationStore) -> None:
        self._store = store
        self.notified = threading.Event()

    def start(self) -> None:
        order = Order(
            id="ro-000000000001",
            ordered_by="spiffe://cluster.local/ns/istio-system/sa/admin",
            time=T0,
            selector=Selector(all=True),
            reason="placed during the load",
        )
        self._store.create_order(order, [])

    def wait_loaded(self, timeout_s: float) -> bool:
        return True

    def notify_changed(self) -> None:
        self.notified.set()


def test_a_change_made_while_the_tables_load_is_followed(store: SqlRotationStore) -> None:
    clock = FakeClock(T0)
    follower = LoadingFollower(store)
    watcher = follow_rotation_changes(store, follower, store.url, clock)
    try:
        deadline = time.monotonic() + 10
        while not follower.notified.wait(0.02):  # one SQLite poll per second of the fake clock
            assert time.monotonic() < deadline, "the change made during the load was never followed"
            clock.advance(timedelta(seconds=1))
    finally:
        watcher.stop()


def test_the_ca_rotation_parts_share_one_store(tmp_path: Path) -> None:
    ca = start_ca(tmp_path / "state", "--ledger", "auto")
    try:
        server = ca.server
        assert server.rotation_store is not None and server.rotation is not None
        assert server.rotation.store is server.rotation_store
    finally:
        ca.stop()


def test_the_periodic_jobs_run_apart_within_each_second(tmp_path: Path) -> None:
    """Each holds the GIL the request loop needs; fired together they stalled it for up to 6.5 ms."""
    ca = start_ca(tmp_path / "state", "--ledger", "auto")
    try:
        scheduler = ca.server._scheduler
        assert scheduler is not None
        starts = {
            job_id: scheduler.get_job(job_id).trigger.start_date
            for job_id in ("ca-keys", "rotation-tick", "connected-agents", "ledger-checkpoint")
        }
    finally:
        ca.stop()
    first = min(starts.values())
    offsets = sorted((start - first).total_seconds() % 1 for start in starts.values())
    assert all(later - earlier >= 0.2 for earlier, later in itertools.pairwise(offsets))
