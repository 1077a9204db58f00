"""What a ledger entry says: the content of each kind of record. Pure code.

Issuances, refusals and CA events; and for forced rotation, each order, each revocation
and each CRL the CA published. An issuance that an order caused names the order and the
serial it replaces.

An entry's content is a flat JSON object, stored in canonical form (sorted keys, no
spaces) and linked to the entry before it by the hash chain in `ledger/chain`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from ca.issuance.x509_der import certificate_fingerprints

ISSUED = "issued"
REFUSED = "refused"
CA_EVENT = "ca_event"
ROTATION_ORDER = "rotation_order"
REVOKED = "revoked"
CRL_PUBLISHED = "crl_published"
CA_SLOT = "ca_slot"
KINDS = (ISSUED, REFUSED, CA_EVENT, ROTATION_ORDER, REVOKED, CRL_PUBLISHED, CA_SLOT)
# What `agent` says in an issuance requested by a meshca agent.
MESHCA_AGENT = "meshca"

# Columns kept beside the canonical content so queries can use indexes;
# verification checks that each one still equals the content.
INDEXED_FIELDS = (
    "kind",
    "time",
    "serial",
    "spiffe_id",
    "namespace",
    "service_account",
    "pod_name",
    "not_after",
    "reason",
)


def timestamp(moment: datetime) -> str:
    """UTC, microseconds, 'Z': one spelling for every time in the ledger, sortable as text."""
    # isoformat, not strftime: each certificate needs three, and strftime costs several times more.
    m = moment if moment.tzinfo is UTC else moment.astimezone(UTC)
    return m.isoformat(timespec="microseconds").removesuffix("+00:00") + "Z"


def parse_timestamp(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def indexed_values(content: Mapping[str, Any]) -> dict[str, Any]:
    return {name: content.get(name) for name in INDEXED_FIELDS}


def issued_content(
    *,
    time: datetime,
    serial: int,
    spiffe_id: str,
    namespace: str,
    service_account: str,
    service_account_uid: str | None,
    pod_name: str | None,
    pod_uid: str | None,
    node_name: str | None,
    token_id: str | None,
    auth_method: str,
    cluster_id: str | None,
    client_address: str,
    key_type: str,
    public_key_sha256: str,
    certificate_sha256: str,
    not_before: datetime,
    not_after: datetime,
    ca_key_id: str,
    ca_fingerprint: str,
    token_leeway: Mapping[str, Any] | None = None,
    order_id: str | None = None,
    replaces: str | None = None,
    agent: str | None = None,
) -> dict[str, Any]:
    """An issuance; `token_leeway` (leeway_fields) when the token passed only within the leeway.

    `order_id` and `replaces` (the serial this certificate replaces) when a rotation order
    caused it, `agent` ("meshca") when a meshca agent asked for it: each only when set, so
    that records without them hash as they always did."""
    return {
        **_present(order_id=order_id, replaces=replaces, agent=agent),
        **(token_leeway or {}),
        "kind": ISSUED,
        "time": timestamp(time),
        "serial": format(serial, "x"),
        "spiffe_id": spiffe_id,
        "namespace": namespace,
        "service_account": service_account,
        "service_account_uid": service_account_uid,
        "pod_name": pod_name,
        "pod_uid": pod_uid,
        "node_name": node_name,
        "token_id": token_id,
        "auth_method": auth_method,
        "cluster_id": cluster_id,
        "client_address": client_address,
        "key_type": key_type,
        "public_key_sha256": public_key_sha256,
        "certificate_sha256": certificate_sha256,
        "not_before": timestamp(not_before),
        "not_after": timestamp(not_after),
        "ttl_seconds": int((not_after - not_before).total_seconds()),
        "ca_key_id": ca_key_id,
        "ca_fingerprint": ca_fingerprint,
    }


def _present(**fields: Any) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None}


class IssuedRecord(NamedTuple):
    """An issuance as the CA hands it to the ledger: what `issued_content` needs, with the
    certificate as PEM in place of its fingerprints, so that hashing it and encoding the
    entry happen where the entry is written (the ledger process), not on the CA's loop."""

    time: datetime
    serial: int
    spiffe_id: str
    namespace: str
    service_account: str
    service_account_uid: str | None
    pod_name: str | None
    pod_uid: str | None
    node_name: str | None
    token_id: str | None
    auth_method: str
    cluster_id: str | None
    client_address: str
    key_type: str
    certificate_pem: str
    not_before: datetime
    not_after: datetime
    ca_key_id: str
    ca_fingerprint: str
    token_leeway: Mapping[str, Any] | None = None
    order_id: str | None = None
    replaces: str | None = None
    agent: str | None = None


def leeway_fields(*, claim: str, needed: timedelta, leeway: timedelta) -> dict[str, Any]:
    """What an entry records when the token clock leeway decided its outcome: the leeway in force,
    the time claim it was about, and how far outside that claim the strict clock put the token."""
    return {
        "token_leeway_seconds": _seconds(leeway),
        "token_leeway_claim": claim,
        "token_leeway_needed_seconds": _seconds(needed),
    }


def _seconds(value: timedelta) -> int | float:
    seconds = round(value.total_seconds(), 3)
    return int(seconds) if seconds.is_integer() else seconds


# What a writer takes: an issuance still to be encoded, or any entry's content.
Record = IssuedRecord | Mapping[str, Any]


def content_of(record: Record) -> Mapping[str, Any]:
    if not isinstance(record, IssuedRecord):
        return record
    fields = record._asdict()
    public_key_sha256, certificate_sha256 = certificate_fingerprints(fields.pop("certificate_pem"))
    return issued_content(
        **fields, public_key_sha256=public_key_sha256, certificate_sha256=certificate_sha256
    )


def refused_content(
    *,
    time: datetime,
    reason: str,
    status_code: str,
    message: str,
    client_address: str,
    spiffe_id: str | None = None,
    namespace: str | None = None,
    service_account: str | None = None,
    pod_name: str | None = None,
    token_leeway: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A refusal: never the token itself, only what the caller claimed or proved; `token_leeway`
    (leeway_fields) when the token was refused on its time claims."""
    return {
        **(token_leeway or {}),
        "kind": REFUSED,
        "time": timestamp(time),
        "reason": reason,
        "status_code": status_code,
        "message": message,
        "client_address": client_address,
        "spiffe_id": spiffe_id,
        "namespace": namespace,
        "service_account": service_account,
        "pod_name": pod_name,
    }


def ca_event_content(
    *, time: datetime, event: str, ca_key_id: str, ca_fingerprint: str, source: str, not_after: datetime
) -> dict[str, Any]:
    return {
        "kind": CA_EVENT,
        "time": timestamp(time),
        "reason": event,
        "ca_key_id": ca_key_id,
        "ca_fingerprint": ca_fingerprint,
        "source": source,
        "not_after": timestamp(not_after),
    }


def rotation_order_content(
    *,
    time: datetime,
    order_id: str,
    ordered_by: str,
    selector: str,
    reason: str,
    grace: timedelta,
    spread: timedelta,
    matched: int,
) -> dict[str, Any]:
    """A rotation order. `selector` as Selector.describe() gives it; the operator's reason is
    `order_reason` (the `reason` column is a short token, this is free text)."""
    return {
        "kind": ROTATION_ORDER,
        "time": timestamp(time),
        "order_id": order_id,
        "ordered_by": ordered_by,
        "selector": selector,
        "order_reason": reason,
        "grace_seconds": _seconds(grace),
        "spread_seconds": _seconds(spread),
        "grace_ends": timestamp(time + grace),
        "matched": matched,
    }


def revoked_content(
    *,
    time: datetime,
    serial: str,
    spiffe_id: str | None,
    namespace: str | None,
    service_account: str | None,
    pod_name: str | None,
    reason: str,
    not_after: datetime,
    order_id: str | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    """A revocation: `reason` an RFC 5280 reason name; the certificate's identity as issued, so
    that audits by namespace or identity find it; `not_after`, when it leaves the CRL."""
    return {
        "kind": REVOKED,
        "time": timestamp(time),
        "serial": serial,
        "spiffe_id": spiffe_id,
        "namespace": namespace,
        "service_account": service_account,
        "pod_name": pod_name,
        "reason": reason,
        "not_after": timestamp(not_after),
        **_present(order_id=order_id, note=note),
    }


def crl_published_content(
    *,
    time: datetime,
    crl_number: int,
    this_update: datetime,
    next_update: datetime,
    entries: int,
    ca_key_id: str,
    crl_sha256: str,
) -> dict[str, Any]:
    return {
        "kind": CRL_PUBLISHED,
        "time": timestamp(time),
        "crl_number": crl_number,
        "this_update": timestamp(this_update),
        "next_update": timestamp(next_update),
        "entries": entries,
        "ca_key_id": ca_key_id,
        "crl_sha256": crl_sha256,
    }


def ca_slot_content(
    *,
    time: datetime,
    slot_id: str,
    from_state: str | None,
    to_state: str,
    signing_fingerprint: str,
    root_fingerprints: tuple[str, ...],
    not_after: datetime,
    forced: bool,
    replica: str,
    requested_by: str,
    why: str,
) -> dict[str, Any]:
    """A CA signing slot changing state (`from_state` None: made). `reason` is the new state;
    `replica` did it, `requested_by` asked for it (`schedule` or an operator)."""
    return {
        "kind": CA_SLOT,
        "time": timestamp(time),
        "reason": to_state,
        "slot": slot_id,
        "from_state": from_state,
        "signing_fingerprint": signing_fingerprint,
        "root_fingerprints": ",".join(root_fingerprints),
        "not_after": timestamp(not_after),
        "forced": forced,
        "replica": replica,
        "requested_by": requested_by,
        "why": why,
    }
