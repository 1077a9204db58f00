"""Fixtures for the ledger tests: every test asking for ledger_url runs on SQLite and on PostgreSQL,
and a rig holds the ledger every tampering case starts from."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ledger as ledger_support
from tests.support.ledger import LedgerRig, ledger_rig, snapshot

ledger_url = ledger_support.ledger_url  # the fixture: SQLite and PostgreSQL


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
