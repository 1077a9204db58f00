"""Ledger record contents: an issuance's optional rotation fields appear only when set, so that
every record written before them hashes as it did; the rotation kinds fit their columns."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from ca.ledger import schema
from ca.ledger.chain import canonical
from ca.ledger.entries import (
    INDEXED_FIELDS,
    KINDS,
    crl_published_content,
    issued_content,
    revoked_content,
    rotation_order_content,
)

T0 = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)

ISSUED: dict[str, Any] = {
    "time": T0,
    "serial": 0x1F2E,
    "spiffe_id": "spiffe://cluster.local/ns/shop/sa/cart",
    "namespace": "shop",
    "service_account": "cart",
    "service_account_uid": None,
    "pod_name": "cart-0",
    "pod_uid": None,
    "node_name": "node-1",
    "token_id": None,
    "auth_method": "jwt",
    "cluster_id": "Kubernetes",
    "client_address": "ipv4:127.0.0.1:1",
    "key_type": "EC_P256",
    "public_key_sha256": "00" * 32,
    "certificate_sha256": "11" * 32,
    "not_before": T0 - timedelta(minutes=2),
    "not_after": T0 + timedelta(hours=1),
    "ca_key_id": "k1",
    "ca_fingerprint": "22" * 32,
}

# The content of ISSUED as meshca wrote it before orders existed.
BEFORE_ROTATION = (
    '{"auth_method":"jwt","ca_fingerprint":"'
    + "22" * 32
    + '","ca_key_id":"k1","certificate_sha256":"'
    + "11" * 32
    + '","client_address":"ipv4:127.0.0.1:1","cluster_id":"Kubernetes","key_type":"EC_P256",'
    '"kind":"issued","namespace":"shop","node_name":"node-1","not_after":"2026-12-07T09:00:00.000000Z",'
    '"not_before":"2026-12-07T07:58:00.000000Z","pod_name":"cart-0","pod_uid":null,"public_key_sha256":"'
    + "00"
    * 32
    + '","serial":"1f2e","service_account":"cart","service_account_uid":null,'
    '"spiffe_id":"spiffe://cluster.local/ns/shop/sa/cart","time":"2026-12-07T08:00:00.000000Z",'
    '"token_id":null,"ttl_seconds":3720}'
)


def test_an_issuance_without_rotation_fields_is_encoded_as_before() -> None:
    assert canonical(issued_content(**ISSUED)) == BEFORE_ROTATION


OPTIONAL = st.one_of(st.none(), st.text(min_size=1, max_size=20))


@given(order_id=OPTIONAL, replaces=OPTIONAL, agent=OPTIONAL)
def test_rotation_fields_appear_only_when_set(
    order_id: str | None, replaces: str | None, agent: str | None
) -> None:
    content = issued_content(**ISSUED, order_id=order_id, replaces=replaces, agent=agent)
    given_fields = {"order_id": order_id, "replaces": replaces, "agent": agent}
    assert {k: content[k] for k in given_fields if k in content} == {
        k: v for k, v in given_fields.items() if v is not None
    }
    without = {k: v for k, v in content.items() if k not in given_fields}
    assert canonical(without) == BEFORE_ROTATION


def test_every_kind_fits_the_kind_column() -> None:
    width = schema.entries.c.kind.type.length  # type: ignore[attr-defined]
    assert all(len(kind) <= width for kind in KINDS)


@given(reason=st.text(max_size=1024), matched=st.integers(min_value=0, max_value=10**6))
def test_an_orders_reason_stays_out_of_the_short_reason_column(reason: str, matched: int) -> None:
    content = rotation_order_content(
        time=T0,
        order_id="ro-0123456789ab",
        ordered_by="admin",
        selector="namespace=shop",
        reason=reason,
        grace=timedelta(minutes=5),
        spread=timedelta(seconds=1.5),
        matched=matched,
    )
    assert content["order_reason"] == reason and "reason" not in content
    assert (content["grace_seconds"], content["spread_seconds"]) == (300, 1.5)
    assert content["grace_ends"] == "2026-12-07T08:05:00.000000Z"


def test_revocations_and_crls_fill_the_indexed_columns_they_mean() -> None:
    revoked = revoked_content(
        time=T0,
        serial="1f2e",
        spiffe_id=ISSUED["spiffe_id"],
        namespace="shop",
        service_account="cart",
        pod_name="cart-0",
        reason="keyCompromise",
        not_after=T0 + timedelta(hours=1),
    )
    assert {name: revoked.get(name) for name in INDEXED_FIELDS} == {
        "kind": "revoked",
        "time": "2026-12-07T08:00:00.000000Z",
        "serial": "1f2e",
        "spiffe_id": ISSUED["spiffe_id"],
        "namespace": "shop",
        "service_account": "cart",
        "pod_name": "cart-0",
        "not_after": "2026-12-07T09:00:00.000000Z",
        "reason": "keyCompromise",
    }
    assert "order_id" not in revoked and "note" not in revoked
    crl = crl_published_content(
        time=T0,
        crl_number=2**63,
        this_update=T0,
        next_update=T0 + timedelta(hours=1),
        entries=0,
        ca_key_id="k1",
        crl_sha256="ab" * 32,
    )
    assert [name for name in INDEXED_FIELDS if crl.get(name) is not None] == ["kind", "time"]
