"""The ledger store on SQLite: appends wait for another writer, up to the lock timeout."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from ca.errors import UnavailableError
from ca.ledger.store import LedgerStore


@pytest.mark.parametrize(("held_s", "waits"), [(0.3, True), (1.5, False)])
def test_an_sqlite_append_waits_for_another_writer_up_to_the_lock_timeout(
    tmp_path: Path, held_s: float, waits: bool
) -> None:
    path = tmp_path / "ledger.db"
    store = LedgerStore(f"sqlite:///{path}", lock_timeout_s=0.8)
    store.migrate()
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another CA process, or a compaction, holds the write lock
    release = threading.Timer(held_s, lambda: other.execute("COMMIT"))
    release.start()
    started = time.monotonic()
    try:
        if waits:
            assert [e.seq for e in store.append([{"kind": "ca_event", "time": "t"}])] == [1]
            assert time.monotonic() - started >= held_s * 0.8
        else:
            with pytest.raises(UnavailableError, match=r"could not be written \(database is locked"):
                store.append([{"kind": "ca_event", "time": "t"}])
            assert 0.7 <= time.monotonic() - started < held_s
    finally:
        release.join()
        other.close()
        store.dispose()
