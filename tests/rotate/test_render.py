"""How rotation results read: the grouped dry run, an order's status and the JSON forms."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from ca.ledger.rotation import (
    BlastRadius,
    Holder,
    Order,
    OrderCounts,
    OrderState,
    Selector,
    Target,
    TargetState,
)
from ca.ledger.rotation_operations import OrderStatus, RotationResult, Workload
from ca.rotate import render
from tests.support.rotation import certificate

NOW = datetime(2026, 12, 1, 12, 0, 0, 500000, tzinfo=UTC)
CART_1 = certificate("a1", pod="cart-1", node="node-a", issued=NOW)
CART_2 = certificate("a2", pod="cart-2", node="node-b", issued=NOW, from_meshca_agent=False)
CHECKOUT = certificate("b1", service_account="checkout", pod="checkout-1", issued=NOW)
RADIUS = BlastRadius(
    targets=[CART_1, CART_2, CHECKOUT],
    holders={"a1": Holder.CONNECTED, "a2": Holder.NOT_PUSHABLE, "b1": Holder.NOT_CONNECTED},
)
TALLY = {Holder.CONNECTED: 1, Holder.NOT_CONNECTED: 1, Holder.NOT_PUSHABLE: 1}
ORDER = Order(
    id="ro-0123456789ab",
    ordered_by="local:ops@host",
    time=NOW,
    selector=Selector(namespace="shop"),
    reason="leak",
    grace=timedelta(minutes=5),
    state=OrderState.COMPLETED,
)


def test_a_dry_run_groups_by_namespace_and_identity() -> None:
    lines = render.rotation_text(RotationResult(radius=RADIUS, tally=TALLY), restart_asked=False)
    assert lines[:2] == [
        "dry run: nothing was changed",
        "3 live certificates match: 1 held by connected meshca agents (pushed within seconds), 1 by meshca "
        "agents not connected now (pushed when they reconnect), 1 not pushable (other clients, such as "
        "Istio's agent)",
    ]
    assert lines[3:9] == [
        "namespace shop",
        "  spiffe://cluster.local/ns/shop/sa/cart: 2 certificates (1 connected, 1 not pushable)",
        "    POD     NODE    SERIAL  HOLDER        EXPIRES",
        "    cart-1  node-a  a1      connected     2026-12-01T13:00:00Z",
        "    cart-2  node-b  a2      not pushable  2026-12-01T13:00:00Z",
        "  spiffe://cluster.local/ns/shop/sa/checkout: 1 certificate (1 not connected)",
    ]


def test_one_certificate_reads_in_the_singular() -> None:
    one = RotationResult(radius=BlastRadius(targets=[CART_1], holders={}), tally={Holder.NOT_CONNECTED: 1})
    assert render.tally_line(one).startswith("1 live certificate matches: ")


def test_workloads_say_what_became_of_them() -> None:
    workloads = (
        Workload(namespace="shop", kind="Deployment", name="cart", pods=("cart-1", "cart-2"), restarted=True),
        Workload(namespace="shop", kind="Pod", name="debug", pods=("debug",), problem="a bare pod"),
    )
    placed = RotationResult(
        radius=RADIUS, tally=TALLY, order=ORDER, counts=OrderCounts(), workloads=workloads
    )
    lines = render.rotation_text(placed, restart_asked=True)
    assert lines[-3:] == [
        "  NAMESPACE  KIND        NAME   PODS           RESULT",
        "  shop       Deployment  cart   cart-1,cart-2  restarted",
        "  shop       Pod         debug  debug          a bare pod",
    ]
    assert "restarted with --restart-workloads" in lines[-4]


def test_a_completed_order_and_its_targets() -> None:
    status = OrderStatus(
        order=ORDER,
        counts=OrderCounts(matched=2, replaced=1, revoked=1),
        targets=(
            Target(order_id=ORDER.id, certificate=CART_2, state=TargetState.REVOKED),
            Target(order_id=ORDER.id, certificate=CART_1, state=TargetState.REPLACED, replaced_by="c9"),
        ),
        holders={"a1": Holder.CONNECTED, "a2": Holder.NOT_PUSHABLE},
    )
    lines = render.status_text(status)
    assert lines[0] == "order ro-0123456789ab: completed: the grace period ended at 2026-12-01T12:05:00Z"
    assert lines[2] == "selector: namespace=shop; grace 5m, spread 0s"
    assert [line.split()[:2] for line in lines[6:]] == [["replaced", "a1"], ["revoked", "a2"]]
    as_json = json.loads(render.json_text(render.status_dict(status)))
    assert (
        as_json["order"]["state"] == "completed"
        and as_json["order"]["grace_ends"] == "2026-12-01T12:05:00.500000Z"
    )
    assert {t["serial"]: t["replaced_by"] for t in as_json["targets"]} == {"a2": None, "a1": "c9"}


def test_dry_run_json_carries_every_field() -> None:
    as_json = render.rotation_dict(RotationResult(radius=RADIUS, tally=TALLY, connections_known=False))
    assert (as_json["connected"], as_json["not_connected"], as_json["not_pushable"]) == (1, 1, 1)
    assert as_json["targets"][0] == {
        "serial": "a1",
        "spiffe_id": "spiffe://cluster.local/ns/shop/sa/cart",
        "namespace": "shop",
        "service_account": "cart",
        "pod": "cart-1",
        "node": "node-a",
        "issued": "2026-12-01T12:00:00.500000Z",
        "not_after": "2026-12-01T13:00:00.500000Z",
        "holder": "connected",
    }
