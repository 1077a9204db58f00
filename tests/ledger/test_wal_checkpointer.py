"""SQLite's write-ahead log is checkpointed beside the ledger's commits, never inside one."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ca.ledger import wal_checkpointer
from ca.ledger.appender import LedgerAppender
from ca.ledger.store import LedgerStore
from ca.ledger.wal_checkpointer import BACKSTOP_PAGES, WalCheckpointer, checkpoint, checkpoint_until_copied


def _event(number: int) -> dict[str, str]:
    return {"kind": "ca_event", "time": f"2026-12-07T08:00:00.{number:06d}Z", "reason": "loaded"}


@pytest.fixture
def ledger_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "ledger.db"
    store = LedgerStore(f"sqlite:///{path}")
    store.migrate()
    store.dispose()
    yield path


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=2000")
    return conn


def _log_bytes(path: Path) -> int:
    return Path(f"{path}-wal").stat().st_size


def test_the_appenders_commits_leave_checkpoints_to_the_backstop(ledger_file: Path) -> None:
    appender = LedgerAppender(f"sqlite:///{ledger_file}")
    try:
        appender.append([_event(1)])
        conn = appender._conn
        assert conn is not None
        (pages,) = conn.execute("PRAGMA wal_autocheckpoint").fetchone()
    finally:
        appender.dispose()
    assert pages == BACKSTOP_PAGES  # SQLite's default, 1,000, put a checkpoint in every ~90th commit


def _commit(writer: sqlite3.Connection) -> None:
    writer.execute("UPDATE ledger_head SET seq = seq + 1 WHERE id = 1")


def test_checkpointing_until_copied_lets_the_next_commit_reuse_the_log(ledger_file: Path) -> None:
    writer, conn = _connect(ledger_file), _connect(ledger_file)
    try:
        writer.execute("PRAGMA wal_autocheckpoint=0")
        _commit(writer)
        in_log, copied = checkpoint_until_copied(conn)
        assert in_log > 0 and copied == in_log
        one_commit = _log_bytes(ledger_file)
        # Each commit after a complete checkpoint writes from the start of the log again, so the
        # file stays about one commit long; without the checkpoints these 200 commits would make
        # it some 200 commits long.
        for _ in range(200):
            _commit(writer)
            checkpoint_until_copied(conn)
        assert _log_bytes(ledger_file) <= 4 * one_commit
    finally:
        conn.close()
        writer.close()


def test_a_checkpoint_does_not_wait_for_a_writer(ledger_file: Path) -> None:
    writer, checkpointer = _connect(ledger_file), _connect(ledger_file)
    try:
        writer.execute("PRAGMA wal_autocheckpoint=0")
        _commit(writer)
        writer.execute("BEGIN IMMEDIATE")  # holds the write lock while the checkpoint runs
        in_log, copied = checkpoint(checkpointer)
        writer.execute("COMMIT")
    finally:
        writer.close()
        checkpointer.close()
    assert in_log > 0 and copied == in_log


def test_the_thread_checkpoints_after_a_nudge(ledger_file: Path) -> None:
    conn = _connect(ledger_file)
    conn.execute("PRAGMA wal_autocheckpoint=0")
    _commit(conn)
    wal = WalCheckpointer(lambda: _connect(ledger_file), pause_s=0.0)
    try:
        assert wal.runs == 0
        wal.nudge()
        assert wal.wait_for_runs(1, timeout_s=10)
        found = wal.last
    finally:
        wal.close()
        conn.close()
    assert found is not None
    in_log, copied = found
    assert in_log > 0 and copied == in_log


def test_a_checkpoint_that_fails_is_logged_once_and_retried_on_a_new_connection(
    ledger_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    attempts: list[int] = []

    def connect() -> sqlite3.Connection:
        attempts.append(1)
        if len(attempts) <= 2:
            raise sqlite3.OperationalError("disk I/O error")
        return _connect(ledger_file)

    wal = WalCheckpointer(connect, pause_s=0.0)
    try:
        with caplog.at_level(logging.WARNING, logger="meshca.ledger"):
            for runs in (1, 2, 3):
                wal.nudge()
                assert wal.wait_for_runs(runs, timeout_s=10)
    finally:
        wal.close()
    assert len(attempts) == 3
    warnings = [r for r in caplog.records if "write-ahead log" in r.getMessage()]
    assert len(warnings) == 1
    assert "disk I/O error" in warnings[0].__dict__["detail"]


def test_the_last_checkpoint_of_a_run_holds_the_writer(ledger_file: Path) -> None:
    held: list[bool] = []

    @contextlib.contextmanager
    def hold_writer() -> Iterator[None]:
        held.append(True)
        yield

    conn = _connect(ledger_file)
    conn.execute("PRAGMA wal_autocheckpoint=0")
    _commit(conn)
    wal = WalCheckpointer(lambda: _connect(ledger_file), hold_writer=hold_writer, pause_s=0.0)
    try:
        wal.nudge()
        assert wal.wait_for_runs(1, timeout_s=10)
    finally:
        wal.close()
        conn.close()
    assert held == [True]


def test_disposing_the_appender_does_not_wait_on_a_run_that_needs_its_lock(
    ledger_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run's last checkpoint takes the appender's lock; a dispose that held it while closing the
    checkpointer waited out the close's 5 s timeout."""
    entered, release = threading.Event(), threading.Event()

    def slow_rounds(conn: sqlite3.Connection, rounds: int = 8) -> tuple[int, int]:
        entered.set()
        assert release.wait(10)
        return checkpoint(conn)

    monkeypatch.setattr(wal_checkpointer, "checkpoint_until_copied", slow_rounds)
    appender = LedgerAppender(f"sqlite:///{ledger_file}")
    appender.append([_event(1)])  # nudges the checkpointer: its run waits in slow_rounds
    assert entered.wait(10)
    checkpointer = appender._checkpointer
    assert checkpointer is not None
    disposing = threading.Thread(target=appender.dispose)
    disposing.start()
    assert checkpointer._stopping.wait(10)  # the dispose is closing the checkpointer ...
    release.set()  # ... and the run goes on to its last checkpoint, which takes the lock
    disposing.join(2.5)
    assert not disposing.is_alive()
