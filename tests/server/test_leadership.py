"""Singleton work follows leadership: the trust bundle publisher runs only while this replica
leads, scheduled singleton jobs return at once elsewhere, and a new trust bundle reaches the
publisher and the SPIFFE bundle endpoint. With a fake elector (the real one is tested in
tests/kube/test_leader.py and end to end in tests/server/test_replicas.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from ca.cli.main import build_parser
from ca.errors import UnavailableError
from ca.kube.election import Elector
from ca.server.leadership import Callback, Leadership
from ca.server.settings import serve_config
from ca.server.wiring import CaServer, build_server
from tests.support.ca_server import RunningCa, serve_args, start_ca
from tests.support.clock import FakeClock
from tests.support.pki import make_hierarchy, pem


def eventually(check: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.01)


class FakeElector:
    """Leads when the test says so; calls the callbacks from a thread of its own, as the election
    thread does."""

    def __init__(self, started: Callback, stopped: Callback) -> None:
        self._started, self._stopped = started, stopped
        self._leading = False
        self.running = False
        self.released: bool | None = None

    @property
    def identity(self) -> str:
        return "replica-a_1"

    @property
    def is_leader(self) -> bool:
        return self._leading

    def start(self) -> None:
        self.running = True

    def stop(self, *, release: bool = True) -> None:
        self.running = False
        self.released = release
        if self._leading:
            self.lose()

    def lead(self) -> None:
        self._leading = True
        self._on_thread(self._started)

    def lose(self) -> None:
        self._leading = False
        self._on_thread(self._stopped)

    @staticmethod
    def _on_thread(callback: Callback) -> None:
        thread = threading.Thread(target=callback)
        thread.start()
        thread.join()


class FakePublisher:
    def __init__(self, bundle_pem: str, *, fail: bool = False, gate: threading.Event | None = None) -> None:
        self.bundle_pem = bundle_pem
        self.fail = fail
        self.gate = gate
        self.started = threading.Event()
        self.stopped = threading.Event()

    def start(self, wait_s: float) -> None:
        if self.gate is not None:
            self.gate.wait(5)
        if self.fail:
            raise UnavailableError(
                "the namespace watch did not list in time", reason="kubernetes_unavailable"
            )
        self.started.set()

    def set_bundle(self, bundle_pem: str) -> None:
        self.bundle_pem = bundle_pem

    def stop(self) -> None:
        self.stopped.set()


BUNDLE = pem(make_hierarchy().root).decode()
NEXT_BUNDLE = BUNDLE + pem(make_hierarchy().root).decode()


class Rig:
    def __init__(self, *, failures: int = 0, gate: threading.Event | None = None) -> None:
        self.clock = FakeClock()
        self.publishers: list[FakePublisher] = []
        self.failures = failures
        self.gate = gate
        self.elector: FakeElector | None = None
        self.leadership = Leadership(
            identity="replica-a_1",
            make_elector=self._make_elector,
            bundle_pem=BUNDLE,
            clock=self.clock,
            make_publisher=self._make_publisher,
            retry_s=5.0,
        )

    def _make_elector(self, started: Callback, stopped: Callback) -> Elector:
        self.elector = FakeElector(started, stopped)
        return self.elector

    def _make_publisher(self, bundle_pem: str) -> FakePublisher:
        fail = len(self.publishers) < self.failures
        publisher = FakePublisher(bundle_pem, fail=fail, gate=self.gate)
        self.publishers.append(publisher)
        return publisher

    @property
    def fake(self) -> FakeElector:
        assert self.elector is not None
        return self.elector


@pytest.fixture
def rig() -> Iterator[Rig]:
    made = Rig()
    made.leadership.start()
    yield made
    made.leadership.stop()


def test_the_publisher_runs_only_while_this_replica_leads(rig: Rig) -> None:
    assert rig.fake.running and not rig.leadership.is_leader
    assert rig.publishers == [] and not rig.leadership.publishing

    rig.fake.lead()
    eventually(lambda: rig.leadership.publishing, "the publisher to start")
    first = rig.publishers[0]
    assert first.started.is_set() and first.bundle_pem == BUNDLE

    rig.fake.lose()
    eventually(first.stopped.is_set, "the publisher to stop")
    assert not rig.leadership.publishing

    rig.fake.lead()  # a publisher runs once: leading again starts a new one
    eventually(lambda: len(rig.publishers) == 2 and rig.leadership.publishing, "a second publisher")
    assert rig.publishers[1].started.is_set()


def test_singleton_jobs_run_only_on_the_leader(rig: Rig) -> None:
    runs: list[int] = []
    job = rig.leadership.singleton(lambda: runs.append(1))
    job()
    assert runs == []
    rig.fake.lead()
    job()
    assert runs == [1]
    rig.fake.lose()
    job()
    assert runs == [1]


def test_a_new_trust_bundle_reaches_the_running_publisher_and_the_roots(rig: Rig) -> None:
    rig.fake.lead()
    eventually(lambda: rig.leadership.publishing, "the publisher to start")
    assert len(rig.leadership.roots()) == 1

    rig.leadership.on_trust_bundle(NEXT_BUNDLE)

    assert rig.publishers[0].bundle_pem == NEXT_BUNDLE
    assert len(rig.leadership.roots()) == 2
    assert rig.leadership.trust_bundle_pem == NEXT_BUNDLE


def test_a_follower_keeps_the_new_bundle_for_when_it_leads(rig: Rig) -> None:
    rig.leadership.on_trust_bundle(NEXT_BUNDLE)
    assert rig.publishers == []
    rig.fake.lead()
    eventually(lambda: rig.leadership.publishing, "the publisher to start")
    assert rig.publishers[0].bundle_pem == NEXT_BUNDLE


def test_a_bundle_changed_while_the_publisher_starts_is_published() -> None:
    gate = threading.Event()
    rig = Rig(gate=gate)
    rig.leadership.start()
    try:
        rig.fake.lead()
        eventually(lambda: len(rig.publishers) == 1, "a publisher being started")
        rig.leadership.on_trust_bundle(NEXT_BUNDLE)  # not running yet: it started with BUNDLE
        gate.set()
        eventually(lambda: rig.leadership.publishing, "the publisher to start")
        assert rig.publishers[0].bundle_pem == NEXT_BUNDLE
    finally:
        rig.leadership.stop()


def test_a_publisher_that_cannot_start_is_retried_after_the_retry_period() -> None:
    rig = Rig(failures=1)
    rig.leadership.start()
    try:
        rig.fake.lead()
        eventually(lambda: len(rig.publishers) == 1, "the first try")
        rig.clock.waits(2)  # the worker waits its retry period on the clock
        assert not rig.leadership.publishing
        rig.clock.advance_s(4.9)
        assert len(rig.publishers) == 1
        rig.clock.advance_s(0.2)
        eventually(lambda: rig.leadership.publishing, "the second try")
        assert len(rig.publishers) == 2
    finally:
        rig.leadership.stop()


def test_stop_releases_the_lease_and_stops_the_publisher(rig: Rig) -> None:
    rig.fake.lead()
    eventually(lambda: rig.leadership.publishing, "the publisher to start")
    rig.leadership.stop()
    assert rig.fake.released is True and not rig.fake.running
    assert rig.publishers[0].stopped.is_set()
    assert not rig.leadership.is_leader


# --------------------------------------------------------------------------- in meshca serve


def _gauge(server: CaServer) -> float:
    for line in generate_latest(server.metrics.registry).decode().splitlines():
        if line.startswith("meshca_leader "):
            return float(line.split()[1])
    raise AssertionError("no meshca_leader gauge")


def test_without_a_cluster_the_sole_process_leads(tmp_path: Path) -> None:
    ca = start_ca(tmp_path / "state")
    try:
        assert ca.server.is_leader
        assert _gauge(ca.server) == 1.0
        assert ca.server.replica.endswith(f"_{os.getpid()}")
    finally:
        ca.stop()
    assert not ca.server.is_leader


def _checkpoint_job(ca: RunningCa) -> Callable[[], Any]:
    scheduler = ca.server._scheduler
    assert scheduler is not None
    job = scheduler.get_job("ledger-checkpoint")
    assert job is not None
    func: Callable[[], Any] = job.func
    return func


def _checkpoints(ca: RunningCa) -> int:
    assert ca.server.ledger is not None
    return len(ca.server.ledger.store.checkpoints())


def test_ledger_checkpoints_run_only_on_the_leader(tmp_path: Path) -> None:
    electors: list[FakeElector] = []

    def make(started: Callback, stopped: Callback) -> Elector:
        electors.append(FakeElector(started, stopped))
        return electors[-1]

    clock = FakeClock()
    args = build_parser({}).parse_args(serve_args(tmp_path / "state"))
    server = dataclasses.replace(build_server(serve_config(args, {}), clock=clock), make_elector=make)
    server.start()
    ca = RunningCa(server=server, state_dir=tmp_path / "state", clock=clock)
    try:
        assert not ca.server.is_leader and _gauge(ca.server) == 0.0
        _checkpoint_job(ca)()
        assert _checkpoints(ca) == 0

        electors[-1].lead()
        assert ca.server.is_leader and _gauge(ca.server) == 1.0
        _checkpoint_job(ca)()
        assert _checkpoints(ca) == 1
    finally:
        ca.stop()


def _fetch_bundle(ca: RunningCa) -> dict[str, Any]:
    context = ssl.create_default_context(cadata=ca.bundle.decode())
    url = f"https://localhost:{ca.server.ports['bundle']}/"
    with urllib.request.urlopen(url, context=context, timeout=5) as response:
        body: dict[str, Any] = json.load(response)
    return body


def test_the_bundle_endpoint_serves_the_current_trust_bundle(tmp_path: Path) -> None:
    ca = start_ca(tmp_path / "state", "--bundle-listen", "127.0.0.1:0", "--ports-file", str(tmp_path / "p"))
    try:
        assert json.loads((tmp_path / "p").read_text())["bundle"] == ca.server.ports["bundle"]
        first = _fetch_bundle(ca)
        assert [k["use"] for k in first["keys"]] == ["x509-svid"]

        ca.clock.advance_s(1)  # a new sequence number is the time in seconds
        ca.server.on_trust_bundle(ca.bundle.decode() + pem(make_hierarchy().root).decode())
        second = _fetch_bundle(ca)
        assert len(second["keys"]) == 2
        assert second["spiffe_sequence"] > first["spiffe_sequence"]
    finally:
        ca.stop()
