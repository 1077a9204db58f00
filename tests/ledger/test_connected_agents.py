"""The agents connected to every CA replica, in the ledger's database (SQLite and PostgreSQL): each
replica's rows changed by difference, the replicas that stopped reporting left out and pruned, a
replica that stops withdrawn at once."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from ca.ledger import schema
from ca.ledger.connected_agents import FRESH, PRUNE_AFTER, SqlConnectedAgents
from ca.ledger.store import IN_LIST_CHUNK, LedgerStore, open_migrated

T0 = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)


@pytest.fixture
def store(ledger_url: str) -> Iterator[LedgerStore]:
    opened, _ = open_migrated(ledger_url)
    try:
        yield opened
    finally:
        opened.dispose()


@pytest.fixture
def table(store: LedgerStore) -> Iterator[SqlConnectedAgents]:
    agents = SqlConnectedAgents(store)
    try:
        yield agents
    finally:
        agents.dispose()


def rows(store: LedgerStore, replica: str) -> int:
    serials = schema.connected_serials
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).where(serials.c.replica == replica)).scalar_one())


def test_every_fresh_replicas_serials_are_counted_but_the_askers_own(table: SqlConnectedAgents) -> None:
    assert table.connected(T0) == frozenset()
    table.report("ca-0", frozenset({"a1", "a2"}), T0, since=None)
    table.report("ca-1", frozenset({"b1"}), T0 + SECOND, since=None)
    assert table.connected(T0 + 2 * SECOND) == {"a1", "a2", "b1"}
    assert table.connected(T0 + 2 * SECOND, excluding="ca-0") == {"b1"}


def test_a_report_writes_what_came_and_went_since_the_last(
    table: SqlConnectedAgents, store: LedgerStore
) -> None:
    table.report("ca-0", frozenset({"a1", "a2", "a3"}), T0, since=None)
    table.report("ca-0", frozenset({"a2", "a3", "a4"}), T0 + SECOND, since=frozenset({"a1", "a2", "a3"}))
    assert table.connected(T0 + SECOND) == {"a2", "a3", "a4"}
    # A heartbeat alone (nothing changed) keeps the rows fresh.
    same = frozenset({"a2", "a3", "a4"})
    table.report("ca-0", same, T0 + FRESH + SECOND, since=same)
    assert table.connected(T0 + FRESH + 2 * SECOND) == same
    # A difference larger than one IN list is written in chunks.
    many = frozenset(f"{n:x}" for n in range(IN_LIST_CHUNK * 2 + 3))
    table.report("ca-0", many, T0 + 3 * SECOND, since=same)
    table.report("ca-0", frozenset({"a9"}), T0 + 4 * SECOND, since=many)
    assert table.connected(T0 + 4 * SECOND) == {"a9"} and rows(store, "ca-0") == 1


def test_a_full_report_replaces_the_rows_a_failed_or_earlier_run_left(
    table: SqlConnectedAgents, store: LedgerStore
) -> None:
    table.report("ca-0", frozenset({"a1", "a2"}), T0, since=None)
    table.report("ca-0", frozenset({"a3"}), T0 + SECOND, since=None)
    assert table.connected(T0 + SECOND) == {"a3"} and rows(store, "ca-0") == 1


def test_a_replica_that_stopped_reporting_stops_counting(table: SqlConnectedAgents) -> None:
    table.report("ca-0", frozenset({"a1"}), T0, since=None)
    table.report("ca-1", frozenset({"b1"}), T0 + FRESH, since=None)
    assert table.connected(T0 + FRESH) == {"a1", "b1"}
    # ca-0 died: its agents reconnect elsewhere, and a dry run no longer counts them here.
    assert table.connected(T0 + FRESH + timedelta(microseconds=1)) == {"b1"}


def test_dead_replicas_are_pruned_and_one_back_from_the_dead_rewrites_its_rows(
    table: SqlConnectedAgents, store: LedgerStore
) -> None:
    table.report("ca-0", frozenset({"a1", "a2"}), T0, since=None)
    table.report("ca-1", frozenset({"b1"}), T0, since=None)
    later = T0 + PRUNE_AFTER + SECOND
    table.report("ca-1", frozenset({"b1"}), later, since=frozenset({"b1"}))
    assert table.prune(later) == 1
    assert rows(store, "ca-0") == 0 and rows(store, "ca-1") == 1
    assert table.prune(later) == 0
    # ca-0 was only stalled: its rows were pruned meanwhile, so its next report (a difference
    # from what it wrote) finds no heartbeat and writes them all again.
    table.report("ca-0", frozenset({"a1", "a3"}), later + SECOND, since=frozenset({"a1", "a2"}))
    assert table.connected(later + SECOND) == {"a1", "a3", "b1"}


def test_a_replica_that_stops_is_withdrawn_at_once(table: SqlConnectedAgents, store: LedgerStore) -> None:
    table.report("ca-0", frozenset({"a1"}), T0, since=None)
    table.report("ca-1", frozenset({"b1"}), T0, since=None)
    table.withdraw("ca-0")
    assert table.connected(T0) == {"b1"} and rows(store, "ca-0") == 0
