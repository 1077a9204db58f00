"""What a ledger entry says: the content of issued, refused and CA-event records. Pure code.

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
KINDS = (ISSUED, REFUSED, CA_EVENT)

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
) -> dict[str, Any]:
    """An issuance; `token_leeway` (leeway_fields) when the token passed only within the leeway."""
    return {
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
