"""What the agent holds: an SVID with its key, checked before it is used.

Pure code. A response from the CA is accepted only if the leaf carries our
public key and a SPIFFE ID of the expected trust domain, and the chain
validates to the root bundle the CA sent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from ca.errors import InvalidSpiffeIdError, MeshcaError
from ca.issuance.keys import PrivateKey, private_key_pem
from ca.issuance.spiffe_id import SpiffeId
from ca.issuance.svid_id import svid_spiffe_id


class BadResponseError(MeshcaError):
    """The CA answered with something the agent will not use."""


def _spki(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@dataclass(frozen=True, kw_only=True)
class Svid:
    """A certificate the agent holds: its SPIFFE ID, its chain (the leaf first), the roots it
    chains to, and its private key."""

    spiffe_id: SpiffeId
    chain: tuple[x509.Certificate, ...]
    roots: tuple[x509.Certificate, ...]
    key: PrivateKey = field(repr=False)

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def not_before(self) -> datetime:
        return self.leaf.not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        return self.leaf.not_valid_after_utc

    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)

    def roots_pem(self) -> bytes:
        return b"".join(r.public_bytes(serialization.Encoding.PEM) for r in self.roots)

    def key_pem(self) -> bytes:
        return private_key_pem(self.key)

    def chain_der(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.DER) for c in self.chain)

    def roots_der(self) -> bytes:
        return b"".join(r.public_bytes(serialization.Encoding.DER) for r in self.roots)

    def key_der(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def roots_fingerprint(self) -> str:
        return hashlib.sha256(self.roots_der()).hexdigest()


def _bad(problem: str) -> BadResponseError:
    return BadResponseError(f"the CA's response was not used: {problem}", reason="bad_response")


def _load(pems: Sequence[str]) -> tuple[list[x509.Certificate], list[x509.Certificate]]:
    if len(pems) < 2:
        raise _bad(f"the chain has {len(pems)} element(s); expected the leaf and the root bundle")
    try:
        chain = [x509.load_pem_x509_certificate(p.encode()) for p in pems[:-1]]
        roots = x509.load_pem_x509_certificates(pems[-1].encode())
    except ValueError as err:
        raise _bad(f"a certificate cannot be parsed ({err})") from err
    return chain, roots


def _leaf_spiffe_id(leaf: x509.Certificate) -> SpiffeId:
    try:
        return svid_spiffe_id(leaf)
    except InvalidSpiffeIdError as err:
        raise _bad(f"the leaf is not an X.509-SVID: {err}") from err


def accept_response(
    pems: Sequence[str], key: PrivateKey, *, trust_domain: str, expected: SpiffeId | None, now: datetime
) -> Svid:
    """The SVID in a CreateCertificate response, if it is ours and valid; else BadResponseError."""
    chain, roots = _load(pems)
    leaf = chain[0]
    if _spki(leaf.public_key()) != _spki(key.public_key()):
        raise _bad("the leaf certificate is for a different key than the one this agent generated")
    spiffe_id = _leaf_spiffe_id(leaf)
    if not spiffe_id.is_member_of(trust_domain):
        raise _bad(f"the leaf names {spiffe_id}, outside trust domain {trust_domain}")
    if expected is not None and spiffe_id != expected:
        raise _bad(f"the leaf names {spiffe_id}, but this workload is {expected}")
    try:
        verifier = PolicyBuilder().store(Store(roots)).time(now).build_client_verifier()
        verifier.verify(leaf, chain[1:])
    except VerificationError as err:
        raise _bad(f"the chain does not validate to the returned roots ({err})") from err
    return Svid(spiffe_id=spiffe_id, chain=tuple(chain), roots=tuple(roots), key=key)


def chains_to(svid: Svid, roots: Sequence[x509.Certificate], now: datetime) -> bool:
    """Whether the SVID's chain validates, at `now`, to one of `roots` (a pushed trust bundle:
    when it does not, the agent needs a certificate from the CA's current signing slot)."""
    if not roots:
        return False
    try:
        verifier = PolicyBuilder().store(Store(list(roots))).time(now).build_client_verifier()
        verifier.verify(svid.leaf, list(svid.chain[1:]))
    except VerificationError:
        return False
    return True
