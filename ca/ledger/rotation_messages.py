"""The admin Rotation service's messages (proto/meshca_admin.proto) to and from the rotation
model, for both ends: the CA's servicer (`server/rotation_api`) and the `meshca rotate` client
(`rotate/client`). One module both ways, so a field cannot be written one way and read another.

Times in answers are the ledger's timestamps (UTC, microseconds); times in requests may be
written as on the command line (`parse_moment`). A bad field is an InvalidRequestError.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from ca._proto import meshca_admin_pb2 as pb
from ca.common.moments import parse_moment
from ca.errors import ConfigError, InvalidRequestError
from ca.ledger.entries import parse_timestamp, timestamp
from ca.ledger.rotation import (
    DEFAULT_GRACE,
    DEFAULT_SPREAD,
    BlastRadius,
    Holder,
    Order,
    OrderCounts,
    OrderState,
    Revocation,
    Selector,
    Target,
    TargetCertificate,
    TargetState,
)
from ca.ledger.rotation_operations import (
    MAX_ORDER_TARGETS,
    OrderStatus,
    RotationRequest,
    RotationResult,
    Workload,
    order_duration,
    selector_serials,
)

# ------------------------------------------------------------------ requests


def selector_message(selector: Selector) -> pb.Selector:
    return pb.Selector(
        spiffe_id=selector.spiffe_id or "",
        namespace=selector.namespace or "",
        service_account=selector.service_account or "",
        pod=selector.pod or "",
        node=selector.node or "",
        serials=list(selector.serials),
        issued_before=timestamp(selector.issued_before) if selector.issued_before else "",
        all=selector.all,
    )


def selector_from(message: pb.Selector, now: datetime) -> Selector:
    issued_before: datetime | None = None
    if message.issued_before:
        try:
            issued_before = parse_moment(message.issued_before, now, flag="issued_before")
        except ConfigError as err:
            raise InvalidRequestError(err.message, reason="selector_invalid") from err
    return Selector(
        spiffe_id=message.spiffe_id or None,
        namespace=message.namespace or None,
        service_account=message.service_account or None,
        pod=message.pod or None,
        node=message.node or None,
        serials=selector_serials(message.serials),
        issued_before=issued_before,
        all=message.all,
    )


def rotate_request(request: RotationRequest) -> pb.RotateRequest:
    return pb.RotateRequest(
        selector=selector_message(request.selector),
        reason=request.reason,
        grace=f"{int(request.grace.total_seconds() * 1000)}ms",
        spread=f"{int(request.spread.total_seconds() * 1000)}ms",
        dry_run=request.dry_run,
        restart_workloads=request.restart_workloads,
    )


def rotation_request(message: pb.RotateRequest, now: datetime) -> RotationRequest:
    return RotationRequest(
        selector=selector_from(message.selector, now),
        reason=message.reason,
        grace=order_duration(message.grace, "grace", DEFAULT_GRACE),
        spread=order_duration(message.spread, "spread", DEFAULT_SPREAD),
        dry_run=message.dry_run,
        restart_workloads=message.restart_workloads,
    )


# ------------------------------------------------------------------ answers


def _time(text: str) -> datetime:
    return parse_timestamp(text)


def _seconds(value: timedelta) -> int:
    return max(0, int(value.total_seconds()))


def order_message(order: Order, counts: OrderCounts) -> pb.Order:
    return pb.Order(
        id=order.id,
        ordered_by=order.ordered_by,
        time=timestamp(order.time),
        selector=selector_message(order.selector),
        reason=order.reason,
        grace_seconds=_seconds(order.grace),
        spread_seconds=_seconds(order.spread),
        grace_ends=timestamp(order.grace_ends),
        state=order.state.value,
        matched=counts.matched,
        replaced=counts.replaced,
        outstanding=counts.outstanding,
        revoked=counts.revoked,
        expired=counts.expired,
    )


def order_from(message: pb.Order) -> tuple[Order, OrderCounts]:
    time = _time(message.time)
    order = Order(
        id=message.id,
        ordered_by=message.ordered_by,
        time=time,
        selector=selector_from(message.selector, time),
        reason=message.reason,
        grace=timedelta(seconds=message.grace_seconds),
        spread=timedelta(seconds=message.spread_seconds),
        state=OrderState(message.state),
        matched=message.matched,
    )
    counts = OrderCounts(
        matched=message.matched,
        replaced=message.replaced,
        outstanding=message.outstanding,
        revoked=message.revoked,
        expired=message.expired,
    )
    return order, counts


def target_message(
    certificate: TargetCertificate, holder: Holder | None, target: Target | None = None
) -> pb.Target:
    return pb.Target(
        serial=certificate.serial,
        spiffe_id=certificate.spiffe_id,
        namespace=certificate.namespace or "",
        service_account=certificate.service_account or "",
        pod=certificate.pod or "",
        node=certificate.node or "",
        issued=timestamp(certificate.issued),
        not_after=timestamp(certificate.not_after),
        holder=holder.value if holder is not None else "",
        state=target.state.value if target is not None else "",
        replaced_by=(target.replaced_by or "") if target is not None else "",
    )


def certificate_from(message: pb.Target) -> TargetCertificate:
    return TargetCertificate(
        serial=message.serial,
        spiffe_id=message.spiffe_id,
        namespace=message.namespace or None,
        service_account=message.service_account or None,
        pod=message.pod or None,
        node=message.node or None,
        issued=_time(message.issued),
        not_after=_time(message.not_after),
        # Only certificates a meshca agent asked for can be pushed at all.
        from_meshca_agent=bool(message.holder) and message.holder != Holder.NOT_PUSHABLE.value,
    )


def workload_message(workload: Workload) -> pb.Workload:
    return pb.Workload(
        namespace=workload.namespace,
        kind=workload.kind,
        name=workload.name,
        pods=list(workload.pods),
        restarted=workload.restarted,
        problem=workload.problem or "",
    )


def workload_from(message: pb.Workload) -> Workload:
    return Workload(
        namespace=message.namespace,
        kind=message.kind,
        name=message.name,
        pods=tuple(message.pods),
        restarted=message.restarted,
        problem=message.problem or None,
    )


def rotate_response(result: RotationResult) -> pb.RotateResponse:
    radius = result.radius
    shown = radius.targets if result.order is None else radius.targets[:MAX_ORDER_TARGETS]
    return pb.RotateResponse(
        order=order_message(result.order, result.counts or OrderCounts()) if result.order else None,
        targets=[target_message(t, radius.holders.get(t.serial)) for t in shown],
        matched=result.matched,
        connected=result.tally.get(Holder.CONNECTED, 0),
        not_connected=result.tally.get(Holder.NOT_CONNECTED, 0),
        not_pushable=result.tally.get(Holder.NOT_PUSHABLE, 0),
        workloads=[workload_message(w) for w in result.workloads],
        warnings=list(radius.warnings),
    )


def rotation_result(message: pb.RotateResponse) -> RotationResult:
    targets = [certificate_from(t) for t in message.targets]
    radius = BlastRadius(
        targets=targets,
        holders={t.serial: Holder(t.holder) for t in message.targets if t.holder},
        warnings=tuple(message.warnings),
    )
    order, counts = order_from(message.order) if message.HasField("order") else (None, None)
    return RotationResult(
        radius=radius,
        tally={
            Holder.CONNECTED: message.connected,
            Holder.NOT_CONNECTED: message.not_connected,
            Holder.NOT_PUSHABLE: message.not_pushable,
        },
        workloads=tuple(workload_from(w) for w in message.workloads),
        order=order,
        counts=counts,
    )


def status_response(status: OrderStatus) -> pb.OrderStatusResponse:
    return pb.OrderStatusResponse(
        order=order_message(status.order, status.counts),
        targets=[
            target_message(t.certificate, status.holders.get(t.certificate.serial), t) for t in status.targets
        ],
    )


def _target_from(order_id: str, index: int, message: pb.Target) -> Target:
    return Target(
        order_id=order_id,
        certificate=certificate_from(message),
        index=index,
        state=TargetState(message.state) if message.state else TargetState.OUTSTANDING,
        replaced_by=message.replaced_by or None,
    )


def order_status_from(message: pb.OrderStatusResponse) -> OrderStatus:
    order, counts = order_from(message.order)
    return OrderStatus(
        order=order,
        counts=counts,
        targets=tuple(_target_from(order.id, i, t) for i, t in enumerate(message.targets)),
        holders={t.serial: Holder(t.holder) for t in message.targets if t.holder},
    )


def list_response(orders: Sequence[tuple[Order, OrderCounts]]) -> pb.ListOrdersResponse:
    return pb.ListOrdersResponse(orders=[order_message(order, counts) for order, counts in orders])


def orders_from(message: pb.ListOrdersResponse) -> list[tuple[Order, OrderCounts]]:
    return [order_from(o) for o in message.orders]


def revocation_message(revocation: Revocation) -> pb.Revocation:
    return pb.Revocation(
        serial=revocation.serial,
        spiffe_id=revocation.spiffe_id or "",
        revoked_at=timestamp(revocation.revoked_at),
        reason=revocation.reason,
        order_id=revocation.order_id or "",
        not_after=timestamp(revocation.not_after),
    )


def revocation_from(message: pb.Revocation) -> Revocation:
    return Revocation(
        serial=message.serial,
        spiffe_id=message.spiffe_id or None,
        revoked_at=_time(message.revoked_at),
        reason=message.reason,
        not_after=_time(message.not_after),
        order_id=message.order_id or None,
    )
