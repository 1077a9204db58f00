"""Verifying a ledger that a CA may still be writing, against every signed head kept outside it.

`verify_ledger` reads the head, then the entries in batches; a CA appending in
between would look like entries added past the head. So the check here runs on
the ledger as of one head, read once: entries and checkpoints written after it
are left out. Read the external heads before calling, so that none is newer
than that head.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy import Engine

from ca.errors import ConfigError
from ca.ledger.checkpoint import Checkpoint, signature_valid
from ca.ledger.entries import Entry
from ca.ledger.ledger import HeadFile
from ca.ledger.store import LedgerStore
from ca.ledger.verify import VerifyReport, verify_ledger


class _AtHead(LedgerStore):
    """A LedgerStore view of the ledger as of the head read when it is made.

    It shares the engine it is given (a reader's, which takes no write lock) rather
    than opening its own, so it does not run LedgerStore's constructor.
    """

    def __init__(self, url: str, engine: Engine) -> None:
        self.url = url
        self.engine = engine
        self._is_sqlite = url.startswith("sqlite")
        self._at = super().head()

    def head(self) -> tuple[int, str, int, str]:
        return self._at

    def entries(self, after_seq: int = 0) -> Iterator[Entry]:
        for entry in super().entries(after_seq):
            if entry.seq > self._at[0]:
                return
            yield entry

    def checkpoints(self) -> list[Checkpoint]:
        return [c for c in super().checkpoints() if c.head_seq <= self._at[0]]


class UnreadableHead(Exception):
    """A signed head kept outside the database is there but cannot be read: itself a finding."""


def read_head_file(path: Path) -> Checkpoint | None:
    """The signed head in the CA's head file, None if there is none; raises UnreadableHead."""
    try:
        return HeadFile(path).read()
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise UnreadableHead(
            f"the signed head kept outside the database, {path}, cannot be read ({err}): "
            "it was damaged or replaced"
        ) from err


def load_verify_key(path: Path) -> ed25519.Ed25519PublicKey:
    """The ledger's public key from its key file: the CA's private key PEM, or just the public key."""
    if not path.is_file():
        raise ConfigError(
            f"there is no ledger key at {path}; give --ledger-key with the CA's ledger-key.pem "
            "or its public key"
        )
    return verify_key_from_pem(path.read_bytes(), str(path))


def verify_key_from_pem(data: bytes, where: str) -> ed25519.Ed25519PublicKey:
    try:
        if b"PRIVATE KEY" in data:
            private = serialization.load_pem_private_key(data, password=None)
            key = private.public_key() if isinstance(private, ed25519.Ed25519PrivateKey) else None
        else:
            public = serialization.load_pem_public_key(data)
            key = public if isinstance(public, ed25519.Ed25519PublicKey) else None
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{where} is not a PEM key ({err}); give the CA's ledger-key.pem") from err
    if key is None:
        raise ConfigError(f"{where} is not an Ed25519 key; give the CA's ledger-key.pem or its public key")
    return key


def _check_other_head(
    store: LedgerStore, head: Checkpoint, public_key: ed25519.Ed25519PublicKey
) -> str | None:
    """Why a further external head disagrees with a ledger already verified, or None."""
    if not signature_valid(head, public_key):
        return f"the head {head.key_id!r} at entry {head.head_seq} is not signed by the ledger key"
    head_seq, _, anchor_seq, _ = store.head()
    if head.head_seq > head_seq:
        return (
            f"a signed head kept outside the database is at entry {head.head_seq} but the database "
            f"ends at {head_seq}: the database was rolled back or cut"
        )
    if head.head_seq > anchor_seq and store.entry_hash(head.head_seq) != head.head_hash:
        return (
            f"entry {head.head_seq} differs from a signed head kept outside the database: the "
            "database was replaced or rolled back"
        )
    return None


def verify_at_head(
    url: str, engine: Engine, public_key: ed25519.Ed25519PublicKey, external_heads: Sequence[Checkpoint]
) -> VerifyReport:
    """verify_ledger on the ledger as of now, against the newest external head; the others are
    then checked against the verified chain."""
    store = _AtHead(url, engine)
    heads = sorted(external_heads, key=lambda h: h.head_seq, reverse=True)
    result = verify_ledger(store, public_key, heads[0] if heads else None)
    if not result.ok:
        return result
    for head in heads[1:]:
        problem = _check_other_head(store, head, public_key)
        if problem is not None:
            return VerifyReport(result.entries_checked, result.checkpoints_checked, None, problem)
    return result
