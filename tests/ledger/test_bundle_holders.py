"""Agents holding each root of the trust bundle, counted over every CA replica (SQLite and
PostgreSQL): each replica's rows replaced at each report, stale replicas left out."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from ca.issuance.slots import Acknowledgement
from ca.ledger.bundle_holders import FRESH, SqlBundleHolders
from ca.ledger.store import open_migrated

T0 = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
NEW, OLD = "a" * 64, "b" * 64


@pytest.fixture
def holders(ledger_url: str) -> Iterator[SqlBundleHolders]:
    store, _ = open_migrated(ledger_url)
    try:
        yield SqlBundleHolders(store)
    finally:
        store.dispose()


def test_the_leader_sums_every_replica_that_reported_lately(holders: SqlBundleHolders) -> None:
    assert holders.total(NEW, T0) == Acknowledgement(holding=0, connected=0)
    holders.report(
        "ca-0",
        {NEW: Acknowledgement(holding=3, connected=5), OLD: Acknowledgement(holding=5, connected=5)},
        T0,
    )
    holders.report("ca-1", {NEW: Acknowledgement(holding=4, connected=4)}, T0 + timedelta(seconds=2))
    assert holders.total(NEW, T0 + timedelta(seconds=3)) == Acknowledgement(holding=7, connected=9)
    assert holders.total(OLD, T0 + timedelta(seconds=3)) == Acknowledgement(holding=5, connected=5)
    # ca-0 reports again: its rows are replaced, not added to; a root it no longer counts is gone.
    holders.report("ca-0", {NEW: Acknowledgement(holding=5, connected=5)}, T0 + timedelta(seconds=4))
    assert holders.total(NEW, T0 + timedelta(seconds=4)) == Acknowledgement(holding=9, connected=9)
    assert holders.total(OLD, T0 + timedelta(seconds=4)) == Acknowledgement(holding=0, connected=0)


def test_a_replica_that_stopped_reporting_stops_counting(holders: SqlBundleHolders) -> None:
    holders.report("ca-0", {NEW: Acknowledgement(holding=0, connected=2)}, T0)
    holders.report("ca-1", {NEW: Acknowledgement(holding=3, connected=3)}, T0 + FRESH)
    assert holders.total(NEW, T0 + FRESH) == Acknowledgement(holding=3, connected=5)
    # ca-0 died: its agents reconnect elsewhere, and its last rows no longer hold activation back.
    assert holders.total(NEW, T0 + FRESH + timedelta(microseconds=1)) == Acknowledgement(
        holding=3, connected=3
    )
