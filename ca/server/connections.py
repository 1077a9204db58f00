"""Which certificates' holders a push from some CA replica reaches, for a dry run and for the
workloads an order restarts.

A replica's own control streams are known at once (`ca.server.push`); the other replicas' come
from the ledger's database (`ca.ledger.connected_agents`), where each replica reports its own
once a second when they changed, and at least every REWRITE_S as a heartbeat. So an agent on
another replica is counted about a second after it connects, and no longer about a second after
its stream ends; a replica stopped cleanly withdraws its agents at once, and one that died stops
counting FRESH (10 s) after its last report.
"""

from __future__ import annotations

import math
import threading
from datetime import datetime
from typing import Protocol

from ca.common.clock import Clock


class ConnectionTable(Protocol):
    """Where the replicas share their connected serials (`SqlConnectedAgents`)."""

    def report(
        self, replica: str, serials: frozenset[str], now: datetime, *, since: frozenset[str] | None
    ) -> None: ...

    def withdraw(self, replica: str) -> None: ...

    def prune(self, now: datetime) -> int: ...

    def connected(self, now: datetime, *, excluding: str = "") -> frozenset[str]: ...

    def dispose(self) -> None: ...


class Streams(Protocol):
    """This replica's control streams (the push coordinator)."""

    def connected_serials(self) -> set[str]: ...

    def pushable_serials(self) -> set[str]: ...

    def is_revoked(self, serial: str) -> bool: ...


class SharedConnections:
    REWRITE_S = 4.0  # the heartbeat, while nothing changes (well within the table's FRESH)
    PRUNE_S = 60.0  # how often this replica deletes what dead replicas left

    def __init__(self, table: ConnectionTable, replica: str, clock: Clock, streams: Streams) -> None:
        self._table = table
        self._replica = replica
        self._clock = clock
        self._streams = streams
        self._written: frozenset[str] | None = None  # what the last successful report wrote
        self._written_at = -math.inf
        self._pruned_at = -math.inf
        # A report in flight when the replica stops must not write its rows back after withdraw.
        self._lock = threading.Lock()
        self._withdrawn = False

    def report(self) -> None:
        """Write this replica's connected serials when they changed or the heartbeat is due (the
        CA's scheduler, each second). A failed write is retried whole at the next call."""
        with self._lock:
            if self._withdrawn:
                return
            serials = frozenset(self._streams.connected_serials())
            at = self._clock.monotonic()
            if serials == self._written and at - self._written_at < self.REWRITE_S:
                return
            try:
                self._table.report(self._replica, serials, self._clock.now(), since=self._written)
            except Exception:
                self._written = None
                raise
            self._written, self._written_at = serials, at
            if at - self._pruned_at >= self.PRUNE_S:
                self._pruned_at = at
                self._table.prune(self._clock.now())

    def pushable(self) -> set[str]:
        """Serials a push reaches now: this replica's streams, and those the other replicas
        reported lately, less the revoked ones (their streams are being closed)."""
        others = self._table.connected(self._clock.now(), excluding=self._replica)
        return self._streams.pushable_serials() | {s for s in others if not self._streams.is_revoked(s)}

    def withdraw(self) -> None:
        """This replica stops: its agents are no longer counted anywhere, and it reports no more."""
        with self._lock:
            self._withdrawn = True
            self._table.withdraw(self._replica)

    def dispose(self) -> None:
        self._table.dispose()
