"""The admin Rotation service of a real CA, over its TLS ports: an admin's dry run, order, status,
list and revoke; everyone else, and every bad request, refused with a status code and recorded
in the ledger as a refusal."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from ca._proto import meshca_admin_pb2 as pb
from ca._proto import meshca_admin_pb2_grpc as pb_grpc
from ca.auth.base import AuthenticatorChain, Caller
from ca.issuance.keys import PrivateKey
from ca.issuance.spiffe_id import SpiffeId
from ca.kube import workloads
from ca.ledger.entries import REFUSED
from ca.server.devtoken import DevTokenIssuer
from ca.server.rotation_api import RotationService
from tests.support.ca_server import RunningCa, start_ca
from tests.support.clock import FakeClock
from tests.support.fake_apiserver import FakeKubeApiServer
from tests.support.rotation import MemoryRotationStore, certificate

ADMIN = "spiffe://cluster.local/ns/istio-system/sa/admin"
CART = "spiffe://cluster.local/ns/shop/sa/cart"
HOUR = timedelta(hours=1)
ROTATION = "meshca.admin.v1.Rotation"


@dataclass
class Rig:
    ca: RunningCa
    serials: dict[str, str]
    creds: dict[str, tuple[PrivateKey, bytes]]

    def stub(self, name: str | None = "admin") -> pb_grpc.RotationStub:
        if name is None:  # the token port, no credentials
            return _rotation_stub(self.ca.channel())
        key, chain = self.creds[name]
        channel = self.ca.channel(port=self.ca.server.ports["renew"], client_key=key, client_chain=chain)
        return _rotation_stub(channel)

    def entries(self) -> list[dict[str, Any]]:
        assert self.ca.server.ledger is not None
        return [e.content for e in self.ca.server.ledger.store.entries()]

    def refusals(self) -> list[dict[str, Any]]:
        return [e for e in self.entries() if e["kind"] == REFUSED]


def _rotation_stub(channel: grpc.Channel) -> pb_grpc.RotationStub:
    return pb_grpc.RotationStub(channel)  # type: ignore[no-untyped-call]


def _serial(chain: list[str]) -> str:
    return format(x509.load_pem_x509_certificate(chain[0].encode()).serial_number, "x")


def _issue(ca: RunningCa, rig: Rig, name: str, namespace: str, account: str, *, agent: bool = False) -> None:
    pod = {"pod_name": name, "pod_uid": f"uid-{name}"}
    metadata = [("meshca-agent", "1")] if agent else []
    chain, key = ca.request(token=ca.token(namespace, account, **pod), metadata=metadata)
    rig.serials[name] = _serial(chain)
    rig.creds[name] = (key, "".join(chain[:-1]).encode())


def _wait_for(check: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.02)


def _rig(state: Path, *extra: str) -> Rig:
    # Three hours back, so that what the fake clock issues is valid by the real clock too (TLS).
    ca = start_ca(state, "--admin-identity", ADMIN, *extra, clock=FakeClock(datetime.now(UTC) - 3 * HOUR))
    rig = Rig(ca=ca, serials={}, creds={})
    _issue(ca, rig, "admin", "istio-system", "admin")
    _issue(ca, rig, "cart-1", "shop", "cart", agent=True)
    _issue(ca, rig, "cart-2", "shop", "cart")
    _issue(ca, rig, "checkout-1", "shop", "checkout", agent=True)
    _issue(ca, rig, "cart-c", "shop-canary", "cart", agent=True)
    _wait_for(lambda: sum(e["kind"] == "issued" for e in rig.entries()) == 5, "the issuances recorded")
    return rig


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    made = _rig(tmp_path / "state")
    try:
        yield made
    finally:
        made.ca.stop()


def _error(call: Any, request: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=10)
    return caught.value


def test_a_dry_run_shows_the_blast_radius_and_changes_nothing(rig: Rig) -> None:
    before = len(rig.entries())
    answer = rig.stub().Rotate(
        pb.RotateRequest(selector=pb.Selector(namespace="shop"), dry_run=True), timeout=10
    )
    assert not answer.HasField("order")
    assert sorted(t.pod for t in answer.targets) == ["cart-1", "cart-2", "checkout-1"]  # not shop-canary
    holders = {t.pod: t.holder for t in answer.targets}
    assert holders == {"cart-1": "not_connected", "cart-2": "not_pushable", "checkout-1": "not_connected"}
    assert (answer.matched, answer.connected, answer.not_connected, answer.not_pushable) == (3, 0, 2, 1)
    assert sorted((w.kind, w.name) for w in answer.workloads) == [
        ("Pod", "cart-1"),
        ("Pod", "cart-2"),
        ("Pod", "checkout-1"),
    ]
    assert all("no Kubernetes access" in w.problem for w in answer.workloads)
    assert not answer.warnings
    assert len(rig.entries()) == before  # no record, no order


def test_an_order_its_status_the_list_and_a_revocation(rig: Rig) -> None:
    stub = rig.stub()
    placed = stub.Rotate(
        pb.RotateRequest(
            selector=pb.Selector(namespace="shop", service_account="cart"), reason="key leak", grace="10m"
        ),
        timeout=10,
    )
    order = placed.order
    assert order.id.startswith("ro-") and len(order.id) == 15
    assert (order.ordered_by, order.reason, order.grace_seconds, order.state) == (
        ADMIN,
        "key leak",
        600,
        "pushing",
    )
    assert (order.matched, order.outstanding) == (2, 2)
    assert order.selector.namespace == "shop" and order.selector.service_account == "cart"

    revoked = stub.Revoke(
        pb.RevokeRequest(serials=[rig.serials["cart-2"].upper()], reason="keycompromise", note="on node-a"),
        timeout=10,
    )
    assert [(r.serial, r.spiffe_id, r.reason) for r in revoked.revoked] == [
        (rig.serials["cart-2"], CART, "keyCompromise")
    ]

    status = stub.OrderStatus(pb.OrderStatusRequest(id=order.id), timeout=10)
    assert (status.order.matched, status.order.outstanding, status.order.revoked) == (2, 1, 1)
    states = {t.pod: (t.state, t.holder) for t in status.targets}
    assert states == {"cart-1": ("outstanding", "not_connected"), "cart-2": ("revoked", "not_pushable")}

    listed = stub.ListOrders(pb.ListOrdersRequest(), timeout=10)
    assert [o.id for o in listed.orders] == [order.id]

    kinds = [e["kind"] for e in rig.entries()]
    assert "rotation_order" in kinds and "revoked" in kinds


def _refusal_for(rig: Rig, method: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def recorded() -> bool:
        found[:] = [r for r in rig.refusals() if r["message"].startswith(f"{ROTATION}/{method}: ")]
        return bool(found)

    _wait_for(recorded, f"a refusal of {method} in the ledger")
    return found[-1]


def test_a_caller_that_is_not_an_admin_is_refused_and_recorded(rig: Rig) -> None:
    error = _error(
        rig.stub("cart-1").Rotate, pb.RotateRequest(selector=pb.Selector(all=True), reason="takeover")
    )
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert f"{CART} is not an admin identity" in str(error.details())
    refusal = _refusal_for(rig, "Rotate")
    assert (refusal["reason"], refusal["status_code"], refusal["spiffe_id"]) == (
        "admin_denied",
        "PERMISSION_DENIED",
        CART,
    )
    assert refusal["namespace"] == "shop"
    assert rig.stub().ListOrders(pb.ListOrdersRequest(), timeout=10).orders == []
    assert _error(rig.stub("checkout-1").Revoke, pb.RevokeRequest(serials=["a1"])).code() is (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert _refusal_for(rig, "Revoke")["spiffe_id"] == "spiffe://cluster.local/ns/shop/sa/checkout"


def test_a_call_without_credentials_is_unauthenticated_and_recorded(rig: Rig) -> None:
    error = _error(rig.stub(None).ListOrders, pb.ListOrdersRequest())
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    refusal = _refusal_for(rig, "ListOrders")
    assert refusal["status_code"] == "UNAUTHENTICATED" and refusal["spiffe_id"] is None


BAD_ROTATIONS = [
    (pb.RotateRequest(selector=pb.Selector(), reason="r"), "selector_empty", "no selector given"),
    (
        pb.RotateRequest(selector=pb.Selector(namespace="shop"), reason="r", grace="-5m"),
        "grace_invalid",
        "--grace must not be negative",
    ),
    (pb.RotateRequest(selector=pb.Selector(namespace="shop")), "reason_missing", "an order needs a reason"),
    (
        pb.RotateRequest(selector=pb.Selector(serials=["zz:top"]), reason="r"),
        "serial_invalid",
        "is not a certificate serial number",
    ),
    (
        pb.RotateRequest(selector=pb.Selector(namespace="shopx"), reason="r"),
        "selector_matches_nothing",
        "namespace 'shopx'",
    ),
    (
        pb.RotateRequest(selector=pb.Selector(namespace="shop"), reason="r", restart_workloads=True),
        "restart_unavailable",
        "no Kubernetes access",
    ),
]


@pytest.mark.parametrize(("request_", "reason", "words"), BAD_ROTATIONS)
def test_bad_orders_are_invalid_arguments_and_recorded(
    rig: Rig, request_: pb.RotateRequest, reason: str, words: str
) -> None:
    error = _error(rig.stub().Rotate, request_)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT and words in str(error.details())
    refusal = _refusal_for(rig, "Rotate")
    assert (refusal["reason"], refusal["spiffe_id"]) == (reason, ADMIN)
    assert rig.stub().ListOrders(pb.ListOrdersRequest(), timeout=10).orders == []


def test_unknown_orders_and_serials(rig: Rig) -> None:
    stub = rig.stub()
    missing = _error(stub.OrderStatus, pb.OrderStatusRequest(id="ro-000000000000"))
    assert missing.code() is grpc.StatusCode.NOT_FOUND and "no rotation order" in str(missing.details())
    assert _error(stub.OrderStatus, pb.OrderStatusRequest(id="x")).code() is grpc.StatusCode.INVALID_ARGUMENT
    unknown = _error(stub.Revoke, pb.RevokeRequest(serials=["abcdef"]))
    assert unknown.code() is grpc.StatusCode.INVALID_ARGUMENT and "abcdef" in str(unknown.details())
    assert _refusal_for(rig, "Revoke")["reason"] == "serial_unknown"


def test_the_threaded_server_serves_it_too(tmp_path: Path) -> None:
    rig = _rig(tmp_path / "state", "--grpc-server", "threaded")
    try:
        answer = rig.stub().Rotate(pb.RotateRequest(selector=pb.Selector(all=True), dry_run=True), timeout=10)
        assert answer.matched == 5
        error = _error(rig.stub("cart-1").ListOrders, pb.ListOrdersRequest())
        assert error.code() is grpc.StatusCode.PERMISSION_DENIED
        assert _refusal_for(rig, "ListOrders")["spiffe_id"] == CART
    finally:
        rig.ca.stop()


def test_without_a_ledger_there_is_nothing_to_order(tmp_path: Path) -> None:
    ca = start_ca(tmp_path / "state", "--admin-identity", ADMIN, "--ledger", "off")
    try:
        token = ca.token("istio-system", "admin")
        with pytest.raises(grpc.RpcError) as caught:
            _rotation_stub(ca.channel()).ListOrders(
                pb.ListOrdersRequest(), metadata=[("authorization", f"Bearer {token}")], timeout=10
            )
        assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "--ledger" in str(caught.value.details())
    finally:
        ca.stop()


def test_with_cluster_access_the_ca_restarts_the_owners(tmp_path: Path) -> None:
    with FakeKubeApiServer() as apiserver:
        signer = DevTokenIssuer(
            rsa.generate_private_key(public_exponent=65537, key_size=2048),
            clock=FakeClock(),
            issuer=apiserver.service_account_issuer,
        )
        apiserver.set_service_account_keys(signer.jwks())
        deployment = apiserver.add_workload("deployment", "shop", "cart")
        replica_set = apiserver.add_workload("replicaset", "shop", "cart-5d4f", owner=deployment)
        pod = apiserver.add_pod("shop", "cart-5d4f-aaaaa", owner=replica_set, service_account="cart")
        admin_pod = apiserver.add_pod("istio-system", "admin-0", service_account="admin")
        kubeconfig = apiserver.write_kubeconfig(tmp_path / "kubeconfig")
        ca = start_ca(
            tmp_path / "state",
            "--kubeconfig",
            str(kubeconfig),
            "--admin-identity",
            ADMIN,
            "--ca-store",
            "dir",
        )
        try:

            def token(namespace: str, account: str, pod: dict[str, Any]) -> str:
                meta = pod["metadata"]
                return signer.mint(
                    namespace=namespace, service_account=account, pod_name=meta["name"], pod_uid=meta["uid"]
                )

            ca.request(token=token("shop", "cart", pod))
            chain, key = ca.request(token=token("istio-system", "admin", admin_pod))
            stub = _rotation_stub(
                ca.channel(
                    port=ca.server.ports["renew"], client_key=key, client_chain="".join(chain[:-1]).encode()
                )
            )
            _wait_for(
                lambda: ca.server.ledger is not None and ca.server.ledger.store.count() >= 3, "issuances"
            )
            placed = stub.Rotate(
                pb.RotateRequest(
                    selector=pb.Selector(namespace="shop"), reason="leak", restart_workloads=True
                ),
                timeout=10,
            )
            assert [(w.kind, w.name, list(w.pods), w.restarted) for w in placed.workloads] == [
                ("Deployment", "cart", ["cart-5d4f-aaaaa"], True)
            ]
            stored = apiserver.get_object("deployment", "shop", "cart")
            assert stored is not None
            assert workloads.RESTARTED_AT in stored["spec"]["template"]["metadata"]["annotations"]
        finally:
            ca.stop()


def test_an_order_or_revocation_through_this_ca_is_pushed_at_once() -> None:
    """Without waiting for the change watcher (up to a second on SQLite), this replica reloads
    and pushes as soon as it has written; a dry run changes nothing and pushes nothing."""
    store = MemoryRotationStore()
    clock = FakeClock()
    store.add_issued(certificate("a1", issued=clock.now() - timedelta(minutes=1)))
    pushes: list[str] = []
    service = RotationService(
        authenticators=AuthenticatorChain([]),
        admin_identities=(),
        clock=clock,
        store=store,
        random_bytes=lambda n: b"\x01" * n,
        changed=lambda: pushes.append("changed"),
    )
    admin = Caller(
        spiffe_id=SpiffeId.parse("spiffe://cluster.local/ns/ops/sa/admin"),
        namespace="ops",
        service_account="admin",
        method="test",
    )
    try:
        selector = pb.Selector(namespace="shop")
        service.rotate(pb.RotateRequest(selector=selector, reason="drill", dry_run=True), admin)
        assert pushes == []
        service.rotate(pb.RotateRequest(selector=selector, reason="drill"), admin)
        assert pushes == ["changed"]
        service.revoke(pb.RevokeRequest(serials=["a1"], reason="keyCompromise"), admin)
        assert pushes == ["changed", "changed"]
    finally:
        service.close()
