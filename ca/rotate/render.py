"""How rotation results look: text for people, one JSON object for scripts. Pure code.

A dry run groups the matched certificates by namespace and identity, each with its pods,
nodes and whether a push reaches it, then lists the workloads a push cannot reach. JSON
carries every field; times in it are the ledger's timestamps.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from itertools import groupby
from typing import Any

from ca.common.durations import format_duration
from ca.ledger.entries import timestamp
from ca.ledger.rotation import (
    BlastRadius,
    Holder,
    Order,
    OrderCounts,
    Revocation,
    Target,
    TargetCertificate,
    TargetState,
)
from ca.ledger.rotation_operations import OrderStatus, RotationResult, Workload

GAP = "  "
UNKNOWN_CONNECTIONS = (
    "which meshca agents are connected is known only to the running CA; ask it with --ca-addr"
)
_HOLDER_WORDS = {
    Holder.CONNECTED: "connected",
    Holder.NOT_CONNECTED: "not connected",
    Holder.NOT_PUSHABLE: "not pushable",
}
_STATE_ORDER = (TargetState.OUTSTANDING, TargetState.REPLACED, TargetState.REVOKED, TargetState.EXPIRED)


def moment(value: datetime) -> str:
    """A time for people: UTC to the second."""
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def table(header: Sequence[str], rows: Iterable[Sequence[str]], indent: str = "") -> list[str]:
    """Left-aligned columns as wide as their widest cell; the last column is never padded."""
    body = [list(header), *(list(row) for row in rows)]
    widths = [max(len(row[i]) for row in body) for i in range(len(header))]
    return [
        indent + GAP.join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in body
    ]


def _holder_word(holder: Holder | None, known: bool) -> str:
    if holder is None:
        return "-"
    if not known and holder is not Holder.NOT_PUSHABLE:
        return "meshca agent"
    return _HOLDER_WORDS[holder]


def tally_line(result: RotationResult) -> str:
    tally = result.tally
    pushable = tally.get(Holder.CONNECTED, 0) + tally.get(Holder.NOT_CONNECTED, 0)
    if result.connections_known:
        held = (
            f"{tally.get(Holder.CONNECTED, 0)} held by connected meshca agents (pushed within seconds), "
            f"{tally.get(Holder.NOT_CONNECTED, 0)} by meshca agents not connected now (pushed when they "
            f"reconnect), {tally.get(Holder.NOT_PUSHABLE, 0)} not pushable (other clients, such as "
            "Istio's agent)"
        )
    else:
        held = (
            f"{pushable} held by meshca agents, {tally.get(Holder.NOT_PUSHABLE, 0)} not pushable "
            f"(other clients, such as Istio's agent); {UNKNOWN_CONNECTIONS}"
        )
    noun = "certificate matches" if result.matched == 1 else "certificates match"
    return f"{result.matched} live {noun}: {held}"


def _namespace(certificate: TargetCertificate) -> str:
    return certificate.namespace or "(no namespace)"


def radius_lines(radius: BlastRadius, known: bool) -> list[str]:
    """The matched certificates by namespace, then identity, with pod, node and holder."""
    lines: list[str] = []
    for namespace, in_namespace in groupby(radius.targets, key=_namespace):
        lines.append(f"namespace {namespace}")
        for identity, certificates in groupby(in_namespace, key=lambda t: t.spiffe_id):
            held = list(certificates)
            words = [_holder_word(radius.holders.get(t.serial), known) for t in held]
            summary = ", ".join(f"{words.count(word)} {word}" for word in dict.fromkeys(words))
            noun = "certificate" if len(held) == 1 else "certificates"
            lines.append(f"  {identity}: {len(held)} {noun} ({summary})")
            rows = [
                (t.pod or "-", t.node or "-", t.serial, word, moment(t.not_after))
                for t, word in zip(held, words, strict=True)
            ]
            lines.extend(table(("POD", "NODE", "SERIAL", "HOLDER", "EXPIRES"), rows, indent="    "))
    return lines


def workload_lines(workloads: Sequence[Workload], *, restart_asked: bool, placed: bool) -> list[str]:
    if not workloads:
        return []
    if placed and restart_asked:
        heading = "workloads a push cannot reach, restarted with --restart-workloads:"
    else:
        heading = (
            "workloads a push cannot reach (restart them, or order with --restart-workloads; "
            "otherwise their certificates are revoked when the grace period ends):"
        )
    rows = [
        (
            w.namespace,
            w.kind,
            w.name,
            ",".join(w.pods),
            "restarted" if w.restarted else (w.problem or ("not restarted" if placed else "")),
        )
        for w in workloads
    ]
    return ["", heading, *table(("NAMESPACE", "KIND", "NAME", "PODS", "RESULT"), rows, indent="  ")]


def _order_terms(order: Order) -> str:
    return f"grace {format_duration(order.grace)}, spread {format_duration(order.spread)}"


def rotation_text(result: RotationResult, *, restart_asked: bool) -> list[str]:
    order = result.order
    if order is None:
        lines = ["dry run: nothing was changed", tally_line(result)]
        if result.radius.targets:
            lines.append("")
            lines.extend(radius_lines(result.radius, result.connections_known))
    else:
        lines = [
            f"order {order.id} placed by {order.ordered_by} at {moment(order.time)}",
            f"selector: {order.selector.describe()}; {_order_terms(order)}",
            tally_line(result),
            f"what is still outstanding at {moment(order.grace_ends)} will be revoked",
            f"follow it with: meshca rotate status {order.id}",
        ]
    lines.extend(workload_lines(result.workloads, restart_asked=restart_asked, placed=order is not None))
    return lines


def _state_line(order: Order) -> str:
    if order.state.value == "completed":
        return f"completed: the grace period ended at {moment(order.grace_ends)}"
    return f"pushing: what is still outstanding at {moment(order.grace_ends)} will be revoked"


def counts_line(counts: OrderCounts) -> str:
    return (
        f"matched {counts.matched}, replaced {counts.replaced}, outstanding {counts.outstanding}, "
        f"revoked {counts.revoked}, expired {counts.expired}"
    )


def _target_row(target: Target, status: OrderStatus) -> tuple[str, ...]:
    certificate = target.certificate
    holder = status.holders.get(certificate.serial)
    return (
        target.state.value,
        certificate.serial,
        certificate.spiffe_id,
        certificate.pod or "-",
        certificate.node or "-",
        _holder_word(holder, status.connections_known) if target.state is TargetState.OUTSTANDING else "",
        target.replaced_by or "",
    )


def status_text(status: OrderStatus) -> list[str]:
    order = status.order
    lines = [
        f"order {order.id}: {_state_line(order)}",
        f"ordered by {order.ordered_by} at {moment(order.time)}: {order.reason}",
        f"selector: {order.selector.describe()}; {_order_terms(order)}",
        counts_line(status.counts),
    ]
    targets = sorted(status.targets, key=lambda t: (_STATE_ORDER.index(t.state), t.certificate.serial))
    if targets:
        rows = [_target_row(t, status) for t in targets]
        lines.append("")
        lines.extend(table(("STATE", "SERIAL", "IDENTITY", "POD", "NODE", "HOLDER", "REPLACED BY"), rows))
    return lines


def list_text(orders: Sequence[tuple[Order, OrderCounts]]) -> list[str]:
    if not orders:
        return []
    rows = [
        (
            order.id,
            moment(order.time),
            order.state.value,
            str(counts.matched),
            str(counts.replaced),
            str(counts.outstanding),
            str(counts.revoked),
            order.selector.describe(),
            order.reason,
        )
        for order, counts in orders
    ]
    header = ("ORDER", "TIME", "STATE", "MATCHED", "REPLACED", "OUTSTANDING", "REVOKED", "SELECTOR", "REASON")
    return table(header, rows)


def revoked_text(revoked: Sequence[Revocation]) -> list[str]:
    return [
        f"revoked {r.serial} ({r.spiffe_id or 'unknown identity'}) at {moment(r.revoked_at)}: {r.reason}; "
        f"listed in the CRL until it expires at {moment(r.not_after)}"
        for r in revoked
    ]


# ------------------------------------------------------------------ JSON


def certificate_dict(certificate: TargetCertificate, holder: Holder | None) -> dict[str, Any]:
    return {
        "serial": certificate.serial,
        "spiffe_id": certificate.spiffe_id,
        "namespace": certificate.namespace,
        "service_account": certificate.service_account,
        "pod": certificate.pod,
        "node": certificate.node,
        "issued": timestamp(certificate.issued),
        "not_after": timestamp(certificate.not_after),
        "holder": holder.value if holder is not None else None,
    }


def order_dict(order: Order, counts: OrderCounts) -> dict[str, Any]:
    return {
        "id": order.id,
        "ordered_by": order.ordered_by,
        "time": timestamp(order.time),
        "selector": order.selector.describe(),
        "reason": order.reason,
        "grace_seconds": int(order.grace.total_seconds()),
        "spread_seconds": int(order.spread.total_seconds()),
        "grace_ends": timestamp(order.grace_ends),
        "state": order.state.value,
        "matched": counts.matched,
        "replaced": counts.replaced,
        "outstanding": counts.outstanding,
        "revoked": counts.revoked,
        "expired": counts.expired,
    }


def workload_dict(workload: Workload) -> dict[str, Any]:
    return {
        "namespace": workload.namespace,
        "kind": workload.kind,
        "name": workload.name,
        "pods": list(workload.pods),
        "restarted": workload.restarted,
        "problem": workload.problem,
    }


def rotation_dict(result: RotationResult) -> dict[str, Any]:
    radius = result.radius
    tally: Mapping[Holder, int] = result.tally
    return {
        "dry_run": result.order is None,
        "order": order_dict(result.order, result.counts or OrderCounts()) if result.order else None,
        "matched": result.matched,
        "connections_known": result.connections_known,
        **{holder.value: tally.get(holder, 0) for holder in Holder},
        "targets": [certificate_dict(t, radius.holders.get(t.serial)) for t in radius.targets],
        "workloads": [workload_dict(w) for w in result.workloads],
        "warnings": list(radius.warnings),
    }


def status_dict(status: OrderStatus) -> dict[str, Any]:
    return {
        "order": order_dict(status.order, status.counts),
        "connections_known": status.connections_known,
        "targets": [
            {
                **certificate_dict(t.certificate, status.holders.get(t.certificate.serial)),
                "state": t.state.value,
                "replaced_by": t.replaced_by,
            }
            for t in status.targets
        ],
    }


def list_dict(orders: Sequence[tuple[Order, OrderCounts]]) -> dict[str, Any]:
    return {"orders": [order_dict(order, counts) for order, counts in orders]}


def revoked_dict(revoked: Sequence[Revocation]) -> dict[str, Any]:
    return {
        "revoked": [
            {
                "serial": r.serial,
                "spiffe_id": r.spiffe_id,
                "revoked_at": timestamp(r.revoked_at),
                "reason": r.reason,
                "order_id": r.order_id,
                "not_after": timestamp(r.not_after),
            }
            for r in revoked
        ]
    }


def json_text(value: Mapping[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)
