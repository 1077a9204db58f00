"""A week of a small mesh's ledger, for the compliance document's tests and screenshots.

Written as the CA writes it (Ledger on a fake clock, a real issuer, the rotation store):
five namespaces, nine identities, certificates every day (most for 24h, some for 1h, one
identity on 48h and one on 7d, one on an RSA key), refusals of several reasons from
authenticated and unauthenticated callers, a CA signing-slot rotation on day 3 and 4, a
rotation order for namespace payments on day 5 with one certificate replaced and one still
outstanding, and a revocation. The CA keyring (two slots under one root, the retiring one's
signing CA ending within 30 days of the report) is written to `<state>/ca-slots`, and
PeerAuthentication manifests to a directory: STRICT mesh-wide, PERMISSIVE for namespace
legacy, and port 8080 PERMISSIVE for the pods labelled app=cart in shop.
"""

from __future__ import annotations

import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ca.auth.base import Caller
from ca.issuance.authority import SigningAuthority
from ca.issuance.csr import parse_csr
from ca.issuance.keys import PrivateKey
from ca.issuance.slots import Keyring, Slot, SlotState, Transition, keyring_document
from ca.issuance.spiffe_id import SpiffeId
from ca.ledger.rotation import Order, Selector
from ca.ledger.rotation_store import SqlRotationStore
from tests.support.clock import FakeClock
from tests.support.ledger import LedgerRig, ledger_rig
from tests.support.pki import ec_key, make_csr, make_hierarchy, make_signing_ca, rsa_key

T0 = datetime(2026, 11, 14, 6, 0, tzinfo=UTC)
DAYS = 7
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
ADMIN = "spiffe://cluster.local/ns/istio-system/sa/admin"
ORDER_ID = "ro-5a1e0c7d9b2f"
# (namespace, service account, lifetime, certificates a day)
WORKLOADS: tuple[tuple[str, str, timedelta, int], ...] = (
    ("shop", "cart", DAY, 3),
    ("shop", "checkout", DAY, 2),
    ("shop", "catalog", HOUR, 4),
    ("payments", "gateway", DAY, 2),
    ("payments", "ledger", DAY, 1),
    ("web", "frontend", DAY, 3),
    ("monitoring", "prometheus", 2 * DAY, 1),
    ("legacy", "batch", 7 * DAY, 1),
    ("legacy", "reports", DAY, 1),
)
RSA_IDENTITY = ("legacy", "batch")
REPORT_AT = T0 + 6 * DAY + 20 * HOUR
MAX_TTL = "24h"

POLICIES = {
    "mesh.yaml": """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
""",
    "legacy.yaml": """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: legacy}
spec:
  mtls: {mode: PERMISSIVE}
""",
    "shop-cart.yaml": """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: cart-metrics, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  mtls: {mode: STRICT}
  portLevelMtls:
    8080: {mode: PERMISSIVE}
""",
}


@dataclass(frozen=True)
class ComplianceMesh:
    state: Path
    url: str
    policies: Path
    replaced: str  # the serial the order's holder replaced
    outstanding: str  # the order's target still live and not replaced
    revoked: str


def _caller(namespace: str, account: str, pod: str) -> Caller:
    return Caller(
        spiffe_id=SpiffeId.for_workload("cluster.local", namespace, account),
        namespace=namespace,
        service_account=account,
        method="jwt",
        pod_name=pod,
        pod_uid=str(uuid.uuid4()),
        node_name="node-1",
    )


def _issue(
    rig: LedgerRig,
    namespace: str,
    account: str,
    ttl: timedelta,
    *,
    key: PrivateKey | None = None,
    **linked: str,
) -> str:
    caller = _caller(namespace, account, f"{account}-7d9f-{uuid.uuid4().hex[:5]}")
    csr = parse_csr(make_csr(key or ec_key()), rig.issuer.policy.key_policy)
    issued = rig.issuer.issue(
        spiffe_id=caller.spiffe_id, csr=csr, requested_ttl_seconds=int(ttl.total_seconds())
    )
    recorded = rig.ledger.record_issued(
        issued, caller, client_address="ipv4:10.8.1.20:41234", cluster_id="Kubernetes", **linked
    )
    assert isinstance(recorded, Future)
    return str(recorded.result(timeout=10).content["serial"])


def _refuse(rig: LedgerRig, reason: str, address: str, caller: Caller | None = None) -> None:
    rig.ledger.record_refusal(
        reason=reason,
        status_code="UNAUTHENTICATED" if caller is None else "INVALID_ARGUMENT",
        message=f"refused: {reason}",
        client_address=address,
        caller=caller,
    ).result(timeout=10)


def _slot(rig: LedgerRig, slot: Slot, before: SlotState | None, why: str, *, forced: bool = False) -> None:
    rig.ledger.record_ca_slot(
        Transition.of(slot, before, forced=forced),
        not_after=slot.authority.expiry(),
        replica="meshca-0",
        requested_by="schedule" if not forced else ADMIN,
        why=why,
    ).result(timeout=10)


def _keyring_slots(now: datetime) -> tuple[Slot, Slot]:
    hierarchy = make_hierarchy(now - 300 * DAY)
    root, root_key = hierarchy.root, hierarchy.root_key

    def under(subject: str, issued: datetime, days: int) -> SigningAuthority:
        key, cert = make_signing_ca(root, root_key, subject=subject, now=issued, days=days)
        return SigningAuthority.from_parts(
            signing_cert=cert, signing_key=key, cert_chain=[cert, root], roots=[root], source=subject
        )

    first = Slot(
        id="1",
        state=SlotState.ACTIVE,
        authority=under("meshca signing CA 1", now - 150 * DAY, 170),
        since=now,
    )
    second = Slot(
        id="2", state=SlotState.PREPARED, authority=under("meshca signing CA 2", now, 180), since=now
    )
    return first, second


def _daily_refusals(rig: LedgerRig, day: int) -> None:
    for _ in range(2 + day % 3):
        _refuse(rig, "token_expired", f"ipv4:10.8.3.{7 + day % 2}:{40000 + day}")
    if day in (2, 3):
        for _ in range(6):
            _refuse(rig, "token_invalid", "ipv4:203.0.113.9:51515")
    if day % 2:
        _refuse(
            rig, "ttl_too_long", "ipv4:10.8.1.30:41000", _caller("monitoring", "prometheus", "prometheus-0")
        )
    if day == 4:
        _refuse(rig, "key_type_not_allowed", "ipv4:10.8.1.31:41000", _caller("legacy", "batch", "batch-0"))


def write_mesh(url: str, state: Path, policies: Path) -> ComplianceMesh:
    """The mesh's week in the ledger at `url`, its keyring in `state`, its policies in `policies`."""
    policies.mkdir(parents=True, exist_ok=True)
    for name, text in POLICIES.items():
        (policies / name).write_text(text)
    first, second = _keyring_slots(T0)
    with ledger_rig(url, state, FakeClock(T0)) as rig:
        mesh = _write_week(rig, first, second)
    stored = Keyring(
        (first.moved(SlotState.RETIRING, T0 + 4 * DAY), second.moved(SlotState.ACTIVE, T0 + 4 * DAY))
    )
    keyring_dir = state / "ca-slots"
    keyring_dir.mkdir(parents=True, exist_ok=True)
    for name, data in keyring_document(stored).items():
        (keyring_dir / name).write_bytes(data)
    return ComplianceMesh(state=state, url=url, policies=policies, **mesh)


def _write_week(rig: LedgerRig, first: Slot, second: Slot) -> dict[str, str]:
    clock = rig.clock
    rig.event("created")
    _slot(rig, first, None, "the CA's first signing slot")
    found: dict[str, str] = {}
    for day in range(DAYS):
        start = T0 + day * DAY
        clock.set(start)
        for namespace, account, ttl, per_day in WORKLOADS:
            for n in range(per_day):
                clock.set(start + timedelta(minutes=17 * n + 3))
                key = rsa_key() if (namespace, account) == RSA_IDENTITY else None
                serial = _issue(rig, namespace, account, ttl, key=key)
                found[f"{namespace}/{account}"] = serial
        clock.set(start + 8 * HOUR)
        _daily_refusals(rig, day)
        if day == 3:
            _slot(
                rig,
                second.moved(SlotState.PREPARED, clock.now()),
                None,
                "scheduled: the active signing CA is past two thirds of its life",
            )
        if day == 4:
            clock.set(start + 9 * HOUR)
            _slot(
                rig,
                second.moved(SlotState.ACTIVE, clock.now()),
                SlotState.PREPARED,
                "every agent holds the new root",
            )
            _slot(rig, first.moved(SlotState.RETIRING, clock.now()), SlotState.ACTIVE, "replaced by slot 2")
        if day == DAYS - 1:
            found.update(_order(rig))
    clock.set(REPORT_AT - HOUR)
    rig.checkpoint()
    return {k: found[k] for k in ("replaced", "outstanding", "revoked")}


def _order(rig: LedgerRig) -> dict[str, str]:
    """An order for namespace payments: gateway replaced, ledger still outstanding; and a
    revocation in web."""
    clock = rig.clock
    clock.set(clock.now() + HOUR)
    store = SqlRotationStore(rig.store)
    try:
        order = Order(
            id=ORDER_ID,
            ordered_by=ADMIN,
            time=clock.now(),
            selector=Selector(namespace="payments"),
            reason="gateway node-3 image had a vulnerable OpenSSL",
            grace=3 * DAY,
        )
        targets = store.live_certificates(order.selector, clock.now())
        store.create_order(order, targets)
        by_account = {t.service_account: t.serial for t in targets}
        clock.set(clock.now() + 10 * timedelta(minutes=1))
        old = by_account["gateway"]
        new = _issue(rig, "payments", "gateway", DAY, order_id=ORDER_ID, replaces=old)
        store.mark_replaced(order_id=ORDER_ID, old_serial=old, new_serial=new, at=clock.now())
        clock.set(clock.now() + HOUR)
        revoked = _issue(rig, "web", "frontend", DAY)
        store.revoke([revoked], reason="keyCompromise", at=clock.now(), note="key copied to a laptop")
    finally:
        store.dispose()
    return {"replaced": old, "outstanding": by_account["ledger"], "revoked": revoked}
