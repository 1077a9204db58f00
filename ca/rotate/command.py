"""Running `meshca rotate` and `meshca revoke`: through the CA's admin API (--ca-addr), or straight
into the ledger of --state-dir/--ledger, then printing the result.

Without a CA address the operations run here against the ledger's RotationStore; a `meshca serve`
on the same ledger notices the change within a second and pushes it. Which meshca agents are
connected is read where the CA replicas report it (`ca.ledger.connected_agents`), as a replica
reads the others': the serials of the replicas heard from in the last 10 s, less the revoked
ones. With no CA running on the ledger, no agent is connected.

Results go to stdout, warnings (nothing matched, a name the ledger never saw) to stderr. Exit
status: 0 done, 1 refused (by the CA, or an order that matched nothing, or workloads that could
not be restarted), 2 bad flags (checked in `rotate/settings` before anything is asked).
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol, TextIO

from ca.common.clock import Clock, SystemClock
from ca.errors import ConfigError
from ca.ledger import rotation_operations as operations
from ca.ledger.rotation import Order, OrderCounts, Revocation, RotationStore
from ca.ledger.rotation_operations import OrderStatus, RotationRequest, RotationResult, WorkloadFinder
from ca.rotate import render
from ca.rotate.settings import Connection, RotateConfig

EXIT_OK = 0
EXIT_FAILED = 1
NO_OWNER_LOOKUP = "owner not looked up; give --kubeconfig to find it"


class RotationBackend(Protocol):
    """The four operations, wherever they run."""

    def rotate(self, request: RotationRequest) -> RotationResult: ...

    def status(self, order_id: str) -> OrderStatus: ...

    def orders(self, limit: int) -> list[tuple[Order, OrderCounts]]: ...

    def revoke(self, serials: Sequence[str], *, reason: str, note: str | None) -> list[Revocation]: ...

    def close(self) -> None: ...


class ConnectionTable(Protocol):
    """Where the CA replicas report their agents' streams (`SqlConnectedAgents`)."""

    def connected(self, now: datetime, *, excluding: str = "") -> frozenset[str]: ...


def pushable_through_ledger(
    table: ConnectionTable, store: RotationStore, clock: Clock
) -> Callable[[], frozenset[str]]:
    """The serials a push from some CA replica reaches now, where no CA is asked: those the
    replicas reported lately, less the revoked ones (their streams are being closed)."""

    def pushable() -> frozenset[str]:
        now = clock.now()
        revoked = {r.serial for r in store.revocations(now)}
        return frozenset(table.connected(now) - revoked)

    return pushable


def _pods_only(pods: Sequence[operations.PodRef], restart: bool) -> list[operations.Workload]:
    return operations.pods_as_workloads(pods, problem=NO_OWNER_LOOKUP)


class LedgerRotation:
    """The operations run here, on the ledger's store (no CA asked)."""

    def __init__(
        self,
        store: RotationStore,
        *,
        clock: Clock,
        random_bytes: Callable[[int], bytes],
        ordered_by: str,
        connected: Callable[[], frozenset[str]],
        workloads: Callable[[], WorkloadFinder] | None = None,
        on_close: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._connected = connected
        self._clock = clock
        self._random_bytes = random_bytes
        self._ordered_by = ordered_by
        self._workloads = workloads
        self._on_close = on_close

    def rotate(self, request: RotationRequest) -> RotationResult:
        return operations.rotate(
            self._store,
            request,
            now=self._clock.now(),
            order_id=operations.new_order_id(self._random_bytes),
            ordered_by=self._ordered_by,
            connected=self._connected(),
            workloads=self._workloads() if self._workloads is not None else _pods_only,
        )

    def status(self, order_id: str) -> OrderStatus:
        return operations.order_status(self._store, order_id, self._clock.now(), self._connected())

    def orders(self, limit: int) -> list[tuple[Order, OrderCounts]]:
        return operations.list_orders(self._store, limit, self._clock.now())

    def revoke(self, serials: Sequence[str], *, reason: str, note: str | None) -> list[Revocation]:
        return operations.revoke(self._store, serials, reason=reason, note=note, now=self._clock.now())

    def close(self) -> None:
        self._on_close()


# ------------------------------------------------------------------ opening a backend


def local_operator() -> str:
    """Who places an order without a CA: the local account, as the ledger records it."""
    import pwd

    try:
        name = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        name = f"uid {os.getuid()}"
    return f"local:{name}@{socket.gethostname()}"


def _check_ledger_exists(url: str) -> None:
    if not url.startswith("sqlite"):
        return
    from ca.ledger.reader import sqlite_path

    path = sqlite_path(url)
    if not path.is_file():
        raise ConfigError(
            f"there is no ledger at {path}; give --state-dir the state directory of a CA that has "
            "issued certificates, --ledger its database, or --ca-addr the CA itself"
        )


def open_backend(connection: Connection, clock: Clock) -> RotationBackend:
    if connection.through_ca:
        from ca.rotate.client import CaRotationClient

        return CaRotationClient(connection)
    assert connection.ledger_url is not None
    _check_ledger_exists(connection.ledger_url)
    from ca.ledger.connected_agents import SqlConnectedAgents
    from ca.ledger.rotation_store import SqlRotationStore
    from ca.ledger.store import open_migrated

    ledger, _ = open_migrated(connection.ledger_url)
    store = SqlRotationStore(ledger)
    connections = SqlConnectedAgents(ledger)

    def close() -> None:
        connections.dispose()
        store.dispose()
        ledger.dispose()

    workloads: Callable[[], WorkloadFinder] | None = None
    if connection.kubeconfig is not None:
        from ca.kube import client as kube
        from ca.kube import workloads as kube_workloads

        api = kube.api_client(connection.kubeconfig, in_cluster=False)

        def find() -> WorkloadFinder:
            return kube_workloads.finder(api, clock.now())

        workloads = find
    return LedgerRotation(
        store,
        clock=clock,
        random_bytes=os.urandom,
        ordered_by=local_operator(),
        connected=pushable_through_ledger(connections, store, clock),
        workloads=workloads,
        on_close=close,
    )


# ------------------------------------------------------------------ the actions


def _note(text: str) -> None:
    print(f"meshca: {text}", file=sys.stderr)


def _write(out: TextIO, lines: Sequence[str]) -> None:
    for line in lines:
        out.write(line + "\n")


def _order(cfg: RotateConfig, backend: RotationBackend, out: TextIO) -> int:
    assert cfg.request is not None
    result = backend.rotate(cfg.request)
    if cfg.output == "json":
        _write(out, [render.json_text(render.rotation_dict(result))])
    else:
        _write(out, render.rotation_text(result, restart_asked=cfg.request.restart_workloads))
    for warning in result.radius.warnings:
        _note(f"warning: {warning}")
    if result.order is not None and cfg.request.restart_workloads:
        failed = [w for w in result.workloads if not w.restarted]
        if failed:
            _note(
                f"the order {result.order.id} was placed, but {len(failed)} workload(s) were not restarted "
                "(see above); restart or delete their pods, or their certificates are revoked when the "
                "grace period ends"
            )
            return EXIT_FAILED
    return EXIT_OK


def _status(cfg: RotateConfig, backend: RotationBackend, out: TextIO) -> int:
    assert cfg.order_id is not None
    status = backend.status(cfg.order_id)
    if cfg.output == "json":
        _write(out, [render.json_text(render.status_dict(status))])
    else:
        _write(out, render.status_text(status))
        if not status.connections_known and status.counts.outstanding:
            _note(render.UNKNOWN_CONNECTIONS)
    return EXIT_OK


def _list(cfg: RotateConfig, backend: RotationBackend, out: TextIO) -> int:
    orders = backend.orders(cfg.limit)
    if cfg.output == "json":
        _write(out, [render.json_text(render.list_dict(orders))])
    else:
        _write(out, render.list_text(orders))
    if not orders:
        _note("no rotation orders yet")
    return EXIT_OK


def _revoke(cfg: RotateConfig, backend: RotationBackend, out: TextIO) -> int:
    revoked = backend.revoke(cfg.serials, reason=cfg.revocation_reason, note=cfg.note)
    if cfg.output == "json":
        _write(out, [render.json_text(render.revoked_dict(revoked))])
    else:
        _write(out, render.revoked_text(revoked))
    return EXIT_OK


ACTIONS: dict[str, Callable[[RotateConfig, RotationBackend, TextIO], int]] = {
    "order": _order,
    "status": _status,
    "list": _list,
    "revoke": _revoke,
}


def run(
    cfg: RotateConfig,
    *,
    clock: Clock | None = None,
    backend: RotationBackend | None = None,
    out: TextIO | None = None,
) -> int:
    opened = backend or open_backend(cfg.connection, clock or SystemClock())
    try:
        return ACTIONS[cfg.action](cfg, opened, out or sys.stdout)
    except BrokenPipeError:
        # The reader of the output went away (`| head`): not an error. Point stdout at
        # /dev/null so that the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    finally:
        opened.close()
