"""The operator's rotation operations over the in-memory store: the dry run changes nothing, an
order records exactly what the dry run showed, holders are classed by who can be pushed, and
every bad request is refused before the store is written."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ca.errors import InvalidRequestError
from ca.ledger import rotation_operations as ops
from ca.ledger.rotation import Holder, OrderState, Selector, TargetCertificate, TargetState
from tests.support.rotation import MemoryRotationStore, certificate

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
ORDER_ID = "ro-00112233aabb"


class WatchedStore(MemoryRotationStore):
    """The in-memory store, noting which of its methods were called."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("_") and name not in ("calls", "add_issued", "issued", "records"):
            object.__getattribute__(self, "calls").append(name)
        return object.__getattribute__(self, name)


def cert(
    serial: str, namespace: str, pod: str, *, node: str = "node-a", agent: bool = True
) -> TargetCertificate:
    return certificate(
        serial,
        namespace=namespace,
        pod=pod,
        node=node,
        issued=NOW - timedelta(hours=1),
        lifetime=timedelta(hours=24),
        from_meshca_agent=agent,
    )


@pytest.fixture
def store() -> WatchedStore:
    s = WatchedStore()
    s.add_issued(
        cert("a1", "shop", "cart-1"),
        cert("a2", "shop", "cart-2", node="node-b"),
        cert("a3", "shop", "istio-1", agent=False),
        cert("b1", "shop-canary", "cart-c"),
    )
    return s


def no_workloads(pods: Sequence[ops.PodRef], restart: bool) -> list[ops.Workload]:
    return ops.pods_as_workloads(pods)


def rotate(
    store: WatchedStore, request: ops.RotationRequest, connected: set[str] | None = None
) -> ops.RotationResult:
    return ops.rotate(
        store,
        request,
        now=NOW,
        order_id=ORDER_ID,
        ordered_by="spiffe://cluster.local/ns/istio-system/sa/admin",
        connected=connected,
        workloads=no_workloads,
    )


def test_a_dry_run_classes_the_holders_and_changes_nothing(store: WatchedStore) -> None:
    request = ops.RotationRequest(selector=Selector(namespace="shop"), reason="", dry_run=True)
    result = rotate(store, request, connected={"a1"})
    assert [t.serial for t in result.radius.targets] == ["a1", "a2", "a3"]  # shop-canary is not shop
    assert result.radius.holders == {
        "a1": Holder.CONNECTED,
        "a2": Holder.NOT_CONNECTED,
        "a3": Holder.NOT_PUSHABLE,
    }
    assert result.tally == {Holder.CONNECTED: 1, Holder.NOT_CONNECTED: 1, Holder.NOT_PUSHABLE: 1}
    assert result.order is None and result.counts is None and result.connections_known
    assert [(w.namespace, w.name) for w in result.workloads] == [("shop", "cart-2"), ("shop", "istio-1")]
    assert "create_order" not in store.calls and store.records == []


def test_without_connections_only_other_clients_count_as_unpushable(store: WatchedStore) -> None:
    request = ops.RotationRequest(selector=Selector(namespace="shop"), reason="", dry_run=True)
    result = rotate(store, request, connected=None)
    assert not result.connections_known
    assert [w.name for w in result.workloads] == ["istio-1"]


def test_an_order_records_the_matched_targets(store: WatchedStore) -> None:
    request = ops.RotationRequest(
        selector=Selector(namespace="shop", service_account="cart"),
        reason=" key leaked on node-a ",
        grace=timedelta(minutes=10),
        spread=timedelta(seconds=30),
    )
    result = rotate(store, request, connected=set())
    assert result.order is not None and result.order.id == ORDER_ID
    order = store.order(ORDER_ID)
    assert order is not None and order.reason == "key leaked on node-a"
    assert (order.grace, order.spread, order.time) == (timedelta(minutes=10), timedelta(seconds=30), NOW)
    assert order.ordered_by == "spiffe://cluster.local/ns/istio-system/sa/admin"
    assert sorted(t.certificate.serial for t in store.targets(ORDER_ID, NOW)) == ["a1", "a2", "a3"]
    assert result.counts is not None and (result.counts.matched, result.counts.outstanding) == (3, 3)


def test_restart_is_asked_only_for_a_placed_order(store: WatchedStore) -> None:
    asked: list[bool] = []

    def finder(pods: Sequence[ops.PodRef], restart: bool) -> list[ops.Workload]:
        asked.append(restart)
        return []

    for dry_run in (True, False):
        request = ops.RotationRequest(
            selector=Selector(namespace="shop"), reason="r", dry_run=dry_run, restart_workloads=True
        )
        ops.rotate(
            store, request, now=NOW, order_id=ORDER_ID, ordered_by="me", connected=set(), workloads=finder
        )
    assert asked == [False, True]


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (ops.RotationRequest(selector=Selector(), reason="r"), "selector_empty"),
        (ops.RotationRequest(selector=Selector(all=True, namespace="shop"), reason="r"), "selector_invalid"),
        (ops.RotationRequest(selector=Selector(namespace="shop"), reason="  "), "reason_missing"),
        (
            ops.RotationRequest(selector=Selector(namespace="shop"), reason="r", grace=timedelta(minutes=-5)),
            "grace_invalid",
        ),
        (
            ops.RotationRequest(
                selector=Selector(namespace="shop"), reason="r", grace=timedelta(0), spread=timedelta(1)
            ),
            "spread_invalid",
        ),
    ],
)
def test_bad_requests_are_refused_before_the_store_is_asked(
    store: WatchedStore, request_: ops.RotationRequest, reason: str
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        rotate(store, request_)
    assert caught.value.reason == reason
    assert store.calls == []


def test_a_dry_run_needs_no_reason_but_still_a_sane_grace(store: WatchedStore) -> None:
    rotate(store, ops.RotationRequest(selector=Selector(all=True), reason="", dry_run=True))
    with pytest.raises(InvalidRequestError, match="--grace must not be negative"):
        rotate(
            store,
            ops.RotationRequest(
                selector=Selector(all=True), reason="", dry_run=True, grace=timedelta(seconds=-1)
            ),
        )


def test_an_unknown_namespace_warns_and_places_no_order(store: WatchedStore) -> None:
    dry = rotate(store, ops.RotationRequest(selector=Selector(namespace="shopx"), reason="", dry_run=True))
    assert dry.matched == 0 and dry.radius.warnings == (
        "no certificate was ever issued to namespace 'shopx', so nothing matches it; names match "
        "exactly: check the spelling",
    )
    with pytest.raises(InvalidRequestError) as caught:
        rotate(store, ops.RotationRequest(selector=Selector(namespace="shopx"), reason="typo"))
    assert caught.value.reason == "selector_matches_nothing"
    assert "shopx" in caught.value.message and "no order was recorded" in caught.value.message
    assert store.orders() == []


def test_a_known_name_with_nothing_live_says_nothing_matches(store: WatchedStore) -> None:
    result = rotate(
        store,
        ops.RotationRequest(selector=Selector(pod="cart-2", node="node-a"), reason="", dry_run=True),
    )
    assert result.radius.warnings == (
        "nothing matches pod=cart-2 node=node-a: no live certificate issued by this CA has all of "
        "those (names match exactly)",
    )


def test_status_and_list(store: WatchedStore) -> None:
    rotate(store, ops.RotationRequest(selector=Selector(namespace="shop"), reason="leak"))
    store.mark_replaced(order_id=ORDER_ID, old_serial="a1", new_serial="c1", at=NOW)
    store.revoke(["a2"], reason="keyCompromise", at=NOW)
    status = ops.order_status(store, ORDER_ID.upper(), NOW, {"a3"})
    states = {t.certificate.serial: t.state for t in status.targets}
    assert states == {"a1": TargetState.REPLACED, "a2": TargetState.REVOKED, "a3": TargetState.OUTSTANDING}
    assert (status.counts.replaced, status.counts.revoked, status.counts.outstanding) == (1, 1, 1)
    assert status.holders["a3"] is Holder.NOT_PUSHABLE  # another client, connected or not
    listed = ops.list_orders(store, 10, NOW)
    assert [(o.id, c.matched, o.state) for o, c in listed] == [(ORDER_ID, 3, OrderState.PUSHING)]


def test_status_of_an_unknown_or_malformed_order(store: WatchedStore) -> None:
    with pytest.raises(ops.OrderNotFoundError, match="no rotation order ro-ffffffffffff"):
        ops.order_status(store, "ro-ffffffffffff", NOW, None)
    with pytest.raises(InvalidRequestError) as caught:
        ops.order_status(store, "order-1", NOW, None)
    assert caught.value.reason == "order_id_invalid" and not isinstance(caught.value, ops.OrderNotFoundError)


@pytest.mark.parametrize("limit", [0, ops.MAX_LIST_LIMIT + 1])
def test_list_limits(store: WatchedStore, limit: int) -> None:
    with pytest.raises(InvalidRequestError, match="out of range"):
        ops.list_orders(store, limit, NOW)


def test_revoke_normalizes_serials_and_reason(store: WatchedStore) -> None:
    revoked = ops.revoke(store, ["0x0A:1", "a1"], reason="KEYCOMPROMISE", note="  leaked  ", now=NOW)
    assert [(r.serial, r.reason, r.note) for r in revoked] == [("a1", "keyCompromise", "leaked")]
    with pytest.raises(InvalidRequestError, match="not a certificate serial number"):
        ops.revoke(store, ["xyz"], reason="", note=None, now=NOW)
    with pytest.raises(InvalidRequestError, match="unknown revocation reason"):
        ops.revoke(store, ["a2"], reason="stolen", note=None, now=NOW)
    with pytest.raises(InvalidRequestError, match="--serial"):
        ops.revoke(store, [], reason="", note=None, now=NOW)
    assert not store.is_revoked("a2")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", timedelta(minutes=5)), ("90s", timedelta(seconds=90)), ("-5m", timedelta(minutes=-5))],
)
def test_order_durations(text: str, expected: timedelta) -> None:
    assert ops.order_duration(text, "--grace", timedelta(minutes=5)) == expected


def test_a_malformed_duration_names_its_flag() -> None:
    with pytest.raises(InvalidRequestError, match="--grace: '5 minutes' is not a duration") as caught:
        ops.order_duration("5 minutes", "--grace", timedelta(0))
    assert caught.value.reason == "grace_invalid"


def test_order_ids_come_from_the_randomness_given() -> None:
    assert ops.new_order_id(lambda n: bytes(range(n))) == "ro-000102030405"
    assert ops.check_order_id(" RO-000102030405 ") == "ro-000102030405"
