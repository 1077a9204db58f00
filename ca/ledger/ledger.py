"""The ledger as the CA uses it: record, checkpoint, and keep the signed head outside the database."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import Future
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from ca.auth.base import Caller, TokenLeeway
from ca.common.clock import Clock
from ca.common.files import SECRET_MODE, atomic_write, exclusive_lock
from ca.errors import ConfigError, UnavailableError
from ca.issuance.authority import SigningAuthority
from ca.issuance.issuer import IssuedCertificate
from ca.issuance.slots import Transition
from ca.ledger import checkpoint as cp
from ca.ledger.appender import LedgerAppender
from ca.ledger.chain import Entry
from ca.ledger.entries import (
    IssuedRecord,
    ca_event_content,
    ca_slot_content,
    leeway_fields,
    refused_content,
    timestamp,
)
from ca.ledger.process_writer import LedgerProcess
from ca.ledger.store import LedgerStore
from ca.ledger.writer import (
    UNOBSERVED,
    LedgerWriter,
    LoopLedgerWriter,
    Recorded,
    WriteObserver,
    always,
)

log = logging.getLogger("meshca.ledger")

KEY_FILE = "ledger-key.pem"
HEAD_FILE = "ledger-head.json"

HeadPublisher = Callable[[cp.Checkpoint], None]
_PROCESS_START_S = 60.0  # a cold start of the interpreter and its imports on a loaded node


def new_ledger_key_pem() -> bytes:
    key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def ledger_key_from_pem(data: bytes, where: str) -> ed25519.Ed25519PrivateKey:
    loaded = serialization.load_pem_private_key(data, password=None)
    if not isinstance(loaded, ed25519.Ed25519PrivateKey):
        raise ConfigError(
            f"{where} is not an Ed25519 key; restore the ledger key (a new one cannot "
            "verify the existing checkpoints)"
        )
    return loaded


def load_or_create_ledger_key(path: Path) -> ed25519.Ed25519PrivateKey:
    """The checkpoint signing key; CA processes sharing a ledger must share this key."""
    with exclusive_lock(path.parent / ".meshca.lock"):
        if not path.exists():
            pem = new_ledger_key_pem()
            atomic_write(path, pem, mode=SECRET_MODE)
            return ledger_key_from_pem(pem, str(path))
    return ledger_key_from_pem(path.read_bytes(), str(path))


def _leeway_fields(used: TokenLeeway | None) -> dict[str, Any] | None:
    return None if used is None else leeway_fields(claim=used.claim, needed=used.needed, leeway=used.leeway)


class HeadFile:
    """The latest signed checkpoint, kept as a file beside the database."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def publish(self, checkpoint: cp.Checkpoint) -> None:
        """Keep the newer head: CA processes sharing a ledger each publish theirs, and an
        older one written last must not move the head back."""
        with exclusive_lock(self.path.parent / f".{self.path.name}.lock"):
            current = self._read_or_none()
            if current is not None and current.head_seq >= checkpoint.head_seq:
                return
            atomic_write(self.path, checkpoint.to_json().encode())

    def _read_or_none(self) -> cp.Checkpoint | None:
        try:
            return self.read()
        except (OSError, ValueError, KeyError, TypeError):
            return None  # unreadable: replace it with a good one

    def read(self) -> cp.Checkpoint | None:
        if not self.path.exists():
            return None
        return cp.Checkpoint.from_json(self.path.read_text())


class Ledger:
    def __init__(
        self,
        store: LedgerStore,
        *,
        key: ed25519.Ed25519PrivateKey,
        clock: Clock,
        publishers: list[HeadPublisher],
        max_batch: int = 512,
        observer: WriteObserver = UNOBSERVED,
    ) -> None:
        """`observer` hears of every commit and every entry not written (the CA's metrics)."""
        self.store = store
        self._key = key
        self._clock = clock
        self._publishers = publishers
        self.key_id = cp.key_id(key.public_key())
        self._checkpointed_seq = 0
        self._max_batch = max_batch
        self._observer = observer
        self._writer: LedgerWriter | LoopLedgerWriter = LedgerWriter(
            store.append, max_batch=max_batch, observer=observer, clock=clock
        )

    def commit_on_loop(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        linger_s: float = 0.0,
        deadline_s: float = 10.0,
        short_of_cpu: Callable[[], bool] = always,
    ) -> None:
        """From now on, batch on `loop` and write in a ledger process (see ca.ledger.writer);
        entries already submitted are committed first. A busy writer lingers only while
        `short_of_cpu()` says so."""
        process = LedgerProcess(functools.partial(LedgerAppender, self.store.url))
        process.start()
        try:
            process.wait_ready(_PROCESS_START_S)
        except (EOFError, UnavailableError) as err:
            process.kill()
            raise UnavailableError(
                f"the issuance ledger's writer process did not start ({err}); check --ledger",
                reason="ledger_unavailable",
            ) from err
        previous = self._writer
        self._writer = LoopLedgerWriter(
            process,
            loop,
            max_batch=self._max_batch,
            linger_s=linger_s,
            short_of_cpu=short_of_cpu,
            deadline_s=deadline_s,
            start_timeout_s=_PROCESS_START_S,
            observer=self._observer,
        )
        previous.close()

    @property
    def public_key(self) -> ed25519.Ed25519PublicKey:
        return self._key.public_key()

    def record_issued(
        self,
        issued: IssuedCertificate,
        caller: Caller,
        *,
        client_address: str,
        cluster_id: str | None,
        order_id: str | None = None,
        replaces: str | None = None,
        agent: str | None = None,
    ) -> Recorded:
        """`order_id` and `replaces` when a rotation order caused this issuance, `agent`
        ("meshca") when a meshca agent asked for it (see ca.ledger.entries.issued_content)."""
        authority = issued.authority
        return self._writer.submit(
            IssuedRecord(
                time=self._clock.now(),
                serial=issued.serial,
                spiffe_id=issued.spiffe_id.uri,
                namespace=caller.namespace,
                service_account=caller.service_account,
                service_account_uid=caller.service_account_uid,
                pod_name=caller.pod_name,
                pod_uid=caller.pod_uid,
                node_name=caller.node_name,
                token_id=caller.token_id,
                auth_method=caller.method,
                cluster_id=cluster_id,
                client_address=client_address,
                key_type=issued.key_type,
                certificate_pem=issued.chain[0],
                not_before=issued.not_before,
                not_after=issued.not_after,
                ca_key_id=authority.key_id,
                ca_fingerprint=authority.fingerprint,
                token_leeway=_leeway_fields(caller.token_leeway),
                order_id=order_id,
                replaces=replaces,
                agent=agent,
            )
        )

    def record_refusal(
        self,
        *,
        reason: str,
        status_code: str,
        message: str,
        client_address: str,
        caller: Caller | None,
        token_leeway: TokenLeeway | None = None,
    ) -> Recorded:
        return self._writer.submit(
            refused_content(
                time=self._clock.now(),
                reason=reason,
                status_code=status_code,
                message=message,
                client_address=client_address,
                spiffe_id=caller.spiffe_id.uri if caller else None,
                namespace=caller.namespace if caller else None,
                service_account=caller.service_account if caller else None,
                pod_name=caller.pod_name if caller else None,
                token_leeway=_leeway_fields(token_leeway),
            )
        )

    def record_ca_event(self, event: str, authority: SigningAuthority) -> Future[Entry]:
        """Called from the CA's own threads (start-up, rotation), never from the server's loop."""
        recorded = self._writer.submit(
            ca_event_content(
                time=self._clock.now(),
                event=event,
                ca_key_id=authority.key_id,
                ca_fingerprint=authority.fingerprint,
                source=authority.source,
                not_after=authority.expiry(),
            )
        )
        if not isinstance(recorded, Future):
            raise RuntimeError("record_ca_event was called on the ledger's event loop")
        return recorded

    def record_ca_slot(
        self, transition: Transition, *, not_after: datetime, replica: str, requested_by: str, why: str
    ) -> Future[Entry]:
        """Called from the CA's own threads, never from the server's loop."""
        recorded = self._writer.submit(
            ca_slot_content(
                time=transition.at,
                slot_id=transition.slot_id,
                from_state=str(transition.from_state) if transition.from_state else None,
                to_state=str(transition.to_state),
                signing_fingerprint=transition.signing_fingerprint,
                root_fingerprints=transition.root_fingerprints,
                not_after=not_after,
                forced=transition.forced,
                replica=replica,
                requested_by=requested_by,
                why=why,
            )
        )
        if not isinstance(recorded, Future):
            raise RuntimeError("record_ca_slot was called on the ledger's event loop")
        return recorded

    def _signed(self, seq: int, entry_hash: str, *, count: int, purpose: str) -> cp.Checkpoint:
        unsigned = cp.Checkpoint(
            head_seq=seq,
            head_hash=entry_hash,
            count=count,
            time=timestamp(self._clock.now()),
            key_id=self.key_id,
            purpose=purpose,
        )
        return cp.sign(unsigned, self._key)

    def checkpoint(self) -> cp.Checkpoint | None:
        """Sign the current head, store it, and publish it outside the database."""
        seq, head_hash, anchor_seq, _ = self.store.head()
        if seq == 0 or seq == self._checkpointed_seq:
            return None
        signed = self._signed(seq, head_hash, count=seq - anchor_seq, purpose=cp.HEAD)
        self.store.add_checkpoint(signed)
        for publish in self._publishers:
            try:
                publish(signed)
            except Exception as err:
                log.warning("could not publish the ledger head", extra={"detail": str(err)})
        self._checkpointed_seq = seq
        return signed

    def compact(self, cutoff: datetime) -> int:
        """Remove the prefix of records that expired before `cutoff`, anchored by a signed checkpoint."""
        _, _, anchor_seq, _ = self.store.head()
        end = self.store.expired_prefix_end(timestamp(cutoff))
        if end <= anchor_seq:
            return 0
        anchor_hash = self.store.entry_hash(end)
        if anchor_hash is None:
            return 0
        signed = self._signed(end, anchor_hash, count=end - anchor_seq, purpose=cp.COMPACTION)
        self.store.add_checkpoint(signed)
        return self.store.compact_through(end, anchor_hash)

    def close(self) -> None:
        self._writer.close()
        try:
            self.checkpoint()
        except Exception as err:
            log.warning("final ledger checkpoint failed", extra={"detail": str(err)})
        self.store.dispose()
