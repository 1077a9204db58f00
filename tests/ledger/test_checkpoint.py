"""Signed checkpoints: one ledger key signs them all."""

from __future__ import annotations

from collections import Counter

from ca.ledger import checkpoint as cp
from tests.support.ledger import (
    LedgerRig,
)


def test_one_ledger_key_signs_every_checkpoint(rig: LedgerRig) -> None:
    key_ids = Counter(c.key_id for c in rig.store.checkpoints())
    assert key_ids == Counter({cp.key_id(rig.key.public_key()): 2})
