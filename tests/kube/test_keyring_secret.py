"""The CA keyring in the CA Secret, against the real API server: made on first use, read by a second
replica, a Secret from before slots adopted with its entries kept, compare-and-swap between
replicas, and a transition on one replica adopted by another's refresh."""

from __future__ import annotations

import base64
import itertools
from collections.abc import Iterator
from datetime import timedelta

import pytest
from kubernetes import client

from ca.errors import ConfigError
from ca.issuance.authority import cert_pem
from ca.issuance.keys import KeyAlgorithm, private_key_pem
from ca.issuance.selfsigned import RootFactory
from ca.issuance.slots import Acknowledgement, Keyring, RotationPolicy, SlotState, prepare
from ca.kube import client as kube
from ca.kube.client import CA_CERT_KEY, CA_KEY_KEY, CA_SECRET_TYPE, load_or_create_root_secret
from ca.kube.keyring_secret import KeyringSecret
from ca.server.ca_keys import CaKeys
from tests.support.clock import FakeClock
from tests.support.kube_apiserver import real_apiserver

pytestmark = pytest.mark.slow

SECRET = "istio-ca-secret"
POLICY = RotationPolicy(max_leaf_ttl=timedelta(days=1))
_namespaces = itertools.count(1)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[client.ApiClient]:
    with real_apiserver(tmp_path_factory.mktemp("kube")) as kubeconfig:
        yield kube.api_client(kubeconfig, in_cluster=False)


@pytest.fixture
def namespace(api: client.ApiClient) -> str:
    """A namespace of this test's own."""
    name = f"keyring-{next(_namespaces)}"
    client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


def factory(clock: FakeClock) -> RootFactory:
    return RootFactory(trust_domain="cluster.local", key_algorithm=KeyAlgorithm.EC_P256, clock=clock)


def secret_data(api: client.ApiClient, namespace: str) -> dict[str, bytes]:
    found = client.CoreV1Api(api).read_namespaced_secret(SECRET, namespace)
    return {k: base64.b64decode(v) for k, v in (found.data or {}).items()}


def with_next_slot(keyring: Keyring, clock: FakeClock) -> Keyring:
    slot = factory(clock).new_slot(
        keyring.next_id(), signing_ttl=POLICY.signing_ttl, root_ttl=POLICY.root_ttl, under=keyring.active
    )
    return prepare(keyring, slot)[0]


def test_the_first_replica_creates_the_secret_and_a_second_loads_it(
    api: client.ApiClient, namespace: str
) -> None:
    clock = FakeClock()
    created, what = KeyringSecret(api, namespace=namespace, name=SECRET).load_or_create(
        factory(clock), POLICY, clock
    )
    assert what == "created"
    found = client.CoreV1Api(api).read_namespaced_secret(SECRET, namespace)
    assert found.type == CA_SECRET_TYPE
    assert {"slots.json", "slot-1.ca-key.pem", "slot-1.root-key.pem"} <= set(found.data or {})

    second = KeyringSecret(api, namespace=namespace, name=SECRET)
    loaded, what = second.load_or_create(factory(clock), POLICY, clock)
    assert what == "loaded"
    assert loaded.version == created.version == second.version()
    assert loaded.keyring.active.signing_fingerprint == created.keyring.active.signing_fingerprint
    assert loaded.keyring.active.root_fingerprints == created.keyring.active.root_fingerprints
    assert loaded.keyring.active.root_key is not None


def test_a_secret_from_before_slots_is_adopted_and_keeps_its_entries(
    api: client.ApiClient, namespace: str
) -> None:
    clock = FakeClock()
    legacy = factory(clock).create("old Secret")
    old = {
        CA_CERT_KEY: cert_pem(legacy.signing_cert).encode(),
        CA_KEY_KEY: private_key_pem(legacy.signing_key),
        "operator-note": b"kept",
    }
    client.CoreV1Api(api).create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=SECRET),
            type=CA_SECRET_TYPE,
            data={k: base64.b64encode(v).decode() for k, v in old.items()},
        ),
    )
    store = KeyringSecret(api, namespace=namespace, name=SECRET)
    stored, what = store.load_or_create(factory(clock), POLICY, clock)
    assert what == "adopted"
    assert stored.keyring.active.signs_with_root
    assert stored.keyring.active.signing_fingerprint == legacy.fingerprint
    assert stored.keyring.active.root_key is not None

    # A transition later still keeps the old entries, so an older meshca finds its root.
    store.save(with_next_slot(stored.keyring, clock), stored.version)
    data = secret_data(api, namespace)
    assert {k: data[k] for k in old} == old
    assert "slot-2.ca-cert.pem" in data
    older, created = load_or_create_root_secret(api, namespace=namespace, name=SECRET, factory=factory(clock))
    assert not created and older.fingerprint == legacy.fingerprint
    again, what = KeyringSecret(api, namespace=namespace, name=SECRET).load_or_create(
        factory(clock), POLICY, clock
    )
    assert what == "loaded"
    assert [(s.id, s.state) for s in again.keyring.slots] == [
        ("1", SlotState.ACTIVE),
        ("2", SlotState.PREPARED),
    ]


def test_a_save_over_another_replicas_change_is_refused(api: client.ApiClient, namespace: str) -> None:
    clock = FakeClock()
    mine = KeyringSecret(api, namespace=namespace, name=SECRET)
    theirs = KeyringSecret(api, namespace=namespace, name=SECRET)
    start, _ = mine.load_or_create(factory(clock), POLICY, clock)
    their_change = theirs.save(with_next_slot(start.keyring, clock), start.version)
    with pytest.raises(ConfigError, match="another replica made a transition") as refused:
        mine.save(with_next_slot(start.keyring, clock), start.version)
    assert refused.value.reason == "keyring_changed"
    now = mine.read()
    assert now is not None and now.version == their_change.version


def test_a_save_over_a_secret_stripped_of_its_keyring_is_refused(
    api: client.ApiClient, namespace: str
) -> None:
    clock = FakeClock()
    store = KeyringSecret(api, namespace=namespace, name=SECRET)
    start, _ = store.load_or_create(factory(clock), POLICY, clock)
    core = client.CoreV1Api(api)
    found = core.read_namespaced_secret(SECRET, namespace)
    found.data = {"operator-note": base64.b64encode(b"emptied by hand").decode()}
    core.replace_namespaced_secret(SECRET, namespace, found)
    with pytest.raises(ConfigError) as refused:
        store.save(with_next_slot(start.keyring, clock), start.version)
    assert refused.value.reason == "keyring_changed"
    assert store.read() is None


class Racing(KeyringSecret):
    """A replica that reads the Secret just before another replica writes it."""

    def __init__(self, api: client.ApiClient, namespace: str, before_write: list[KeyringSecret]) -> None:
        super().__init__(api, namespace=namespace, name=SECRET)
        self._before_write = before_write

    def _get(self) -> client.V1Secret | None:
        found = super()._get()
        while self._before_write:
            other = self._before_write.pop()
            stored = other.read()
            assert stored is not None
            other.save(with_next_slot(stored.keyring, FakeClock()), stored.version)
        return found


def test_a_write_racing_another_replicas_is_refused_by_the_resource_version(
    api: client.ApiClient, namespace: str
) -> None:
    clock = FakeClock()
    other = KeyringSecret(api, namespace=namespace, name=SECRET)
    start, _ = other.load_or_create(factory(clock), POLICY, clock)
    racing = Racing(api, namespace, [other])
    with pytest.raises(ConfigError) as refused:
        racing.save(with_next_slot(start.keyring, clock), start.version)
    assert refused.value.reason == "keyring_changed"
    stored = other.read()
    assert stored is not None and stored.keyring.prepared is not None


def test_two_replicas_adopting_one_legacy_secret_at_once_both_start(
    api: client.ApiClient, namespace: str
) -> None:
    clock = FakeClock()
    legacy, _ = load_or_create_root_secret(api, namespace=namespace, name=SECRET, factory=factory(clock))

    class AdoptsFirst(KeyringSecret):
        def __init__(self) -> None:
            super().__init__(api, namespace=namespace, name=SECRET)
            self.raced = False

        def _get(self) -> client.V1Secret | None:
            found = super()._get()
            if not self.raced:
                self.raced = True
                KeyringSecret(api, namespace=namespace, name=SECRET).load_or_create(
                    factory(clock), POLICY, clock
                )
            return found

    stored, what = AdoptsFirst().load_or_create(factory(clock), POLICY, clock)
    assert what == "loaded"
    assert stored.keyring.active.signing_fingerprint == legacy.fingerprint


def test_a_secret_made_empty_beforehand_receives_the_keyring(api: client.ApiClient, namespace: str) -> None:
    clock = FakeClock()
    client.CoreV1Api(api).create_namespaced_secret(
        namespace, client.V1Secret(metadata=client.V1ObjectMeta(name=SECRET), type=CA_SECRET_TYPE)
    )
    stored, what = KeyringSecret(api, namespace=namespace, name=SECRET).load_or_create(
        factory(clock), POLICY, clock
    )
    assert what == "created"
    loaded = KeyringSecret(api, namespace=namespace, name=SECRET).read()
    assert loaded is not None and loaded.version == stored.version


def _keys(api: client.ApiClient, namespace: str, clock: FakeClock) -> tuple[CaKeys, list[Keyring]]:
    store = KeyringSecret(api, namespace=namespace, name=SECRET)
    stored, _ = store.load_or_create(factory(clock), POLICY, clock)
    keys = CaKeys(
        stored=stored,
        store=store,
        factory=factory(clock),
        policy=POLICY,
        clock=clock,
        acks=lambda _root: Acknowledgement(holding=0, connected=0),
    )
    heard: list[Keyring] = []
    keys.listen(heard.append)
    return keys, heard


def test_a_transition_on_one_replica_is_adopted_by_anothers_refresh(
    api: client.ApiClient, namespace: str
) -> None:
    clock = FakeClock()
    leader, _ = _keys(api, namespace, clock)
    follower, heard = _keys(api, namespace, clock)
    assert follower.refresh() is False

    leader.request("prepare", new_root=True, requested_by="operator")
    assert follower.refresh() is True  # one call: no polling needed
    assert [k.prepared.signing_fingerprint for k in heard if k.prepared] == [
        leader.keyring.find("2").signing_fingerprint
    ]
    clock.advance(timedelta(hours=1))
    leader.request("activate", requested_by="operator")
    assert follower.refresh() is True
    assert follower.keyring.active.id == "2" and [s.id for s in follower.keyring.retiring] == ["1"]
    assert len(heard) == 2
    assert follower.refresh() is False
