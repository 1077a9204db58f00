"""What the operator's rotation commands do over a RotationStore: the dry run, placing an order,
an order's status, the list of orders, revoking at once. Pure code.

Both ways of reaching the store run these: the CA's admin Rotation service (`server/rotation_api`)
and `meshca rotate --state-dir` (`rotate/command`), so an order is the same whichever placed it.
The time, the order id, who is connected and how workloads are looked up are passed in.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ca.common.durations import parse_duration
from ca.errors import ConfigError, InvalidRequestError
from ca.ledger.rotation import (
    DEFAULT_GRACE,
    DEFAULT_SPREAD,
    BlastRadius,
    Holder,
    Order,
    OrderCounts,
    Revocation,
    RotationStore,
    Selector,
    Target,
    TargetCertificate,
    check_order_terms,
    normalize_serial,
    revocation_reason,
)

ORDER_ID_PREFIX = "ro-"
_ORDER_ID = re.compile(r"ro-[0-9a-f]{12}")
DEFAULT_LIST_LIMIT = 20
MAX_LIST_LIMIT = 1000
# A placed order's answer lists at most this many of its targets (a dry run lists them all).
MAX_ORDER_TARGETS = 1000

# (namespace, pod name) of a pod that holds a matched certificate.
PodRef = tuple[str, str]


class OrderNotFoundError(InvalidRequestError):
    """No order has this id."""


@dataclass(frozen=True, kw_only=True)
class Workload:
    """A workload whose pods cannot be pushed, so that only a restart replaces their certificates."""

    namespace: str
    kind: str  # "Deployment", "StatefulSet", "DaemonSet", or "Pod" when it has no such owner
    name: str
    pods: tuple[str, ...]
    restarted: bool = False
    problem: str | None = None


# Finds the owners of these pods, and restarts them when the flag is true.
WorkloadFinder = Callable[[Sequence[PodRef], bool], list[Workload]]


@dataclass(frozen=True, kw_only=True)
class RotationRequest:
    selector: Selector
    reason: str
    grace: timedelta = DEFAULT_GRACE
    spread: timedelta = DEFAULT_SPREAD
    dry_run: bool = False
    restart_workloads: bool = False

    def check(self) -> None:
        """Refuse what an order may not be; a dry run needs no reason."""
        self.selector.check()
        reason = self.reason if self.reason.strip() or not self.dry_run else "dry run"
        check_order_terms(reason=reason, grace=self.grace, spread=self.spread)


@dataclass(frozen=True, kw_only=True)
class RotationResult:
    """What a dry run shows, or what placing an order did."""

    radius: BlastRadius  # a placed order's answer may list only the first MAX_ORDER_TARGETS
    tally: Mapping[Holder, int]  # over every matched certificate
    workloads: tuple[Workload, ...] = ()
    order: Order | None = None
    counts: OrderCounts | None = None
    # False where no CA was asked: which meshca agents are connected is known only to a running CA.
    connections_known: bool = True

    @property
    def matched(self) -> int:
        return sum(self.tally.values())


@dataclass(frozen=True, kw_only=True)
class OrderStatus:
    order: Order
    counts: OrderCounts
    targets: tuple[Target, ...]
    holders: Mapping[str, Holder] = field(default_factory=dict)  # by serial
    connections_known: bool = True


def new_order_id(random_bytes: Callable[[int], bytes]) -> str:
    return ORDER_ID_PREFIX + random_bytes(6).hex()


def check_order_id(text: str) -> str:
    cleaned = text.strip().lower()
    if _ORDER_ID.fullmatch(cleaned) is None:
        raise InvalidRequestError(
            f"{text!r} is not an order id; order ids look like ro-0123456789ab "
            "('meshca rotate list' shows them)",
            reason="order_id_invalid",
        )
    return cleaned


def order_duration(text: str, name: str, default: timedelta) -> timedelta:
    """A grace period or spread as written ('5m', '0s'); empty means `default`. A leading '-' is
    read as a negative duration, so that the order terms can say what is wrong with it."""
    cleaned = text.strip()
    if not cleaned:
        return default
    negative = cleaned.startswith("-")
    try:
        value = parse_duration(cleaned.removeprefix("-"))
    except ConfigError as err:
        raise InvalidRequestError(f"{name}: {err.message}", reason=f"{name.lstrip('-')}_invalid") from err
    return -value if negative else value


def selector_serials(texts: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(normalize_serial(t) for t in texts))


def holder_of(certificate: TargetCertificate, connected: Collection[str] | None) -> Holder:
    """Whether a push can reach the certificate's holder; `connected` None: not known here."""
    if not certificate.from_meshca_agent:
        return Holder.NOT_PUSHABLE
    if connected is not None and certificate.serial in connected:
        return Holder.CONNECTED
    return Holder.NOT_CONNECTED


def _target_order(certificate: TargetCertificate) -> tuple[str, str, str, str]:
    return (certificate.namespace or "", certificate.spiffe_id, certificate.pod or "", certificate.serial)


def blast_radius(
    store: RotationStore, selector: Selector, now: datetime, connected: Collection[str] | None
) -> BlastRadius:
    """The live certificates the selector matches now, sorted by namespace, identity and pod."""
    targets = sorted(store.live_certificates(selector, now), key=_target_order)
    warnings = list(store.known_names(selector))
    if not targets and not warnings:
        warnings.append(
            f"nothing matches {selector.describe()}: no live certificate issued by this CA "
            "has all of those (names match exactly)"
        )
    return BlastRadius(
        targets=targets,
        holders={t.serial: holder_of(t, connected) for t in targets},
        warnings=tuple(warnings),
    )


def holder_tally(radius: BlastRadius) -> dict[Holder, int]:
    return {holder: radius.count(holder) for holder in Holder}


def unpushable_pods(radius: BlastRadius, *, connections_known: bool = True) -> list[PodRef]:
    """The pods holding a matched certificate that no push reaches, each once. Where connections
    are not known, only the holders that are no meshca agent count: the others may be connected."""
    unreachable = {Holder.NOT_PUSHABLE, Holder.NOT_CONNECTED} if connections_known else {Holder.NOT_PUSHABLE}
    pods = {
        (t.namespace, t.pod)
        for t in radius.targets
        if t.namespace and t.pod and radius.holders.get(t.serial) in unreachable
    }
    return sorted(pods)


def pods_as_workloads(pods: Sequence[PodRef], problem: str | None = None) -> list[Workload]:
    """The pods themselves, where their owners cannot be looked up."""
    return [Workload(namespace=ns, kind="Pod", name=pod, pods=(pod,), problem=problem) for ns, pod in pods]


def rotate(
    store: RotationStore,
    request: RotationRequest,
    *,
    now: datetime,
    order_id: str,
    ordered_by: str,
    connected: Collection[str] | None,
    workloads: WorkloadFinder,
) -> RotationResult:
    """The dry run, or the order placed and (with restart_workloads) the unpushable workloads
    restarted. An order that would match nothing is refused, not recorded."""
    request.check()
    radius = blast_radius(store, request.selector, now, connected)
    order: Order | None = None
    counts: OrderCounts | None = None
    if not request.dry_run:
        if not radius.targets:
            raise InvalidRequestError(
                "; ".join(radius.warnings) + "; no order was recorded: check the names with "
                "'meshca audit list', or try the selectors with 'meshca rotate --dry-run'",
                reason="selector_matches_nothing",
            )
        order = Order(
            id=order_id,
            ordered_by=ordered_by,
            time=now,
            selector=request.selector,
            reason=request.reason.strip(),
            grace=request.grace,
            spread=request.spread,
        )
        store.create_order(order, radius.targets)
        counts = store.counts(order.id, now)
    restart = request.restart_workloads and not request.dry_run
    found = workloads(unpushable_pods(radius, connections_known=connected is not None), restart)
    return RotationResult(
        radius=radius,
        tally=holder_tally(radius),
        workloads=tuple(found),
        order=order,
        counts=counts,
        connections_known=connected is not None,
    )


def order_status(
    store: RotationStore, order_id: str, now: datetime, connected: Collection[str] | None
) -> OrderStatus:
    checked = check_order_id(order_id)
    order = store.order(checked)
    if order is None:
        raise OrderNotFoundError(
            f"no rotation order {checked}; 'meshca rotate list' shows the orders this ledger holds",
            reason="order_unknown",
        )
    targets = tuple(store.targets(checked, now))
    return OrderStatus(
        order=order,
        counts=store.counts(checked, now),
        targets=targets,
        holders={t.certificate.serial: holder_of(t.certificate, connected) for t in targets},
        connections_known=connected is not None,
    )


def check_list_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidRequestError(
            f"limit {limit} is out of range; list from 1 to {MAX_LIST_LIMIT} orders",
            reason="limit_invalid",
        )
    return limit


def list_orders(store: RotationStore, limit: int, now: datetime) -> list[tuple[Order, OrderCounts]]:
    """The newest orders first, each with its counts."""
    return [(order, store.counts(order.id, now)) for order in store.orders(limit=check_list_limit(limit))]


def revoke(
    store: RotationStore, serials: Sequence[str], *, reason: str, note: str | None, now: datetime
) -> list[Revocation]:
    if not serials:
        raise InvalidRequestError(
            "name the certificate to revoke with --serial (repeat it for several)", reason="serial_missing"
        )
    return store.revoke(
        selector_serials(serials), reason=revocation_reason(reason), at=now, note=(note or "").strip() or None
    )
