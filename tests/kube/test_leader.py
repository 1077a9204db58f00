"""Leader election over a Lease: electors on fake clocks against the in-process API server,
replicas simulated on one fake clock with faults drawn by hypothesis, and two electors against
the real API server in real time."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ca.errors import UnavailableError
from ca.kube import client as kube
from ca.kube.election import ElectionTimings, LeaseRecord, SoleElector, VersionedLease
from ca.kube.leader import KubeLease, LeaseElector, LeaseLock, kube_lease_elector
from tests.support.clock import FakeClock
from tests.support.fake_apiserver import FakeKubeApiServer
from tests.support.kube_apiserver import real_apiserver

NAMESPACE = "meshca"
LEASE = "meshca-leader"
T0 = datetime(2030, 5, 1, 12, 0, 0, tzinfo=UTC)
TIMINGS = ElectionTimings()
EVERY_SECOND = ElectionTimings(lease_duration_s=15, renew_deadline_s=10.0, retry_period_s=1.0)


def _eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.005)
    return check()


class Replica:
    """An elector on a fake clock of its own, started on a thread, its callbacks counted. The test
    moves its clock one try at a time."""

    def __init__(self, lock: LeaseLock, identity: str, *, clock: FakeClock, timings: ElectionTimings) -> None:
        self.clock = clock
        self.started = 0
        self.stopped = 0
        self.elector = LeaseElector(
            lock,
            identity=identity,
            timings=timings,
            clock=clock,
            random=lambda: 0.0,
            on_started_leading=self._on_started,
            on_stopped_leading=self._on_stopped,
        )

    def _on_started(self) -> None:
        self.started += 1

    def _on_stopped(self) -> None:
        self.stopped += 1

    def start(self) -> None:
        self.elector.start()
        self.clock.waits(1)  # the first try is done

    def turn(self) -> float:
        """Moves the clock to the next try and returns once it is done; the seconds it moved."""
        asked = self.clock.waits(1)
        self.clock.advance_s(asked[-1])
        self.clock.waits(len(asked) + 1)
        return asked[-1]

    @property
    def leads(self) -> bool:
        return self.elector.is_leader


@pytest.fixture
def apiserver() -> Iterator[FakeKubeApiServer]:
    with FakeKubeApiServer() as server:
        yield server


def _lease(apiserver: FakeKubeApiServer, name: str = LEASE) -> KubeLease:
    return KubeLease(apiserver.api_client(), namespace=NAMESPACE, name=name, request_timeout_s=5.0)


def _replica(
    apiserver: FakeKubeApiServer,
    identity: str,
    *,
    start: datetime = T0,
    timings: ElectionTimings = TIMINGS,
    lock: LeaseLock | None = None,
) -> Replica:
    return Replica(lock or _lease(apiserver), identity, clock=FakeClock(start), timings=timings)


def _holder(apiserver: FakeKubeApiServer) -> str | None:
    lease = apiserver.get_object("leases", NAMESPACE, LEASE)
    return None if lease is None else str(lease["spec"].get("holderIdentity"))


def _spec(apiserver: FakeKubeApiServer) -> dict[str, object]:
    lease = apiserver.get_object("leases", NAMESPACE, LEASE)
    assert lease is not None
    spec: dict[str, object] = lease["spec"]
    return spec


def test_the_first_replica_creates_the_lease_and_leads(apiserver: FakeKubeApiServer) -> None:
    a = _replica(apiserver, "meshca-0_00000001")
    a.start()
    try:
        assert a.leads and a.started == 1
        assert _spec(apiserver) == {
            "holderIdentity": "meshca-0_00000001",
            "leaseDurationSeconds": 15,
            "leaseTransitions": 0,
            "acquireTime": "2030-05-01T12:00:00.000000Z",
            "renewTime": "2030-05-01T12:00:00.000000Z",
        }
        assert a.clock.waits(1) == [2.0]  # a leader renews every retry period
    finally:
        a.elector.stop()


def test_a_leader_renews_every_retry_period_and_keeps_its_acquire_time(apiserver: FakeKubeApiServer) -> None:
    a = _replica(apiserver, "meshca-0_00000001")
    a.start()
    try:
        for _ in range(3):
            a.turn()
        spec = _spec(apiserver)
        assert (spec["acquireTime"], spec["renewTime"]) == (
            "2030-05-01T12:00:00.000000Z",
            "2030-05-01T12:00:06.000000Z",
        )
        assert a.leads and a.started == 1 and a.stopped == 0
    finally:
        a.elector.stop()


def test_a_clean_stop_releases_the_lease(apiserver: FakeKubeApiServer) -> None:
    a = _replica(apiserver, "meshca-0_00000001")
    a.start()
    a.turn()
    a.elector.stop()
    assert not a.leads and a.stopped == 1
    spec = _spec(apiserver)
    assert (spec["holderIdentity"], spec["leaseDurationSeconds"], spec["leaseTransitions"]) == ("", 1, 0)


def test_a_stop_without_release_leaves_the_lease_to_expire(apiserver: FakeKubeApiServer) -> None:
    a = _replica(apiserver, "meshca-0_00000001")
    a.start()
    a.elector.stop(release=False)
    assert not a.leads and a.stopped == 1
    assert _spec(apiserver)["holderIdentity"] == "meshca-0_00000001"


def test_a_released_lease_is_taken_at_the_next_try_and_counts_a_transition(
    apiserver: FakeKubeApiServer,
) -> None:
    a = _replica(apiserver, "meshca-0_00000001")
    a.start()
    b = _replica(apiserver, "meshca-1_00000002")
    b.start()
    try:
        assert not b.leads
        a.elector.stop()
        assert b.turn() == 2.0
        assert b.leads and b.started == 1
        spec = _spec(apiserver)
        assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("meshca-1_00000002", 1)
    finally:
        b.elector.stop()


def test_a_dead_leaders_lease_is_taken_once_seen_unchanged_for_its_duration_on_the_local_clock(
    apiserver: FakeKubeApiServer,
) -> None:
    a = _replica(apiserver, "meshca-0_00000001", timings=EVERY_SECOND)
    a.start()
    a.elector.stop(release=False)
    # b's wall clock is an hour past a's renew time: the time written in the record does not count.
    b = _replica(apiserver, "meshca-1_00000002", start=T0 + timedelta(hours=1), timings=EVERY_SECOND)
    b.start()
    try:
        waited = 0.0
        while waited < 14:
            waited += b.turn()
            assert not b.leads, f"took an unexpired lease {waited}s after first seeing it"
        waited += b.turn()
        assert waited == 15 and b.leads
        assert _spec(apiserver)["leaseTransitions"] == 1
    finally:
        b.elector.stop()


def test_a_lease_renewed_in_time_is_never_taken(apiserver: FakeKubeApiServer) -> None:
    a = _replica(apiserver, "meshca-0_00000001")
    a.start()
    b = _replica(apiserver, "meshca-1_00000002", timings=EVERY_SECOND)
    b.start()
    try:
        for _ in range(20):  # 40 s of a's time, 20 s of b's: longer than the lease, renewed throughout
            a.turn()
            b.turn()
            assert a.leads and not b.leads
        assert _spec(apiserver)["holderIdentity"] == "meshca-0_00000001"
    finally:
        b.elector.stop()
        a.elector.stop()


def test_a_leader_that_cannot_renew_gives_up_at_the_renew_deadline(apiserver: FakeKubeApiServer) -> None:
    a = _replica(apiserver, "meshca-0_00000001")
    a.start()
    try:
        apiserver.fail_next("leases", n=1000, code=500)
        for _ in range(4):  # tries at 2, 4, 6 and 8 s fail
            a.turn()
        a.clock.advance_s(1.999999)
        assert a.leads
        a.clock.advance_s(0.000001)
        assert not a.leads  # at the deadline, even before the election's thread has looked
        assert _eventually(lambda: a.stopped == 1)
    finally:
        a.elector.stop()


def test_a_leader_that_finds_another_holder_gives_up_at_once(apiserver: FakeKubeApiServer) -> None:
    a = _replica(apiserver, "meshca-0_00000001")
    a.start()
    try:
        lease = apiserver.get_object("leases", NAMESPACE, LEASE)
        assert lease is not None
        lease["spec"]["holderIdentity"] = "intruder"
        apiserver.put_object("leases", NAMESPACE, lease)
        a.turn()
        assert not a.leads and a.stopped == 1
    finally:
        a.elector.stop()
    assert _spec(apiserver)["holderIdentity"] == "intruder"  # a replica that lost does not release


class Rival:
    """A lease that another writer takes between this replica's read and its write, once."""

    def __init__(self, inner: KubeLease, rival: KubeLease, holder: str) -> None:
        self.inner = inner
        self.rival = rival
        self.holder = holder
        self.armed = True

    @property
    def where(self) -> str:
        return self.inner.where

    def read(self) -> VersionedLease | None:
        seen = self.inner.read()
        if self.armed:
            self.armed = False
            record = LeaseRecord(holder=self.holder, lease_duration_s=15, acquire_time=T0, renew_time=T0)
            won = (
                self.rival.create(record)
                if seen is None
                else self.rival.update(record, seen.resource_version)
            )
            assert won is not None
        return seen

    def create(self, record: LeaseRecord) -> VersionedLease | None:
        return self.inner.create(record)

    def update(self, record: LeaseRecord, resource_version: str) -> VersionedLease | None:
        return self.inner.update(record, resource_version)


@pytest.mark.parametrize("exists", [False, True], ids=["create", "update"])
def test_of_two_writers_at_once_the_second_sees_the_conflict_and_waits(
    apiserver: FakeKubeApiServer, exists: bool
) -> None:
    if exists:
        _lease(apiserver).create(LeaseRecord(holder="", lease_duration_s=1))
    lock = Rival(_lease(apiserver), _lease(apiserver), holder="meshca-9_00000009")
    b = _replica(apiserver, "meshca-1_00000002", lock=lock)
    b.start()
    try:
        assert not b.leads and b.started == 0
        b.turn()
        assert not b.leads  # the winner's lease is new to b: it waits for it to expire
        assert _spec(apiserver)["holderIdentity"] == "meshca-9_00000009"
    finally:
        b.elector.stop()


def test_a_deleted_lease_is_created_again_by_its_leader(apiserver: FakeKubeApiServer) -> None:
    a = _replica(apiserver, "meshca-0_00000001")
    a.start()
    try:
        apiserver.delete_object("leases", NAMESPACE, LEASE)
        a.turn()
        assert a.leads and a.stopped == 0
        assert _spec(apiserver)["holderIdentity"] == "meshca-0_00000001"
    finally:
        a.elector.stop()


def test_a_failing_callback_does_not_end_the_election(apiserver: FakeKubeApiServer) -> None:
    def fail() -> None:
        raise RuntimeError("callback bug")

    clock = FakeClock(T0)
    elector = kube_lease_elector(
        apiserver.api_client(),
        namespace=NAMESPACE,
        name=LEASE,
        identity="meshca-0_00000001",
        clock=clock,
        random=lambda: 0.0,
        on_started_leading=fail,
    )
    elector.start()
    try:
        asked = clock.waits(1)
        clock.advance_s(asked[-1])
        clock.waits(2)
        assert elector.is_leader
        assert _spec(apiserver)["renewTime"] == "2030-05-01T12:00:02.000000Z"
    finally:
        elector.stop()


def test_a_callback_may_stop_the_election(
    apiserver: FakeKubeApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    stopping: list[LeaseElector] = []
    elector = kube_lease_elector(
        apiserver.api_client(),
        namespace=NAMESPACE,
        name=LEASE,
        identity="meshca-0_00000001",
        clock=FakeClock(T0),
        on_started_leading=lambda: stopping[0].stop(),
    )
    stopping.append(elector)
    elector.start()
    assert _eventually(lambda: _holder(apiserver) == "")  # released on its way out
    assert not elector.is_leader
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_without_a_cluster_the_single_process_leads_from_start_to_stop() -> None:
    calls: list[str] = []
    sole = SoleElector(
        "meshca-0_00000001",
        on_started_leading=lambda: calls.append("started"),
        on_stopped_leading=lambda: calls.append("stopped"),
    )
    assert not sole.is_leader
    sole.start()
    assert sole.is_leader and sole.identity == "meshca-0_00000001"
    sole.stop()
    assert not sole.is_leader and calls == ["started", "stopped"]


class MemoryLease:
    """A lease object in memory with the API server's optimistic concurrency."""

    where = "Lease memory/lead"

    def __init__(self) -> None:
        self.current: VersionedLease | None = None
        self.version = 0

    def read(self) -> VersionedLease | None:
        return self.current

    def create(self, record: LeaseRecord) -> VersionedLease | None:
        return None if self.current is not None else self._put(record)

    def update(self, record: LeaseRecord, resource_version: str) -> VersionedLease | None:
        if self.current is None or self.current.resource_version != resource_version:
            return None
        return self._put(record)

    def _put(self, record: LeaseRecord) -> VersionedLease:
        self.version += 1
        self.current = VersionedLease(record=record, resource_version=str(self.version))
        return self.current


class SimulatedNetwork:
    """One replica's way to the lease: each request takes a drawn time on the shared clock and
    may fail before or after the server acted on it."""

    def __init__(
        self, store: MemoryLease, clock: FakeClock, draw: st.DataObject, check: Callable[[], None]
    ) -> None:
        self.store = store
        self.clock = clock
        self.draw = draw
        self.check = check
        self.faults = True
        self.where = store.where

    def read(self) -> VersionedLease | None:
        return self._send(self.store.read)

    def create(self, record: LeaseRecord) -> VersionedLease | None:
        return self._send(lambda: self.store.create(record))

    def update(self, record: LeaseRecord, resource_version: str) -> VersionedLease | None:
        return self._send(lambda: self.store.update(record, resource_version))

    def _send(self, act: Callable[[], VersionedLease | None]) -> VersionedLease | None:
        fate = (
            self.draw.draw(st.sampled_from(["ok"] * 6 + ["lost request", "lost answer"]))
            if self.faults
            else "ok"
        )
        self._travel()
        if fate == "lost request":
            raise UnavailableError("request lost", reason="simulated")
        answer = act()
        self._travel()
        if fate == "lost answer":
            raise UnavailableError("answer lost", reason="simulated")
        return answer

    def _travel(self) -> None:
        if self.faults:
            self.clock.advance_s(self.draw.draw(st.sampled_from([0.0, 0.0, 0.01, 0.5, 3.0])))
            self.check()


@settings(max_examples=150, deadline=None)
@given(draw=st.data(), count=st.integers(2, 3), seed=st.integers(0, 2**32 - 1))
def test_simulated_replicas_never_lead_together_and_one_leads_once_faults_stop(
    draw: st.DataObject, count: int, seed: int
) -> None:
    clock = FakeClock(T0)
    store = MemoryLease()
    jitter = random.Random(seed)
    electors: list[LeaseElector] = []

    def check() -> None:
        leaders = [e.identity for e in electors if e.is_leader]
        assert len(leaders) <= 1, f"{leaders} lead at once, at {clock.monotonic()}"

    networks = [SimulatedNetwork(store, clock, draw, check) for _ in range(count)]
    electors.extend(
        LeaseElector(net, identity=f"meshca-{i}_{i:08x}", clock=clock, random=jitter.random)
        for i, net in enumerate(networks)
    )
    due = [clock.monotonic()] * count

    def run_until(end: float, stalls: bool) -> None:
        while True:
            i = min(range(count), key=lambda k: due[k])
            if due[i] > end:
                return
            clock.advance_s(max(0.0, due[i] - clock.monotonic()))
            check()
            wait_s = electors[i].attempt()
            check()
            stall_s = draw.draw(st.sampled_from([0.0] * 8 + [1.0, 6.0, 12.0, 30.0])) if stalls else 0.0
            due[i] = clock.monotonic() + wait_s + stall_s

    run_until(clock.monotonic() + draw.draw(st.floats(0, 120)), stalls=True)
    for net in networks:
        net.faults = False
    # Without faults a stale record expires within a lease duration of being seen, and every
    # replica reads within 2.2 retry periods: allow for both twice over.
    run_until(clock.monotonic() + 2 * (TIMINGS.lease_duration_s + 2.2 * TIMINGS.retry_period_s), stalls=False)
    assert sum(e.is_leader for e in electors) == 1


# --- Against the real API server (v1.24, etcd on loopback), in real time ---------------------------

SHORT = ElectionTimings(lease_duration_s=3, renew_deadline_s=2.0, retry_period_s=0.5)
HANDOVER_BOUND_S = SHORT.lease_duration_s + 2 * 2.2 * SHORT.retry_period_s + 1.0  # +1 s for the requests


@pytest.fixture(scope="module")
def real_kubeconfig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with real_apiserver(tmp_path_factory.mktemp("kube")) as kubeconfig:
        yield kubeconfig


class Sampler:
    """Samples every elector's is_leader every few milliseconds on a thread; records the most
    that ever led at once."""

    def __init__(self, electors: list[LeaseElector]) -> None:
        self.electors = electors
        self.most_at_once = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.most_at_once = max(self.most_at_once, sum(e.is_leader for e in self.electors))
            self.samples += 1

    def leader(self) -> LeaseElector | None:
        leaders = [e for e in self.electors if e.is_leader]
        return leaders[0] if len(leaders) == 1 else None


class Cuttable:
    """A lock the test can cut off from the API server, as a network partition would."""

    def __init__(self, inner: LeaseLock) -> None:
        self.inner = inner
        self.cut = threading.Event()

    @property
    def where(self) -> str:
        return self.inner.where

    def _check(self) -> None:
        if self.cut.is_set():
            raise UnavailableError("cut off by the test", reason="partitioned")

    def read(self) -> VersionedLease | None:
        self._check()
        return self.inner.read()

    def create(self, record: LeaseRecord) -> VersionedLease | None:
        self._check()
        return self.inner.create(record)

    def update(self, record: LeaseRecord, resource_version: str) -> VersionedLease | None:
        self._check()
        return self.inner.update(record, resource_version)


def _real_pair(kubeconfig: Path, name: str) -> tuple[list[LeaseElector], list[Cuttable]]:
    locks: list[Cuttable] = []
    electors: list[LeaseElector] = []
    for i in range(2):
        api = kube.api_client(kubeconfig, in_cluster=False)  # a client each, as separate replicas
        lock = Cuttable(KubeLease(api, namespace="default", name=name, request_timeout_s=1.0))
        locks.append(lock)
        electors.append(
            LeaseElector(lock, identity=f"meshca-{i}_{i:08x}", timings=SHORT, random=random.random)
        )
    return electors, locks


def _first_leader(sampler: Sampler, timeout_s: float) -> LeaseElector:
    assert _eventually(lambda: sampler.leader() is not None, timeout_s), "no replica leads"
    leader = sampler.leader()
    assert leader is not None
    return leader


def _handover(sampler: Sampler, old: LeaseElector, timeout_s: float) -> tuple[LeaseElector, float]:
    began = time.monotonic()
    assert _eventually(lambda: (sampler.leader() or old) is not old, timeout_s), "nobody took over"
    new = sampler.leader()
    assert new is not None
    return new, time.monotonic() - began


@pytest.mark.slow
def test_real_api_server_a_killed_leader_is_replaced_and_two_never_lead(real_kubeconfig: Path) -> None:
    electors, _ = _real_pair(real_kubeconfig, "killed")
    with Sampler(electors) as sampler:
        for e in electors:
            e.start()
        try:
            leader = _first_leader(sampler, 5.0)
            time.sleep(1.5)  # a few renewals: the other replica keeps waiting
            assert sampler.leader() is leader
            leader.stop(release=False)
            successor, took_s = _handover(sampler, leader, HANDOVER_BOUND_S)
            assert successor is not leader
            print(f"killed leader replaced after {took_s:.2f}s (lease {SHORT.lease_duration_s}s)")
            assert took_s >= SHORT.lease_duration_s - SHORT.retry_period_s  # it waited for the lease to lapse
        finally:
            for e in electors:
                e.stop()
    assert sampler.most_at_once == 1 and sampler.samples > 100


@pytest.mark.slow
def test_real_api_server_a_clean_release_hands_over_at_once(real_kubeconfig: Path) -> None:
    electors, _ = _real_pair(real_kubeconfig, "released")
    with Sampler(electors) as sampler:
        for e in electors:
            e.start()
        try:
            leader = _first_leader(sampler, 5.0)
            leader.stop()
            _, took_s = _handover(sampler, leader, HANDOVER_BOUND_S)
            print(f"released lease taken after {took_s:.2f}s")
            assert took_s < 2.2 * SHORT.retry_period_s + 1.0  # the next try, not the lease's expiry
        finally:
            for e in electors:
                e.stop()
    assert sampler.most_at_once == 1


@pytest.mark.slow
def test_real_api_server_a_cut_off_leader_gives_up_before_another_takes_over(real_kubeconfig: Path) -> None:
    electors, locks = _real_pair(real_kubeconfig, "partitioned")
    with Sampler(electors) as sampler:
        for e in electors:
            e.start()
        try:
            leader = _first_leader(sampler, 5.0)
            locks[electors.index(leader)].cut.set()
            successor, took_s = _handover(sampler, leader, HANDOVER_BOUND_S)
            assert successor is not leader and not leader.is_leader
            print(f"cut-off leader replaced after {took_s:.2f}s")
        finally:
            for e in electors:
                e.stop()
    assert sampler.most_at_once == 1


@pytest.mark.slow
def test_real_api_server_refuses_a_write_on_a_stale_version(real_kubeconfig: Path) -> None:
    api = kube.api_client(real_kubeconfig, in_cluster=False)
    lease = KubeLease(api, namespace="default", name="stale", request_timeout_s=5.0)
    first = lease.create(LeaseRecord(holder="a", lease_duration_s=3, acquire_time=T0, renew_time=T0))
    assert first is not None and lease.create(LeaseRecord(holder="b", lease_duration_s=3)) is None
    second = lease.update(LeaseRecord(holder="b", lease_duration_s=3, renew_time=T0), first.resource_version)
    assert second is not None and second.record.holder == "b"
    assert lease.update(LeaseRecord(holder="c", lease_duration_s=3), first.resource_version) is None
    assert lease.read() == second
