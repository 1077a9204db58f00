"""The change watcher: SQLite polled once a second on the injected clock, PostgreSQL told at once
by NOTIFY, and a lost PostgreSQL connection replaced without losing what changed meanwhile."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from ca.common.backoff import Backoff
from ca.common.clock import SystemClock
from ca.ledger.changes import ChangeWatcher
from ca.ledger.rotation import Order, Selector
from ca.ledger.rotation_store import SqlRotationStore
from ca.ledger.store import sqlite_url
from tests.support import ledger as ledger_support
from tests.support.clock import FakeClock

T0 = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)


def _order(number: int) -> Order:
    return Order(
        id=f"ro-{number:012x}",
        ordered_by="admin",
        time=T0,
        selector=Selector(namespace="shop"),
        reason="test",
    )


class Heard:
    """What the watcher called back with, in order."""

    def __init__(self) -> None:
        self.markers: queue.Queue[int] = queue.Queue()

    def __call__(self, marker: int) -> None:
        self.markers.put(marker)

    def next(self, timeout_s: float = 5.0) -> int:
        return self.markers.get(timeout=timeout_s)

    def nothing(self) -> bool:
        return self.markers.empty()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqlRotationStore]:
    store = SqlRotationStore.open(sqlite_url(tmp_path / "ledger.db"))
    yield store
    store.dispose()


def test_sqlite_is_polled_once_a_second_of_the_clock(sqlite_store: SqlRotationStore) -> None:
    clock, heard = FakeClock(T0), Heard()
    watcher = ChangeWatcher(sqlite_store.url, heard, clock=clock)
    watcher.start()
    try:
        assert clock.waits(1) == [1.0]
        sqlite_store.create_order(_order(1), [])
        sqlite_store.create_order(_order(2), [])
        assert heard.nothing() and len(clock.waits(1)) == 1  # still in its first second
        clock.advance_s(1)
        assert heard.next() == 2  # two changes, one callback with the newest marker
        clock.waits(2)
        clock.advance_s(1)
        clock.waits(3)  # it looked again and found nothing new
        assert heard.nothing()
        assert watcher.marker == 2
    finally:
        started = time.monotonic()
        watcher.stop()
        assert time.monotonic() - started < 0.5  # woken, not waited out


def test_a_watcher_started_from_a_marker_reports_what_came_after_it(sqlite_store: SqlRotationStore) -> None:
    since = sqlite_store.change_marker()
    sqlite_store.create_order(_order(1), [])  # between the caller's load and the start
    clock, heard = FakeClock(T0), Heard()
    watcher = ChangeWatcher(sqlite_store.url, heard, clock=clock)
    watcher.start(since=since)
    try:
        clock.waits(1)
        clock.advance_s(1)
        assert heard.next() == 1
    finally:
        watcher.stop()


def test_a_failing_callback_does_not_stop_the_watch(sqlite_store: SqlRotationStore) -> None:
    clock, heard = FakeClock(T0), Heard()

    def flaky(marker: int) -> None:
        heard(marker)
        if marker == 1:
            raise RuntimeError("the push coordinator broke")

    watcher = ChangeWatcher(sqlite_store.url, flaky, clock=clock)
    watcher.start()
    try:
        for expected in (1, 2):
            clock.waits(expected)
            sqlite_store.create_order(_order(expected), [])
            clock.advance_s(1)
            assert heard.next() == expected
    finally:
        watcher.stop()


@pytest.fixture
def postgres_store(tmp_path: Path) -> Iterator[SqlRotationStore]:
    with ledger_support.postgres_database() as url:
        store = SqlRotationStore.open(url)
        yield store
        store.dispose()


def test_postgresql_notifies_the_watcher_when_a_change_commits(postgres_store: SqlRotationStore) -> None:
    heard = Heard()
    watcher = ChangeWatcher(postgres_store.url, heard, clock=SystemClock())
    watcher.start()
    try:
        assert watcher.wait_listening(10)
        started = time.monotonic()
        postgres_store.create_order(_order(1), [])
        assert heard.next() == 1
        assert time.monotonic() - started < 0.5  # told, not polled (the health check is 30 s)
        postgres_store.create_order(_order(2), [])
        assert heard.next() == 2
    finally:
        started = time.monotonic()
        watcher.stop()
        assert time.monotonic() - started < 0.5


def test_postgresql_notifies_a_watcher_whose_descriptors_are_past_1024(
    postgres_store: SqlRotationStore,
) -> None:
    """A CA holding thousands of agents' streams opens its listening connection on a descriptor
    that select() refuses; the watcher still hears each change."""
    taken = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    heard = Heard()
    watcher = ChangeWatcher(postgres_store.url, heard, clock=SystemClock())
    try:
        watcher.start()
        assert watcher.wait_listening(10)
        postgres_store.create_order(_order(1), [])
        assert heard.next() == 1
    finally:
        watcher.stop()
        for fd in taken:
            os.close(fd)


def test_a_lost_connection_is_replaced_and_what_changed_meanwhile_reported(
    postgres_store: SqlRotationStore,
) -> None:
    clock, heard = FakeClock(T0), Heard()
    watcher = ChangeWatcher(
        postgres_store.url, heard, clock=clock, reconnect=Backoff(initial_s=2, maximum_s=2, jitter=0)
    )
    watcher.start()
    try:
        assert watcher.wait_listening(10)
        url = ledger_support.libpq_url(postgres_store.url)
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'meshca-rotation-watch' AND datname = current_database()"
            )
        assert clock.waits(1) == [2.0]  # noticed, and backing off on the clock
        postgres_store.create_order(_order(1), [])  # while no one listens
        assert heard.nothing()
        clock.advance(timedelta(seconds=2))
        assert heard.next() == 1
        assert watcher.wait_listening(10)
        postgres_store.create_order(_order(2), [])
        assert heard.next() == 2
    finally:
        watcher.stop()


def test_a_ca_on_a_sqlite_ledger_does_not_load_psycopg() -> None:
    """psycopg (about 9 MiB) is imported only when a PostgreSQL ledger is watched."""
    code = (
        "import sys, ca.server.wiring, ca.ledger.changes\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'psycopg'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"
