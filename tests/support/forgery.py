"""Forged ledger entries, written with raw SQL as someone with database access (and no ledger
key) would: a copy of an issuance appended after the head, or slipped in among the others."""

from __future__ import annotations

import json
from typing import Any

from ca.ledger.chain import canonical, chain_hash
from ca.ledger.store import LedgerStore
from tests.support.ledger import query, rechain, sql

FORGED_SERIAL = "f0e1d2c3b4a59687"


def _copy_of_an_issuance(store: LedgerStore, serial: str) -> dict[str, Any]:
    row = query(store, "SELECT * FROM ledger_entries WHERE kind = 'issued' ORDER BY seq LIMIT 1")[0]
    content = {**json.loads(row["content"]), "serial": serial}
    return {**row, "serial": serial, "content": canonical(content)}


def _insert(store: LedgerStore, row: dict[str, Any]) -> None:
    columns = list(row)
    sql(
        store,
        f"INSERT INTO ledger_entries ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})",
        **row,
    )


def append_past_head(
    store: LedgerStore, *, relink: bool = False, move_head: bool = False, serial: str = FORGED_SERIAL
) -> int:
    """Append a copy of the first issuance, under a new serial, after the last entry; returns its seq.

    As is, its previous and own hashes are the copied entry's. With `relink` they are made to
    chain on from the last entry, and with `move_head` the head row is moved onto it too:
    what a careful forger does, which only a signature could tell from the CA's own work.
    """
    last = query(store, "SELECT seq, entry_hash FROM ledger_entries ORDER BY seq DESC LIMIT 1")[0]
    row = {**_copy_of_an_issuance(store, serial), "seq": int(last["seq"]) + 1}
    if relink:
        row["prev_hash"] = last["entry_hash"]
        row["entry_hash"] = chain_hash(row["prev_hash"], row["content"])
    _insert(store, row)
    if move_head:
        sql(
            store,
            "UPDATE ledger_head SET seq = :s, hash = :h WHERE id = 1",
            s=row["seq"],
            h=row["entry_hash"],
        )
    return int(row["seq"])


def insert_and_rechain(store: LedgerStore, at_seq: int, *, serial: str = FORGED_SERIAL) -> None:
    """Insert a copy of the first issuance at `at_seq`, renumber the entries from there on, and
    recompute every hash after it and the head row."""
    seqs = [int(r["seq"]) for r in query(store, "SELECT seq FROM ledger_entries WHERE seq >= :s", s=at_seq)]
    for seq in sorted(seqs, reverse=True):
        sql(store, "UPDATE ledger_entries SET seq = :n WHERE seq = :s", n=seq + 1, s=seq)
    _insert(store, {**_copy_of_an_issuance(store, serial), "seq": at_seq})
    rechain(store, at_seq)
