"""How many agents hold each root of the trust bundle, over every CA replica.

Each replica knows only the agents connected to it. Every second it rewrites its own rows of
`bundle_holders` (one per root it counted); the leader sums the rows of the replicas that
reported within the freshness window, so an agent is counted once, by the replica it is
connected to, and a replica that died stops counting once its rows are stale.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.exc import SQLAlchemyError

from ca.issuance.slots import Acknowledgement
from ca.ledger import schema
from ca.ledger.appender import storage_error
from ca.ledger.entries import timestamp
from ca.ledger.store import LedgerStore

FRESH = timedelta(seconds=10)


class SqlBundleHolders:
    def __init__(self, store: LedgerStore) -> None:
        self._store = store

    def report(self, replica: str, counts: Mapping[str, Acknowledgement], now: datetime) -> None:
        """Replace `replica`'s rows with `counts` (root fingerprint -> its agents)."""
        table = schema.bundle_holders
        rows = [
            {
                "replica": replica,
                "root_sha256": root,
                "holding": held.holding,
                "connected": held.connected,
                "updated": timestamp(now),
            }
            for root, held in counts.items()
        ]
        try:
            with self._store.engine.begin() as conn:
                conn.execute(delete(table).where(table.c.replica == replica))
                if rows:
                    conn.execute(table.insert(), rows)
        except SQLAlchemyError as err:
            raise storage_error("written", err) from err

    def total(self, root_sha256: str, now: datetime) -> Acknowledgement:
        """The root's holders summed over the replicas that reported within FRESH of `now`."""
        table = schema.bundle_holders
        query = select(
            func.coalesce(func.sum(table.c.holding), 0), func.coalesce(func.sum(table.c.connected), 0)
        )
        query = query.where(table.c.root_sha256 == root_sha256, table.c.updated >= timestamp(now - FRESH))
        try:
            with self._store.engine.connect() as conn:
                holding, connected = conn.execute(query).one()
        except SQLAlchemyError as err:
            raise storage_error("read", err) from err
        return Acknowledgement(holding=int(holding), connected=int(connected))
