"""The rotation store: one contract run against the SQL store on SQLite and on PostgreSQL and
against the in-memory fake other tests use (tests/support/rotation.py), so the fake stays true.
Then what only the SQL store has: records chained in the same transaction as the rows, and two
replicas completing orders at once."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ca.auth.base import Caller
from ca.errors import InvalidRequestError, UnavailableError
from ca.issuance.csr import parse_csr
from ca.issuance.issuer import IssuancePolicy, Issuer
from ca.issuance.keys import KeyAlgorithm
from ca.issuance.selfsigned import RootFactory
from ca.issuance.spiffe_id import SpiffeId
from ca.ledger.entries import (
    CRL_PUBLISHED,
    MESHCA_AGENT,
    REVOKED,
    ROTATION_ORDER,
    issued_content,
)
from ca.ledger.ledger import Ledger, load_or_create_ledger_key
from ca.ledger.rotation import (
    Order,
    OrderCounts,
    OrderState,
    PublishedCrl,
    RotationStore,
    Selector,
    TargetCertificate,
    TargetState,
)
from ca.ledger.rotation_store import GroupCommit, SqlRotationStore
from ca.ledger.store import LedgerStore
from ca.ledger.verify import verify_ledger
from tests.support import ledger as ledger_support
from tests.support.clock import FakeClock
from tests.support.pki import ec_key, make_csr
from tests.support.rotation import MemoryRotationStore, certificate

HOUR = timedelta(hours=1)
T0 = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
ADMIN = "spiffe://cluster.local/ns/istio-system/sa/admin"


@dataclass
class Rig:
    """A store under test and the way to put issued certificates in its ledger."""

    store: RotationStore
    ledger: LedgerStore | None = None  # the SQL store's ledger
    issued: list[TargetCertificate] = field(default_factory=list)

    def issue(self, serial: str, **fields: Any) -> TargetCertificate:
        made = certificate(serial, issued=fields.pop("issued", T0), **fields)
        if self.ledger is None:
            assert isinstance(self.store, MemoryRotationStore)
            self.store.add_issued(made)
        else:
            self.ledger.append([_issued_record(made)])
        self.issued.append(made)
        return made

    def records(self, kind: str) -> list[dict[str, Any]]:
        if self.ledger is None:
            assert isinstance(self.store, MemoryRotationStore)
            return [r for r in self.store.records if r["kind"] == kind]
        return [e.content for e in self.ledger.entries() if e.content["kind"] == kind]


def _issued_record(
    made: TargetCertificate, *, order_id: str | None = None, replaces: str | None = None
) -> dict[str, Any]:
    """`order_id` and `replaces` for a certificate issued to follow an order."""
    return issued_content(
        time=made.issued,
        serial=int(made.serial, 16),
        spiffe_id=made.spiffe_id,
        namespace=made.namespace or "",
        service_account=made.service_account or "",
        service_account_uid=None,
        pod_name=made.pod,
        pod_uid=None,
        node_name=made.node,
        token_id=None,
        auth_method="jwt",
        cluster_id="Kubernetes",
        client_address="ipv4:127.0.0.1:1",
        key_type="EC_P256",
        public_key_sha256="00" * 32,
        certificate_sha256="11" * 32,
        not_before=made.issued - timedelta(minutes=2),
        not_after=made.not_after,
        ca_key_id="k1",
        ca_fingerprint="22" * 32,
        agent=MESHCA_AGENT if made.from_meshca_agent else None,
        order_id=order_id,
        replaces=replaces,
    )


@contextlib.contextmanager
def sql_rig(url: str) -> Iterator[Rig]:
    ledger = LedgerStore(url)
    ledger.migrate()
    store = SqlRotationStore(ledger)
    try:
        yield Rig(store=store, ledger=ledger)
    finally:
        store.dispose()
        ledger.dispose()


@pytest.fixture(params=["memory", *ledger_support.BACKENDS])
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    if request.param == "memory":
        yield Rig(store=MemoryRotationStore())
        return
    with ledger_support.fresh_ledger_url(request.param, tmp_path) as url, sql_rig(url) as made:
        yield made


def _order(order_id: str = "ro-000000000001", **fields: Any) -> Order:
    values: dict[str, Any] = {
        "id": order_id,
        "ordered_by": ADMIN,
        "time": T0 + 10 * timedelta(minutes=1),
        "selector": Selector(namespace="shop"),
        "reason": "key leaked from node-1",
        "grace": timedelta(minutes=5),
        "spread": timedelta(seconds=20),
    }
    values.update(fields)
    return Order(**values)


def _population(rig: Rig) -> None:
    """shop and shop-canary on two nodes; one certificate expired, one from Istio's agent."""
    rig.issue("a1", pod="cart-0", node="node-1")
    rig.issue("a2", pod="cart-1", node="node-2", issued=T0 + timedelta(minutes=5))
    rig.issue("a3", service_account="checkout", pod="checkout-0", node="node-1", from_meshca_agent=False)
    rig.issue("b1", namespace="shop-canary", pod="cart-0", node="node-1")
    rig.issue("c1", pod="cart-2", issued=T0 - 2 * HOUR)  # expired at T0 - 1h


NOW = T0 + 15 * timedelta(minutes=1)


def _serials(found: list[TargetCertificate]) -> list[str]:
    return [c.serial for c in found]


# --------------------------------------------------------------------------- live certificates


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        (Selector(namespace="shop"), ["a1", "a2", "a3"]),
        (Selector(namespace="shop-canary"), ["b1"]),
        (Selector(namespace="sho"), []),
        (Selector(namespace="shop", service_account="cart"), ["a1", "a2"]),
        (Selector(service_account="cart"), ["a1", "a2", "b1"]),
        (Selector(spiffe_id="spiffe://cluster.local/ns/shop/sa/checkout"), ["a3"]),
        (Selector(pod="cart-0"), ["a1", "b1"]),
        (Selector(node="node-1"), ["a1", "a3", "b1"]),
        (Selector(node="node-1", namespace="shop"), ["a1", "a3"]),
        (Selector(serials=("a2", "b1", "c1")), ["a2", "b1"]),
        (Selector(issued_before=T0 + timedelta(minutes=5)), ["a1", "a3", "b1"]),
        (Selector(all=True), ["a1", "a2", "a3", "b1"]),
    ],
)
def test_live_certificates_match_names_exactly_and_leave_out_expired_ones(
    rig: Rig, selector: Selector, expected: list[str]
) -> None:
    _population(rig)
    assert _serials(rig.store.live_certificates(selector, NOW)) == expected


def test_a_live_certificate_carries_its_node_and_whether_an_agent_holds_it(rig: Rig) -> None:
    _population(rig)
    found = {c.serial: c for c in rig.store.live_certificates(Selector(all=True), NOW)}
    assert found["a1"] == rig.issued[0]
    assert found["a1"].node == "node-1" and found["a1"].from_meshca_agent
    assert not found["a3"].from_meshca_agent


def test_revoked_certificates_are_not_live(rig: Rig) -> None:
    _population(rig)
    rig.store.revoke(["a1"], reason="keyCompromise", at=NOW)
    assert _serials(rig.store.live_certificates(Selector(namespace="shop"), NOW)) == ["a2", "a3"]


NAMES = st.sampled_from([None, "shop", "shop-canary", "cart", "checkout", "cart-0", "node-1", "x"])


@st.composite
def selectors(draw: st.DrawFn) -> Selector:
    return Selector(
        namespace=draw(NAMES),
        service_account=draw(NAMES),
        pod=draw(NAMES),
        node=draw(NAMES),
        spiffe_id=draw(st.sampled_from([None, "spiffe://cluster.local/ns/shop/sa/cart"])),
        serials=tuple(draw(st.lists(st.sampled_from(["a1", "a2", "a3", "b1", "c1", "ff"]), max_size=3))),
        issued_before=draw(st.sampled_from([None, T0, T0 + timedelta(minutes=5), T0 + HOUR])),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(selector=selectors())
def test_what_sql_selects_is_what_the_selector_matches(rig: Rig, selector: Selector) -> None:
    if not rig.issued:
        _population(rig)
    expected = [c.serial for c in rig.issued if c.not_after > NOW and selector.matches(c)]
    assert _serials(rig.store.live_certificates(selector, NOW)) == expected


def test_names_never_seen_are_warned_about(rig: Rig) -> None:
    _population(rig)
    assert rig.store.known_names(Selector(namespace="shop", node="node-2", serials=("a1",))) == []
    warnings = rig.store.known_names(
        Selector(namespace="shpo", service_account="cart", pod="nope", node="node-9", serials=("a1", "dead"))
    )
    assert len(warnings) == 4
    assert "namespace 'shpo'" in warnings[0]
    assert "pod 'nope'" in warnings[1]
    assert "node 'node-9'" in warnings[2]
    assert "serial dead" in warnings[3]


# --------------------------------------------------------------------------- orders


def _placed(rig: Rig, **fields: Any) -> Order:
    _population(rig)
    order = _order(**fields)
    rig.store.create_order(order, rig.store.live_certificates(order.selector, order.time))
    return order


def test_an_order_is_kept_with_its_targets_and_recorded(rig: Rig) -> None:
    order = _placed(rig)
    stored = rig.store.order(order.id)
    assert stored is not None
    assert stored.matched == 3 and stored.state is OrderState.PUSHING
    assert stored == _order(matched=3)
    targets = rig.store.targets(order.id, NOW)
    assert [(t.certificate.serial, t.index, t.state) for t in targets] == [
        ("a1", 0, TargetState.OUTSTANDING),
        ("a2", 1, TargetState.OUTSTANDING),
        ("a3", 2, TargetState.OUTSTANDING),
    ]
    assert targets[1].certificate == rig.issued[1]
    one = rig.store.target(order.id, "a3", NOW)
    assert one is not None and one.index == 2
    assert rig.store.target(order.id, "b1", NOW) is None
    assert rig.store.counts(order.id, NOW) == OrderCounts(matched=3, outstanding=3)
    (record,) = rig.records(ROTATION_ORDER)
    assert record == {
        "kind": "rotation_order",
        "time": "2026-12-07T08:10:00.000000Z",
        "order_id": order.id,
        "ordered_by": ADMIN,
        "selector": "namespace=shop",
        "order_reason": "key leaked from node-1",
        "grace_seconds": 300,
        "spread_seconds": 20,
        "grace_ends": "2026-12-07T08:15:00.000000Z",
        "matched": 3,
    }


def test_an_order_id_is_used_once(rig: Rig) -> None:
    order = _placed(rig)
    with pytest.raises(InvalidRequestError, match="exists already"):
        rig.store.create_order(order, [])
    assert len(rig.records(ROTATION_ORDER)) == 1


def test_orders_are_listed_newest_first(rig: Rig) -> None:
    _population(rig)
    for minute in (3, 1, 2):
        rig.store.create_order(_order(f"ro-00000000000{minute}", time=T0 + timedelta(minutes=minute)), [])
    assert [o.id for o in rig.store.orders()] == ["ro-000000000003", "ro-000000000002", "ro-000000000001"]
    assert [o.id for o in rig.store.orders(limit=1)] == ["ro-000000000003"]
    assert rig.store.orders(state=OrderState.COMPLETED) == []
    assert rig.store.order("ro-0000000000ff") is None


def test_a_selector_round_trips_through_the_store(rig: Rig) -> None:
    selector = Selector(
        spiffe_id="spiffe://cluster.local/ns/shop/sa/cart",
        node="node-1",
        serials=("a1", "a2"),
        issued_before=T0 + timedelta(minutes=1, microseconds=5),
    )
    rig.store.create_order(_order(selector=selector), [])
    stored = rig.store.order("ro-000000000001")
    assert stored is not None and stored.selector == selector


def test_a_replacement_counts_once_and_ends_the_push(rig: Rig) -> None:
    order = _placed(rig)
    assert [o.id for o in rig.store.outstanding_for("a1")] == [order.id]
    assert rig.store.outstanding_for("b1") == []
    assert rig.store.mark_replaced(order_id=order.id, old_serial="a1", new_serial="d1", at=NOW)
    assert not rig.store.mark_replaced(order_id=order.id, old_serial="a1", new_serial="d2", at=NOW)
    assert not rig.store.mark_replaced(order_id=order.id, old_serial="b1", new_serial="d3", at=NOW)
    assert rig.store.outstanding_for("a1") == []
    target = rig.store.target(order.id, "a1", NOW)
    assert target is not None
    assert (target.state, target.replaced_by, target.replaced_at) == (TargetState.REPLACED, "d1", NOW)
    assert rig.store.counts(order.id, NOW) == OrderCounts(matched=3, replaced=1, outstanding=2)


def test_a_target_past_its_expiry_counts_as_expired(rig: Rig) -> None:
    order = _placed(rig)
    later = T0 + HOUR + timedelta(minutes=1)  # a1 and a3 expired, a2 (issued at +5m) not yet
    assert rig.store.counts(order.id, later) == OrderCounts(matched=3, outstanding=1, expired=2)
    assert [t.state for t in rig.store.targets(order.id, later)] == [
        TargetState.EXPIRED,
        TargetState.OUTSTANDING,
        TargetState.EXPIRED,
    ]


# --------------------------------------------------------------------------- revocations


def test_revoking_records_each_certificate_once(rig: Rig) -> None:
    _population(rig)
    made = rig.store.revoke(["A1", "b1", "a1"], reason="keycompromise", at=NOW, note="laptop stolen")
    assert [(r.serial, r.reason, r.revoked_at, r.note, r.order_id) for r in made] == [
        ("a1", "keyCompromise", NOW, "laptop stolen", None),
        ("b1", "keyCompromise", NOW, "laptop stolen", None),
    ]
    assert made[0].not_after == T0 + HOUR
    assert made[0].spiffe_id == "spiffe://cluster.local/ns/shop/sa/cart"
    again = rig.store.revoke(["b1", "a2"], reason="superseded", at=NOW + HOUR / 2)
    assert again[0] == made[1]  # as it was
    assert (again[1].serial, again[1].reason) == ("a2", "superseded")
    assert rig.store.is_revoked("a1") and not rig.store.is_revoked("a3")
    records = rig.records(REVOKED)
    assert [r["serial"] for r in records] == ["a1", "b1", "a2"]
    assert records[0] == {
        "kind": "revoked",
        "time": "2026-12-07T08:15:00.000000Z",
        "serial": "a1",
        "spiffe_id": "spiffe://cluster.local/ns/shop/sa/cart",
        "namespace": "shop",
        "service_account": "cart",
        "pod_name": "cart-0",
        "reason": "keyCompromise",
        "not_after": "2026-12-07T09:00:00.000000Z",
        "note": "laptop stolen",
    }


def test_an_unknown_serial_revokes_nothing(rig: Rig) -> None:
    _population(rig)
    marker = rig.store.change_marker()
    with pytest.raises(InvalidRequestError, match="no issued certificate with serial dead, beef"):
        rig.store.revoke(["a1", "dead", "beef"], reason="", at=NOW)
    assert not rig.store.is_revoked("a1")
    assert rig.records(REVOKED) == []
    assert rig.store.change_marker() == marker
    with pytest.raises(InvalidRequestError, match="unknown revocation reason"):
        rig.store.revoke(["a1"], reason="because", at=NOW)
    with pytest.raises(InvalidRequestError, match="not a certificate serial"):
        rig.store.revoke(["xyz"], reason="", at=NOW)


def test_the_crl_lists_revocations_until_their_certificates_expire(rig: Rig) -> None:
    _population(rig)
    rig.store.revoke(["a2"], reason="", at=NOW)
    rig.store.revoke(["a1"], reason="", at=NOW + timedelta(seconds=1))
    rig.store.revoke(["c1"], reason="", at=NOW)  # long expired: never listed
    assert [(r.serial, r.reason) for r in rig.store.revocations(NOW)] == [
        ("a2", "unspecified"),
        ("a1", "unspecified"),
    ]
    assert [r.serial for r in rig.store.revocations(T0 + HOUR)] == ["a2"]  # a1 expired at T0 + 1h


def test_revoking_a_target_marks_it_revoked_in_its_order(rig: Rig) -> None:
    order = _placed(rig)
    rig.store.revoke(["a2"], reason="keyCompromise", at=NOW)
    target = rig.store.target(order.id, "a2", NOW)
    assert target is not None and (target.state, target.revoked_at) == (TargetState.REVOKED, NOW)
    assert rig.store.outstanding_for("a2") == []
    assert not rig.store.mark_replaced(order_id=order.id, old_serial="a2", new_serial="d1", at=NOW)


def test_orders_complete_when_their_grace_ends(rig: Rig) -> None:
    order = _placed(rig)  # grace ends at T0 + 15m
    rig.store.mark_replaced(order_id=order.id, old_serial="a1", new_serial="d1", at=NOW)
    rig.store.revoke(["a3"], reason="keyCompromise", at=order.time)
    assert rig.store.complete_due_orders(order.grace_ends - timedelta(microseconds=1)) == []
    ((completed, made),) = rig.store.complete_due_orders(order.grace_ends)
    assert completed.id == order.id and completed.state is OrderState.COMPLETED
    assert [(r.serial, r.reason, r.order_id, r.revoked_at) for r in made] == [
        ("a1", "superseded", order.id, order.grace_ends),  # replaced: the old certificate goes too
        ("a2", "superseded", order.id, order.grace_ends),
    ]
    assert rig.store.complete_due_orders(order.grace_ends + HOUR) == []
    stored = rig.store.order(order.id)
    assert stored is not None and stored.state is OrderState.COMPLETED
    assert rig.store.orders(state=OrderState.PUSHING) == []
    assert rig.store.counts(order.id, order.grace_ends) == OrderCounts(matched=3, replaced=1, revoked=3)
    assert rig.store.outstanding_for("a2") == []
    assert [r["serial"] for r in rig.records(REVOKED)] == ["a3", "a1", "a2"]
    assert {r["order_id"] for r in rig.records(REVOKED)[1:]} == {order.id}


def test_a_completed_order_revokes_the_old_certificates_its_holders_replaced(rig: Rig) -> None:
    order = _placed(rig)
    rig.store.mark_replaced(order_id=order.id, old_serial="a1", new_serial="d1", at=NOW)
    assert rig.store.counts(order.id, NOW) == OrderCounts(matched=3, replaced=1, outstanding=2)
    rig.store.complete_due_orders(order.grace_ends)
    assert rig.store.is_revoked("a1") and not rig.store.is_revoked("d1")
    assert "a1" in {r.serial for r in rig.store.revocations(order.grace_ends)}  # so the CRL lists it
    target = rig.store.target(order.id, "a1", order.grace_ends)
    assert target is not None
    assert (target.state, target.replaced_by, target.revoked_at) == (
        TargetState.REPLACED,
        "d1",
        order.grace_ends,
    )
    assert rig.store.counts(order.id, order.grace_ends) == OrderCounts(matched=3, replaced=1, revoked=3)


def test_revoking_a_replaced_targets_old_certificate_counts_it_revoked_and_still_replaced(rig: Rig) -> None:
    order = _placed(rig)
    rig.store.mark_replaced(order_id=order.id, old_serial="a1", new_serial="d1", at=NOW)
    rig.store.revoke(["a1"], reason="keyCompromise", at=NOW + timedelta(seconds=1))
    target = rig.store.target(order.id, "a1", NOW)
    assert target is not None and (target.state, target.revoked_at) == (
        TargetState.REPLACED,
        NOW + timedelta(seconds=1),
    )
    assert rig.store.counts(order.id, NOW) == OrderCounts(matched=3, replaced=1, outstanding=2, revoked=1)


def test_a_completed_order_leaves_expired_targets_unrevoked(rig: Rig) -> None:
    order = _placed(rig, grace=2 * HOUR, spread=timedelta(0))
    ((_, made),) = rig.store.complete_due_orders(order.grace_ends)
    assert made == []  # every target expired during the grace period
    assert rig.store.counts(order.id, order.grace_ends) == OrderCounts(matched=3, expired=3)


def test_the_change_marker_grows_with_every_change(rig: Rig) -> None:
    _population(rig)
    seen = [rig.store.change_marker()]
    order = _order()
    rig.store.create_order(order, rig.store.live_certificates(order.selector, NOW))
    seen.append(rig.store.change_marker())
    rig.store.mark_replaced(order_id=order.id, old_serial="a1", new_serial="d1", at=NOW)
    seen.append(rig.store.change_marker())
    rig.store.mark_replaced(order_id=order.id, old_serial="a1", new_serial="d1", at=NOW)  # no change
    rig.store.revoke(["b1"], reason="", at=NOW)
    seen.append(rig.store.change_marker())
    rig.store.revoke(["b1"], reason="", at=NOW)  # already revoked: no change
    rig.store.record_crl(_crl(), NOW)  # not a change to orders or revocations
    assert rig.store.change_marker() == seen[-1]
    rig.store.complete_due_orders(order.grace_ends)
    seen.append(rig.store.change_marker())
    assert seen == sorted(set(seen)), seen


def _crl() -> PublishedCrl:
    return PublishedCrl(
        number=1_796_630_400_000,
        this_update=NOW,
        next_update=NOW + HOUR,
        entries=2,
        ca_key_id="k1",
        sha256="ab" * 32,
    )


def test_a_published_crl_is_recorded(rig: Rig) -> None:
    rig.store.record_crl(_crl(), NOW)
    assert rig.records(CRL_PUBLISHED) == [
        {
            "kind": "crl_published",
            "time": "2026-12-07T08:15:00.000000Z",
            "crl_number": 1_796_630_400_000,
            "this_update": "2026-12-07T08:15:00.000000Z",
            "next_update": "2026-12-07T09:15:00.000000Z",
            "entries": 2,
            "ca_key_id": "k1",
            "crl_sha256": "ab" * 32,
        }
    ]


# --------------------------------------------------------------------------- the SQL store only


@pytest.fixture
def sql(ledger_url: str) -> Iterator[Rig]:
    with sql_rig(ledger_url) as made:
        yield made


ledger_url = ledger_support.ledger_url


def test_the_records_extend_the_chain_the_ca_writes(sql: Rig, tmp_path: Path) -> None:
    assert sql.ledger is not None
    _population(sql)
    order = _order()
    sql.store.create_order(order, sql.store.live_certificates(order.selector, NOW))
    sql.ledger.append([_issued_record(certificate("d1", issued=NOW))])  # the CA, between
    sql.store.revoke(["b1"], reason="keyCompromise", at=NOW)
    sql.store.complete_due_orders(order.grace_ends)
    sql.store.record_crl(_crl(), NOW)
    key = load_or_create_ledger_key(tmp_path / "ledger-key.pem")
    ledger = Ledger(sql.ledger, key=key, clock=FakeClock(NOW), publishers=[])
    signed = ledger.checkpoint()
    kinds = [e.content["kind"] for e in sql.ledger.entries()]
    assert kinds == [
        *["issued"] * 5,
        "rotation_order",
        "issued",
        *["revoked"] * 4,  # b1, then a1 a2 a3 when the order completed
        "crl_published",
    ]
    report = verify_ledger(sql.ledger, key.public_key())
    assert report.ok, report.summary()
    assert signed is not None and report.signed_through == signed.head_seq == len(kinds)
    seqs = ledger_support.query(sql.ledger, "SELECT ledger_seq FROM rotation_orders")
    assert sql.records(ROTATION_ORDER)[0]["order_id"] == order.id
    assert seqs == [{"ledger_seq": 6}]


def test_a_failed_write_leaves_neither_record_nor_rows(sql: Rig) -> None:
    assert sql.ledger is not None
    _population(sql)
    head = sql.ledger.head()
    # A row the database refuses (no identity), written after the order's record was chained.
    broken = dataclasses.replace(certificate("a1", issued=T0), spiffe_id=None)  # type: ignore[arg-type]
    with pytest.raises(UnavailableError, match="could not be written"):
        sql.store.create_order(_order(), [broken])
    assert sql.ledger.head() == head
    assert sql.store.order("ro-000000000001") is None
    assert sql.records(ROTATION_ORDER) == []
    assert sql.store.change_marker() == 0


def test_two_replicas_complete_each_order_once(ledger_url: str) -> None:
    """Two stores on one database (two CA replicas) complete the same due orders at once, while
    a third writer appends issuances: every order completes once, every target is revoked once,
    and the chain holds together."""
    with sql_rig(ledger_url) as first, sql_rig(ledger_url) as second:
        assert first.ledger is not None and second.ledger is not None
        orders = []
        for index in range(6):
            serials = [f"{index + 1:x}{n:03x}" for n in range(5)]
            for serial in serials:
                first.issue(serial, pod=f"p-{serial}")
            order = _order(f"ro-{index:012x}", selector=Selector(serials=tuple(serials)))
            first.store.create_order(order, first.store.live_certificates(order.selector, NOW))
            orders.append(order)
        start = threading.Barrier(3)
        results: dict[str, list[tuple[Order, list[Any]]]] = {}
        errors: list[BaseException] = []

        def complete(name: str, store: RotationStore) -> None:
            try:
                start.wait()
                results[name] = store.complete_due_orders(orders[0].grace_ends)
            except BaseException as err:
                errors.append(err)

        def issue_meanwhile() -> None:
            start.wait()
            for n in range(20):
                second.ledger.append([_issued_record(certificate(f"e{n:03x}", issued=NOW))])  # type: ignore[union-attr]

        threads = [
            threading.Thread(target=complete, args=("first", first.store)),
            threading.Thread(target=complete, args=("second", second.store)),
            threading.Thread(target=issue_meanwhile),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        completed = [order.id for found in results.values() for order, _ in found]
        assert sorted(completed) == [o.id for o in orders]
        revoked = [r.serial for found in results.values() for _, made in found for r in made]
        assert len(revoked) == len(set(revoked)) == 30
        records = first.records(REVOKED)
        assert sorted(r["serial"] for r in records) == sorted(revoked)
        assert all(first.store.counts(o.id, NOW).revoked == 5 for o in orders)
        report = verify_ledger(first.ledger, ed25519.Ed25519PrivateKey.generate().public_key())
        assert report.ok and report.entries_checked == 30 + 6 + 30 + 20, report.summary()


def test_a_ledger_locked_by_another_writer_is_unavailable(ledger_url: str) -> None:
    ledger = LedgerStore(ledger_url, lock_timeout_s=0.3)
    ledger.migrate()
    store = SqlRotationStore(ledger)
    try:
        with (
            ledger_support.ledger_locked(ledger_url),
            pytest.raises(UnavailableError, match="could not be written"),
        ):
            store.create_order(_order(), [])
        store.create_order(_order(), [])  # once the lock is gone
    finally:
        store.dispose()
        ledger.dispose()


def _replacing(serial: str, order_id: str, replaces: str) -> dict[str, Any]:
    return _issued_record(certificate(serial, issued=NOW), order_id=order_id, replaces=replaces)


def test_an_issued_record_naming_its_order_marks_the_target_in_the_same_write(sql: Rig) -> None:
    assert sql.ledger is not None
    order = _placed(sql)  # targets a1 a2 a3
    other = _order("ro-000000000002", selector=Selector(serials=("b1",)))
    sql.store.create_order(other, sql.store.live_certificates(other.selector, NOW))
    marker = sql.store.change_marker()
    sql.ledger.append(
        [
            _replacing("d1", order.id, "a1"),
            _issued_record(certificate("e1", issued=NOW)),  # an ordinary renewal
            _replacing("d2", order.id, "a2"),
            _replacing("d9", order.id, "b1"),  # b1 is not a target of that order
            _replacing("d8", "ro-00000000000f", "a3"),  # no such order
        ]
    )
    targets = {t.certificate.serial: t for t in sql.store.targets(order.id, NOW)}
    assert {s: (t.state, t.replaced_by, t.replaced_at) for s, t in targets.items()} == {
        "a1": (TargetState.REPLACED, "d1", NOW),
        "a2": (TargetState.REPLACED, "d2", NOW),
        "a3": (TargetState.OUTSTANDING, None, None),
    }
    assert sql.store.counts(other.id, NOW) == OrderCounts(matched=1, outstanding=1)
    assert sql.store.change_marker() == marker + 1  # once for the batch
    sql.ledger.append([_replacing("d3", order.id, "a1")])  # a1 again: already replaced
    assert sql.store.change_marker() == marker + 1
    target = sql.store.target(order.id, "a1", NOW)
    assert target is not None and target.replaced_by == "d1"


def test_a_recorded_replacement_is_never_missing_from_its_order(ledger_url: str, tmp_path: Path) -> None:
    """The CA records an agent's new certificate with its link, and another writer takes the
    ledger right after that commit, or holds it while the CA writes: the target is marked
    exactly when the certificate is recorded, whatever the other writer does."""
    store = LedgerStore(ledger_url, lock_timeout_s=0.3)
    store.migrate()
    clock = FakeClock(NOW)
    ledger = Ledger(store, key=ed25519.Ed25519PrivateKey.generate(), clock=clock, publishers=[])
    rotation = SqlRotationStore(store)
    rig = Rig(store=rotation, ledger=store)
    try:
        order = _placed(rig)
        caller = Caller(
            spiffe_id=SpiffeId.for_workload("cluster.local", "shop", "cart"),
            namespace="shop",
            service_account="cart",
            method="client_cert",
        )
        authority = RootFactory(
            trust_domain="cluster.local", key_algorithm=KeyAlgorithm.EC_P256, clock=clock
        ).create(source=str(tmp_path))
        issuer = Issuer(authority=authority, policy=IssuancePolicy(), clock=clock)

        def record(old_serial: str) -> tuple[str, Any]:
            csr = parse_csr(make_csr(ec_key()), issuer.policy.key_policy)
            issued = issuer.issue(spiffe_id=caller.spiffe_id, csr=csr, requested_ttl_seconds=3600)
            recorded = ledger.record_issued(
                issued,
                caller,
                client_address="ipv4:127.0.0.1:1",
                cluster_id=None,
                order_id=order.id,
                replaces=old_serial,
            )
            return format(issued.serial, "x"), recorded

        def state(serial: str) -> tuple[TargetState, str | None]:
            target = rotation.target(order.id, serial, NOW)
            assert target is not None
            return target.state, target.replaced_by

        for old_serial in ("a1", "a2"):
            new_serial, recorded = record(old_serial)
            recorded.result(timeout=10)
            with ledger_support.ledger_locked(ledger_url):
                assert state(old_serial) == (TargetState.REPLACED, new_serial)
        with ledger_support.ledger_locked(ledger_url):
            _, refused = record("a3")
            with pytest.raises(UnavailableError):
                refused.result(timeout=10)
            assert state("a3") == (TargetState.OUTSTANDING, None)  # no certificate, no mark
        new_serial, recorded = record("a3")  # the agent retries
        recorded.result(timeout=10)
        assert state("a3") == (TargetState.REPLACED, new_serial)
        assert rotation.counts(order.id, NOW) == OrderCounts(matched=3, replaced=3)
        linked = [r for r in rig.records("issued") if r.get("order_id") == order.id]
        assert sorted(r["replaces"] for r in linked) == ["a1", "a2", "a3"]
    finally:
        ledger.close()
        rotation.dispose()


def test_concurrent_replacements_each_count_once(rig: Rig) -> None:
    order = _placed(rig)
    reports = [("a1", "d1"), ("a2", "d2"), ("a3", "d3")] * 4  # each holder reports four times
    start = threading.Barrier(len(reports))
    answers: dict[int, bool] = {}

    def report(index: int, old: str, new: str) -> None:
        start.wait()
        answers[index] = rig.store.mark_replaced(order_id=order.id, old_serial=old, new_serial=new, at=NOW)

    threads = [threading.Thread(target=report, args=(i, *pair)) for i, pair in enumerate(reports)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(answers) == len(reports) and sum(answers.values()) == 3
    assert rig.store.counts(order.id, NOW) == OrderCounts(matched=3, replaced=3)
    assert {t.certificate.serial: t.replaced_by for t in rig.store.targets(order.id, NOW)} == {
        "a1": "d1",
        "a2": "d2",
        "a3": "d3",
    }


def test_calls_made_during_a_write_share_the_next_one() -> None:
    batches: list[list[int]] = []
    first_written = threading.Event()
    release = threading.Event()

    def write(batch: Sequence[int]) -> list[int]:
        batches.append(list(batch))
        first_written.set()
        assert release.wait(10)
        if 13 in batch:
            raise RuntimeError("the database went away")
        return [n * 10 for n in batch]

    group: GroupCommit[int, int] = GroupCommit(write)
    answers: dict[int, int | str] = {}

    def submit(n: int) -> None:
        try:
            answers[n] = group.submit(n)
        except RuntimeError as err:
            answers[n] = str(err)

    first = threading.Thread(target=submit, args=(1,))
    first.start()
    assert first_written.wait(10)  # the first write is under way, and held
    others = [threading.Thread(target=submit, args=(n,)) for n in range(2, 12)]
    for thread in others:
        thread.start()
    deadline = time.monotonic() + 10
    while group.queued < 10:
        assert time.monotonic() < deadline, "the callers never queued"
        time.sleep(0.005)
    release.set()
    for thread in [first, *others]:
        thread.join(10)
    assert batches == [[1], list(range(2, 12))]
    assert answers == {n: n * 10 for n in range(1, 12)}
    submit(13)  # a failed write fails its callers, and the next caller writes again
    submit(14)
    assert answers[13] == "the database went away" and answers[14] == 140
