"""Verifying the ledger, on SQLite and on the real PostgreSQL server (every test runs on both).

Each way of editing, deleting, reordering, truncating or rolling back records is made with raw SQL,
as someone with database access would, and verify_ledger must name it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from ca.ledger import checkpoint as cp
from ca.ledger.chain import canonical, chain_hash
from ca.ledger.entries import INDEXED_FIELDS, refused_content, timestamp
from ca.ledger.verify import verify_ledger
from tests.support.clock import FakeClock
from tests.support.forgery import append_past_head, insert_and_rechain
from tests.support.ledger import (
    DAY,
    LedgerRig,
    ledger_rig,
    rechain,
    restore,
    sql,
)


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


@pytest.mark.parametrize(
    ("every", "expected"),
    [(5, [(5, 12), (10, 12), (12, 12)]), (4, [(4, 12), (8, 12), (12, 12)]), (100, [(12, 12)])],
)
def test_verify_reports_progress_every_n_entries_up_to_the_head(
    rig: LedgerRig, every: int, expected: list[tuple[int, int]]
) -> None:
    heard: list[tuple[int, int]] = []
    report = verify_ledger(
        rig.store,
        rig.key.public_key(),
        rig.head_file.read(),
        progress=lambda done, total: heard.append((done, total)),
        progress_every=every,
    )
    assert report.ok, report.summary()
    assert heard == expected


def test_verify_progress_stops_where_the_chain_breaks(rig: LedgerRig) -> None:
    sql(rig.store, "UPDATE ledger_entries SET content = '{not json' WHERE seq = 7")
    heard: list[tuple[int, int]] = []
    report = verify_ledger(
        rig.store, rig.key.public_key(), progress=lambda *p: heard.append(p), progress_every=5
    )
    assert report.bad_seq == 7
    assert heard == [(5, 12), (6, 12)]


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
