"""Checking a whole ledger: the chain, every checkpoint, and the head kept outside.

Reads entries in order in batches, so memory stays flat for any ledger size.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ed25519

from ca.ledger.checkpoint import COMPACTION, Checkpoint, signature_valid
from ca.ledger.entries import check_link
from ca.ledger.store import LedgerStore


@dataclass(frozen=True)
class VerifyReport:
    entries_checked: int
    checkpoints_checked: int
    bad_seq: int | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def summary(self) -> str:
        if self.ok:
            return (
                f"ledger OK: {self.entries_checked} entries and {self.checkpoints_checked} signed "
                "checkpoints verified"
            )
        where = f"entry {self.bad_seq}" if self.bad_seq is not None else "the ledger"
        return f"ledger TAMPERED at {where}: {self.problem}"


def verify_ledger(
    store: LedgerStore, public_key: ed25519.Ed25519PublicKey, external_head: Checkpoint | None = None
) -> VerifyReport:
    head_seq, head_hash, anchor_seq, anchor_hash = store.head()
    checkpoints = {c.head_seq: c for c in store.checkpoints()}
    for checkpoint in checkpoints.values():
        if not signature_valid(checkpoint, public_key):
            return VerifyReport(
                0,
                0,
                checkpoint.head_seq,
                f"the checkpoint at entry {checkpoint.head_seq} is not signed by the ledger key",
            )
    anchor = checkpoints.get(anchor_seq)
    if anchor_seq > 0 and (anchor is None or anchor.purpose != COMPACTION or anchor.head_hash != anchor_hash):
        return VerifyReport(
            0,
            len(checkpoints),
            anchor_seq,
            "the compaction anchor is not backed by a signed checkpoint: entries were cut away",
        )
    watched = set(checkpoints)
    if external_head is not None:
        if not signature_valid(external_head, public_key):
            return VerifyReport(
                0, 0, None, "the head kept outside the database is not signed by the ledger key"
            )
        watched.add(external_head.head_seq)
    hashes: dict[int, str] = {}
    expected_prev, expected_seq, checked = anchor_hash, anchor_seq + 1, 0
    for entry in store.entries(after_seq=anchor_seq):
        broken = check_link(entry, expected_prev, expected_seq)
        if broken is not None:
            return VerifyReport(checked, len(checkpoints), broken.seq, broken.problem)
        if entry.seq in checkpoints and checkpoints[entry.seq].head_hash != entry.entry_hash:
            return VerifyReport(
                checked,
                len(checkpoints),
                entry.seq,
                "it differs from the signed checkpoint at this entry: the ledger was rewritten",
            )
        if entry.seq in watched:
            hashes[entry.seq] = entry.entry_hash
        expected_prev, expected_seq, checked = entry.entry_hash, expected_seq + 1, checked + 1
    last_seq = expected_seq - 1
    beyond = sorted(seq for seq in checkpoints if seq > last_seq)
    if beyond:
        return VerifyReport(
            checked,
            len(checkpoints),
            last_seq + 1,
            f"a signed checkpoint names entry {beyond[-1]} but the ledger ends at {last_seq}: "
            "entries were removed from its end",
        )
    if last_seq != head_seq or expected_prev != head_hash:
        return VerifyReport(
            checked,
            len(checkpoints),
            last_seq + 1,
            f"the head records entry {head_seq} but the chain ends at {last_seq}: "
            "entries were removed from its end",
        )
    if external_head is not None:
        if external_head.head_seq > last_seq:
            return VerifyReport(
                checked,
                len(checkpoints),
                last_seq + 1,
                f"the signed head kept outside the database is at entry {external_head.head_seq}"
                f" but the database ends at {last_seq}: the database was rolled back or cut",
            )
        if (
            external_head.head_seq > anchor_seq
            and hashes.get(external_head.head_seq) != external_head.head_hash
        ):
            return VerifyReport(
                checked,
                len(checkpoints),
                external_head.head_seq,
                "it differs from the signed head kept outside the database: the database was "
                "replaced or rolled back",
            )
    return VerifyReport(checked, len(checkpoints))
