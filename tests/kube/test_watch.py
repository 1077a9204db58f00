"""The generic list + watch of a custom resource, against the API stand-in."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from ca.errors import UnavailableError
from ca.kube import watch as kube_watch
from ca.kube.watch import CustomResource, CustomResourceWatch, KubeObject, WatchFailure, list_once
from tests.support.clock import FakeClock
from tests.support.fake_apiserver import FakeKubeApiServer

PEER_AUTHENTICATIONS = CustomResource(
    "security.istio.io", "peerauthentications", ("v1", "v1beta1"), kind="PeerAuthentication"
)
V1_ONLY = CustomResource("security.istio.io", "peerauthentications", ("v1",), kind="PeerAuthentication")


def eventually(check: Callable[[], bool], timeout_s: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


class Recorder:
    """What the callbacks saw, with the watch's oldest resume point at each call."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lists: list[tuple[list[str], str | None, int | None]] = []
        self.events: list[tuple[str, str, str, int | None]] = []
        self.failures: list[WatchFailure] = []
        self.none_served = 0
        self.watch: CustomResourceWatch | None = None

    def on_list(self, items: list[KubeObject], list_rv: str | None) -> None:
        names = sorted(obj["metadata"]["name"] for obj in items)
        with self.lock:
            self.lists.append((names, list_rv, self._oldest()))

    def on_event(self, kind: str, obj: KubeObject) -> None:
        metadata = obj.get("metadata") or {}
        with self.lock:
            self.events.append(
                (kind, metadata.get("name", ""), metadata.get("resourceVersion", ""), self._oldest())
            )

    def on_failure(self, failure: WatchFailure) -> None:
        with self.lock:
            self.failures.append(failure)

    def on_none_served(self) -> None:
        self.none_served += 1

    def _oldest(self) -> int | None:
        assert self.watch is not None
        return self.watch.oldest_resource_version

    def causes(self) -> list[str]:
        with self.lock:
            return [f.cause for f in self.failures]


@pytest.fixture
def apiserver() -> Iterator[FakeKubeApiServer]:
    with FakeKubeApiServer() as server:
        yield server


def make_watch(
    apiserver: FakeKubeApiServer, resource: CustomResource, **kw: Any
) -> tuple[CustomResourceWatch, Recorder]:
    seen = Recorder()
    seen.watch = CustomResourceWatch(
        apiserver.api_client(),
        resource,
        on_list=seen.on_list,
        on_event=seen.on_event,
        on_failure=seen.on_failure,
        on_none_served=seen.on_none_served,
        **kw,
    )
    return seen.watch, seen


def test_lists_then_delivers_events_with_the_resume_point_already_advanced(
    apiserver: FakeKubeApiServer,
) -> None:
    apiserver.apply_peer_authentication("shop", "a", {"mtls": {"mode": "STRICT"}})
    watch, seen = make_watch(apiserver, V1_ONLY)
    watch.start(wait_s=5)
    try:
        assert watch.synced
        ((names, list_rv, oldest),) = seen.lists
        assert names == ["a"] and list_rv is not None and oldest == int(list_rv)
        assert apiserver.wait_for_active_watches(1)
        apiserver.apply_peer_authentication("shop", "b", {"mtls": {"mode": "DISABLE"}})
        apiserver.delete_peer_authentication("shop", "a")
        assert eventually(lambda: len(seen.events) == 2)
        (added, deleted) = seen.events
        assert (added[0], added[1], added[3]) == ("ADDED", "b", int(added[2]))
        assert (deleted[0], deleted[1], deleted[3]) == ("DELETED", "a", int(deleted[2]))
        watches = [r for r in apiserver.requests if r.verb == "watch"]
        assert watches[0].query.get("resourceVersion") == list_rv
    finally:
        watch.stop()


def test_an_expired_resume_point_is_reported_and_relisted(apiserver: FakeKubeApiServer) -> None:
    watch, seen = make_watch(apiserver, V1_ONLY)
    watch.start(wait_s=5)
    try:
        assert apiserver.wait_for_active_watches(1)
        apiserver.apply_peer_authentication("shop", "a", {"mtls": {"mode": "STRICT"}})
        assert eventually(lambda: len(seen.events) == 1)
        apiserver.fail_next("peerauthentications", n=1, code=410, verbs=("watch",))
        apiserver.disconnect_watches()
        assert eventually(lambda: len(seen.lists) == 2), (seen.lists, seen.events, seen.failures)
        assert seen.lists[1][0] == ["a"]
        assert "expired" in seen.causes()
        expired = next(f for f in seen.failures if f.cause == "expired")
        assert (expired.version, expired.resume_from) == ("v1", None)
    finally:
        watch.stop()


def test_failed_lists_are_retried_after_each_backoff_step(apiserver: FakeKubeApiServer) -> None:
    apiserver.fail_next("peerauthentications", n=3, code=500, verbs=("list",))
    clock = FakeClock()
    watch, seen = make_watch(apiserver, V1_ONLY, clock=clock, random=lambda: 1.0)  # whole steps
    with ThreadPoolExecutor(1) as pool:
        starting = pool.submit(watch.start, wait_s=5)
        try:
            for failures, wait_s in enumerate((0.2, 0.4, 0.8), start=1):
                assert clock.waits(failures) == [0.2, 0.4, 0.8][:failures]
                clock.advance_s(wait_s / 2)
                assert not watch.synced  # no list before the wait is over
                clock.advance_s(wait_s)
            starting.result(timeout=5)
            assert seen.causes() == ["error"] * 3 and len(seen.lists) == 1
        finally:
            watch.stop()


def test_start_names_the_resource_and_the_rbac_verbs_when_nothing_lists(apiserver: FakeKubeApiServer) -> None:
    apiserver.fail_next("peerauthentications", n=1000, code=403, verbs=("list",))
    watch, seen = make_watch(apiserver, PEER_AUTHENTICATIONS)
    with pytest.raises(UnavailableError) as raised:
        watch.start(wait_s=1)
    message = str(raised.value)
    assert message.startswith("could not list PeerAuthentication objects from the Kubernetes API within 1s (")
    assert "HTTP 403" in message
    assert message.endswith("(list and watch on peerauthentications.security.istio.io)")
    assert seen.lists == [] and set(seen.causes()) == {"error"}
    assert {f.version for f in seen.failures} == {"v1", "v1beta1"}


def test_no_version_served_syncs_empty_and_says_so_once(apiserver: FakeKubeApiServer) -> None:
    apiserver.unserved_versions.update({"security.istio.io/v1", "security.istio.io/v1beta1"})
    watch, seen = make_watch(apiserver, PEER_AUTHENTICATIONS)
    watch.start(wait_s=5)
    try:
        assert watch.synced and seen.lists == [] and seen.none_served == 1
        assert watch.oldest_resource_version is None
    finally:
        watch.stop()
    assert list_once(apiserver.api_client(), PEER_AUTHENTICATIONS) is None


def test_list_once_reads_every_page_of_the_first_served_version(
    apiserver: FakeKubeApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kube_watch, "PAGE_SIZE", 2)
    apiserver.unserved_versions.add("security.istio.io/v1")
    for name in ("a", "b", "c"):
        apiserver.apply_peer_authentication("shop", name, {"mtls": {"mode": "STRICT"}})
    items = list_once(apiserver.api_client(), PEER_AUTHENTICATIONS)
    assert items is not None
    assert sorted(obj["metadata"]["name"] for obj in items) == ["a", "b", "c"]
    assert {obj["apiVersion"] for obj in items} == {"security.istio.io/v1beta1"}
    listed = [r.path for r in apiserver.requests if r.verb == "list"]
    assert listed == ["/apis/security.istio.io/v1beta1/peerauthentications"] * 2  # two pages


def test_list_once_names_each_version_that_failed(apiserver: FakeKubeApiServer) -> None:
    apiserver.fail_next("peerauthentications", n=2, code=403, verbs=("list",))
    with pytest.raises(UnavailableError) as raised:
        list_once(apiserver.api_client(), PEER_AUTHENTICATIONS)
    message = str(raised.value)
    assert message.startswith(
        "cannot list PeerAuthentication objects (security.istio.io/v1: HTTP 403 Forbidden; "
        "security.istio.io/v1beta1: HTTP 403 Forbidden); "
    )
    assert message.endswith("check RBAC for list on peerauthentications.security.istio.io")
