"""Signed checkpoints of the ledger head. Pure code.

A checkpoint states (head sequence, head hash, entry count, time) and is
signed with the ledger key, so rewriting the chain after it, or cutting its
tail, is detectable by anyone holding the public key.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

HEAD = "head"
COMPACTION = "compaction"
"""A compaction checkpoint says the records up to it expired and were removed on purpose;
only such a checkpoint may anchor the start of a compacted ledger."""


@dataclass(frozen=True, kw_only=True)
class Checkpoint:
    head_seq: int
    head_hash: str
    count: int
    time: str
    key_id: str
    purpose: str = HEAD
    signature: str = ""

    def payload(self) -> bytes:
        body = {
            "purpose": self.purpose,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "count": self.count,
            "time": self.time,
            "key_id": self.key_id,
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def to_json(self) -> str:
        return json.dumps({**json.loads(self.payload()), "signature": self.signature}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Checkpoint:
        data: dict[str, Any] = json.loads(text)
        return cls(
            head_seq=int(data["head_seq"]),
            head_hash=str(data["head_hash"]),
            count=int(data["count"]),
            time=str(data["time"]),
            key_id=str(data["key_id"]),
            purpose=str(data["purpose"]),
            signature=str(data["signature"]),
        )


def key_id(public_key: ed25519.Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")[:16]


def sign(checkpoint: Checkpoint, key: ed25519.Ed25519PrivateKey) -> Checkpoint:
    signature = base64.b64encode(key.sign(checkpoint.payload())).decode()
    return dataclasses.replace(checkpoint, signature=signature)


def signature_valid(checkpoint: Checkpoint, public_key: ed25519.Ed25519PublicKey) -> bool:
    try:
        public_key.verify(base64.b64decode(checkpoint.signature), checkpoint.payload())
    except (InvalidSignature, ValueError):
        return False
    return True
