"""The trust bundle ConfigMap in every namespace: created, repaired and brought back, against the
in-process API server and, where it is installed, the real one."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ca.errors import UnavailableError
from ca.kube import client as kube
from ca.kube.bundles import RootCertPublisher
from ca.kube.root_configmap import CONFIGMAP_NAME, ROOT_CERT_KEY
from ca.kube.watch import RETRY_BACKOFF, CustomResource, CustomResourceWatch, core_call
from tests.support.clock import FakeClock
from tests.support.fake_apiserver import FakeKubeApiServer
from tests.support.kube_apiserver import real_apiserver
from tests.support.pki import make_hierarchy, pem

BUNDLE = pem(make_hierarchy().root).decode()
NEXT_BUNDLE = BUNDLE + pem(make_hierarchy().root).decode()
NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease", "shop")
PUBLISHED = ("default", "kube-system", "shop")


def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def bundle_in(core: client.CoreV1Api, namespace: str) -> str | None:
    """The `root-cert.pem` the namespace's ConfigMap holds; None without one."""
    try:
        found = core.read_namespaced_config_map(CONFIGMAP_NAME, namespace)
    except ApiException as err:
        if err.status == 404:
            return None
        raise
    return (found.data or {}).get(ROOT_CERT_KEY)


def labels_in(core: client.CoreV1Api, namespace: str) -> dict[str, str]:
    metadata = core.read_namespaced_config_map(CONFIGMAP_NAME, namespace).metadata
    assert metadata is not None
    return metadata.labels or {}


def data_in(core: client.CoreV1Api, namespace: str) -> dict[str, str]:
    return core.read_namespaced_config_map(CONFIGMAP_NAME, namespace).data or {}


def holds(core: client.CoreV1Api, namespace: str, bundle: str = BUNDLE) -> Callable[[], bool]:
    return lambda: bundle_in(core, namespace) == bundle


def create_namespace(core: client.CoreV1Api, name: str) -> None:
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))


def edit(core: client.CoreV1Api, namespace: str, data: dict[str, str]) -> None:
    found = core.read_namespaced_config_map(CONFIGMAP_NAME, namespace)
    found.data = data
    core.replace_namespaced_config_map(CONFIGMAP_NAME, namespace, found)


@pytest.fixture
def apiserver() -> Iterator[FakeKubeApiServer]:
    with FakeKubeApiServer() as server:
        core = client.CoreV1Api(server.api_client())
        for name in NAMESPACES:
            create_namespace(core, name)
        yield server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 12, 1, tzinfo=UTC))


@pytest.fixture
def core(apiserver: FakeKubeApiServer) -> client.CoreV1Api:
    return client.CoreV1Api(apiserver.api_client())


@pytest.fixture
def publisher(apiserver: FakeKubeApiServer, clock: FakeClock) -> Iterator[RootCertPublisher]:
    started = RootCertPublisher(apiserver.api_client(), BUNDLE, clock=clock, random=lambda: 1.0)
    started.start()
    yield started
    started.stop()


def test_every_namespace_but_the_skipped_ones_gets_the_bundle(
    publisher: RootCertPublisher, core: client.CoreV1Api
) -> None:
    assert eventually(lambda: all(holds(core, ns)() for ns in PUBLISHED))
    assert eventually(lambda: publisher.pending() == 0)
    assert bundle_in(core, "kube-public") is None
    assert bundle_in(core, "kube-node-lease") is None
    assert labels_in(core, "shop") == {"istio.io/config": "true"}
    assert data_in(core, "shop") == {ROOT_CERT_KEY: BUNDLE}
    assert publisher.writes() == {"created": 3, "updated": 0}


def test_a_namespace_created_afterwards_gets_its_configmap(
    publisher: RootCertPublisher, core: client.CoreV1Api
) -> None:
    assert eventually(holds(core, "shop"))
    create_namespace(core, "checkout")
    assert eventually(holds(core, "checkout"))


def test_a_configmap_edited_by_hand_is_repaired_and_keeps_what_was_added(
    publisher: RootCertPublisher, core: client.CoreV1Api
) -> None:
    assert eventually(holds(core, "shop"))
    edit(core, "shop", {ROOT_CERT_KEY: "-----BEGIN CERTIFICATE-----\nforged", "extra.pem": "mine"})
    assert eventually(holds(core, "shop"))
    assert data_in(core, "shop") == {ROOT_CERT_KEY: BUNDLE, "extra.pem": "mine"}
    assert publisher.writes()["updated"] == 1


def test_a_deleted_configmap_comes_back(publisher: RootCertPublisher, core: client.CoreV1Api) -> None:
    assert eventually(holds(core, "shop"))
    core.delete_namespaced_config_map(CONFIGMAP_NAME, "shop")
    assert eventually(holds(core, "shop"))


def test_a_correct_configmap_is_left_alone(apiserver: FakeKubeApiServer, clock: FakeClock) -> None:
    core = client.CoreV1Api(apiserver.api_client())
    for namespace in PUBLISHED:
        core.create_namespaced_config_map(
            namespace,
            client.V1ConfigMap(
                metadata=client.V1ObjectMeta(name=CONFIGMAP_NAME), data={ROOT_CERT_KEY: BUNDLE}
            ),
        )
    writes_before = apiserver.request_count("configmaps", "create") + apiserver.request_count(
        "configmaps", "update"
    )
    publisher = RootCertPublisher(apiserver.api_client(), BUNDLE, clock=clock)
    publisher.start()
    try:
        assert eventually(lambda: publisher.pending() == 0)
        create_namespace(core, "checkout")  # one more event through the worker, to be sure it ran
        assert eventually(holds(core, "checkout"))
    finally:
        publisher.stop()
    assert publisher.writes() == {"created": 1, "updated": 0}
    writes = apiserver.request_count("configmaps", "create") + apiserver.request_count("configmaps", "update")
    assert writes - writes_before == 1


def test_a_new_bundle_is_published_everywhere(publisher: RootCertPublisher, core: client.CoreV1Api) -> None:
    assert eventually(lambda: all(holds(core, ns)() for ns in PUBLISHED))
    publisher.set_bundle(NEXT_BUNDLE)
    assert eventually(lambda: all(holds(core, ns, NEXT_BUNDLE)() for ns in PUBLISHED))
    assert publisher.writes()["updated"] == len(PUBLISHED)


def test_a_terminating_namespace_gets_no_configmap_back(
    publisher: RootCertPublisher, core: client.CoreV1Api
) -> None:
    assert eventually(holds(core, "shop"))
    core.delete_namespace("shop")  # without a namespace controller it stays Terminating
    core.delete_namespaced_config_map(CONFIGMAP_NAME, "shop")
    create_namespace(core, "checkout")  # events after the deletion's have been handled once this holds
    assert eventually(holds(core, "checkout"))
    assert eventually(lambda: publisher.pending() == 0)
    assert bundle_in(core, "shop") is None


def test_a_namespace_terminating_before_its_watch_says_so_is_not_fought_for(
    apiserver: FakeKubeApiServer,
    publisher: RootCertPublisher,
    core: client.CoreV1Api,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert eventually(lambda: all(holds(core, ns)() for ns in PUBLISHED))
    # The Namespace watch drops and cannot resume (it waits on the clock): shop looks Active still.
    watches = apiserver.request_count("namespaces", "watch")
    apiserver.fail_next("namespaces", 1, 500, verbs=("watch",))
    apiserver.disconnect_watches(graceful=True)
    assert eventually(lambda: apiserver.request_count("namespaces", "watch") == watches + 1)
    core.delete_namespace("shop")
    core.delete_namespaced_config_map(CONFIGMAP_NAME, "shop")
    core.delete_namespaced_config_map(CONFIGMAP_NAME, "default")  # queued after shop
    assert eventually(holds(core, "default"))
    # default's new ConfigMap comes back through its watch and queues default once more, to be
    # found in line; the queue then drains. A retry of shop would keep it queued on the clock.
    assert eventually(lambda: publisher.pending() == 0)
    # The API server refused shop's ConfigMap (the namespace is terminating): final, not retried.
    assert apiserver.request_count("configmaps", "create") == len(PUBLISHED) + 2
    assert bundle_in(core, "shop") is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_failed_write_is_retried_on_the_injected_clock(
    apiserver: FakeKubeApiServer, publisher: RootCertPublisher, core: client.CoreV1Api, clock: FakeClock
) -> None:
    assert eventually(holds(core, "shop"))
    apiserver.fail_next("configmaps", 1, 500, verbs=("create",))
    create_namespace(core, "checkout")
    assert eventually(lambda: apiserver.request_count("configmaps", "create") == len(PUBLISHED) + 1)
    # The retry waits on the clock for the backoff's first step (0.5 s with random() = 1).
    assert eventually(lambda: 0.5 in clock.waits(1))
    assert bundle_in(core, "checkout") is None
    assert apiserver.request_count("configmaps", "create") == len(PUBLISHED) + 1
    clock.advance_s(0.5)
    assert eventually(holds(core, "checkout"))


def test_a_configmap_deleted_while_its_watch_was_away_comes_back_after_the_relist(
    apiserver: FakeKubeApiServer, publisher: RootCertPublisher, core: client.CoreV1Api, clock: FakeClock
) -> None:
    assert eventually(lambda: all(holds(core, ns)() for ns in PUBLISHED))
    # The ConfigMap watch drops and its first try to resume fails: it waits on the clock.
    watches = apiserver.request_count("configmaps", "watch")
    apiserver.fail_next("configmaps", 1, 500, verbs=("watch",))
    apiserver.disconnect_watches(graceful=True)
    assert eventually(lambda: apiserver.request_count("configmaps", "watch") == watches + 1)
    # Meanwhile the deletion's event is lost to history (the Namespace watch stays as it was).
    core.delete_namespaced_config_map(CONFIGMAP_NAME, "shop")
    apiserver.compact_history("configmaps")
    clock.advance_s(RETRY_BACKOFF.maximum_s)  # the watch resumes, gets 410 Gone and lists anew
    assert eventually(holds(core, "shop"))


def test_start_fails_clearly_when_namespaces_cannot_be_listed(
    apiserver: FakeKubeApiServer, clock: FakeClock
) -> None:
    apiserver.fail_next("namespaces", 100, 403, verbs=("list",))
    publisher = RootCertPublisher(apiserver.api_client(), BUNDLE, clock=clock)
    with pytest.raises(UnavailableError, match=r"list and watch on namespaces"):
        publisher.start(wait_s=0.3)
    publisher.stop()


def test_a_core_watch_sees_namespaces_come_and_go(apiserver: FakeKubeApiServer) -> None:
    seen: list[tuple[str, str]] = []
    listed: list[list[str]] = []
    api = apiserver.api_client()
    watch = CustomResourceWatch(
        api,
        CustomResource("", "namespaces", ("v1",), kind="Namespace"),
        on_list=lambda items, _rv: listed.append(sorted(obj["metadata"]["name"] for obj in items)),
        on_event=lambda kind, obj: seen.append((kind, obj["metadata"]["name"])),
        call=core_call(client.CoreV1Api(api).list_namespace),
    )
    watch.start()
    try:
        assert listed == [sorted(NAMESPACES)]
        create_namespace(client.CoreV1Api(api), "checkout")
        assert eventually(lambda: ("ADDED", "checkout") in seen)
    finally:
        watch.stop()


def _real_namespace_wait(core: client.CoreV1Api, namespace: str, bundle: str) -> float:
    """Seconds until the namespace's ConfigMap holds `bundle` (fails after 5 s)."""
    started = time.monotonic()
    assert eventually(holds(core, namespace, bundle), timeout_s=5.0), f"{namespace}: no bundle within 5 s"
    return time.monotonic() - started


@pytest.mark.slow
def test_against_the_real_api_server(tmp_path: Path, capsys: Any) -> None:
    with real_apiserver(tmp_path / "kube") as kubeconfig:
        api = kube.api_client(kubeconfig, in_cluster=False)
        core = client.CoreV1Api(api)
        publisher = RootCertPublisher(api, BUNDLE)
        publisher.start()
        try:
            # The API server's own namespaces: default and kube-system get one, the others not.
            assert eventually(holds(core, "default")) and eventually(holds(core, "kube-system"))
            assert bundle_in(core, "kube-public") is None
            assert bundle_in(core, "kube-node-lease") is None

            create_namespace(core, "shop")
            created_s = _real_namespace_wait(core, "shop", BUNDLE)
            assert labels_in(core, "shop") == {"istio.io/config": "true"}

            edit(core, "shop", {ROOT_CERT_KEY: "edited by hand", "extra.pem": "mine"})
            repaired_s = _real_namespace_wait(core, "shop", BUNDLE)
            assert data_in(core, "shop")["extra.pem"] == "mine"

            core.delete_namespaced_config_map(CONFIGMAP_NAME, "shop")
            recreated_s = _real_namespace_wait(core, "shop", BUNDLE)

            publisher.set_bundle(NEXT_BUNDLE)
            for namespace in ("default", "kube-system", "shop"):
                _real_namespace_wait(core, namespace, NEXT_BUNDLE)

            # A namespace being deleted (Terminating for good: no namespace controller runs) refuses
            # new objects; its deleted ConfigMap is not fought for.
            core.delete_namespace("shop")
            core.delete_namespaced_config_map(CONFIGMAP_NAME, "shop")
            create_namespace(core, "checkout")
            _real_namespace_wait(core, "checkout", NEXT_BUNDLE)
            assert eventually(lambda: publisher.pending() == 0)
            assert bundle_in(core, "shop") is None
        finally:
            publisher.stop()
        with capsys.disabled():
            print(
                f"\nreal API server: new namespace {created_s * 1000:.0f} ms, "
                f"edited {repaired_s * 1000:.0f} ms, deleted {recreated_s * 1000:.0f} ms "
                "until the ConfigMap held the bundle"
            )
