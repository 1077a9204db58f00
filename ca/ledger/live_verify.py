"""Verifying a ledger that a CA may still be writing, against every signed head kept outside it.

The whole check runs in one read transaction of a reader (a snapshot, see
ca.ledger.reader): the head row, the checkpoints and every entry as of one moment,
so entries a CA appends meanwhile are neither seen nor mistaken for entries added
past the head, and every row the snapshot holds is checked. Read the external heads
before calling, so that none is newer than the snapshot.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy import Connection

from ca.common.progress import ProgressCallback
from ca.errors import ConfigError
from ca.ledger.chain import Entry
from ca.ledger.checkpoint import Checkpoint, signature_valid
from ca.ledger.ledger import HeadFile
from ca.ledger.reader import LedgerReader
from ca.ledger.store import READ_BATCH, entries_after, read_checkpoints, read_head
from ca.ledger.verify import VerifyReport, verify_ledger


class SnapshotView:
    """The ledger as one transaction of a reader's connection sees it."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def head(self) -> tuple[int, str, int, str]:
        return read_head(self._conn)

    def checkpoints(self) -> list[Checkpoint]:
        return read_checkpoints(self._conn)

    def entries(self, after_seq: int = 0) -> Iterator[Entry]:
        last = after_seq
        while True:
            batch = entries_after(self._conn, last, READ_BATCH)
            yield from batch
            if len(batch) < READ_BATCH:
                return
            last = batch[-1].seq

    def entry_hash(self, seq: int) -> str | None:
        found = entries_after(self._conn, seq - 1, 1)
        return found[0].entry_hash if found and found[0].seq == seq else None


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
    view: SnapshotView, head: Checkpoint, public_key: ed25519.Ed25519PublicKey
) -> str | None:
    """Why a further external head disagrees with a ledger already verified, or None."""
    if not signature_valid(head, public_key):
        return f"the head {head.key_id!r} at entry {head.head_seq} is not signed by the ledger key"
    head_seq, _, anchor_seq, _ = view.head()
    if head.head_seq > head_seq:
        return (
            f"a signed head kept outside the database is at entry {head.head_seq} but the database "
            f"ends at {head_seq}: the database was rolled back or cut"
        )
    if head.head_seq > anchor_seq and view.entry_hash(head.head_seq) != head.head_hash:
        return (
            f"entry {head.head_seq} differs from a signed head kept outside the database: the "
            "database was replaced or rolled back"
        )
    return None


def verify_at_head(
    reader: LedgerReader,
    public_key: ed25519.Ed25519PublicKey,
    external_heads: Sequence[Checkpoint],
    *,
    progress: ProgressCallback | None = None,
) -> VerifyReport:
    """verify_ledger on one snapshot of the reader's ledger, against the newest external head;
    the others are then checked against the verified chain. `progress` hears how far the walk is."""
    heads = sorted(external_heads, key=lambda h: h.head_seq, reverse=True)
    with reader.engine.connect() as conn:
        view = SnapshotView(conn)
        result = verify_ledger(view, public_key, heads[0] if heads else None, progress=progress)
        if not result.ok:
            return result
        for head in heads[1:]:
            problem = _check_other_head(view, head, public_key)
            if problem is not None:
                return VerifyReport(result.entries_checked, result.checkpoints_checked, None, problem)
    return result
