"""The append path on a connection of its own: what the ledger process runs, without SQLAlchemy,
on SQLite and on the real PostgreSQL server."""

from __future__ import annotations

from pathlib import Path

import pytest

from ca.errors import UnavailableError
from ca.ledger.appender import LedgerAppender
from ca.ledger.chain import GENESIS_HASH
from ca.ledger.store import LedgerStore
from tests.support import ledger as ledger_support
from tests.support.control import ca_process

ledger_url = ledger_support.ledger_url  # the fixture: SQLite and PostgreSQL


def _event(number: int) -> dict[str, str]:
    return {"kind": "ca_event", "time": f"2026-12-07T08:00:0{number}.000000Z", "reason": "loaded"}


def _ledger_process(ca_pid: int) -> int:
    """The pid of the ledger process `meshca serve` started (a multiprocessing spawn child)."""
    for children in Path(f"/proc/{ca_pid}/task").glob("*/children"):
        for child in children.read_text().split():
            if "spawn_main" in Path(f"/proc/{child}/cmdline").read_text():
                return int(child)
    raise AssertionError("the CA has no ledger process")


def test_the_ledger_process_of_a_ca_loads_no_sqlalchemy() -> None:
    """SQLAlchemy (C extensions among it) would be about 20 MiB of the ledger process's memory."""
    with ca_process() as ca:
        maps = Path(f"/proc/{_ledger_process(ca.process.pid)}/maps").read_text()
    assert "/sqlalchemy/" not in maps
    assert "/cryptography/" in maps  # what it does load: the certificate fingerprints


def test_appends_extend_the_chain_the_store_reads(ledger_url: str) -> None:
    store = LedgerStore(ledger_url)
    store.migrate()
    appender = LedgerAppender(ledger_url)
    try:
        written = appender.append([_event(1), _event(2)]) + appender.append([_event(3)])
        read = list(store.entries())
        head = store.head()
    finally:
        appender.dispose()
        store.dispose()
    assert [e.seq for e in read] == [1, 2, 3]
    assert [(e.entry_hash, e.prev_hash) for e in read] == [(e.entry_hash, e.prev_hash) for e in written]
    assert read[0].prev_hash == GENESIS_HASH
    assert head[:2] == (3, read[-1].entry_hash)


def test_a_failed_append_writes_nothing_and_the_next_one_reconnects(ledger_url: str) -> None:
    store = LedgerStore(ledger_url)
    store.migrate()
    appender = LedgerAppender(ledger_url, lock_timeout_s=0.3)
    try:
        with (
            ledger_support.ledger_locked(ledger_url),
            pytest.raises(UnavailableError, match="could not be written"),
        ):
            appender.append([_event(1)])
        assert store.head()[0] == 0
        assert [e.seq for e in appender.append([_event(2)])] == [1]
    finally:
        appender.dispose()
        store.dispose()


def test_a_postgresql_url_naming_its_driver_is_taken_too() -> None:
    with ledger_support.postgres_database() as url:
        store = LedgerStore(url)
        store.migrate()
        appender = LedgerAppender(url.replace("postgresql://", "postgresql+psycopg://", 1))
        try:
            assert [e.seq for e in appender.append([_event(1)])] == [1]
        finally:
            appender.dispose()
            store.dispose()
