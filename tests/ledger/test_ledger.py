"""The issuance ledger, on SQLite and on the real PostgreSQL server (every test runs on both).

Tampering: each way of editing, deleting, reordering, truncating or rolling back records is
made with raw SQL, as someone with database access would, and verify_ledger must name it.
Then the CA itself: every certificate it returns is recorded first; storage it cannot write
makes it refuse with UNAVAILABLE and recover by itself; an older schema is migrated in place.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc
import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy import inspect

from ca._proto import istio_ca_pb2
from ca.errors import UnavailableError
from ca.ledger import checkpoint as cp
from ca.ledger import schema
from ca.ledger.chain import GENESIS_HASH, canonical, chain_hash
from ca.ledger.entries import INDEXED_FIELDS, ISSUED, REFUSED, ca_event_content, refused_content, timestamp
from ca.ledger.ledger import HEAD_FILE, KEY_FILE, HeadFile, load_or_create_ledger_key
from ca.ledger.store import LedgerStore
from ca.ledger.verify import verify_ledger
from tests.support import ledger as ledger_support
from tests.support.ca_server import RunningCa, start_ca
from tests.support.clock import FakeClock
from tests.support.forgery import append_past_head, insert_and_rechain
from tests.support.ledger import (
    MESHCA,
    POSTGRES_ADMIN_URL,
    LedgerRig,
    all_entries,
    issued_serials,
    ledger_locked,
    ledger_rig,
    libpq_url,
    postgres_database,
    postgres_url,
    query,
    rechain,
    require_postgres,
    restore,
    snapshot,
    sql,
    verify_state,
)
from tests.support.pki import ec_key, make_csr

ledger_url = ledger_support.ledger_url  # the fixture: every test below runs on SQLite and PostgreSQL
DAY = timedelta(days=1)


# --------------------------------------------------------------------------- tampering

# The ledger every tampering case starts from, written through Ledger with a fake clock:
#
#   seq  1 ca_event   2-4 issued   5 refused   6 issued   | checkpoint 6 (a snapshot is kept here)
#   seq  7-9 issued   10 refused   11-12 issued           | checkpoint 12 = the head file
#
# Entry 4 is an issuance, entry 5 a refusal.


@pytest.fixture
def rig(ledger_url: str, tmp_path: Path) -> Iterator[LedgerRig]:
    with ledger_rig(ledger_url, tmp_path / "state") as r:
        r.event("created")
        r.issue(3)
        r.refuse("token_expired")
        r.issue(1, namespace="pay", account="ledger")
        assert r.checkpoint().head_seq == 6
        r.saved["at6"] = snapshot(r.store)
        r.issue(3, namespace="pay", account="api")
        r.refuse("impersonation_denied")
        r.issue(2)
        assert r.checkpoint().head_seq == 12
        assert r.store.head()[0] == 12
        yield r


def _content(r: LedgerRig, seq: int) -> dict[str, object]:
    row = r.store.indexed_row(seq)
    assert row is not None
    loaded: dict[str, object] = json.loads(row["content"])
    return loaded


def _set_content(r: LedgerRig, seq: int, **changes: object) -> str:
    content = {**_content(r, seq), **changes}
    sql(r.store, "UPDATE ledger_entries SET content = :c WHERE seq = :s", c=canonical(content), s=seq)
    return canonical(content)


def test_an_untampered_ledger_verifies(rig: LedgerRig) -> None:
    report = rig.verify()
    assert report.ok, report.summary()
    assert (report.entries_checked, report.checkpoints_checked) == (12, 2)
    head = rig.head_file.read()
    assert head is not None and head.head_seq == 12 and head.head_hash == rig.hashes()[12]
    assert verify_ledger(rig.store, rig.key.public_key()).ok
    assert [e.seq for e in rig.store.entries()] == list(range(1, 13))


def test_verify_with_another_key_fails(rig: LedgerRig) -> None:
    report = verify_ledger(rig.store, ed25519.Ed25519PrivateKey.generate().public_key())
    assert not report.ok and "not signed by the ledger key" in (report.problem or "")


# Each case: how the database is changed, the entry verify_ledger must name, words of its problem.


def _edit_unindexed_field(r: LedgerRig) -> None:
    _set_content(r, 4, client_address="ipv4:10.6.6.6:1")


def _edit_indexed_field_in_content_and_column(r: LedgerRig) -> None:
    forged = "spiffe://cluster.local/ns/kube-system/sa/admin"
    _set_content(r, 4, spiffe_id=forged)
    sql(r.store, "UPDATE ledger_entries SET spiffe_id = :v WHERE seq = 4", v=forged)


def _edit_content_to_garbage(r: LedgerRig) -> None:
    sql(r.store, "UPDATE ledger_entries SET content = '{not json' WHERE seq = 4")


def _edit_and_rehash_one(r: LedgerRig) -> None:
    content = _set_content(r, 4, not_after="2099-01-01T00:00:00.000000Z")
    sql(
        r.store,
        "UPDATE ledger_entries SET not_after = :n, entry_hash = :h WHERE seq = 4",
        n="2099-01-01T00:00:00.000000Z",
        h=chain_hash(r.hashes()[3], content),
    )


def _edit_and_rechain(r: LedgerRig) -> None:
    _set_content(r, 4, not_after="2099-01-01T00:00:00.000000Z")
    sql(r.store, "UPDATE ledger_entries SET not_after = '2099-01-01T00:00:00.000000Z' WHERE seq = 4")
    rechain(r.store, 4)


def _edit_after_first_checkpoint_and_rechain(r: LedgerRig) -> None:
    _set_content(r, 8, client_address="ipv4:10.6.6.6:1")
    rechain(r.store, 8)


def _delete_middle(r: LedgerRig) -> None:
    sql(r.store, "DELETE FROM ledger_entries WHERE seq = 4")


def _delete_first(r: LedgerRig) -> None:
    sql(r.store, "DELETE FROM ledger_entries WHERE seq = 1")


def _delete_and_renumber(r: LedgerRig) -> None:
    sql(r.store, "DELETE FROM ledger_entries WHERE seq = 4")
    for seq in range(5, 13):
        sql(r.store, "UPDATE ledger_entries SET seq = :n WHERE seq = :s", n=seq - 1, s=seq)
    sql(r.store, "UPDATE ledger_head SET seq = 11 WHERE id = 1")


def _delete_renumber_and_rechain(r: LedgerRig) -> None:
    _delete_and_renumber(r)
    rechain(r.store, 4)


def _swap(r: LedgerRig) -> None:
    sql(r.store, "UPDATE ledger_entries SET seq = -5 WHERE seq = 5")
    sql(r.store, "UPDATE ledger_entries SET seq = 5 WHERE seq = 4")
    sql(r.store, "UPDATE ledger_entries SET seq = 4 WHERE seq = -5")


def _truncate_tail(r: LedgerRig) -> None:
    sql(r.store, "DELETE FROM ledger_entries WHERE seq >= 10")


def _truncate_tail_and_head(r: LedgerRig) -> None:
    hashes = r.hashes()
    sql(r.store, "DELETE FROM ledger_entries WHERE seq >= 10")
    sql(r.store, "UPDATE ledger_head SET seq = 9, hash = :h WHERE id = 1", h=hashes[9])


def _roll_back_rows(r: LedgerRig) -> None:
    """Entries, head row and checkpoints all cut back to entry 6: consistent inside the database."""
    hashes = r.hashes()
    sql(r.store, "DELETE FROM ledger_entries WHERE seq > 6")
    sql(r.store, "DELETE FROM ledger_checkpoints WHERE head_seq > 6")
    sql(r.store, "UPDATE ledger_head SET seq = 6, hash = :h WHERE id = 1", h=hashes[6])


def _restore_backup(r: LedgerRig) -> None:
    restore(r.store, r.saved["at6"])


def _restore_backup_and_regrow(r: LedgerRig) -> None:
    """Rolled back to 6, then other records appended past the signed head (without the key)."""
    restore(r.store, r.saved["at6"])
    r.store.append(
        [
            refused_content(
                time=r.clock.now(), reason="token_expired", status_code="X", message="m", client_address="a"
            )
            for _ in range(8)
        ]
    )


def _append_a_copy_past_the_head(r: LedgerRig) -> None:
    """A copy of an issuance under a new serial, its hashes copied unchanged."""
    append_past_head(r.store)


def _append_past_the_head_linked_on(r: LedgerRig) -> None:
    """Chained on from the last entry, the head row left where the CA put it."""
    append_past_head(r.store, relink=True)


def _insert_in_the_middle_and_rechain(r: LedgerRig) -> None:
    insert_and_rechain(r.store, 4)


def _delete_the_newest_and_move_the_head(r: LedgerRig) -> None:
    hashes = r.hashes()
    sql(r.store, "DELETE FROM ledger_entries WHERE seq = 12")
    sql(r.store, "UPDATE ledger_head SET seq = 11, hash = :h WHERE id = 1", h=hashes[11])


def _rechain_and_drop_checkpoints(r: LedgerRig) -> None:
    _edit_and_rechain(r)
    sql(r.store, "DELETE FROM ledger_checkpoints")


def _resign(checkpoint: cp.Checkpoint, key: ed25519.Ed25519PrivateKey, **changes: object) -> str:
    fields = {**json.loads(checkpoint.to_json()), **changes}
    fields.pop("signature")
    return cp.sign(cp.Checkpoint(**fields), key).to_json()


def _stored_checkpoint(r: LedgerRig, seq: int) -> cp.Checkpoint:
    return next(c for c in r.store.checkpoints() if c.head_seq == seq)


def _checkpoint_signed_by_another_key(r: LedgerRig) -> None:
    body = _resign(_stored_checkpoint(r, 6), ed25519.Ed25519PrivateKey.generate())
    sql(r.store, "UPDATE ledger_checkpoints SET body = :b WHERE head_seq = 6", b=body)


def _checkpoint_edited_signature_kept(r: LedgerRig) -> None:
    original = json.loads(_stored_checkpoint(r, 6).to_json())
    body = json.dumps({**original, "head_hash": "ab" * 32}, sort_keys=True)
    sql(r.store, "UPDATE ledger_checkpoints SET body = :b WHERE head_seq = 6", b=body)


def _rechain_and_forge_checkpoints(r: LedgerRig) -> None:
    """Edit, rechain, and replace both checkpoints by ones signed with the forger's own key."""
    _edit_and_rechain(r)
    forger, hashes = ed25519.Ed25519PrivateKey.generate(), r.hashes()
    for seq in (6, 12):
        body = _resign(_stored_checkpoint(r, seq), forger, head_hash=hashes[seq])
        sql(r.store, "UPDATE ledger_checkpoints SET body = :b WHERE head_seq = :s", b=body, s=seq)


def _forged_extra_checkpoint(r: LedgerRig) -> None:
    forged = cp.sign(
        cp.Checkpoint(
            head_seq=9, head_hash=r.hashes()[9], count=9, time=timestamp(r.clock.now()), key_id="x"
        ),
        ed25519.Ed25519PrivateKey.generate(),
    )
    sql(r.store, "INSERT INTO ledger_checkpoints (head_seq, body) VALUES (9, :b)", b=forged.to_json())


def _anchor_moved_without_checkpoint(r: LedgerRig) -> None:
    hashes = r.hashes()
    sql(r.store, "DELETE FROM ledger_entries WHERE seq <= 3")
    sql(r.store, "UPDATE ledger_head SET anchor_seq = 3, anchor_hash = :h WHERE id = 1", h=hashes[3])


def _anchor_with_wrong_hash(r: LedgerRig) -> None:
    sql(r.store, "DELETE FROM ledger_entries WHERE seq <= 6")
    sql(r.store, "UPDATE ledger_head SET anchor_seq = 6, anchor_hash = :h WHERE id = 1", h="cd" * 32)


def _anchor_moved_and_checkpoints_dropped(r: LedgerRig) -> None:
    _anchor_moved_without_checkpoint(r)
    sql(r.store, "DELETE FROM ledger_checkpoints")


@dataclass(frozen=True)
class Tamper:
    change: Callable[[LedgerRig], None]
    bad_seq: int | None
    words: str


TAMPERING = {
    # editing
    "edit content (a field without a column)": Tamper(_edit_unindexed_field, 4, "content does not match"),
    "edit content and its column alike": Tamper(
        _edit_indexed_field_in_content_and_column, 4, "content does not match"
    ),
    "edit content into invalid JSON": Tamper(_edit_content_to_garbage, 4, "edited"),
    "edit content, recompute its hash": Tamper(_edit_and_rehash_one, 5, "previous-hash link"),
    "edit content, recompute the whole chain": Tamper(_edit_and_rechain, 6, "signed checkpoint"),
    "edit after a checkpoint, recompute the chain": Tamper(
        _edit_after_first_checkpoint_and_rechain, 12, "signed checkpoint"
    ),
    "recompute the chain, drop the checkpoints": Tamper(_rechain_and_drop_checkpoints, 12, "outside"),
    # adding
    "append a copy of an issuance past the head": Tamper(_append_a_copy_past_the_head, 13, "past the head"),
    "append past the head, linked on": Tamper(_append_past_the_head_linked_on, 13, "past the head"),
    "insert in the middle, recompute the chain": Tamper(
        _insert_in_the_middle_and_rechain, 6, "signed checkpoint"
    ),
    # deleting
    "delete a middle entry": Tamper(_delete_middle, 5, "expected entry 4"),
    "delete the first entry": Tamper(_delete_first, 2, "expected entry 1"),
    "delete an entry, renumber the rest": Tamper(_delete_and_renumber, 4, "previous-hash link"),
    "delete, renumber, recompute the chain": Tamper(_delete_renumber_and_rechain, 6, "signed checkpoint"),
    # reordering
    "swap two entries": Tamper(_swap, 4, "previous-hash link"),
    # truncating
    "truncate the tail": Tamper(_truncate_tail, 10, "removed from its end"),
    "truncate the tail and move the head row": Tamper(_truncate_tail_and_head, 10, "names entry 12"),
    "delete the newest entry and move the head row": Tamper(
        _delete_the_newest_and_move_the_head, 12, "names entry 12"
    ),
    # rolling back (only the head kept outside the database can tell)
    "roll back entries, head row and checkpoints": Tamper(_roll_back_rows, 7, "rolled back"),
    "restore an older backup": Tamper(_restore_backup, 7, "rolled back"),
    "restore an older backup, append past the head": Tamper(
        _restore_backup_and_regrow, 12, "signed head kept outside"
    ),
    # forging checkpoints
    "checkpoint signed by another key": Tamper(_checkpoint_signed_by_another_key, 6, "not signed"),
    "checkpoint edited, signature kept": Tamper(_checkpoint_edited_signature_kept, 6, "not signed"),
    "chain recomputed, checkpoints re-signed by another key": Tamper(
        _rechain_and_forge_checkpoints, 6, "not signed"
    ),
    "extra checkpoint signed by another key": Tamper(_forged_extra_checkpoint, 9, "not signed"),
    # moving the compaction anchor
    "anchor moved without a signed checkpoint": Tamper(_anchor_moved_without_checkpoint, 3, "anchor"),
    "anchor moved, checkpoints dropped": Tamper(_anchor_moved_and_checkpoints_dropped, 3, "anchor"),
    "anchor on a checkpoint with another hash": Tamper(_anchor_with_wrong_hash, 6, "anchor"),
}


@pytest.mark.parametrize("case", list(TAMPERING), ids=list(TAMPERING))
def test_tampering_is_detected(rig: LedgerRig, case: str) -> None:
    tamper = TAMPERING[case]
    tamper.change(rig)
    report = rig.verify()
    assert not report.ok, f"{case}: not detected ({report.summary()})"
    assert report.bad_seq == tamper.bad_seq, report.summary()
    assert tamper.words in (report.problem or ""), report.summary()
    assert report.summary().startswith("ledger TAMPERED at entry")


@pytest.mark.parametrize("column", INDEXED_FIELDS)
def test_editing_an_indexed_column_alone_is_detected(rig: LedgerRig, column: str) -> None:
    value = "2000-01-01T00:00:00.000000Z" if column in ("time", "not_after") else "tampered"
    sql(rig.store, f"UPDATE ledger_entries SET {column} = :v WHERE seq = 4", v=value)
    report = rig.verify()
    assert not report.ok and report.bad_seq == 4, report.summary()
    assert column in (report.problem or "") and "differ from its content" in (report.problem or "")


def test_clearing_an_indexed_column_is_detected(rig: LedgerRig) -> None:
    sql(rig.store, "UPDATE ledger_entries SET serial = NULL WHERE seq = 4")
    report = rig.verify()
    assert not report.ok and report.bad_seq == 4 and "serial" in (report.problem or "")


def test_entries_newer_than_the_last_signed_checkpoint_are_counted_apart(rig: LedgerRig) -> None:
    rig.issue(2)  # 13-14, not signed yet
    report = rig.verify()
    assert report.ok, report.summary()
    assert (report.entries_checked, report.last_seq, report.signed_through) == (14, 14, 12)
    assert report.unsigned_entries == 2
    assert report.summary().endswith(
        "; entries 13-14, newer than the last signed checkpoint (entry 12), are chain-verified but "
        "not yet covered by a signature"
    )
    rig.checkpoint()
    report = rig.verify()
    assert report.ok and report.unsigned_entries == 0
    assert report.summary() == "ledger OK: 14 entries and 3 signed checkpoints verified"


def test_a_ledger_never_signed_has_every_entry_unsigned(ledger_url: str, tmp_path: Path) -> None:
    with ledger_rig(ledger_url, tmp_path / "state") as r:
        r.issue(3)
        report = r.verify()
        assert report.ok and report.unsigned_entries == 3 and report.signed_through == 0
        assert "none of them is covered by a signed checkpoint yet" in report.summary()


def test_the_limit_of_a_keyless_chain_is_its_unsigned_tail(rig: LedgerRig) -> None:
    """After the last signature, someone able to write to the database who chains an entry of
    their own and moves the head row onto it, or cuts the newest entries and moves the head
    row back, leaves a consistent chain: verify can only say that those entries are unsigned
    (and the CA's next checkpoint would sign them). The signed checkpoints and the head kept
    outside bound that window to the checkpoint interval."""
    rig.issue(1)  # 13, not signed yet
    forged = append_past_head(rig.store, relink=True, move_head=True)
    report = rig.verify()
    assert report.ok and forged == 14 and report.unsigned_entries == 2, report.summary()
    hashes = rig.hashes()
    sql(rig.store, "DELETE FROM ledger_entries WHERE seq >= 13")
    sql(rig.store, "UPDATE ledger_head SET seq = 12, hash = :h WHERE id = 1", h=hashes[12])
    report = rig.verify()
    assert report.ok and report.unsigned_entries == 0, report.summary()
    sql(rig.store, "DELETE FROM ledger_entries WHERE seq = 12")  # signed: that is caught
    sql(rig.store, "UPDATE ledger_head SET seq = 11, hash = :h WHERE id = 1", h=hashes[11])
    assert not rig.verify().ok


def test_rollback_is_seen_only_through_the_head_kept_outside(rig: LedgerRig) -> None:
    """Rolled back whole (checkpoints included), the database is consistent in itself."""
    _restore_backup(rig)
    assert rig.verify(external=False).ok
    report = rig.verify()
    assert not report.ok and report.bad_seq == 7
    assert "signed head kept outside the database is at entry 12" in (report.problem or "")


def test_a_forged_head_file_is_refused(rig: LedgerRig) -> None:
    head = rig.head_file.read()
    assert head is not None
    rig.head_file.path.write_text(_resign(head, ed25519.Ed25519PrivateKey.generate()))
    report = rig.verify()
    assert not report.ok and report.bad_seq is None
    assert "outside the database is not signed" in (report.problem or "")


def test_cutting_an_unexpired_prefix_back_to_a_checkpoint_is_detected(rig: LedgerRig) -> None:
    """Deleting records 1-6, which have not expired, and moving the anchor onto the ordinary
    signed checkpoint at 6 is a deletion, not a compaction: it must not verify.

    (Nothing has expired: the clock has not moved since the records were written.)
    """
    assert rig.store.expired_prefix_end(timestamp(rig.clock.now())) == 0
    hashes = rig.hashes()
    sql(rig.store, "DELETE FROM ledger_entries WHERE seq <= 6")
    sql(rig.store, "UPDATE ledger_head SET anchor_seq = 6, anchor_hash = :h WHERE id = 1", h=hashes[6])
    report = rig.verify()
    assert not report.ok, f"records 1-6 were deleted without being expired, yet: {report.summary()}"


# --------------------------------------------------------------------------- compaction


def test_compaction_keeps_the_ledger_verifiable(ledger_url: str, tmp_path: Path) -> None:
    clock = FakeClock()
    with ledger_rig(ledger_url, tmp_path / "state", clock) as r:
        r.event("created")  # 1
        r.issue(3, ttl=timedelta(hours=1))  # 2-4
        r.checkpoint()  # 4
        r.refuse()  # 5
        clock.advance(2 * DAY)
        r.issue(3, ttl=timedelta(hours=24))  # 6-8
        r.refuse()  # 9
        r.checkpoint()  # 9, the head file
        hashes = r.hashes()

        assert r.ledger.compact(clock.now() - 3 * DAY) == 0  # nothing that old
        assert r.ledger.compact(clock.now() - DAY) == 5  # 1-5 ended more than a day ago
        assert r.store.head() == (9, hashes[9], 5, hashes[5])
        assert [e.seq for e in r.store.entries()] == [6, 7, 8, 9]
        assert sorted(c.head_seq for c in r.store.checkpoints()) == [5, 9]
        report = r.verify()
        assert report.ok, report.summary()
        assert (report.entries_checked, report.checkpoints_checked) == (4, 2)

        r.issue(2, ttl=timedelta(hours=24))  # 10-11
        assert r.verify().ok
        hash_11 = r.hashes()[11]
        clock.advance(3 * DAY)
        assert r.ledger.compact(clock.now() - DAY) == 6  # everything has expired
        assert r.store.count() == 0 and r.store.head()[2] == 11
        report = r.verify()  # the head file (9) is now behind the anchor
        assert report.ok and report.entries_checked == 0, report.summary()

        r.issue(1)  # 12 links to the anchor
        r.checkpoint()
        report = r.verify()
        assert report.ok and report.entries_checked == 1, report.summary()
        assert r.store.head()[2:] == (11, hash_11)
        assert next(r.store.entries()).prev_hash == hash_11


def test_compaction_never_moves_the_anchor_back(ledger_url: str, tmp_path: Path) -> None:
    """Two CA processes compacting at once: the one that finishes second with an older cut
    must not move the anchor back over records the other already removed."""
    clock = FakeClock()
    with ledger_rig(ledger_url, tmp_path / "state", clock) as r:
        r.issue(4, ttl=timedelta(hours=1))  # 1-4
        clock.advance(2 * DAY)
        r.issue(1, ttl=timedelta(days=30))  # 5
        r.checkpoint()
        hashes = r.hashes()
        assert r.ledger.compact(clock.now() - DAY) == 4
        assert r.store.compact_through(2, hashes[2]) == 0  # an older cut arriving late
        assert r.store.head()[2:] == (4, hashes[4])
        report = r.verify()
        assert report.ok, report.summary()


def test_the_head_file_only_moves_forward(tmp_path: Path) -> None:
    """Processes sharing a ledger each publish their checkpoint; an older one written last
    must not replace a newer head."""
    key = ed25519.Ed25519PrivateKey.generate()

    def signed(seq: int) -> cp.Checkpoint:
        unsigned = cp.Checkpoint(
            head_seq=seq,
            head_hash=f"{seq:064x}",
            count=seq,
            time="2026-11-21T00:00:00.000000Z",
            key_id=cp.key_id(key.public_key()),
            purpose=cp.HEAD,
        )
        return cp.sign(unsigned, key)

    head = HeadFile(tmp_path / HEAD_FILE)
    head.publish(signed(7))
    head.publish(signed(5))
    current = head.read()
    assert current is not None and current.head_seq == 7
    head.publish(signed(9))
    current = head.read()
    assert current is not None and current.head_seq == 9
    head.path.write_text("{not json")
    head.publish(signed(3))  # a damaged file is replaced by a good head
    current = head.read()
    assert current is not None and current.head_seq == 3


def test_compaction_stops_at_the_first_live_record(ledger_url: str, tmp_path: Path) -> None:
    clock = FakeClock()
    with ledger_rig(ledger_url, tmp_path / "state", clock) as r:
        r.refuse()  # 1
        r.issue(1, ttl=timedelta(days=30))  # 2: still valid after the compaction below
        r.issue(2, ttl=timedelta(hours=1))  # 3-4: expired, but after a live record
        r.checkpoint()
        clock.advance(2 * DAY)
        assert r.ledger.compact(clock.now() - DAY) == 1
        assert [e.seq for e in r.store.entries()] == [2, 3, 4]
        assert r.verify().ok


def test_a_moved_anchor_after_compaction_is_detected(ledger_url: str, tmp_path: Path) -> None:
    clock = FakeClock()
    with ledger_rig(ledger_url, tmp_path / "state", clock) as r:
        r.issue(3)  # 1-3
        clock.advance(2 * DAY)
        r.issue(4, ttl=timedelta(days=30))  # 4-7
        r.checkpoint()
        assert r.ledger.compact(clock.now() - DAY) == 3
        assert r.verify().ok
        hashes = r.hashes()
        sql(r.store, "DELETE FROM ledger_entries WHERE seq <= 5")
        sql(r.store, "UPDATE ledger_head SET anchor_seq = 5, anchor_hash = :h WHERE id = 1", h=hashes[5])
        report = r.verify()
        assert not report.ok and report.bad_seq == 5 and "anchor" in (report.problem or "")


# --------------------------------------------------------------------------- the CA records first


def _serial(chain: list[str]) -> str:
    return format(x509.load_pem_x509_certificate(chain[0].encode()).serial_number, "x")


def _der_sha256(chain: list[str]) -> str:
    leaf = x509.load_pem_x509_certificate(chain[0].encode())
    return hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest()


def _failed(ca: RunningCa, token: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        ca.request(token=token)
    return caught.value


def test_the_ca_records_each_issuance_and_refusal(ledger_url: str, tmp_path: Path) -> None:
    state = tmp_path / "state"
    ca = start_ca(state, "--ledger", ledger_url)
    try:
        chains = [ca.request(token=ca.token("shop", f"sa-{i}"))[0] for i in range(3)]
        refused = _failed(ca, "not-a-token")
        assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        ca.stop()
    entries = all_entries(ledger_url)
    kinds = [e.content["kind"] for e in entries]
    assert kinds[0] == "ca_event" and entries[0].content["reason"] == "created"
    assert kinds.count(ISSUED) == 3 and kinds.count(REFUSED) == 1
    by_serial = {e.content["serial"]: e.content for e in entries if e.content["kind"] == ISSUED}
    for i, chain in enumerate(chains):
        record = by_serial[_serial(chain)]
        assert record["spiffe_id"] == f"spiffe://cluster.local/ns/shop/sa/sa-{i}"
        assert record["certificate_sha256"] == _der_sha256(chain)
    refusal = next(e.content for e in entries if e.content["kind"] == REFUSED)
    assert refusal["status_code"] == "UNAUTHENTICATED" and "not-a-token" not in json.dumps(refusal)
    report = verify_state(ledger_url, state)
    assert report.ok, report.summary()
    head = HeadFile(state / HEAD_FILE).read()
    assert head is not None and head.head_seq == len(entries)  # the final checkpoint on stop


@pytest.mark.parametrize(("flags", "leeway"), [((), 30), (("--token-leeway", "0"), 0)], ids=["30s", "0"])
def test_a_token_the_leeway_decides_on_is_recorded_with_it(
    ledger_url: str, tmp_path: Path, flags: tuple[str, ...], leeway: int
) -> None:
    """A token 10 s past its expiry by the CA's (injected) clock: accepted within the default
    30 s leeway, refused with none; either record says which leeway decided, and by how much."""
    ca = start_ca(tmp_path / "state", "--ledger", ledger_url, *flags)
    try:
        token = ca.token("shop", "cart", ttl=timedelta(minutes=10))
        in_time, _ = ca.request(token=token)
        ca.clock.advance(timedelta(minutes=10, seconds=10))
        if leeway:
            late, _ = ca.request(token=token)
        else:
            assert _failed(ca, token).code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        ca.stop()
    entries = [e.content for e in all_entries(ledger_url)]
    on_time = next(e for e in entries if e.get("serial") == _serial(in_time))
    assert not any(name.startswith("token_leeway") for name in on_time)
    recorded = entries[-1]
    if leeway:
        assert recorded["kind"] == ISSUED and recorded["serial"] == _serial(late)
    else:
        assert recorded["kind"] == REFUSED and recorded["reason"] == "token_expired"
        assert "beyond the 0s leeway" in recorded["message"]
    assert (
        recorded["token_leeway_seconds"],
        recorded["token_leeway_claim"],
        recorded["token_leeway_needed_seconds"],
    ) == (leeway, "exp", 10)


@pytest.mark.parametrize("server", ["asyncio", "threaded"])
def test_storage_failure_refuses_with_unavailable_and_recovers(
    ledger_url: str,
    tmp_path: Path,
    server: str,
) -> None:
    state = tmp_path / "state"
    ca = start_ca(
        state, "--ledger", ledger_url, "--grpc-server", server, "--ledger-checkpoint-interval", "1s"
    )
    try:
        returned = [_serial(ca.request(token=ca.token())[0])]
        tokens = [ca.token("shop", f"blocked-{i}") for i in range(4)]
        with ledger_locked(ledger_url):
            started = time.monotonic()
            with ThreadPoolExecutor(4) as pool:
                errors = list(pool.map(lambda t: _failed(ca, t), tokens))
            waited = time.monotonic() - started
        for err in errors:
            assert err.code() == grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
            details = err.details() or ""
            assert "issuance ledger could not be written" in details and "no certificate" in details, details
        assert waited < 10, f"the refusals took {waited:.1f}s"

        # Storage is back: the same CA issues again without a restart, and catches up its head.
        returned += [_serial(ca.request(token=t)[0]) for t in tokens[:2]]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            head = HeadFile(state / HEAD_FILE).read()
            if head is not None and head.head_seq == all_entries(ledger_url)[-1].seq:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the CA did not publish a checkpoint of its head after recovering")
    finally:
        ca.stop()
    entries = all_entries(ledger_url)
    assert sorted(issued_serials(entries)) == sorted(returned)  # the refused four left no record
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    report = verify_state(ledger_url, state)
    assert report.ok, report.summary()


def test_a_postgresql_outage_refuses_with_unavailable_and_the_ca_reconnects(tmp_path: Path) -> None:
    """The database stops taking connections (and drops the CA's) for a while, then comes back."""
    state = tmp_path / "state"
    with postgres_database() as url:
        name = url.rsplit("/", 1)[1]
        ca = start_ca(state, "--ledger", url)
        try:
            returned = [_serial(ca.request(token=ca.token())[0])]
            with psycopg.connect(libpq_url(POSTGRES_ADMIN_URL), autocommit=True) as admin:
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
                )
                try:
                    for i in range(3):
                        err = _failed(ca, ca.token("shop", f"down-{i}"))
                        assert err.code() == grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
                        assert "issuance ledger could not be written" in (err.details() or "")
                finally:
                    admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            returned += [_serial(ca.request(token=ca.token("shop", f"up-{i}"))[0]) for i in range(3)]
        finally:
            ca.stop()
        assert sorted(issued_serials(all_entries(url))) == sorted(returned)
        report = verify_state(url, state)
        assert report.ok, report.summary()


@pytest.mark.parametrize("server", ["asyncio", "threaded"])
def test_a_client_giving_up_while_its_record_waits_does_not_stop_the_ledger(
    ledger_url: str,
    tmp_path: Path,
    server: str,
) -> None:
    """A client whose deadline passes while the ledger is slow must not break later issuance."""
    state = tmp_path / "state"
    ca = start_ca(state, "--ledger", ledger_url, "--grpc-server", server)
    try:
        ca.request(token=ca.token())
        with ledger_locked(ledger_url):
            request = istio_ca_pb2.IstioCertificateRequest(csr=make_csr(ec_key()))
            with pytest.raises(grpc.RpcError) as caught:
                ca.stub().CreateCertificate(
                    request, metadata=[("authorization", f"Bearer {ca.token()}")], timeout=0.5
                )
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            time.sleep(2.5)  # the CA's write of that record fails on the lock meanwhile
        # Storage is back; the CA must issue again by itself.
        key = ec_key()
        started = time.monotonic()
        try:
            response = ca.stub().CreateCertificate(
                istio_ca_pb2.IstioCertificateRequest(csr=make_csr(key)),
                metadata=[("authorization", f"Bearer {ca.token('shop', 'after')}")],
                timeout=20,
            )
        except grpc.RpcError as err:
            raise AssertionError(
                f"after the ledger came back the CA still refuses, {time.monotonic() - started:.1f}s later: "
                f"{err.code()}: {err.details()}"
            ) from None
        serial = _serial(list(response.cert_chain))
    finally:
        ca.stop()
    assert serial in issued_serials(all_entries(ledger_url))
    report = verify_state(ledger_url, state)
    assert report.ok, report.summary()


def _serve_once(tmp_path: Path, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *MESHCA,
            "serve",
            "--state-dir",
            str(tmp_path / "state"),
            "--listen",
            "127.0.0.1:0",
            "--renew-listen",
            "off",
            "--metrics-listen",
            "off",
            "--ledger",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("sqlite:///{tmp}/no/such/dir/ledger.db", "cannot open the issuance ledger"),
        ("postgresql://meshca:s3cret@127.0.0.1:1/ledger", "cannot open the issuance ledger"),
        ("mysql://meshca@127.0.0.1/ledger", "is not auto, off"),
        ("postgresql://postgres@127.0.0.1:5432/meshca_no_such_database", "does not exist"),
    ],
    ids=["sqlite-missing-dir", "postgresql-refused", "unknown-scheme", "postgresql-no-database"],
)
def test_a_ledger_that_cannot_be_opened_is_a_config_error(tmp_path: Path, url: str, words: str) -> None:
    if "5432" in url:
        require_postgres()
        url = postgres_url("meshca_no_such_database")
    result = _serve_once(tmp_path, url.format(tmp=tmp_path))
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("meshca: error:") and words in last, result.stderr
    assert "Traceback" not in result.stderr and "s3cret" not in result.stderr


def test_a_bad_ledger_on_first_start_creates_no_root_so_the_created_event_is_not_lost(
    tmp_path: Path,
) -> None:
    """The ledger opens before the CA material: a first start that fails on --ledger leaves
    no root behind, and the next good start records the root as created."""
    result = _serve_once(tmp_path, f"sqlite:///{tmp_path}/no/such/dir/ledger.db")
    assert result.returncode == 2, result.stderr
    state = tmp_path / "state"
    assert not (state / "root-cert.pem").exists()
    ca = start_ca(state)
    ca.stop()
    first = all_entries(f"sqlite:///{state / 'ledger.db'}")[0].content
    assert (first["kind"], first["reason"]) == ("ca_event", "created")


# --------------------------------------------------------------------------- migration


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
        assert store.schema_version() == schema.CURRENT_VERSION == 3
        assert store.migrate() == 3  # a second run changes nothing
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
    assert [e.seq for e in entries] == list(range(1, last_seq + 3))
    assert entries[last_seq].prev_hash == last_hash  # the CA's own event follows the old head
    assert entries[last_seq].content["kind"] == "ca_event"
    assert entries[-1].content["serial"] == _serial(chain)
    assert entries[2].columns is not None
    assert dict(zip(INDEXED_FIELDS, entries[2].columns, strict=True))["reason"] == "token_expired"
    report = verify_state(ledger_url, state)
    assert report.ok and report.entries_checked == last_seq + 2, report.summary()
    store = LedgerStore(ledger_url)
    try:
        assert store.schema_version() == 3
    finally:
        store.dispose()


def test_one_ledger_key_signs_every_checkpoint(rig: LedgerRig) -> None:
    key_ids = Counter(c.key_id for c in rig.store.checkpoints())
    assert key_ids == Counter({cp.key_id(rig.key.public_key()): 2})


@pytest.mark.parametrize(("held_s", "waits"), [(0.3, True), (1.5, False)])
def test_an_sqlite_append_waits_for_another_writer_up_to_the_lock_timeout(
    tmp_path: Path, held_s: float, waits: bool
) -> None:
    path = tmp_path / "ledger.db"
    store = LedgerStore(f"sqlite:///{path}", lock_timeout_s=0.8)
    store.migrate()
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another CA process, or a compaction, holds the write lock
    release = threading.Timer(held_s, lambda: other.execute("COMMIT"))
    release.start()
    started = time.monotonic()
    try:
        if waits:
            assert [e.seq for e in store.append([{"kind": "ca_event", "time": "t"}])] == [1]
            assert time.monotonic() - started >= held_s * 0.8
        else:
            with pytest.raises(UnavailableError, match=r"could not be written \(database is locked"):
                store.append([{"kind": "ca_event", "time": "t"}])
            assert 0.7 <= time.monotonic() - started < held_s
    finally:
        release.join()
        other.close()
        store.dispose()
