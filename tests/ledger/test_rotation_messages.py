"""The Rotation service's messages: what one end writes the other reads back unchanged, and bad
request fields are invalid arguments."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ca._proto import meshca_admin_pb2 as pb
from ca.errors import InvalidRequestError
from ca.ledger import rotation_messages as messages
from ca.ledger.rotation import (
    BlastRadius,
    Holder,
    Order,
    OrderCounts,
    OrderState,
    Revocation,
    Selector,
    Target,
    TargetState,
)
from ca.ledger.rotation_operations import OrderStatus, RotationRequest, RotationResult, Workload
from tests.support.rotation import certificate

NOW = datetime(2026, 12, 1, 12, 0, 0, 123456, tzinfo=UTC)
SELECTOR = Selector(
    spiffe_id="spiffe://cluster.local/ns/shop/sa/cart",
    namespace="shop",
    service_account="cart",
    pod="cart-1",
    node="node-a",
    serials=("a1", "b2"),
    issued_before=NOW - timedelta(hours=2),
)
ORDER = Order(
    id="ro-0123456789ab",
    ordered_by="spiffe://cluster.local/ns/istio-system/sa/admin",
    time=NOW,
    selector=SELECTOR,
    reason="key leaked",
    grace=timedelta(minutes=10),
    spread=timedelta(seconds=20),
    state=OrderState.COMPLETED,
    matched=10,
)
COUNTS = OrderCounts(matched=10, replaced=4, outstanding=3, revoked=2, expired=1)
AGENT = certificate("a1", pod="cart-1", issued=NOW)
ISTIO = certificate("b2", pod="cart-2", node=None, issued=NOW, from_meshca_agent=False)


def test_a_rotate_request_round_trips() -> None:
    request = RotationRequest(
        selector=SELECTOR,
        reason="why",
        grace=timedelta(minutes=7, milliseconds=500),
        spread=timedelta(seconds=3),
        dry_run=True,
        restart_workloads=True,
    )
    assert messages.rotation_request(messages.rotate_request(request), NOW) == request
    everything = RotationRequest(selector=Selector(all=True), reason="r")
    assert messages.rotation_request(messages.rotate_request(everything), NOW) == everything


def test_empty_request_fields_take_the_defaults() -> None:
    parsed = messages.rotation_request(
        pb.RotateRequest(selector=pb.Selector(namespace="shop"), reason="r"), NOW
    )
    assert (parsed.grace, parsed.spread) == (timedelta(minutes=5), timedelta(0))
    assert parsed.selector == Selector(namespace="shop")


def test_request_times_may_be_written_as_on_the_command_line() -> None:
    parsed = messages.selector_from(pb.Selector(issued_before="2h", serials=["0A:FF"]), NOW)
    assert parsed.issued_before == NOW - timedelta(hours=2) and parsed.serials == ("aff",)


@pytest.mark.parametrize(
    ("message", "wanted"),
    [
        (pb.RotateRequest(selector=pb.Selector(issued_before="yesterday"), reason="r"), "is not a time"),
        (pb.RotateRequest(selector=pb.Selector(serials=["xyz"]), reason="r"), "not a certificate serial"),
        (pb.RotateRequest(selector=pb.Selector(all=True), grace="5 minutes"), "grace: '5 minutes'"),
    ],
)
def test_bad_request_fields_are_invalid_arguments(message: pb.RotateRequest, wanted: str) -> None:
    with pytest.raises(InvalidRequestError, match=wanted):
        messages.rotation_request(message, NOW)


def test_an_order_round_trips() -> None:
    order, counts = messages.order_from(messages.order_message(ORDER, COUNTS))
    assert (order, counts) == (ORDER, COUNTS)
    assert messages.order_message(ORDER, COUNTS).grace_ends == "2026-12-01T12:10:00.123456Z"


def test_a_rotation_result_round_trips() -> None:
    radius = BlastRadius(
        targets=[AGENT, ISTIO],
        holders={"a1": Holder.NOT_CONNECTED, "b2": Holder.NOT_PUSHABLE},
        warnings=("a warning",),
    )
    result = RotationResult(
        radius=radius,
        tally={Holder.CONNECTED: 0, Holder.NOT_CONNECTED: 1, Holder.NOT_PUSHABLE: 1},
        workloads=(
            Workload(
                namespace="shop", kind="Deployment", name="cart", pods=("cart-1", "cart-2"), restarted=True
            ),
            Workload(namespace="shop", kind="Pod", name="x", pods=("x",), problem="bare pod"),
        ),
        order=ORDER,
        counts=COUNTS,
    )
    back = messages.rotation_result(messages.rotate_response(result))
    assert back == result
    dry = RotationResult(radius=radius, tally=result.tally)
    assert messages.rotation_result(messages.rotate_response(dry)) == dry


def test_a_placed_order_lists_at_most_the_first_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(messages, "MAX_ORDER_TARGETS", 1)
    radius = BlastRadius(targets=[AGENT, ISTIO], holders={})
    placed = RotationResult(radius=radius, tally={Holder.NOT_PUSHABLE: 2}, order=ORDER, counts=COUNTS)
    response = messages.rotate_response(placed)
    assert [t.serial for t in response.targets] == ["a1"] and response.matched == 2
    dry = messages.rotate_response(RotationResult(radius=radius, tally={Holder.NOT_PUSHABLE: 2}))
    assert len(dry.targets) == 2


def test_an_order_status_round_trips() -> None:
    status = OrderStatus(
        order=ORDER,
        counts=COUNTS,
        targets=(
            Target(
                order_id=ORDER.id, certificate=AGENT, index=0, state=TargetState.REPLACED, replaced_by="c3"
            ),
            Target(order_id=ORDER.id, certificate=ISTIO, index=1, state=TargetState.OUTSTANDING),
        ),
        holders={"a1": Holder.CONNECTED, "b2": Holder.NOT_PUSHABLE},
    )
    assert messages.order_status_from(messages.status_response(status)) == status


def test_lists_and_revocations_round_trip() -> None:
    orders = [(ORDER, COUNTS)]
    assert messages.orders_from(messages.list_response(orders)) == orders
    revocation = Revocation(
        serial="a1",
        spiffe_id=AGENT.spiffe_id,
        revoked_at=NOW,
        reason="keyCompromise",
        not_after=AGENT.not_after,
        order_id=ORDER.id,
    )
    assert messages.revocation_from(messages.revocation_message(revocation)) == revocation
