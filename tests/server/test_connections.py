"""Who a push reaches over every CA replica: this replica's streams at once, the others' as they
reported to the ledger's database.

Unit tests drive `SharedConnections` with a fake table and clock. The end-to-end test runs two
`meshca serve` replicas on one state directory and one ledger (SQLite, and PostgreSQL), opens a
control stream to each, and asks a dry run of either replica how many holders are connected."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from ca._proto import meshca_admin_pb2 as admin_pb
from ca._proto import meshca_admin_pb2_grpc as admin_grpc
from ca.server.connections import SharedConnections
from tests.support.agent import short_dir
from tests.support.clock import FakeClock
from tests.support.control import CaProcess, ControlCall, Issued
from tests.support.dataplanes import meshca_process, stop_process
from tests.support.ledger import fresh_ledger_url
from tests.support.ports import read_ports_file

ADMIN = "spiffe://cluster.local/ns/istio-system/sa/rotation-admin"

# --------------------------------------------------------------------------- unit


@dataclass
class FakeTable:
    rows: dict[str, frozenset[str]] = field(default_factory=dict)
    reports: list[tuple[str, frozenset[str], frozenset[str] | None]] = field(default_factory=list)
    prunes: int = 0
    fail: bool = False

    def report(
        self, replica: str, serials: frozenset[str], now: datetime, *, since: frozenset[str] | None
    ) -> None:
        if self.fail:
            raise OSError("the database is gone")
        self.reports.append((replica, serials, since))
        self.rows[replica] = serials

    def withdraw(self, replica: str) -> None:
        self.rows.pop(replica, None)

    def prune(self, now: datetime) -> int:
        self.prunes += 1
        return 0

    def connected(self, now: datetime, *, excluding: str = "") -> frozenset[str]:
        return frozenset(s for replica, serials in self.rows.items() if replica != excluding for s in serials)

    def dispose(self) -> None:
        return None


@dataclass
class FakeStreams:
    serials: set[str] = field(default_factory=set)
    revoked: set[str] = field(default_factory=set)

    def connected_serials(self) -> set[str]:
        return set(self.serials)

    def pushable_serials(self) -> set[str]:
        return self.serials - self.revoked

    def is_revoked(self, serial: str) -> bool:
        return serial in self.revoked


@dataclass
class Rig:
    table: FakeTable = field(default_factory=FakeTable)
    streams: FakeStreams = field(default_factory=FakeStreams)
    clock: FakeClock = field(default_factory=FakeClock)

    def shared(self, replica: str = "ca-0") -> SharedConnections:
        return SharedConnections(self.table, replica, self.clock, self.streams)


def test_a_report_is_written_when_the_streams_change_or_the_heartbeat_is_due() -> None:
    rig = Rig()
    shared = rig.shared()
    rig.streams.serials = {"a1", "a2"}
    shared.report()
    assert rig.table.reports == [("ca-0", {"a1", "a2"}, None)]
    rig.clock.advance(timedelta(seconds=1))
    shared.report()  # nothing changed, heartbeat not due: no write
    assert len(rig.table.reports) == 1
    rig.streams.serials = {"a2", "a3"}
    shared.report()  # the difference from what was written
    assert rig.table.reports[-1] == ("ca-0", {"a2", "a3"}, {"a1", "a2"})
    rig.clock.advance(timedelta(seconds=SharedConnections.REWRITE_S))
    shared.report()  # the heartbeat
    assert rig.table.reports[-1] == ("ca-0", {"a2", "a3"}, {"a2", "a3"}) and len(rig.table.reports) == 3


def test_after_a_failed_write_the_next_report_rewrites_every_row() -> None:
    rig = Rig()
    shared = rig.shared()
    rig.streams.serials = {"a1"}
    shared.report()
    rig.streams.serials = {"a1", "a2"}
    rig.table.fail = True
    with pytest.raises(OSError):
        shared.report()
    rig.table.fail = False
    shared.report()
    assert rig.table.reports[-1] == ("ca-0", {"a1", "a2"}, None)


def test_dead_replicas_are_pruned_once_a_minute() -> None:
    rig = Rig()
    shared = rig.shared()
    for _ in range(int(SharedConnections.PRUNE_S) + 1):
        shared.report()
        rig.clock.advance(timedelta(seconds=1))
    assert rig.table.prunes == 2  # at the first report and a minute later


def test_pushable_is_this_replicas_streams_and_the_others_less_the_revoked() -> None:
    rig = Rig()
    rig.table.rows = {"ca-0": frozenset({"stale-own-row"}), "ca-1": frozenset({"b1", "b2"})}
    rig.streams.serials = {"a1", "a2"}
    rig.streams.revoked = {"a2", "b2"}
    assert rig.shared("ca-0").pushable() == {"a1", "b1"}


def test_a_withdrawn_replica_counts_nothing_and_reports_no_more() -> None:
    rig = Rig()
    shared = rig.shared()
    rig.streams.serials = {"a1"}
    shared.report()
    shared.withdraw()
    rig.streams.serials = {"a1", "a2"}
    shared.report()
    assert rig.table.rows == {} and len(rig.table.reports) == 1


# --------------------------------------------------------------------------- two replicas


@contextlib.contextmanager
def replica(workdir: Path, name: str, ledger: str) -> Iterator[CaProcess]:
    """`meshca serve` on the shared state directory and ledger, its own ports and log."""
    ports_file, log = workdir / f"{name}.ports", workdir / f"{name}.log"
    args = [
        *("serve", "--state-dir", str(workdir / "state"), "--ledger", ledger),
        *("--listen", "127.0.0.1:0", "--renew-listen", "127.0.0.1:0", "--metrics-listen", "off"),
        *("--admin-identity", ADMIN, "--ports-file", str(ports_file)),
    ]
    process = meshca_process(args, log)
    try:
        running = CaProcess(
            workdir=workdir, process=process, ports=read_ports_file(ports_file, process, log=log)
        )
        yield running
    finally:
        stop_process(process)


def dry_run(ca: CaProcess, admin: Issued) -> admin_pb.RotateResponse:
    stub = admin_grpc.RotationStub(ca.channel("renew", admin))  # type: ignore[no-untyped-call]
    request = admin_pb.RotateRequest(
        selector=admin_pb.Selector(namespace="shop"), reason="who is connected", dry_run=True
    )
    response: admin_pb.RotateResponse = stub.Rotate(request, timeout=10)
    return response


def holders(response: admin_pb.RotateResponse) -> dict[str, str]:
    return {t.serial: t.holder for t in response.targets}


def eventually(ask: Callable[[], dict[str, str]], expected: dict[str, str], timeout_s: float) -> float:
    """Seconds until `ask()` answers `expected`; fails with the last answer after `timeout_s`."""
    started = time.monotonic()
    while (answer := ask()) != expected:
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not within {timeout_s}s: {answer} != {expected}")
        time.sleep(0.05)
    return time.monotonic() - started


def opened(ca: CaProcess, client: Issued) -> ControlCall:
    """A control stream, registered with the CA once its first message (the CRL) arrived."""
    call = ca.control(client)
    assert call.next().HasField("revocations")
    return call


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_dry_run_counts_the_agents_connected_to_either_replica(backend: str) -> None:
    with short_dir("mca-conn-") as workdir, fresh_ledger_url(backend, workdir) as ledger:
        (workdir / "state").mkdir()
        with replica(workdir, "ca1", ledger) as first:
            # The second starts on the material the first created (one root, one token signer).
            with replica(workdir, "ca2", ledger) as second:
                admin = first.issue("istio-system", "rotation-admin")
                cart, checkout, orders = (
                    first.issue("shop", account) for account in ("cart", "checkout", "orders")
                )
                on_first = opened(first, cart)
                on_second = opened(second, checkout)
                both = {
                    cart.serial: "connected",
                    checkout.serial: "connected",
                    orders.serial: "not_connected",
                }
                for asked in (first, second):
                    eventually(lambda asked=asked: holders(dry_run(asked, admin)), both, 10)
                counted = dry_run(first, admin)
                assert (counted.matched, counted.connected, counted.not_connected) == (3, 2, 1)

                # The stream to the second replica ends: the first stops counting it within seconds.
                on_second.close()
                only_cart = {**both, checkout.serial: "not_connected"}
                eventually(lambda: holders(dry_run(first, admin)), only_cart, 10)
                on_second = opened(second, checkout)
                eventually(lambda: holders(dry_run(first, admin)), both, 10)
                second.stop()  # cleanly: it withdraws its agents, without waiting for them to go stale
            # Within 5 s: without the withdrawal its last heartbeat would keep them counted 6-10 s.
            eventually(lambda: holders(dry_run(first, admin)), only_cart, 5)
            on_first.close()
