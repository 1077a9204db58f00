"""Whether the entries an audit shows or counts hold their place in the hash chain.

`meshca audit verify` walks the whole chain and checks it against the signed
checkpoints. The other audit commands must not present an entry that fails the
chain as genuine either, so each checks, in the snapshot its query reads (see
ca.ledger.reader):

- each entry it shows (list, show, export): its hash recomputed from its content,
  its indexed columns against its content, its link to the entry before it (or to
  the compaction anchor), the link of the entry after it back to it (or, for the
  newest entry, the head row's hash), and that it lies between the anchor and the
  head the CA recorded;
- the entries a report counts: every entry in the span of sequence numbers its
  time filters cover, link by link, with the same checks at both ends.

These checks need no key, so a forger who edits an entry and recomputes every
hash after it passes them; only the signed checkpoints catch that, and checking
those is verify's work.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, select

from ca.errors import LedgerTamperedError
from ca.ledger import schema
from ca.ledger.chain import ChainBreak, Entry, chain_end_problem, check_link, next_link_problem, past_head
from ca.ledger.store import IN_LIST_CHUNK, READ_BATCH, entries_after, entries_by_seq, read_head


@dataclass(frozen=True)
class _Ends:
    """Where the chain starts (the compaction anchor) and ends (the head row), as recorded."""

    head_seq: int
    head_hash: str
    anchor_seq: int
    anchor_hash: str


def _ends(conn: Connection) -> _Ends:
    return _Ends(*read_head(conn))


def _tampered(broken: ChainBreak) -> LedgerTamperedError:
    return LedgerTamperedError(
        f"the ledger fails its hash chain at entry {broken.seq}: {broken.problem}; it is not shown or "
        "counted as genuine: run 'meshca audit verify' for the whole ledger and its signatures, and "
        "investigate the database (filters that leave the entry out still work)",
        seq=broken.seq,
    )


# --------------------------------------------------------------------------- single entries


@dataclass(frozen=True)
class _Links:
    prev_hash: str
    entry_hash: str


def _links(conn: Connection, seqs: set[int]) -> dict[int, _Links]:
    e = schema.entries.c
    wanted = sorted(seqs)
    found: dict[int, _Links] = {}
    for start in range(0, len(wanted), IN_LIST_CHUNK):
        chunk = wanted[start : start + IN_LIST_CHUNK]
        rows = conn.execute(select(e.seq, e.prev_hash, e.entry_hash).where(e.seq.in_(chunk)))
        found.update((int(seq), _Links(prev, this)) for seq, prev, this in rows)
    return found


def _entry_problem(entry: Entry, neighbours: Mapping[int, _Links], ends: _Ends) -> ChainBreak | None:
    """Why `entry` does not hold its place in the chain, given the entries around it, or None."""
    seq = entry.seq
    if seq > ends.head_seq:
        return past_head(seq, ends.head_seq)
    if seq <= ends.anchor_seq:
        return ChainBreak(
            seq, f"it lies at or before the compaction anchor (entry {ends.anchor_seq}), where none is kept"
        )
    before = ends.anchor_hash if seq - 1 == ends.anchor_seq else _hash_of(neighbours.get(seq - 1))
    if before is None:
        return ChainBreak(seq, f"entry {seq - 1} before it is missing: entries were removed")
    broken = check_link(entry, before, seq)
    if broken is not None:
        return broken
    if seq == ends.head_seq:
        if entry.entry_hash != ends.head_hash:
            return ChainBreak(seq, "its hash differs from the head the CA recorded: it was replaced")
        return None
    after = neighbours.get(seq + 1)
    if after is None:
        return ChainBreak(seq, f"entry {seq + 1} after it is missing: entries were removed")
    if after.prev_hash != entry.entry_hash:
        return ChainBreak(seq, f"entry {seq + 1} does not link back to it: one of the two was edited")
    return None


def _hash_of(links: _Links | None) -> str | None:
    return links.entry_hash if links is not None else None


def checked_entries(conn: Connection, seqs: Sequence[int]) -> list[Entry]:
    """The entries with these seqs, in the order given, each checked against the chain around
    it; raises LedgerTamperedError naming the lowest one that fails."""
    found = entries_by_seq(conn, seqs)
    around = {s + step for s in found for step in (-1, 1)} - found.keys()
    neighbours = _links(conn, around)
    neighbours.update((s, _Links(e.prev_hash, e.entry_hash)) for s, e in found.items())
    ends = _ends(conn)
    for seq in sorted(found):
        broken = _entry_problem(found[seq], neighbours, ends)
        if broken is not None:
            raise _tampered(broken)
    return [found[seq] for seq in seqs if seq in found]


# --------------------------------------------------------------------------- spans


def check_span(conn: Connection, low: int, high: int | None = None) -> int:
    """Check every entry from `low` to `high` (None: to the last one the database holds), each
    linked to the one before, the first to its predecessor or the anchor, and the last to its
    successor or the head row; returns how many were checked. Raises LedgerTamperedError."""
    ends = _ends(conn)
    low = max(low, ends.anchor_seq + 1)
    if low > ends.head_seq:
        beyond = entries_after(conn, low - 1, 1)
        if beyond:
            raise _tampered(past_head(beyond[0].seq, ends.head_seq))
        return 0
    previous = (
        ends.anchor_hash if low - 1 == ends.anchor_seq else _hash_of(_links(conn, {low - 1}).get(low - 1))
    )
    if previous is None:
        raise _tampered(ChainBreak(low, f"entry {low - 1} before it is missing: entries were removed"))
    last, checked = low - 1, 0
    while high is None or last < high:
        size = READ_BATCH if high is None else min(READ_BATCH, high - last)
        batch = entries_after(conn, last, size)
        for entry in batch:
            broken = next_link_problem(entry, last, previous, ends.head_seq)
            if broken is not None:
                raise _tampered(broken)
            previous, last, checked = entry.entry_hash, entry.seq, checked + 1
        if len(batch) < size:
            break
    _check_span_end(conn, last, previous, ends, ran_out=high is None or last < high)
    return checked


def _check_span_end(conn: Connection, last: int, last_hash: str, ends: _Ends, *, ran_out: bool) -> None:
    """The span's last entry is the head the CA recorded, or the entry after it links back to it."""
    if last == ends.head_seq or ran_out:
        broken = chain_end_problem(last, last_hash, ends.head_seq, ends.head_hash)
        if broken is not None:
            raise _tampered(broken)
        return
    after = _links(conn, {last + 1}).get(last + 1)
    if after is None:
        raise _tampered(ChainBreak(last + 1, "it is missing: entries were removed"))
    if after.prev_hash != last_hash:
        raise _tampered(ChainBreak(last + 1, "its previous-hash link does not match the entry before it"))
