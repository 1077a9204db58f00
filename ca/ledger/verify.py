"""Checking a whole ledger: the chain, every checkpoint, and the head kept outside.

Every entry the database holds is checked: its hash recomputed from its content
and its link to the one before, from the compaction anchor to the last row, past
the head row if rows lie there (they fail: the CA moves the head with each entry).
Reads entries in order in batches, so memory stays flat for any ledger size.

Entries after the last signed checkpoint (or signed head kept outside) are
legitimate: the CA signs its head every few seconds, so the newest entries are
always waiting for their signature. They are checked link by link like the rest,
but no signature covers them yet, so the report counts them apart: anyone who can
write to the database could have appended them with a chain of their own.

A long walk reports its progress to an optional callback (ca.common.progress): the
entries checked out of the entries from the anchor to the recorded head.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric import ed25519

from ca.common.progress import PROGRESS_EVERY, ProgressCallback, Ticker
from ca.ledger.chain import ChainBreak, Entry, chain_end_problem, next_link_problem
from ca.ledger.checkpoint import COMPACTION, Checkpoint, signature_valid


class LedgerView(Protocol):
    """What verification reads: a LedgerStore, or one snapshot of a ledger (ca.ledger.live_verify)."""

    def head(self) -> tuple[int, str, int, str]: ...

    def checkpoints(self) -> list[Checkpoint]: ...

    def entries(self, after_seq: int = 0) -> Iterator[Entry]: ...


@dataclass(frozen=True)
class VerifyReport:
    entries_checked: int
    checkpoints_checked: int
    bad_seq: int | None = None
    problem: str | None = None
    last_seq: int = 0
    signed_through: int = 0  # the newest entry a valid signature covers (0: none)

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def unsigned_entries(self) -> int:
        """Entries after the newest signed one: chain-checked, but no signature covers them yet."""
        return max(0, self.last_seq - self.signed_through) if self.ok else 0

    def summary(self) -> str:
        if not self.ok:
            where = f"entry {self.bad_seq}" if self.bad_seq is not None else "the ledger"
            return f"ledger TAMPERED at {where}: {self.problem}"
        text = (
            f"ledger OK: {self.entries_checked} entries and {self.checkpoints_checked} signed "
            "checkpoints verified"
        )
        unsigned = self.unsigned_entries
        if unsigned == 0:
            return text
        if self.signed_through == 0:
            return f"{text}; none of them is covered by a signed checkpoint yet (chain-verified only)"
        first = self.last_seq - unsigned + 1
        span = f"entry {first}" if unsigned == 1 else f"entries {first}-{self.last_seq}"
        return (
            f"{text}; {span}, newer than the last signed checkpoint (entry {self.signed_through}), "
            f"{'is' if unsigned == 1 else 'are'} chain-verified but not yet covered by a signature"
        )


def verify_ledger(
    store: LedgerView,
    public_key: ed25519.Ed25519PublicKey,
    external_head: Checkpoint | None = None,
    *,
    progress: ProgressCallback | None = None,
    progress_every: int = PROGRESS_EVERY,
) -> VerifyReport:
    """The report on the whole ledger; `progress` hears (entries checked, entries the head row
    accounts for) every `progress_every` entries and when the walk ends."""
    head_seq, head_hash, anchor_seq, anchor_hash = store.head()
    checkpoints = {c.head_seq: c for c in store.checkpoints()}
    forged = _signature_problem(checkpoints, anchor_seq, anchor_hash, external_head, public_key)
    if forged is not None:
        return forged
    watched = set(checkpoints) | ({external_head.head_seq} if external_head is not None else set())
    ticker = Ticker(progress, max(0, head_seq - anchor_seq), progress_every)
    walk = _walk(store, checkpoints, watched, anchor_seq, anchor_hash, head_seq, ticker)
    ticker.finish(walk.checked)
    if walk.broken is not None:
        return VerifyReport(walk.checked, len(checkpoints), walk.broken.seq, walk.broken.problem)
    found = _end_problem(walk, checkpoints, head_seq, head_hash) or _external_problem(
        walk, external_head, anchor_seq
    )
    if found is not None:
        return VerifyReport(walk.checked, len(checkpoints), *found)
    signed = [*checkpoints, *([external_head.head_seq] if external_head is not None else [])]
    return VerifyReport(
        walk.checked, len(checkpoints), last_seq=walk.last_seq, signed_through=max(signed, default=0)
    )


def _signature_problem(
    checkpoints: dict[int, Checkpoint],
    anchor_seq: int,
    anchor_hash: str,
    external_head: Checkpoint | None,
    public_key: ed25519.Ed25519PublicKey,
) -> VerifyReport | None:
    """A checkpoint or external head the ledger key did not sign, or an anchor none backs."""
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
    if external_head is not None and not signature_valid(external_head, public_key):
        return VerifyReport(0, 0, None, "the head kept outside the database is not signed by the ledger key")
    return None


@dataclass
class _Walk:
    checked: int = 0
    last_seq: int = 0
    last_hash: str = ""
    broken: ChainBreak | None = None
    hashes: dict[int, str] = field(default_factory=dict)  # of the entries signed heads name


def _walk(
    store: LedgerView,
    checkpoints: dict[int, Checkpoint],
    watched: set[int],
    anchor_seq: int,
    anchor_hash: str,
    head_seq: int,
    ticker: Ticker,
) -> _Walk:
    """Every entry after the anchor, each linked to the one before; stops at the first break."""
    walk = _Walk(last_seq=anchor_seq, last_hash=anchor_hash)
    for entry in store.entries(after_seq=anchor_seq):
        walk.broken = next_link_problem(entry, walk.last_seq, walk.last_hash, head_seq)
        if walk.broken is not None:
            return walk
        if entry.seq in checkpoints and checkpoints[entry.seq].head_hash != entry.entry_hash:
            walk.broken = ChainBreak(
                entry.seq, "it differs from the signed checkpoint at this entry: the ledger was rewritten"
            )
            return walk
        if entry.seq in watched:
            walk.hashes[entry.seq] = entry.entry_hash
        walk.last_seq, walk.last_hash, walk.checked = entry.seq, entry.entry_hash, walk.checked + 1
        if walk.checked >= ticker.next_at:
            ticker.tick(walk.checked)
    return walk


def _end_problem(
    walk: _Walk, checkpoints: dict[int, Checkpoint], head_seq: int, head_hash: str
) -> tuple[int, str] | None:
    """(entry, problem) if the chain does not end where the checkpoints and the head row say."""
    last_seq = walk.last_seq
    beyond = sorted(seq for seq in checkpoints if seq > last_seq)
    if beyond:
        return last_seq + 1, (
            f"a signed checkpoint names entry {beyond[-1]} but the ledger ends at {last_seq}: "
            "entries were removed from its end"
        )
    broken = chain_end_problem(last_seq, walk.last_hash, head_seq, head_hash)
    return None if broken is None else (broken.seq, broken.problem)


def _external_problem(
    walk: _Walk, external_head: Checkpoint | None, anchor_seq: int
) -> tuple[int | None, str] | None:
    if external_head is None:
        return None
    if external_head.head_seq > walk.last_seq:
        return walk.last_seq + 1, (
            f"the signed head kept outside the database is at entry {external_head.head_seq}"
            f" but the database ends at {walk.last_seq}: the database was rolled back or cut"
        )
    if (
        external_head.head_seq > anchor_seq
        and walk.hashes.get(external_head.head_seq) != external_head.head_hash
    ):
        return external_head.head_seq, (
            "it differs from the signed head kept outside the database: the database was "
            "replaced or rolled back"
        )
    return None
