"""Schema migration: a version 1 ledger is brought up to date in place, by the store and by the CA."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import inspect

from ca.ledger import checkpoint as cp
from ca.ledger import schema
from ca.ledger.chain import GENESIS_HASH, canonical, chain_hash
from ca.ledger.entries import INDEXED_FIELDS, ISSUED, ca_event_content, refused_content, timestamp
from ca.ledger.ledger import HEAD_FILE, KEY_FILE, HeadFile, load_or_create_ledger_key
from ca.ledger.store import LedgerStore
from tests.support.ca_server import start_ca
from tests.support.clock import FakeClock
from tests.support.ledger import (
    DAY,
    all_entries,
    leaf_serial,
    query,
    sql,
    verify_state,
)


def _v1_contents(clock: FakeClock) -> list[dict[str, object]]:
    now, authority_fields = clock.now(), {"ca_key_id": "k1", "ca_fingerprint": "ab" * 32}
    issued = {
        "kind": ISSUED,
        "time": timestamp(now),
        "serial": "1f2e3d",
        "spiffe_id": "spiffe://cluster.local/ns/shop/sa/cart",
        "namespace": "shop",
        "service_account": "cart",
        "pod_name": "cart-0",
        "not_before": timestamp(now - timedelta(minutes=5)),
        "not_after": timestamp(now + DAY),
        "ttl_seconds": 86700,
        **authority_fields,
    }
    return [
        ca_event_content(
            time=now, event="created", source="/old", not_after=now + 3650 * DAY, **authority_fields
        ),
        issued,
        refused_content(
            time=now,
            reason="token_expired",
            status_code="UNAUTHENTICATED",
            message="expired",
            client_address="a",
        ),
        {**issued, "serial": "4c5b6a", "pod_name": "cart-1"},
        refused_content(
            time=now,
            reason="impersonation_denied",
            status_code="PERMISSION_DENIED",
            message="no",
            client_address="b",
            namespace="shop",
        ),
    ]


def _write_v1_ledger(url: str, state: Path, clock: FakeClock) -> tuple[int, str]:
    """A v1 ledger as the first release wrote it (no reason column), with a signed checkpoint."""
    store = LedgerStore(url)
    try:
        assert store.migrate(target=1) == 0
        assert store.schema_version() == 1
        columns = {c["name"] for c in inspect(store.engine).get_columns("ledger_entries")}
        assert "reason" not in columns
        previous, seq = GENESIS_HASH, 0
        for content in _v1_contents(clock):
            seq += 1
            content_json = canonical(content)
            entry_hash = chain_hash(previous, content_json)
            sql(
                store,
                "INSERT INTO ledger_entries (seq, kind, time, serial, spiffe_id, namespace, service_account,"
                " pod_name, not_after, content, prev_hash, entry_hash) VALUES (:seq, :kind, :time, :serial,"
                " :spiffe_id, :namespace, :service_account, :pod_name, :not_after, :content, :prev, :hash)",
                seq=seq,
                **{f: content.get(f) for f in INDEXED_FIELDS if f != "reason"},
                content=content_json,
                prev=previous,
                hash=entry_hash,
            )
            previous = entry_hash
        sql(store, "UPDATE ledger_head SET seq = :s, hash = :h WHERE id = 1", s=seq, h=previous)
        key = load_or_create_ledger_key(state / KEY_FILE)
        signed = cp.sign(
            cp.Checkpoint(
                head_seq=seq,
                head_hash=previous,
                count=seq,
                time=timestamp(clock.now()),
                key_id=cp.key_id(key.public_key()),
            ),
            key,
        )
        sql(
            store,
            "INSERT INTO ledger_checkpoints (head_seq, body) VALUES (:s, :b)",
            s=seq,
            b=signed.to_json(),
        )
        HeadFile(state / HEAD_FILE).publish(signed)
        return seq, previous
    finally:
        store.dispose()


def test_a_v1_ledger_is_migrated_by_the_store(ledger_url: str, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    last_seq, last_hash = _write_v1_ledger(ledger_url, state, FakeClock())
    store = LedgerStore(ledger_url)
    try:
        assert store.migrate() == 1
        assert store.schema_version() == schema.CURRENT_VERSION == 6
        assert store.migrate() == 6  # a second run changes nothing
        reasons = {r["seq"]: r["reason"] for r in query(store, "SELECT seq, reason FROM ledger_entries")}
        assert reasons == {1: "created", 2: None, 3: "token_expired", 4: None, 5: "impersonation_denied"}
        indexes = {i["name"] for i in inspect(store.engine).get_indexes("ledger_entries")}
        assert {
            "ix_ledger_kind_time",
            "ix_ledger_ns_sa",
            "ix_ledger_not_after",
            "ix_ledger_pod",
            "ix_ledger_serial",
        } <= indexes
        assert store.head()[:2] == (last_seq, last_hash)
        report = verify_state(ledger_url, state)
        assert report.ok and report.entries_checked == 5, report.summary()
    finally:
        store.dispose()


def test_the_ca_migrates_a_v1_ledger_and_extends_its_chain(ledger_url: str, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    last_seq, last_hash = _write_v1_ledger(ledger_url, state, FakeClock())
    ca = start_ca(state, "--ledger", ledger_url)
    try:
        chain, _ = ca.request(token=ca.token("shop", "cart"))
    finally:
        ca.stop()
    entries = all_entries(ledger_url)
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    assert entries[last_seq].prev_hash == last_hash  # the CA's own event follows the old head
    assert entries[last_seq].content["kind"] == "ca_event"
    # Then the issuance (and whatever else the CA records of its own, such as a published CRL).
    assert [e.content["serial"] for e in entries[last_seq:] if e.content["kind"] == ISSUED] == [
        leaf_serial(chain)
    ]
    assert entries[2].columns is not None
    assert dict(zip(INDEXED_FIELDS, entries[2].columns, strict=True))["reason"] == "token_expired"
    report = verify_state(ledger_url, state)
    assert report.ok and report.entries_checked == len(entries), report.summary()
    store = LedgerStore(ledger_url)
    try:
        assert store.schema_version() == schema.CURRENT_VERSION
    finally:
        store.dispose()
