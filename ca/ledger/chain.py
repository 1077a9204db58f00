"""The ledger's hash chain (pure): canonical content, each entry's hash over its predecessor's,
and why an entry does not follow on from the one before it.

Entry n stores prev_hash = hash(n-1) and entry_hash = sha256(prev_hash + "\n" + content_json);
the first entry chains to GENESIS_HASH. Signed checkpoints (ledger/checkpoint) pin a hash at a
sequence number, so anything before it that is altered, removed or inserted breaks a link.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ca.ledger.entries import INDEXED_FIELDS

GENESIS_HASH = "0" * 64

_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical(content: Mapping[str, Any]) -> str:
    return _CANONICAL.encode(content)


def chain_hash(previous_hash: str, content_json: str) -> str:
    return hashlib.sha256(f"{previous_hash}\n{content_json}".encode()).hexdigest()


@dataclass(frozen=True, kw_only=True)
class Entry:
    """One ledger entry as stored: position, content, and the chain links."""

    seq: int
    content_json: str
    prev_hash: str
    entry_hash: str
    columns: tuple[Any, ...] | None = None  # the indexed columns as stored, in INDEXED_FIELDS order

    @property
    def content(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.content_json)
        return loaded


@dataclass(frozen=True)
class ChainBreak:
    seq: int
    problem: str


def check_link(entry: Entry, expected_prev: str, expected_seq: int) -> ChainBreak | None:
    """Why `entry` does not follow on from the entry before it, or None."""
    if entry.seq != expected_seq:
        return ChainBreak(entry.seq, f"expected entry {expected_seq} here: entries are missing or reordered")
    if entry.prev_hash != expected_prev:
        return ChainBreak(entry.seq, "its previous-hash link does not match the entry before it")
    if chain_hash(entry.prev_hash, entry.content_json) != entry.entry_hash:
        return ChainBreak(entry.seq, "its content does not match its hash: the entry was edited")
    if entry.columns is not None:
        return _columns_problem(entry, entry.columns)
    return None


def _columns_problem(entry: Entry, columns: tuple[Any, ...]) -> ChainBreak | None:
    try:
        content = json.loads(entry.content_json)
    except ValueError:
        return ChainBreak(entry.seq, "its content is not valid JSON: the entry was edited")
    if not isinstance(content, dict):
        return ChainBreak(entry.seq, "its content is not a JSON object: the entry was edited")
    expected = tuple(map(content.get, INDEXED_FIELDS))
    if expected == columns:
        return None
    changed = sorted(
        name for name, want, got in zip(INDEXED_FIELDS, expected, columns, strict=True) if want != got
    )
    return ChainBreak(entry.seq, f"its {', '.join(changed)} column(s) differ from its content: edited")


def past_head(seq: int, head_seq: int) -> ChainBreak:
    return ChainBreak(
        seq,
        f"it lies past the head the CA recorded (entry {head_seq}); the CA moves the head in the "
        "transaction that writes each entry, so this one was added by other means",
    )


def next_link_problem(entry: Entry, last_seq: int, last_hash: str, head_seq: int) -> ChainBreak | None:
    """Why `entry` cannot follow entry `last_seq` (hash `last_hash`) in a chain that the CA's
    recorded head ends at `head_seq`, or None."""
    if entry.seq > head_seq:
        return past_head(entry.seq, head_seq)
    return check_link(entry, last_hash, last_seq + 1)


def chain_end_problem(last_seq: int, last_hash: str, head_seq: int, head_hash: str) -> ChainBreak | None:
    """Why a chain whose last entry is `last_seq` (hash `last_hash`) does not end at the head the
    CA recorded, or None."""
    if last_seq != head_seq:
        return ChainBreak(
            last_seq + 1,
            f"the head records entry {head_seq} but the chain ends at {last_seq}: "
            "entries were removed from its end",
        )
    if last_hash != head_hash:
        return ChainBreak(last_seq, "its hash differs from the head the CA recorded: it was replaced")
    return None
