"""The ledger's hash chain on its own: canonical content, each link, and what a broken link says."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from ca.ledger.chain import (
    GENESIS_HASH,
    Entry,
    canonical,
    chain_end_problem,
    chain_hash,
    check_link,
    next_link_problem,
    past_head,
)
from ca.ledger.entries import INDEXED_FIELDS

CONTENT = {"kind": "issued", "time": "2026-12-07T00:00:00.000000Z", "serial": "ab", "namespace": "shop"}


def _entry(seq: int, prev: str, content: dict[str, object], **overrides: object) -> Entry:
    content_json = canonical(content)
    fields: dict[str, object] = {
        "seq": seq,
        "content_json": content_json,
        "prev_hash": prev,
        "entry_hash": chain_hash(prev, content_json),
    }
    fields.update(overrides)
    return Entry(**fields)  # type: ignore[arg-type]


def test_canonical_form_sorts_keys_and_drops_spaces() -> None:
    assert canonical({"b": 1, "a": "é"}) == '{"a":"é","b":1}'


def test_an_entrys_hash_covers_its_predecessor_and_its_content() -> None:
    expected = hashlib.sha256(f"{GENESIS_HASH}\n{canonical(CONTENT)}".encode()).hexdigest()
    assert chain_hash(GENESIS_HASH, canonical(CONTENT)) == expected


@given(st.dictionaries(st.sampled_from(INDEXED_FIELDS), st.text(max_size=8), min_size=1))
def test_any_change_of_content_or_predecessor_changes_the_hash(content: dict[str, str]) -> None:
    base = chain_hash(GENESIS_HASH, canonical(content))
    assert chain_hash("1" * 64, canonical(content)) != base
    changed = {**content, "reason": content.get("reason", "") + "x"}
    assert chain_hash(GENESIS_HASH, canonical(changed)) != base


def test_a_genuine_link_passes() -> None:
    first = _entry(1, GENESIS_HASH, CONTENT)
    second = _entry(2, first.entry_hash, {**CONTENT, "serial": "cd"})
    assert check_link(first, GENESIS_HASH, 1) is None
    assert check_link(second, first.entry_hash, 2) is None


def test_each_kind_of_broken_link_is_named() -> None:
    first = _entry(1, GENESIS_HASH, CONTENT)
    skipped = check_link(_entry(3, first.entry_hash, CONTENT), first.entry_hash, 2)
    assert skipped is not None and (skipped.seq, "missing or reordered" in skipped.problem) == (3, True)
    relinked = check_link(_entry(2, "f" * 64, CONTENT), first.entry_hash, 2)
    assert relinked is not None and "previous-hash link" in relinked.problem
    edited = check_link(
        _entry(2, first.entry_hash, CONTENT, content_json=canonical({**CONTENT, "serial": "ff"})),
        first.entry_hash,
        2,
    )
    assert edited is not None and "was edited" in edited.problem


def test_an_indexed_column_that_differs_from_the_content_is_named() -> None:
    columns = tuple({**CONTENT, "namespace": "shop-canary"}.get(name) for name in INDEXED_FIELDS)
    entry = _entry(1, GENESIS_HASH, CONTENT, columns=columns)
    broken = check_link(entry, GENESIS_HASH, 1)
    assert broken is not None and broken.problem == "its namespace column(s) differ from its content: edited"
    genuine = tuple(CONTENT.get(name) for name in INDEXED_FIELDS)
    assert check_link(_entry(1, GENESIS_HASH, CONTENT, columns=genuine), GENESIS_HASH, 1) is None


def test_an_entry_past_the_recorded_head_is_named_with_the_head() -> None:
    broken = past_head(8, 7)
    assert broken.seq == 8 and "past the head the CA recorded (entry 7)" in broken.problem


def test_the_next_link_may_not_pass_the_recorded_head() -> None:
    first = _entry(1, GENESIS_HASH, CONTENT)
    assert next_link_problem(first, 0, GENESIS_HASH, head_seq=1) is None
    beyond = next_link_problem(_entry(2, first.entry_hash, CONTENT), 1, first.entry_hash, head_seq=1)
    assert beyond is not None and beyond == past_head(2, 1)


def test_a_chain_must_end_at_the_recorded_head_with_its_hash() -> None:
    assert chain_end_problem(5, "a" * 64, 5, "a" * 64) is None
    short = chain_end_problem(4, "a" * 64, 5, "a" * 64)
    assert short is not None and (short.seq, short.problem) == (
        5,
        "the head records entry 5 but the chain ends at 4: entries were removed from its end",
    )
    replaced = chain_end_problem(5, "b" * 64, 5, "a" * 64)
    assert replaced is not None and (replaced.seq, "it was replaced" in replaced.problem) == (5, True)
