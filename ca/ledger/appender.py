"""The ledger's append path on one connection of its own, through the database driver directly.

Appends are the ledger's hot path: one per certificate. Going through SQLAlchemy's execution
layer and a pool checkout with pre-ping cost about 0.3 ms of CPU per commit; the same
statements on a held DBAPI connection cost about 0.04 ms on SQLite, which is what keeps the
ledger from capping issuance. Queries, migrations and maintenance use SQLAlchemy Core
(ca.ledger.store), but this module does not import it: it is all the ledger process
(ca.ledger.process_writer) runs, and SQLAlchemy would be about 20 MiB of that process.

Each append takes the head row's lock (BEGIN IMMEDIATE on SQLite, SELECT ... FOR UPDATE on
PostgreSQL), so CA processes sharing one database extend a single chain one batch at a time.
An issued record that names a rotation order and the serial it replaces marks that order's
target replaced in the same transaction, and the rotation change marker grows once for the
batch: the record and the mark are one write, so a replacement whose issuance is in the
ledger is never missing from its order.

On SQLite, commits leave the write-ahead log's checkpoints to a thread of their own
(ca.ledger.wal_checkpointer), so that no certificate waits for one.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ca.errors import UnavailableError
from ca.ledger.chain import Entry, canonical, chain_hash
from ca.ledger.entries import INDEXED_FIELDS, ISSUED, Record, content_of

if TYPE_CHECKING:
    from ca.ledger.wal_checkpointer import WalCheckpointer

# The tables an append writes (ca.ledger.schema defines them; store.py checks they agree).
ENTRIES_TABLE = "ledger_entries"
HEAD_TABLE = "ledger_head"
TARGETS_TABLE = "rotation_targets"
CHANGES_TABLE = "rotation_changes"
ENTRY_COLUMNS = ("seq", *INDEXED_FIELDS, "content", "prev_hash", "entry_hash")
# A change to the rotation tables NOTIFYs this channel on PostgreSQL (ca.ledger.changes listens).
CHANGE_CHANNEL = "meshca_rotation"
# rotation.TargetState's values, as the targets table stores them.
OUTSTANDING = "outstanding"
REPLACED = "replaced"


def storage_error(action: str, err: Exception) -> UnavailableError:
    detail = str(err).splitlines()[0] if str(err) else type(err).__name__
    return UnavailableError(
        f"the issuance ledger could not be {action} ({detail}); no certificate is returned until it "
        "can be, and the CA retries by itself; check the ledger database",
        reason="ledger_unavailable",
    )


def connect(url: str, lock_timeout_s: float) -> Any:
    """A DBAPI connection to the ledger at `url` (a sqlite:/// or postgresql:// URL, as
    ca.ledger.store takes it), set up as store.make_engine sets up its connections; on SQLite,
    one whose commits checkpoint the log only past the backstop (see ca.ledger.wal_checkpointer)."""
    if url.startswith("sqlite:///"):
        from ca.ledger.wal_checkpointer import BACKSTOP_PAGES

        conn = _sqlite_connect(url, lock_timeout_s)
        conn.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")
        return conn
    if url.startswith("postgresql"):
        import psycopg

        timeout_ms = int(lock_timeout_s * 1000)
        return psycopg.connect(
            "postgresql://" + url.split("://", 1)[1],  # without SQLAlchemy's +driver
            options=f"-c lock_timeout={timeout_ms} -c statement_timeout={timeout_ms * 5}",
            connect_timeout=max(1, int(lock_timeout_s)),
        )
    raise ValueError(f"not a ledger URL: {url.split('://', 1)[0]}://...")


def _sqlite_connect(url: str, lock_timeout_s: float) -> Any:
    import sqlite3

    conn = sqlite3.connect(url.removeprefix("sqlite:///"), check_same_thread=False, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=FULL", f"busy_timeout={int(lock_timeout_s * 1000)}"):
        conn.execute(f"PRAGMA {pragma}")
    return conn


def replacements(contents: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, str, str]]:
    """(order id, serial replaced, new serial, record time) of each issued record that a rotation
    order caused; the certificate API put the link there only after checking that the serial
    replaced is a target of that order for the caller's own identity."""
    return [
        (content["order_id"], content["replaces"], content["serial"], content["time"])
        for content in contents
        if content.get("kind") == ISSUED and content.get("order_id") and content.get("replaces")
    ]


def chain_rows(
    seq: int, previous: str, contents: Sequence[Mapping[str, Any]]
) -> tuple[list[Entry], list[tuple[Any, ...]]]:
    """Entries for `contents` chained after (seq, previous), and their rows in ENTRY_COLUMNS order."""
    written: list[Entry] = []
    rows: list[tuple[Any, ...]] = []
    for content in contents:
        seq += 1
        content_json = canonical(content)
        entry_hash = chain_hash(previous, content_json)
        written.append(Entry(seq=seq, content_json=content_json, prev_hash=previous, entry_hash=entry_hash))
        rows.append(
            (seq, *[content.get(name) for name in INDEXED_FIELDS], content_json, previous, entry_hash)
        )
        previous = entry_hash
    return written, rows


class _Statements:
    def __init__(self, *, is_sqlite: bool) -> None:
        mark = "?" if is_sqlite else "%s"
        self.insert = (
            f"INSERT INTO {ENTRIES_TABLE} ({', '.join(ENTRY_COLUMNS)}) "
            f"VALUES ({', '.join([mark] * len(ENTRY_COLUMNS))})"
        )
        lock = "" if is_sqlite else " FOR UPDATE"
        self.select_head = f"SELECT seq, hash FROM {HEAD_TABLE} WHERE id = 1{lock}"
        self.update_head = f"UPDATE {HEAD_TABLE} SET seq = {mark}, hash = {mark} WHERE id = 1"
        self.mark_replaced = (
            f"UPDATE {TARGETS_TABLE} SET state = '{REPLACED}', replaced_by = {mark}, "
            f"replaced_at = {mark} WHERE order_id = {mark} AND serial = {mark} AND state = '{OUTSTANDING}'"
        )
        self.grow_marker = f"UPDATE {CHANGES_TABLE} SET marker = marker + 1 WHERE id = 1"
        notify = f"SELECT pg_notify('{CHANGE_CHANNEL}', CAST(marker AS TEXT)) FROM {CHANGES_TABLE}"
        self.notify = None if is_sqlite else f"{notify} WHERE id = 1"


class LedgerAppender:
    """Appends records to the ledger at `url`, each call one transaction; safe across threads
    (one append at a time). After a failure the connection is dropped and the next append
    opens a new one."""

    def __init__(self, url: str, *, lock_timeout_s: float = 2.0) -> None:
        self._url = url
        self._lock_timeout_s = lock_timeout_s
        self._is_sqlite = url.startswith("sqlite")
        self._sql = _Statements(is_sqlite=self._is_sqlite)
        self._lock = threading.Lock()
        self._conn: Any = None
        self._checkpointer: WalCheckpointer | None = None

    def append(self, records: Sequence[Record]) -> list[Entry]:
        """Append entries as one transaction, chained after the current head."""
        contents = [content_of(record) for record in records]  # before taking the write lock
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = connect(self._url, self._lock_timeout_s)
                written = self._write(contents)
            except Exception as err:
                self._abandon()
                raise storage_error("written", err) from err
            if self._is_sqlite:
                self._wal_checkpointer().nudge()
            return written

    def _wal_checkpointer(self) -> WalCheckpointer:
        if self._checkpointer is None:
            from ca.ledger.wal_checkpointer import WalCheckpointer

            url, timeout_s = self._url, self._lock_timeout_s
            self._checkpointer = WalCheckpointer(
                lambda: _sqlite_connect(url, timeout_s), hold_writer=lambda: self._lock
            )
        return self._checkpointer

    def _write(self, contents: Sequence[Mapping[str, Any]]) -> list[Entry]:
        cursor = self._conn.cursor()
        try:
            if self._is_sqlite:
                # Autocommit mode (see connect): take the write lock now, waiting for another
                # connection's up to the busy timeout.
                cursor.execute("BEGIN IMMEDIATE")
            cursor.execute(self._sql.select_head)
            seq, previous = cursor.fetchone()
            written, rows = chain_rows(int(seq), str(previous), contents)
            cursor.executemany(self._sql.insert, rows)
            cursor.execute(self._sql.update_head, (written[-1].seq, written[-1].entry_hash))
            self._mark_targets(cursor, contents)
        finally:
            cursor.close()
        if self._is_sqlite:
            self._conn.execute("COMMIT")
        else:
            self._conn.commit()
        return written

    def _mark_targets(self, cursor: Any, contents: Sequence[Mapping[str, Any]]) -> None:
        """Mark the rotation targets that these issued records replace (outstanding ones only), and
        grow the change marker once if any was (on PostgreSQL, notify its listeners at commit)."""
        marked = 0
        for order_id, old_serial, new_serial, at in replacements(contents):
            cursor.execute(self._sql.mark_replaced, (new_serial, at, order_id, old_serial))
            marked += max(0, cursor.rowcount)
        if marked:
            cursor.execute(self._sql.grow_marker)
            if self._sql.notify is not None:
                cursor.execute(self._sql.notify)

    def _abandon(self) -> None:
        """Roll back whatever is open and close the connection."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(Exception):
            if not self._is_sqlite:
                conn.rollback()
            elif conn.in_transaction:
                conn.execute("ROLLBACK")
        with contextlib.suppress(Exception):
            conn.close()

    def dispose(self) -> None:
        with self._lock:
            self._abandon()
            checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            # Outside the lock: a run's last checkpoint takes it (hold_writer), and the close
            # waits for that run.
            checkpointer.close()
