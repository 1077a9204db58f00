"""The CA keyring in <state-dir>/ca-slots: made on first use, loaded again, a root from before slots
adopted, compare-and-swap between writers, retired slots' files removed, damaged files refused."""

from __future__ import annotations

import json
import stat
from datetime import timedelta
from pathlib import Path

import pytest

from ca.errors import CaMaterialError, ConfigError
from ca.issuance.authority import cert_pem
from ca.issuance.keys import KeyAlgorithm, private_key_pem
from ca.issuance.selfsigned import RootFactory
from ca.issuance.slots import (
    Acknowledgement,
    Keyring,
    RotationPolicy,
    SlotState,
    activate,
    prepare,
    retire,
)
from ca.server.keyring_store import SLOTS_DIR, KeyringDirectory
from tests.support.clock import FakeClock

POLICY = RotationPolicy(max_leaf_ttl=timedelta(days=1))
PARTS = ("ca-cert.pem", "ca-key.pem", "cert-chain.pem", "root-cert.pem", "root-key.pem")


def everyone(_root: str) -> Acknowledgement:
    return Acknowledgement(holding=1, connected=1)


def factory(clock: FakeClock, trust_domain: str = "cluster.local") -> RootFactory:
    return RootFactory(trust_domain=trust_domain, key_algorithm=KeyAlgorithm.EC_P256, clock=clock)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def with_next_slot(keyring: Keyring, clock: FakeClock) -> Keyring:
    slot = factory(clock).new_slot(
        keyring.next_id(), signing_ttl=POLICY.signing_ttl, root_ttl=POLICY.root_ttl, under=keyring.active
    )
    return prepare(keyring, slot)[0]


def test_the_first_use_makes_a_keyring_of_one_slot_with_private_files(tmp_path: Path) -> None:
    clock = FakeClock()
    stored, what = KeyringDirectory(tmp_path).load_or_create(factory(clock), POLICY, clock)
    assert what == "created"
    active = stored.keyring.active
    assert [s.id for s in stored.keyring.slots] == ["1"]
    assert not active.signs_with_root and active.root_key is not None
    slots = tmp_path / SLOTS_DIR
    assert mode(slots) == 0o700
    assert sorted(p.name for p in slots.iterdir()) == sorted(["slots.json", *(f"slot-1.{p}" for p in PARTS)])
    for name in ("slot-1.ca-key.pem", "slot-1.root-key.pem"):
        assert mode(slots / name) == 0o600, name
    assert mode(slots / "slot-1.ca-cert.pem") == 0o644
    document = json.loads((slots / "slots.json").read_text())
    assert document["slots"] == [{"id": "1", "state": "active", "since": active.since.isoformat()}]


def test_the_keyring_is_loaded_again_as_it_was_stored(tmp_path: Path) -> None:
    clock = FakeClock()
    created, _ = KeyringDirectory(tmp_path).load_or_create(factory(clock), POLICY, clock)
    clock.advance(timedelta(days=3))
    loaded, what = KeyringDirectory(tmp_path).load_or_create(factory(clock), POLICY, clock)
    assert what == "loaded"
    assert loaded.version == created.version
    before, after = created.keyring.active, loaded.keyring.active
    assert after.signing_fingerprint == before.signing_fingerprint
    assert after.root_fingerprints == before.root_fingerprints
    assert after.since == before.since
    assert after.root_key is not None
    assert private_key_pem(after.root_key) == private_key_pem(before.root_key)  # type: ignore[arg-type]
    assert KeyringDirectory(tmp_path).version() == created.version


def test_a_state_directory_from_before_slots_is_adopted_as_its_root(tmp_path: Path) -> None:
    clock = FakeClock()
    legacy = factory(clock).create("old state dir")
    (tmp_path / "ca-cert.pem").write_text(cert_pem(legacy.signing_cert))
    (tmp_path / "ca-key.pem").write_bytes(private_key_pem(legacy.signing_key))

    stored, what = KeyringDirectory(tmp_path).load_or_create(factory(clock), POLICY, clock)
    assert what == "adopted"
    active = stored.keyring.active
    assert active.signs_with_root
    assert active.signing_fingerprint == legacy.fingerprint
    assert active.root_key is not None
    assert private_key_pem(active.root_key) == private_key_pem(legacy.signing_key)
    # The old files stay for an older meshca; the keyring is what this one reads from now on.
    assert (tmp_path / "ca-cert.pem").exists() and (tmp_path / "ca-key.pem").exists()
    again, what = KeyringDirectory(tmp_path).load_or_create(factory(clock), POLICY, clock)
    assert what == "loaded" and again.keyring.active.signs_with_root
    assert again.keyring.active.signing_fingerprint == legacy.fingerprint


def test_half_a_legacy_ca_is_refused_naming_the_missing_file(tmp_path: Path) -> None:
    clock = FakeClock()
    legacy = factory(clock).create("old state dir")
    (tmp_path / "ca-cert.pem").write_text(cert_pem(legacy.signing_cert))
    with pytest.raises(CaMaterialError, match=r"ca-key\.pem missing"):
        KeyringDirectory(tmp_path).load_or_create(factory(clock), POLICY, clock)
    assert not (tmp_path / SLOTS_DIR).exists()


def test_a_legacy_root_of_another_trust_domain_is_refused(tmp_path: Path) -> None:
    clock = FakeClock()
    legacy = factory(clock, "other.example").create("old state dir")
    (tmp_path / "ca-cert.pem").write_text(cert_pem(legacy.signing_cert))
    (tmp_path / "ca-key.pem").write_bytes(private_key_pem(legacy.signing_key))
    with pytest.raises(CaMaterialError, match=r"'other\.example'.*--trust-domain other\.example"):
        KeyringDirectory(tmp_path).load_or_create(factory(clock), POLICY, clock)


def test_a_keyring_of_another_trust_domain_is_refused(tmp_path: Path) -> None:
    clock = FakeClock()
    KeyringDirectory(tmp_path).load_or_create(factory(clock), POLICY, clock)
    with pytest.raises(
        CaMaterialError, match=r"trust domain 'cluster\.local'.*configured for 'other\.example'"
    ):
        KeyringDirectory(tmp_path).load_or_create(factory(clock, "other.example"), POLICY, clock)


def test_a_save_over_another_writers_change_is_refused(tmp_path: Path) -> None:
    clock = FakeClock()
    mine, theirs = KeyringDirectory(tmp_path), KeyringDirectory(tmp_path)
    start, _ = mine.load_or_create(factory(clock), POLICY, clock)
    their_change = theirs.save(with_next_slot(start.keyring, clock), start.version)
    with pytest.raises(ConfigError, match="changed while this change was being made") as refused:
        mine.save(with_next_slot(start.keyring, clock), start.version)
    assert refused.value.reason == "keyring_changed"
    now = mine.read()
    assert now is not None and now.version == their_change.version
    assert now.keyring.prepared is not None
    assert now.keyring.prepared.signing_fingerprint == their_change.keyring.prepared.signing_fingerprint  # type: ignore[union-attr]


def test_a_retired_slots_files_leave_the_directory(tmp_path: Path) -> None:
    clock = FakeClock()
    store = KeyringDirectory(tmp_path)
    stored, _ = store.load_or_create(factory(clock), POLICY, clock)
    stored = store.save(with_next_slot(stored.keyring, clock), stored.version)
    stored = store.save(activate(stored.keyring, clock.now(), POLICY, everyone)[0], stored.version)
    slots = tmp_path / SLOTS_DIR
    assert (slots / "slot-1.ca-key.pem").exists()
    clock.advance(POLICY.max_leaf_ttl)
    stored = store.save(retire(stored.keyring, clock.now(), POLICY)[0], stored.version)
    assert sorted(p.name for p in slots.iterdir()) == sorted(["slots.json", *(f"slot-2.{p}" for p in PARTS)])
    loaded = store.read()
    assert loaded is not None and [(s.id, s.state) for s in loaded.keyring.slots] == [("2", SlotState.ACTIVE)]


def _stored_dir(tmp_path: Path) -> Path:
    clock = FakeClock()
    KeyringDirectory(tmp_path).load_or_create(factory(clock), POLICY, clock)
    return tmp_path / SLOTS_DIR


def test_a_truncated_slots_document_is_refused(tmp_path: Path) -> None:
    slots = _stored_dir(tmp_path)
    document = (slots / "slots.json").read_bytes()
    (slots / "slots.json").write_bytes(document[: len(document) // 2])
    with pytest.raises(CaMaterialError, match=r"ca-slots: the CA keyring is incomplete or damaged.*backup"):
        KeyringDirectory(tmp_path).read()


def test_a_slot_whose_files_are_missing_is_refused_naming_the_file(tmp_path: Path) -> None:
    slots = _stored_dir(tmp_path)
    (slots / "slot-1.ca-cert.pem").unlink()
    with pytest.raises(CaMaterialError, match=r"incomplete or damaged.*slot-1\.ca-cert\.pem"):
        KeyringDirectory(tmp_path).read()


def test_a_damaged_key_is_refused_naming_the_slot_and_file(tmp_path: Path) -> None:
    slots = _stored_dir(tmp_path)
    (slots / "slot-1.ca-key.pem").write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n")
    with pytest.raises(ConfigError, match=r"slot 1 ca-key\.pem does not hold an unencrypted PEM private key"):
        KeyringDirectory(tmp_path).read()


def test_a_certificate_and_key_that_are_no_pair_are_refused(tmp_path: Path) -> None:
    slots = _stored_dir(tmp_path)
    (slots / "slot-1.ca-key.pem").write_bytes((slots / "slot-1.root-key.pem").read_bytes())
    with pytest.raises(CaMaterialError, match="slot 1: the CA private key does not belong"):
        KeyringDirectory(tmp_path).read()


def test_a_keyring_of_another_format_is_refused(tmp_path: Path) -> None:
    slots = _stored_dir(tmp_path)
    document = json.loads((slots / "slots.json").read_text())
    (slots / "slots.json").write_text(json.dumps({**document, "format": 2}))
    with pytest.raises(CaMaterialError, match="format 2 is not 1; run the meshca version that wrote it"):
        KeyringDirectory(tmp_path).read()


def test_plugged_in_material_becomes_the_first_slot_once(tmp_path: Path) -> None:
    clock = FakeClock()
    material = (
        factory(clock).new_slot("x", signing_ttl=POLICY.signing_ttl, root_ttl=POLICY.root_ttl).authority
    )
    stored, what = KeyringDirectory(tmp_path).load_or_plug(material, clock)
    assert what == "loaded"  # loaded from the operator's files; meshca created no root
    assert (tmp_path / SLOTS_DIR / "slots.json").exists()
    assert stored.keyring.active.signing_fingerprint == material.fingerprint
    assert stored.keyring.active.root_key is None
    assert not (tmp_path / SLOTS_DIR / "slot-1.root-key.pem").exists()
    other = factory(clock).new_slot("y", signing_ttl=POLICY.signing_ttl, root_ttl=POLICY.root_ttl).authority
    again, what = KeyringDirectory(tmp_path).load_or_plug(other, clock)
    assert what == "loaded" and again.version == stored.version
    assert again.keyring.active.signing_fingerprint == material.fingerprint
