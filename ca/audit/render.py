"""How audit results look: tables that fit a terminal, JSON lines and CSV for pipes. Pure code.

Tables shrink their widest free-text columns (identity, pod, detail) to fit the
width, marking cut text with '…'; numbers and times are never cut. JSON and
CSV carry every field in full.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ca.common.durations import format_duration
from ca.ledger.entries import (
    CA_EVENT,
    CA_SLOT,
    CRL_PUBLISHED,
    ISSUED,
    REFUSED,
    REVOKED,
    ROTATION_ORDER,
    parse_timestamp,
)
from ca.ledger.queries import OrderSummary, Report
from ca.ledger.verify import VerifyReport

GAP = "  "
ELLIPSIS = "…"

# Every field an entry's content can hold, in the order CSV columns and `show` list them.
ENTRY_FIELDS = (
    "seq",
    "kind",
    "time",
    "serial",
    "spiffe_id",
    "namespace",
    "service_account",
    "pod_name",
    "pod_uid",
    "node_name",
    "service_account_uid",
    "not_before",
    "not_after",
    "ttl_seconds",
    "key_type",
    "public_key_sha256",
    "certificate_sha256",
    "auth_method",
    "token_id",
    "token_leeway_seconds",
    "token_leeway_claim",
    "token_leeway_needed_seconds",
    "cluster_id",
    "client_address",
    "reason",
    "status_code",
    "message",
    "ca_key_id",
    "ca_fingerprint",
    "source",
    "agent",
    "order_id",
    "replaces",
    "ordered_by",
    "selector",
    "order_reason",
    "grace_seconds",
    "spread_seconds",
    "grace_ends",
    "matched",
    "note",
    "crl_number",
    "this_update",
    "next_update",
    "entries",
    "crl_sha256",
)


@dataclass(frozen=True)
class Column:
    """A table column. `floors` are the widths it may be cut to, pass by pass, while the table
    is too wide: every column goes to its first floor, then to its second, and so on. A
    column with no floors is never cut."""

    title: str
    floors: tuple[int, ...] = ()
    right: bool = False


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + ELLIPSIS


PASSES = 3


def _floor(column: Column, step: int) -> int | None:
    return column.floors[min(step, len(column.floors) - 1)] if column.floors else None


def table(columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int) -> list[str]:
    """The rows under a header line, each line at most `width` wide when the columns allow."""
    widths = [max([len(c.title), *(len(row[i]) for row in rows)]) for i, c in enumerate(columns)]
    for step in range(PASSES):
        excess = sum(widths) + len(GAP) * (len(columns) - 1) - width
        while excess > 0:
            room = {
                i: widths[i] - floor
                for i, c in enumerate(columns)
                if (floor := _floor(c, step)) is not None and widths[i] > floor
            }
            if not room:
                break
            widest = max(room, key=lambda i: (room[i], i))
            widths[widest] -= 1
            excess -= 1

    def line(cells: Sequence[str]) -> str:
        parts = [
            _cut(cell, w).rjust(w) if c.right else _cut(cell, w).ljust(w)
            for c, cell, w in zip(columns, cells, widths, strict=True)
        ]
        return GAP.join(parts).rstrip()

    return [line([c.title for c in columns]), *(line(row) for row in rows)]


# --------------------------------------------------------------------------- entries


def short_time(stamp: str | None) -> str:
    """'2026-11-21T22:31:24.123456Z' -> '2026-11-21 22:31:24'."""
    return stamp[:19].replace("T", " ") if stamp else "-"


def short_identity(spiffe_id: str | None) -> str:
    """'spiffe://cluster.local/ns/shop/sa/cart' -> 'shop/cart'; other IDs lose only the scheme."""
    if not spiffe_id:
        return "-"
    parts = spiffe_id.removeprefix("spiffe://").split("/")
    if len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa":
        return f"{parts[2]}/{parts[4]}"
    return spiffe_id.removeprefix("spiffe://")


def lifetime(entry: Mapping[str, Any]) -> timedelta | None:
    """What was granted at issuance: not_after minus the time of issue."""
    try:
        return parse_timestamp(entry["not_after"]) - parse_timestamp(entry["time"])
    except (KeyError, TypeError, ValueError):
        return None


def _span(value: timedelta | None) -> str:
    return format_duration(value) if value is not None else "-"


def detail(entry: Mapping[str, Any]) -> str:
    kind = entry.get("kind")
    if kind == ISSUED:
        text = f"{_span(lifetime(entry))}, until {short_time(entry.get('not_after'))[:16]}"
        if entry.get("replaces"):
            text += f", replaces {entry['replaces']} for {entry.get('order_id')}"
        return text
    if kind == REFUSED:
        return f"{entry.get('reason')}: {entry.get('message') or ''}".rstrip(": ")
    if kind == CA_EVENT:
        return f"CA {entry.get('reason')}: key {entry.get('ca_key_id')} from {entry.get('source')}"
    if kind == ROTATION_ORDER:
        return (
            f"{entry.get('order_id')} by {entry.get('ordered_by')}: {entry.get('selector')}, "
            f"{entry.get('matched')} matched, grace {_seconds_span(entry.get('grace_seconds'))}: "
            f"{entry.get('order_reason')}"
        )
    if kind == REVOKED:
        cause = f" by {entry['order_id']}" if entry.get("order_id") else ""
        note = f": {entry['note']}" if entry.get("note") else ""
        return f"{entry.get('reason')}{cause}{note}"
    if kind == CA_SLOT:
        moved = f"{entry.get('from_state')} -> {entry.get('reason')}" if entry.get("from_state") else "made"
        forced = ", forced" if entry.get("forced") else ""
        return (
            f"CA slot {entry.get('slot')} {moved}{forced} by {entry.get('requested_by')} on "
            f"{entry.get('replica')}: signing {str(entry.get('signing_fingerprint'))[:16]}, "
            f"root {str(entry.get('root_fingerprints'))[:16]}"
        )
    if kind == CRL_PUBLISHED:
        return (
            f"CRL {entry.get('crl_number')}: {entry.get('entries')} entries, next update "
            f"{short_time(entry.get('next_update'))[:16]}, key {entry.get('ca_key_id')}"
        )
    return f"{kind}: {entry.get('reason') or ''}".rstrip(": ")


def _seconds_span(seconds: Any) -> str:
    return format_duration(timedelta(seconds=seconds)) if isinstance(seconds, int | float) else "-"


ENTRY_COLUMNS = (
    Column("SEQ", right=True),
    Column("TIME (UTC)"),
    Column("KIND"),
    Column("IDENTITY", floors=(16, 8)),
    Column("POD", floors=(12, 4)),
    Column("SERIAL", floors=(32, 32, 8)),
    Column("DETAIL", floors=(16, 6)),
)


def entries_table(entries: Sequence[Mapping[str, Any]], width: int) -> list[str]:
    rows = [
        [
            str(e.get("seq", "")),
            short_time(e.get("time")),
            str(e.get("kind", "")),
            short_identity(e.get("spiffe_id")),
            e.get("pod_name") or "-",
            e.get("serial") or "-",
            detail(e),
        ]
        for e in entries
    ]
    return table(ENTRY_COLUMNS, rows, width)


def entry_detail(entry: Mapping[str, Any]) -> list[str]:
    """Every field of one entry, one per line, known fields first."""
    names = [n for n in ENTRY_FIELDS if n in entry] + sorted(n for n in entry if n not in ENTRY_FIELDS)
    width = max(len(n) for n in names)
    lines = [f"{name.ljust(width)}  {'-' if entry[name] is None else entry[name]}" for name in names]
    if entry.get("kind") == ISSUED:
        lines.append(f"{'lifetime'.ljust(width)}  {_span(lifetime(entry))} (granted at issuance)")
    return lines


def json_line(value: Mapping[str, Any]) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def csv_lines(fields: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> Iterator[str]:
    """CSV text, header first, one string per row (None becomes an empty field)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), extrasaction="ignore", lineterminator="\r\n")
    writer.writeheader()
    yield buffer.getvalue()
    for row in rows:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
        yield buffer.getvalue()


# --------------------------------------------------------------------------- report


def report_dict(report: Report) -> dict[str, Any]:
    return {
        "at": report.at,
        "max_ttl_seconds": report.max_ttl_seconds,
        "identities": [
            {
                "namespace": i.namespace,
                "spiffe_id": i.spiffe_id,
                "issued": i.issued,
                "valid_now": i.valid_now,
                "ttl": dict(zip(report.ttl_labels, i.ttl_buckets, strict=True)),
                "refused": i.refused,
            }
            for i in report.identities
        ],
        "refusals": [
            {"namespace": r.namespace, "spiffe_id": r.spiffe_id, "reason": r.reason, "count": r.count}
            for r in report.refusals
        ],
        "violations": [
            {
                "seq": v.seq,
                "serial": v.serial,
                "spiffe_id": v.spiffe_id,
                "namespace": v.namespace,
                "key_type": v.key_type,
                "lifetime_seconds": v.lifetime_seconds,
                "not_after": v.not_after,
                "problems": list(v.problems),
            }
            for v in report.violations
        ],
        "violations_total": report.violations_total,
        "orders": [_order_dict(o) for o in report.orders],
        "orders_total": report.orders_total,
    }


def _order_dict(o: OrderSummary) -> dict[str, Any]:
    return {
        "order_id": o.order_id,
        "time": o.time,
        "ordered_by": o.ordered_by,
        "selector": o.selector,
        "reason": o.reason,
        "state": o.state,
        "grace_ends": o.grace_ends,
        "matched": o.matched,
        "replaced": o.replaced,
        "revoked": o.revoked,
        "outstanding": o.outstanding,
        "expired": o.expired,
    }


def report_csv_fields(report: Report) -> list[str]:
    return [
        "section",
        "namespace",
        "spiffe_id",
        "issued",
        "valid_now",
        *(f"ttl{label}" for label in report.ttl_labels),
        "refused",
        "reason",
        "count",
        "serial",
        "key_type",
        "lifetime_seconds",
        "not_after",
        "problems",
        "order_id",
        "time",
        "ordered_by",
        "selector",
        "order_reason",
        "state",
        "grace_ends",
        "matched",
        "replaced",
        "revoked",
        "outstanding",
        "expired",
    ]


def report_csv_rows(report: Report) -> Iterator[dict[str, Any]]:
    """One CSV for the whole report: the `section` column says which part a row belongs to."""
    for i in report.identities:
        yield {
            "section": "identity",
            "namespace": i.namespace,
            "spiffe_id": i.spiffe_id,
            "issued": i.issued,
            "valid_now": i.valid_now,
            **{f"ttl{label}": n for label, n in zip(report.ttl_labels, i.ttl_buckets, strict=True)},
            "refused": i.refused,
        }
    for r in report.refusals:
        yield {
            "section": "refusal",
            "namespace": r.namespace,
            "spiffe_id": r.spiffe_id,
            "reason": r.reason,
            "count": r.count,
        }
    for v in report.violations:
        yield {
            "section": "violation",
            "namespace": v.namespace,
            "spiffe_id": v.spiffe_id,
            "serial": v.serial,
            "key_type": v.key_type,
            "lifetime_seconds": v.lifetime_seconds,
            "not_after": v.not_after,
            "problems": "; ".join(v.problems),
        }
    for o in report.orders:
        fields = {name: value for name, value in _order_dict(o).items() if name != "reason"}
        yield {"section": "order", **fields, "order_reason": o.reason}  # `reason` is a refusal's


def report_table(report: Report, width: int) -> list[str]:
    at = short_time(report.at)
    lines = [f"Certificates by namespace and identity at {at} UTC"]
    lines += table(
        [
            Column("NAMESPACE", floors=(12, 6)),
            Column("IDENTITY", floors=(16, 8)),
            Column("ISSUED", right=True),
            Column("VALID NOW", right=True),
            *(Column(label.upper(), right=True) for label in report.ttl_labels),
            Column("REFUSED", right=True),
        ],
        [
            [
                i.namespace or "-",
                short_identity(i.spiffe_id) if i.spiffe_id else "(unauthenticated)",
                str(i.issued),
                str(i.valid_now),
                *(str(n) for n in i.ttl_buckets),
                str(i.refused),
            ]
            for i in report.identities
        ],
        width,
    )
    lines += ["", "Refusals by reason"]
    if report.refusals:
        lines += table(
            [
                Column("NAMESPACE", floors=(12, 6)),
                Column("IDENTITY", floors=(16, 8)),
                Column("REASON", floors=(16, 8)),
                Column("COUNT", right=True),
            ],
            [
                [
                    r.namespace or "-",
                    short_identity(r.spiffe_id) if r.spiffe_id else "(unauthenticated)",
                    r.reason,
                    str(r.count),
                ]
                for r in report.refusals
            ],
            width,
        )
    else:
        lines.append("none")
    limit = format_duration(timedelta(seconds=report.max_ttl_seconds))
    title = f"Valid certificates that break the policy (max TTL {limit}, key types)"
    lines += ["", f"{title}: {report.violations_total or 'none'}"]
    if report.violations:
        lines += table(
            [
                Column("SERIAL", floors=(32, 32, 8)),
                Column("IDENTITY", floors=(16, 8)),
                Column("KEY"),
                Column("LIFETIME", right=True),
                Column("EXPIRES (UTC)"),
                Column("PROBLEM", floors=(20, 10)),
            ],
            [
                [
                    v.serial,
                    short_identity(v.spiffe_id),
                    v.key_type,
                    format_duration(timedelta(seconds=v.lifetime_seconds)),
                    short_time(v.not_after),
                    "; ".join(v.problems),
                ]
                for v in report.violations
            ],
            width,
        )
        if report.violations_total > len(report.violations):
            lines.append(f"(the newest {len(report.violations)} of {report.violations_total})")
    return lines + _orders_table(report, width)


def _orders_table(report: Report, width: int) -> list[str]:
    lines = ["", f"Rotation orders: {report.orders_total or 'none'}"]
    if not report.orders:
        return lines
    lines += table(
        [
            Column("ORDER"),
            Column("TIME (UTC)"),
            Column("SELECTOR", floors=(20, 10)),
            Column("STATE"),
            Column("MATCHED", right=True),
            Column("REPLACED", right=True),
            Column("REVOKED", right=True),
            Column("OUTSTANDING", right=True),
            Column("EXPIRED", right=True),
            Column("REASON", floors=(16, 6)),
        ],
        [
            [
                o.order_id,
                short_time(o.time),
                o.selector,
                o.state,
                str(o.matched),
                str(o.replaced),
                str(o.revoked),
                str(o.outstanding),
                str(o.expired),
                o.reason,
            ]
            for o in report.orders
        ],
        width,
    )
    if report.orders_total > len(report.orders):
        lines.append(f"(the newest {len(report.orders)} of {report.orders_total})")
    return lines


# --------------------------------------------------------------------------- verify


def verify_dict(result: VerifyReport, heads: Sequence[str]) -> dict[str, Any]:
    return {
        "ok": result.ok,
        "entries_checked": result.entries_checked,
        "checkpoints_checked": result.checkpoints_checked,
        "bad_seq": result.bad_seq,
        "problem": result.problem,
        "last_seq": result.last_seq,
        "signed_through": result.signed_through,
        "unsigned_entries": result.unsigned_entries,
        "external_heads": list(heads),
        "summary": result.summary(),
    }
