"""A stored keyring's certificates read without its keys (slots.slot_certificates)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ca.errors import CaMaterialError
from ca.issuance.slots import KEYRING_DOCUMENT, Keyring, Slot, SlotState, keyring_document, slot_certificates
from tests.support.signing_cas import two_signing_cas

NOW = datetime(2026, 11, 21, tzinfo=UTC)


def _files() -> dict[str, bytes]:
    cas = two_signing_cas(NOW)
    keyring = Keyring(
        (
            Slot(id="1", state=SlotState.RETIRING, authority=cas.first, since=NOW),
            Slot(id="2", state=SlotState.ACTIVE, authority=cas.second, since=NOW),
        )
    )
    return keyring_document(keyring)


def test_each_slots_certificates_without_a_key_file() -> None:
    files = {name: data for name, data in _files().items() if not name.endswith("key.pem")}
    found = slot_certificates(files, "test")
    assert [(s.id, s.state, s.since) for s in found] == [
        ("1", SlotState.RETIRING, NOW),
        ("2", SlotState.ACTIVE, NOW),
    ]
    assert found[0].roots == found[1].roots
    assert found[0].signing.subject != found[1].signing.subject
    assert found[0].chain == ()  # directly under the root


@pytest.mark.parametrize("missing", ["slot-2.ca-cert.pem", "slot-1.root-cert.pem", KEYRING_DOCUMENT])
def test_a_missing_certificate_is_a_damaged_keyring(missing: str) -> None:
    files = {name: data for name, data in _files().items() if name != missing}
    with pytest.raises(CaMaterialError, match="incomplete or damaged"):
        slot_certificates(files, "test")
