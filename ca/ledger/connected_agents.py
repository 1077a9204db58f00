"""Which agents have a control stream open to some CA replica, over every replica.

Each replica knows only its own streams. It keeps, in the ledger's database, the serials of the
certificates its streams were opened with (`connected_serials`) and a heartbeat
(`connected_replicas`). A report writes only the serials that came or went since the replica's
last one, and otherwise just the heartbeat: 10,000 idle agents cost one row every few seconds,
and nothing is written per certificate issued. A dry run reads the serials of the replicas whose
heartbeat is fresh, so an agent is counted by the replica it is connected to, and a replica that
died stops counting once its heartbeat is stale; `prune` later deletes what it left.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from ca.errors import UnavailableError
from ca.ledger import schema
from ca.ledger.entries import timestamp
from ca.ledger.store import IN_LIST_CHUNK, LedgerStore, sqlite_read_engine

FRESH = timedelta(seconds=10)  # a heartbeat older than this: the replica's agents are not counted
PRUNE_AFTER = timedelta(minutes=1)  # a heartbeat older than this: the replica's rows are deleted


def unavailable(action: str, err: SQLAlchemyError) -> UnavailableError:
    detail = str(err).splitlines()[0] if str(err) else type(err).__name__
    return UnavailableError(
        f"the agents connected to the CA replicas could not be {action} in the ledger database "
        f"({detail}); check the ledger database",
        reason="ledger_unavailable",
    )


def _chunks(serials: Iterable[str]) -> Iterator[list[str]]:
    ordered = sorted(serials)
    for start in range(0, len(ordered), IN_LIST_CHUNK):
        yield ordered[start : start + IN_LIST_CHUNK]


class SqlConnectedAgents:
    def __init__(self, store: LedgerStore) -> None:
        self._store = store
        # On SQLite the store's transactions take the write lock; a dry run's read need not.
        self._reads = sqlite_read_engine(store.url) if store.is_sqlite else store.engine

    def dispose(self) -> None:
        if self._reads is not self._store.engine:
            self._reads.dispose()

    def report(
        self, replica: str, serials: frozenset[str], now: datetime, *, since: frozenset[str] | None
    ) -> None:
        """Make `replica`'s rows `serials` and its heartbeat `now`. `since`: the serials its last
        report wrote, so that only the difference is written; None rewrites them all (the first
        report, or after one that failed). Rows another replica pruned (this one could not report
        for PRUNE_AFTER) are rewritten whole too."""
        try:
            with self._store.engine.begin() as conn:
                beat = conn.execute(
                    update(schema.connected_replicas)
                    .where(schema.connected_replicas.c.replica == replica)
                    .values(updated=timestamp(now))
                )
                if beat.rowcount == 0:
                    conn.execute(
                        insert(schema.connected_replicas).values(replica=replica, updated=timestamp(now))
                    )
                if since is None or beat.rowcount == 0:
                    self._delete_all(conn, replica)
                    self._insert(conn, replica, serials)
                else:
                    self._delete(conn, replica, since - serials)
                    self._insert(conn, replica, serials - since)
        except SQLAlchemyError as err:
            raise unavailable("written", err) from err

    def withdraw(self, replica: str) -> None:
        """`replica` stops (cleanly): its agents reconnect to the others, so it counts none now."""
        try:
            with self._store.engine.begin() as conn:
                self._delete_all(conn, replica)
                conn.execute(
                    delete(schema.connected_replicas).where(schema.connected_replicas.c.replica == replica)
                )
        except SQLAlchemyError as err:
            raise unavailable("written", err) from err

    def prune(self, now: datetime) -> int:
        """Delete the rows of replicas that have not reported for PRUNE_AFTER; how many replicas.
        Their heartbeat goes first, so a replica that reports again at the same time either
        finds its heartbeat (and its rows stay) or rewrites them whole."""
        replicas, serials = schema.connected_replicas, schema.connected_serials
        try:
            with self._store.engine.begin() as conn:
                gone = conn.execute(delete(replicas).where(replicas.c.updated < timestamp(now - PRUNE_AFTER)))
                if gone.rowcount:
                    conn.execute(delete(serials).where(serials.c.replica.not_in(select(replicas.c.replica))))
                return int(gone.rowcount)
        except SQLAlchemyError as err:
            raise unavailable("written", err) from err

    def connected(self, now: datetime, *, excluding: str = "") -> frozenset[str]:
        """The serials connected to the replicas whose heartbeat is within FRESH of `now`, but
        `excluding` (the replica asking, which knows its own better)."""
        replicas, serials = schema.connected_replicas, schema.connected_serials
        query = (
            select(serials.c.serial)
            .join(replicas, replicas.c.replica == serials.c.replica)
            .where(replicas.c.updated >= timestamp(now - FRESH), replicas.c.replica != excluding)
        )
        try:
            with self._reads.connect() as conn:
                return frozenset(conn.execute(query).scalars())
        except SQLAlchemyError as err:
            raise unavailable("read", err) from err

    @staticmethod
    def _delete_all(conn: Connection, replica: str) -> None:
        conn.execute(delete(schema.connected_serials).where(schema.connected_serials.c.replica == replica))

    @staticmethod
    def _delete(conn: Connection, replica: str, gone: Iterable[str]) -> None:
        table = schema.connected_serials
        for chunk in _chunks(gone):
            conn.execute(delete(table).where(table.c.replica == replica, table.c.serial.in_(chunk)))

    @staticmethod
    def _insert(conn: Connection, replica: str, serials: Iterable[str]) -> None:
        rows = [{"replica": replica, "serial": serial} for serial in sorted(serials)]
        if rows:
            conn.execute(insert(schema.connected_serials), rows)
