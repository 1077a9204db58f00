"""The ledger in SQL (SQLAlchemy Core): SQLite by default, PostgreSQL for shared ledgers.

Appends take the head row's lock (SELECT ... FOR UPDATE on PostgreSQL, BEGIN
IMMEDIATE on SQLite), so CA processes sharing one database extend a single
chain one batch at a time. The hot path, `LedgerStore.append`, runs through the
driver directly (ca.ledger.appender, which also marks the rotation targets that
issued records replace); the rest goes through SQLAlchemy Core.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, and_, create_engine, event, func, or_, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from ca.errors import ConfigError
from ca.ledger import appender, schema
from ca.ledger.appender import LedgerAppender, chain_rows
from ca.ledger.appender import storage_error as storage_error  # the ledger's error for a failed database
from ca.ledger.chain import Entry
from ca.ledger.checkpoint import COMPACTION, Checkpoint
from ca.ledger.entries import INDEXED_FIELDS, ISSUED, Record

READ_BATCH = 5000
IN_LIST_CHUNK = 500
_ENTRY_COLUMNS = tuple(column.name for column in schema.entries.columns)
# The appender, which does not import SQLAlchemy, names the tables and builds rows in this order.
assert appender.ENTRY_COLUMNS == _ENTRY_COLUMNS, _ENTRY_COLUMNS
_TABLES = (schema.entries, schema.head, schema.rotation_targets, schema.rotation_changes)
assert tuple(t.name for t in _TABLES) == (
    appender.ENTRIES_TABLE,
    appender.HEAD_TABLE,
    appender.TARGETS_TABLE,
    appender.CHANGES_TABLE,
)


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def _sqlite_pragmas(engine: Engine, busy_timeout_s: float) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


READ_BUSY_TIMEOUT_S = 5.0


def sqlite_read_engine(url: str) -> Engine:
    """A SQLite engine for reads that take no write lock: this store's transactions begin
    IMMEDIATE (right for appends), but audits, the change poll and revocation checks must neither
    queue behind a CA's ledger writer nor hold it up. Each transaction is one snapshot."""
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": READ_BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The driver would begin no transaction for reads, leaving each statement its own
        # snapshot; transactions are begun below instead.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA query_only=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN")  # deferred: a read transaction on one snapshot, no lock

    return engine


def make_engine(url: str, *, lock_timeout_s: float = 2.0, snapshot_reads: bool = False) -> Engine:
    """An engine for the ledger at `url`; with `snapshot_reads` (PostgreSQL) every transaction
    sees the database as of its first statement (REPEATABLE READ)."""
    if url.startswith("sqlite"):
        # Connections are made on one thread and used on another (the writer thread, the
        # ledger process's reader); SQLite's own check would refuse that.
        engine = create_engine(url, pool_pre_ping=True, connect_args={"check_same_thread": False})
        _sqlite_pragmas(engine, lock_timeout_s)
        return engine
    if url.startswith("postgresql"):
        url = (
            url.replace("postgresql://", "postgresql+psycopg://", 1) if "+" not in url.split(":")[0] else url
        )
        timeout_ms = int(lock_timeout_s * 1000)
        return create_engine(
            url,
            pool_pre_ping=True,
            pool_size=4,
            isolation_level="REPEATABLE READ" if snapshot_reads else "READ COMMITTED",
            connect_args={
                "options": f"-c lock_timeout={timeout_ms} -c statement_timeout={timeout_ms * 5}",
                "connect_timeout": max(1, int(lock_timeout_s)),
            },
        )
    raise ConfigError(f"--ledger {url!r} is not a sqlite:/// or postgresql:// URL")


def redact_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}{sep}{userinfo.split(':', 1)[0]}:***@{host}"


def lock_head(conn: Connection) -> tuple[int, str]:
    """Take the lock every append holds, in the caller's transaction, and return the head (seq,
    hash): FOR UPDATE on the head row on PostgreSQL; on SQLite, LedgerStore's transactions begin
    IMMEDIATE and so already hold the write lock. Writers that decide from what they read (is
    this serial revoked yet?) take it first, so that they are serialised with each other."""
    head = schema.head
    seq, previous = conn.execute(
        select(head.c.seq, head.c.hash).where(head.c.id == 1).with_for_update()
    ).one()
    return int(seq), str(previous)


def append_in(conn: Connection, contents: Sequence[Mapping[str, Any]]) -> list[Entry]:
    """Chain `contents` after the head inside the caller's transaction (LedgerStore's engine), so
    that they commit, or not, with whatever else it writes; it takes the head lock (lock_head)."""
    head = schema.head
    seq, previous = lock_head(conn)
    written, rows = chain_rows(seq, previous, contents)
    if written:
        conn.execute(schema.entries.insert(), [dict(zip(_ENTRY_COLUMNS, row, strict=True)) for row in rows])
        conn.execute(
            head.update().where(head.c.id == 1).values(seq=written[-1].seq, hash=written[-1].entry_hash)
        )
    return written


# Reads on a connection the caller holds, so that several of them can share one
# transaction (a reader's transaction is a snapshot: see ca.ledger.reader).


def read_head(conn: Connection) -> tuple[int, str, int, str]:
    """(head seq, head hash, anchor seq, anchor hash); the anchor is where compaction left off."""
    row = conn.execute(select(schema.head).where(schema.head.c.id == 1)).one()
    return int(row.seq), str(row.hash), int(row.anchor_seq), str(row.anchor_hash)


def read_checkpoints(conn: Connection) -> list[Checkpoint]:
    rows = conn.execute(select(schema.checkpoints.c.body).order_by(schema.checkpoints.c.head_seq)).all()
    return [Checkpoint.from_json(body) for (body,) in rows]


_INDEXED = slice(1, 1 + len(INDEXED_FIELDS))  # where the indexed columns lie in a row (see above)


def _entry(row: Sequence[Any]) -> Entry:
    return Entry(
        seq=int(row[0]),
        content_json=row[-3],
        prev_hash=row[-2],
        entry_hash=row[-1],
        columns=tuple(row[_INDEXED]),
    )


def entries_after(conn: Connection, after_seq: int, limit: int) -> list[Entry]:
    """Up to `limit` entries after `after_seq`, in sequence order."""
    e = schema.entries
    rows = conn.execute(select(e).where(e.c.seq > after_seq).order_by(e.c.seq).limit(limit)).all()
    return [_entry(row) for row in rows]


def entries_by_seq(conn: Connection, seqs: Iterable[int]) -> dict[int, Entry]:
    """The entries with these seqs that exist, by seq."""
    wanted = sorted(set(seqs))
    found: dict[int, Entry] = {}
    for start in range(0, len(wanted), IN_LIST_CHUNK):
        chunk = wanted[start : start + IN_LIST_CHUNK]
        for row in conn.execute(select(schema.entries).where(schema.entries.c.seq.in_(chunk))):
            found[int(row.seq)] = _entry(row)
    return found


class LedgerStore:
    def __init__(self, url: str, *, lock_timeout_s: float = 2.0) -> None:
        self.url = url
        self.engine = make_engine(url, lock_timeout_s=lock_timeout_s)
        self.is_sqlite = url.startswith("sqlite")
        self._appender = LedgerAppender(url, lock_timeout_s=lock_timeout_s)

    def migrate(self, target: int = schema.CURRENT_VERSION) -> int:
        """Bring the schema up to `target`; returns the version found before."""
        with self.engine.begin() as conn:
            if not self.is_sqlite:
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(724311)")
            found = schema.version(conn)
            for number in range(found + 1, target + 1):
                schema.MIGRATIONS[number - 1](conn)
                schema.set_version(conn, number)
        return found

    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            return schema.version(conn)

    def append(self, records: Sequence[Record]) -> list[Entry]:
        """Append entries as one transaction, chained after the current head."""
        return self._appender.append(records)

    def head(self) -> tuple[int, str, int, str]:
        """(head seq, head hash, anchor seq, anchor hash); the anchor is where compaction left off."""
        with self.engine.connect() as conn:
            return read_head(conn)

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(schema.entries)).scalar_one())

    def entries(self, after_seq: int = 0) -> Iterator[Entry]:
        """All entries after `after_seq`, in sequence order, read in batches."""
        last = after_seq
        while True:
            with self.engine.connect() as conn:
                batch = entries_after(conn, last, READ_BATCH)
            yield from batch
            if len(batch) < READ_BATCH:
                return
            last = batch[-1].seq

    def indexed_row(self, seq: int) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(schema.entries).where(schema.entries.c.seq == seq)).first()
        return dict(row._mapping) if row is not None else None

    def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        try:
            with self.engine.begin() as conn:
                exists = conn.execute(
                    select(schema.checkpoints.c.head_seq).where(
                        schema.checkpoints.c.head_seq == checkpoint.head_seq
                    )
                ).first()
                if exists is None:
                    conn.execute(
                        schema.checkpoints.insert().values(
                            head_seq=checkpoint.head_seq, body=checkpoint.to_json()
                        )
                    )
                elif checkpoint.purpose == COMPACTION:
                    # A compaction anchor outranks an ordinary checkpoint at the same entry.
                    conn.execute(
                        schema.checkpoints.update()
                        .where(schema.checkpoints.c.head_seq == checkpoint.head_seq)
                        .values(body=checkpoint.to_json())
                    )
        except SQLAlchemyError as err:
            raise storage_error("checkpointed", err) from err

    def checkpoints(self) -> list[Checkpoint]:
        with self.engine.connect() as conn:
            return read_checkpoints(conn)

    def expired_prefix_end(self, cutoff: str) -> int:
        """The last seq S such that every entry up to S ended before `cutoff` (a ledger timestamp).

        Compaction removes only such a prefix, so the chain after it stays whole.
        """
        e = schema.entries.c
        still_live = or_(
            and_(e.kind == ISSUED, e.not_after >= cutoff), and_(e.kind != ISSUED, e.time >= cutoff)
        )
        with self.engine.connect() as conn:
            first_live = conn.execute(select(func.min(e.seq)).where(still_live)).scalar()
            if first_live is not None:
                return int(first_live) - 1
            last = conn.execute(select(func.max(e.seq))).scalar()
        return int(last) if last is not None else 0

    def entry_hash(self, seq: int) -> str | None:
        with self.engine.connect() as conn:
            value = conn.execute(
                select(schema.entries.c.entry_hash).where(schema.entries.c.seq == seq)
            ).scalar()
        return str(value) if value is not None else None

    def compact_through(self, seq: int, anchor_hash: str) -> int:
        """Delete entries up to `seq` and move the anchor there; returns how many were removed.

        The anchor only moves forward: a compaction racing another (several CA processes)
        that would move it back does nothing.
        """
        with self.engine.begin() as conn:
            anchor = conn.execute(
                select(schema.head.c.anchor_seq).where(schema.head.c.id == 1).with_for_update()
            ).scalar_one()
            if int(anchor) >= seq:
                return 0
            removed = conn.execute(schema.entries.delete().where(schema.entries.c.seq <= seq)).rowcount
            conn.execute(
                schema.head.update()
                .where(schema.head.c.id == 1)
                .values(anchor_seq=seq, anchor_hash=anchor_hash)
            )
            conn.execute(schema.checkpoints.delete().where(schema.checkpoints.c.head_seq < seq))
        return int(removed)

    def dispose(self) -> None:
        self._appender.dispose()
        self.engine.dispose()


def open_migrated(url: str) -> tuple[LedgerStore, int]:
    """The ledger at `url`, its schema brought up to date; also the version it was found at
    (0 for a new ledger). A database that cannot be opened is a configuration error."""
    store = LedgerStore(url)
    try:
        return store, store.migrate()
    except SQLAlchemyError as err:
        raise ConfigError(
            f"cannot open the issuance ledger at {redact_url(url)} ({str(err).splitlines()[0]}); "
            "check --ledger and that the database is reachable"
        ) from err
