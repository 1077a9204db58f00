"""Where the CA keyring (ca.issuance.slots) lives without a cluster: files in the state directory.

`<state-dir>/ca-slots/` holds `slots.json` and each slot's PEM files (keys 0600, every file
written atomically). `slots.json` is written last, so a reader never sees a slot before its
files; files of retired slots are removed after it. A state directory from before slots (its
root in `ca-cert.pem`/`ca-key.pem`, signing leaves itself) becomes a keyring of that one root;
the schedule then puts a signing CA under it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ca.common.clock import Clock
from ca.common.files import SECRET_MODE, atomic_write, exclusive_lock
from ca.errors import CaMaterialError, ConfigError
from ca.issuance.authority import SigningAuthority, load_pem_certificates
from ca.issuance.keys import load_private_key_pem
from ca.issuance.selfsigned import RootFactory, check_trust_domain
from ca.issuance.slots import (
    KEYRING_DOCUMENT,
    Keyring,
    RotationPolicy,
    SlotState,
    StoredKeyring,
    document_version,
    keyring_document,
    load_keyring,
)

SLOTS_DIR = "ca-slots"
LEGACY_CERT = "ca-cert.pem"
LEGACY_KEY = "ca-key.pem"
LOCK = ".meshca.lock"


class KeyringDirectory:
    """The keyring in `<state-dir>/ca-slots`, shared by every process on that state directory."""

    def __init__(self, state_dir: Path) -> None:
        self._state_dir = state_dir
        self._dir = state_dir / SLOTS_DIR

    @property
    def where(self) -> str:
        return str(self._dir)

    def load_or_create(
        self, factory: RootFactory, policy: RotationPolicy, clock: Clock
    ) -> tuple[StoredKeyring, str]:
        """The stored keyring; made on first use. Returns it and what happened
        (`loaded`, `created`, `adopted` for a root from before slots)."""
        with exclusive_lock(self._state_dir / LOCK):
            stored = self._read()
            if stored is not None:
                for slot in stored.keyring.slots:
                    check_trust_domain(slot.authority, factory.trust_domain)
                return stored, "loaded"
            legacy = self._legacy(factory)
            if legacy is not None:
                keyring, what = (
                    Keyring.single(legacy, since=clock.now(), root_key=legacy.signing_key),
                    "adopted",
                )
            else:
                slot = factory.new_slot(
                    "1", signing_ttl=policy.signing_ttl, root_ttl=policy.root_ttl, under=None
                )
                keyring = Keyring((slot.moved(SlotState.ACTIVE, slot.since),))
                what = "created"
            return self._write(keyring, None), what

    def load_or_plug(self, material: SigningAuthority, clock: Clock) -> tuple[StoredKeyring, str]:
        """The stored keyring of a plugged-in CA; on first use, one slot holding `material`.
        New material found later is prepared by the caller (CaKeys.offer)."""
        with exclusive_lock(self._state_dir / LOCK):
            stored = self._read()
            if stored is not None:
                return stored, "loaded"
            return self._write(Keyring.single(material, since=clock.now(), root_key=None), None), "loaded"

    def read(self) -> StoredKeyring | None:
        return self._read()

    def version(self) -> str | None:
        try:
            return hashlib.sha256((self._dir / KEYRING_DOCUMENT).read_bytes()).hexdigest()
        except FileNotFoundError:
            return None

    def save(self, keyring: Keyring, expected_version: str) -> StoredKeyring:
        """Store `keyring` if the stored one is still `expected_version`; ConfigError if another
        process changed it meanwhile (read it again and retry)."""
        with exclusive_lock(self._state_dir / LOCK):
            return self._write(keyring, expected_version)

    def _read(self) -> StoredKeyring | None:
        document = self._dir / KEYRING_DOCUMENT
        if not document.exists():
            return None
        files = {path.name: path.read_bytes() for path in self._dir.iterdir() if path.is_file()}
        return StoredKeyring(load_keyring(files, self.where), document_version(files))

    def _write(self, keyring: Keyring, expected_version: str | None) -> StoredKeyring:
        if self.version() != expected_version:
            raise ConfigError(
                f"the CA keyring in {self._dir} changed while this change was being made; "
                "read it again (`meshca ca status`) and retry",
                reason="keyring_changed",
            )
        self._dir.mkdir(mode=0o700, exist_ok=True)
        files = keyring_document(keyring)
        for name, data in files.items():
            if name != KEYRING_DOCUMENT:
                atomic_write(self._dir / name, data, mode=SECRET_MODE if name.endswith("key.pem") else 0o644)
        atomic_write(self._dir / KEYRING_DOCUMENT, files[KEYRING_DOCUMENT])
        for path in self._dir.iterdir():
            if path.is_file() and path.name not in files and path.name.startswith("slot-"):
                path.unlink()
        return StoredKeyring(keyring, document_version(files))

    def _legacy(self, factory: RootFactory) -> SigningAuthority | None:
        cert_path, key_path = self._state_dir / LEGACY_CERT, self._state_dir / LEGACY_KEY
        if not cert_path.exists() and not key_path.exists():
            return None
        missing = [p.name for p in (cert_path, key_path) if not p.exists()]
        if missing:
            raise CaMaterialError(
                f"{self._state_dir} holds only part of a CA ({', '.join(missing)} missing); "
                "restore the missing file, or remove both to make a new root (every workload "
                "certificate then has to be reissued)"
            )
        cert = load_pem_certificates(cert_path.read_bytes(), str(cert_path))[0]
        key = load_private_key_pem(key_path.read_bytes(), str(key_path))
        authority = SigningAuthority(
            signing_cert=cert, signing_key=key, chain=(), roots=(cert,), source=str(self._state_dir)
        )
        return check_trust_domain(authority, factory.trust_domain)
