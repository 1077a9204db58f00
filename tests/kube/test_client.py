"""meshca against the in-process Kubernetes API stand-in, through the official client."""

from __future__ import annotations

import base64
import functools
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from ca.cli.main import main
from ca.errors import AuthenticationError, CaMaterialError
from ca.issuance.keys import KeyAlgorithm
from ca.issuance.selfsigned import RootFactory
from ca.kube import client as kube
from ca.ledger.ledger import ledger_key_from_pem, new_ledger_key_pem
from ca.ledger.store import LedgerStore
from ca.ledger.verify import verify_ledger
from ca.server.devtoken import DevTokenIssuer
from tests.support.ca_server import RunningCa, start_ca
from tests.support.clock import FakeClock
from tests.support.fake_apiserver import FakeKubeApiServer
from tests.support.validate import assert_valid_svid

CART = "spiffe://cluster.local/ns/shop/sa/cart"


@pytest.fixture
def apiserver() -> Iterator[FakeKubeApiServer]:
    with FakeKubeApiServer() as server:
        yield server


@pytest.fixture
def signer(apiserver: FakeKubeApiServer) -> DevTokenIssuer:
    """Signs tokens as the API server would; its public keys are served at /openid/v1/jwks."""
    issuer = DevTokenIssuer(
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        clock=FakeClock(),
        issuer=apiserver.service_account_issuer,
    )
    apiserver.set_service_account_keys(issuer.jwks())
    return issuer


def _start(tmp_path: Path, apiserver: FakeKubeApiServer, *extra: str) -> RunningCa:
    tmp_path.mkdir(parents=True, exist_ok=True)
    kubeconfig = apiserver.write_kubeconfig(tmp_path / "kubeconfig")
    return start_ca(tmp_path / "state", "--kubeconfig", str(kubeconfig), *extra)


def _eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return False


def _refused(ca: RunningCa, token: str) -> grpc.RpcError | None:
    try:
        ca.request(token=token)
    except grpc.RpcError as err:
        return err
    return None


def test_local_jwt_validation_with_keys_and_issuer_from_the_api_server(
    tmp_path: Path, apiserver: FakeKubeApiServer, signer: DevTokenIssuer
) -> None:
    pod = apiserver.add_pod("shop", "cart-1", service_account="cart")
    ca = _start(tmp_path, apiserver)
    try:
        token = signer.mint(
            namespace="shop", service_account="cart", pod_name="cart-1", pod_uid=pod["metadata"]["uid"]
        )
        chain, key = ca.request(token=token)
        assert_valid_svid(chain, key, CART, ca.clock.now())
        assert apiserver.tokenreview_count == 0
    finally:
        ca.stop()


def test_token_of_a_deleted_pod_is_refused_even_when_cached(
    tmp_path: Path, apiserver: FakeKubeApiServer, signer: DevTokenIssuer
) -> None:
    pod = apiserver.add_pod("shop", "cart-1", service_account="cart")
    ca = _start(tmp_path, apiserver)
    try:
        token = signer.mint(
            namespace="shop", service_account="cart", pod_name="cart-1", pod_uid=pod["metadata"]["uid"]
        )
        ca.request(token=token)
        apiserver.delete_pod("shop", "cart-1")
        assert _eventually(lambda: _refused(ca, token) is not None)
        err = _refused(ca, token)
        assert err is not None and err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "no longer exists" in err.details()
        apiserver.add_pod("shop", "cart-1", service_account="cart")

        def refused_by_the_pod_cache() -> bool:
            """A pod of that name again, with a new uid: refused, and once the CA's pod cache has
            seen it, without a read of the pod."""
            reads = apiserver.request_count("pods", "get")
            refused = _refused(ca, token)
            assert refused is not None and "no longer exists" in (refused.details() or "")
            return apiserver.request_count("pods", "get") == reads

        assert _eventually(refused_by_the_pod_cache)
    finally:
        ca.stop()


def test_pod_created_after_the_last_watch_event_is_confirmed_by_a_read(
    tmp_path: Path, apiserver: FakeKubeApiServer
) -> None:
    cache = kube.PodCache(apiserver.api_client())
    cache.start()
    try:
        apiserver.compact_history()
        pod = apiserver.add_pod("shop", "fresh", service_account="cart")
        cache.check_bound_pod("shop", "fresh", pod["metadata"]["uid"])
        with pytest.raises(AuthenticationError) as caught:
            cache.check_bound_pod("shop", "never-existed", "uid-1")
        assert caught.value.reason == "token_pod_gone"
    finally:
        cache.stop()


@pytest.mark.parametrize("disruption", ["disconnect", "expire"])
def test_pod_cache_recovers_from_watch_disconnects_and_expired_resource_versions(
    apiserver: FakeKubeApiServer, disruption: str
) -> None:
    first = apiserver.add_pod("shop", "a")
    cache = kube.PodCache(apiserver.api_client(), watch_timeout_s=30)
    cache.start()
    try:
        assert cache.synced
        assert apiserver.wait_for_active_watches(1)
        watches_before = apiserver.watch_count
        if disruption == "disconnect":
            apiserver.disconnect_watches()
        else:
            apiserver.compact_history()
            apiserver.disconnect_watches(graceful=True)
        second = apiserver.add_pod("shop", "b")
        apiserver.delete_pod("shop", "a")
        assert _eventually(lambda: apiserver.watch_count > watches_before)

        def known_from_the_watch(name: str, uid: str) -> bool:
            reads_before = apiserver.request_count("pods", "get")
            try:
                cache.check_bound_pod("shop", name, uid)
            except AuthenticationError:
                return False
            return apiserver.request_count("pods", "get") == reads_before

        def refused(name: str, uid: str) -> bool:
            try:
                cache.check_bound_pod("shop", name, uid)
            except AuthenticationError:
                return True
            return False

        assert _eventually(lambda: known_from_the_watch("b", second["metadata"]["uid"]))
        # The deletion of "a" may arrive on the resumed watch a moment after "b" was added.
        assert _eventually(lambda: refused("a", first["metadata"]["uid"]))
    finally:
        cache.stop()


def test_tokenreview_mode_with_result_cache(tmp_path: Path, apiserver: FakeKubeApiServer) -> None:
    pod = apiserver.add_pod("shop", "cart-1", service_account="cart")
    apiserver.register_token(
        "opaque-token-1", "shop", "cart", "sa-uid-1", pod_name="cart-1", pod_uid=pod["metadata"]["uid"]
    )
    ca = _start(tmp_path, apiserver, "--auth", "tokenreview")
    try:
        chain, key = ca.request(token="opaque-token-1")
        assert_valid_svid(chain, key, CART, ca.clock.now())
        ca.request(token="opaque-token-1")
        assert apiserver.tokenreview_count == 1
        err = _refused(ca, "unknown-token")
        assert err is not None and err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "TokenReview refused" in err.details()
    finally:
        ca.stop()


def test_tokenreview_audience_mismatch_and_api_outage(tmp_path: Path, apiserver: FakeKubeApiServer) -> None:
    apiserver.register_token("vault-token", "shop", "cart", "sa-uid-1", audiences=("vault",))
    apiserver.register_token("good-token", "shop", "cart", "sa-uid-1")
    ca = _start(tmp_path, apiserver, "--auth", "tokenreview")
    try:
        err = _refused(ca, "vault-token")
        assert err is not None and err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "audiences" in err.details()
        apiserver.fail_next_tokenreviews(1, code=500)
        err = _refused(ca, "good-token")
        assert err is not None and err.code() == grpc.StatusCode.UNAVAILABLE
        assert "retried" in err.details()
        ca.request(token="good-token")
    finally:
        ca.stop()


def test_self_signed_root_lives_in_a_secret_and_survives_restarts(
    tmp_path: Path, apiserver: FakeKubeApiServer, signer: DevTokenIssuer
) -> None:
    first = _start(tmp_path / "one", apiserver)
    try:
        root = first.bundle
        secret = apiserver.get_object("Secret", "istio-system", "istio-ca-secret")
        assert secret is not None
        # The keyring: slot 1's root (which signs its signing CA) is the whole bundle.
        assert base64.b64decode(secret["data"]["slot-1.root-cert.pem"]) == root
        assert "slot-1.ca-key.pem" in secret["data"] and "slots.json" in secret["data"]
    finally:
        first.stop()
    second = _start(tmp_path / "two", apiserver)
    try:
        assert second.bundle == root
        chain, key = second.request(token=signer.mint(namespace="shop", service_account="cart"))
        assert_valid_svid(chain, key, CART, second.clock.now())
    finally:
        second.stop()


def test_replicas_starting_together_agree_on_one_root(apiserver: FakeKubeApiServer) -> None:
    factory = RootFactory(trust_domain="cluster.local", key_algorithm=KeyAlgorithm.EC_P256, clock=FakeClock())

    def start_replica(_: int) -> tuple[x509.Certificate, bool]:
        authority, created = kube.load_or_create_root_secret(
            apiserver.api_client(), namespace="istio-system", name="istio-ca-secret", factory=factory
        )
        return authority.signing_cert, created

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(start_replica, range(6)))
    assert len({cert for cert, _ in results}) == 1
    assert sum(created for _, created in results) == 1


def test_replicas_share_one_ledger_key_through_a_secret(
    tmp_path: Path, apiserver: FakeKubeApiServer, signer: DevTokenIssuer
) -> None:
    """In a cluster every CA replica signs ledger checkpoints with the key in one Secret, so a
    ledger they share verifies with it; no key file is left in the state directories."""
    with ThreadPoolExecutor(max_workers=6) as pool:
        pems = list(
            pool.map(
                lambda _: kube.load_or_create_ledger_key_secret(
                    apiserver.api_client(), namespace="istio-system", make=new_ledger_key_pem
                ),
                range(6),
            )
        )
    assert len(set(pems)) == 1
    ledger_url = f"sqlite:///{tmp_path / 'shared-ledger.db'}"
    for name in ("one", "two"):  # each signs its own final checkpoint on stopping
        ca = _start(tmp_path / name, apiserver, "--ledger", ledger_url)
        try:
            ca.request(token=signer.mint(namespace="shop", service_account="cart"))
        finally:
            ca.stop()
    secret = apiserver.get_object("Secret", "istio-system", kube.LEDGER_KEY_SECRET)
    assert secret is not None and base64.b64decode(secret["data"][kube.LEDGER_KEY_KEY]) == pems[0]
    assert not any((tmp_path / name / "state" / "ledger-key.pem").exists() for name in ("one", "two"))
    # `meshca audit verify --kubeconfig` finds the key in the Secret when no file is given.
    kubeconfig = tmp_path / "one" / "kubeconfig"
    code = main(
        [
            "audit",
            "verify",
            "--ledger",
            ledger_url,
            "--state-dir",
            str(tmp_path / "one" / "state"),
            "--kubeconfig",
            str(kubeconfig),
        ]
    )
    assert code == 0
    public = ledger_key_from_pem(pems[0], "secret").public_key()
    store = LedgerStore(ledger_url)
    try:
        report = verify_ledger(store, public)
        assert report.ok and report.checkpoints_checked >= 2, report.summary()
    finally:
        store.dispose()


def test_a_broken_ca_secret_is_a_clear_error(apiserver: FakeKubeApiServer) -> None:
    apiserver.put_object(
        "Secret",
        "istio-system",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "istio-ca-secret", "namespace": "istio-system"},
            "data": {"ca-cert.pem": base64.b64encode(b"not a cert").decode()},
        },
    )
    factory = RootFactory(trust_domain="cluster.local", key_algorithm=KeyAlgorithm.EC_P256, clock=FakeClock())
    with pytest.raises(CaMaterialError) as caught:
        kube.load_or_create_root_secret(
            apiserver.api_client(), namespace="istio-system", name="istio-ca-secret", factory=factory
        )
    assert "istio-system/istio-ca-secret" in str(caught.value)


def test_secret_reads_that_fail_are_retried_on_a_jittered_backoff(apiserver: FakeKubeApiServer) -> None:
    factory = RootFactory(trust_domain="cluster.local", key_algorithm=KeyAlgorithm.EC_P256, clock=FakeClock())
    waits: list[float] = []
    for random_draw in (1.0, 0.0):  # the whole step, then the least wait
        apiserver.fail_next("secrets", 3, 500, verbs=("get",))
        kube.load_or_create_root_secret(
            apiserver.api_client(),
            namespace="istio-system",
            name="istio-ca-secret",
            factory=factory,
            sleep=waits.append,
            random=functools.partial(float, random_draw),
        )
    assert waits == [0.5, 1.0, 2.0, 0.25, 0.5, 1.0]


def test_pod_cache_retries_a_failed_list_on_a_jittered_backoff(
    apiserver: FakeKubeApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    apiserver.fail_next("pods", 3, 500, verbs=("list",))
    clock = FakeClock()
    cache = kube.PodCache(apiserver.api_client(), random=lambda: 0.0, clock=clock)  # the least waits
    with caplog.at_level("WARNING", logger="ca.kube.client"):
        cache.start(wait_s=0)
        try:
            for failures, wait_s in enumerate((0.25, 0.5, 1.0), start=1):
                assert clock.waits(failures) == [0.25, 0.5, 1.0][:failures]
                clock.advance_s(wait_s / 2)
                assert not cache.synced  # no list before the wait is over
                clock.advance_s(wait_s)
            assert _eventually(lambda: cache.synced)
        finally:
            cache.stop()
    assert [r.getMessage() for r in caplog.records if "pod watch failed" in r.getMessage()] == [
        f"pod watch failed: HTTP 500 Internal Server Error; retrying in {wait}s"
        for wait in ("0.25", "0.50", "1.00")
    ]


def test_stopping_the_pod_cache_is_not_reported_as_a_failed_watch(
    apiserver: FakeKubeApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    with caplog.at_level("WARNING", logger="ca.kube.client"):
        for _ in range(5):  # stop() lands at a different point of the watch each time
            cache = kube.PodCache(apiserver.api_client(), random=lambda: 0.0, clock=clock)
            cache.start(wait_s=0)
            assert _eventually(functools.partial(getattr, cache, "synced"))
            cache.stop()
    assert [r.getMessage() for r in caplog.records if "pod watch failed" in r.getMessage()] == []
