"""The signing authority: a CA certificate and key, the chain above it, and the roots.

Pure code: construction checks that the pieces fit together. Loading them from
files or a Kubernetes Secret is the job of the material modules.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from ca.errors import CaMaterialError
from ca.issuance.keys import PrivateKey


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def load_pem_certificates(data: bytes, source: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as err:
        raise CaMaterialError(f"{source} does not hold PEM certificates ({err})") from err
    if not certs:
        raise CaMaterialError(f"{source} holds no certificate")
    return certs


def fingerprint_sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return basic.ca
    return basic.ca and usage.key_cert_sign


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether `issuer` names and signed `cert` (its signature only: no validity, no path)."""
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def valid_at(cert: x509.Certificate, moment: datetime) -> bool:
    """Whether `moment` is within `cert`'s validity: from its notBefore, up to but not including
    its notAfter (its dates only: no signature, no path)."""
    return cert.not_valid_before_utc <= moment < cert.not_valid_after_utc


def _is_self_signed(cert: x509.Certificate) -> bool:
    return issued_by(cert, cert)


def _subject_key_id(cert: x509.Certificate) -> str:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest.hex()


@dataclass(frozen=True, kw_only=True)
class SigningAuthority:
    """What the CA signs with and what it tells clients to trust.

    `chain` runs from the signing certificate up to, but not including, the
    root; in the self-signed mode it is empty because the root signs directly.
    """

    signing_cert: x509.Certificate
    signing_key: PrivateKey = field(repr=False)
    chain: tuple[x509.Certificate, ...]
    roots: tuple[x509.Certificate, ...]
    source: str
    response_tail: tuple[str, ...] = field(init=False, repr=False)
    key_id: str = field(init=False)
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        self._check()
        tail = [cert_pem(c) for c in self.chain]
        tail.append("".join(cert_pem(r) for r in self.roots))
        object.__setattr__(self, "response_tail", tuple(tail))
        object.__setattr__(self, "key_id", _subject_key_id(self.signing_cert))
        object.__setattr__(self, "fingerprint", fingerprint_sha256(self.signing_cert))

    @classmethod
    def from_parts(
        cls,
        *,
        signing_cert: x509.Certificate,
        signing_key: PrivateKey,
        cert_chain: Sequence[x509.Certificate],
        roots: Sequence[x509.Certificate],
        source: str,
    ) -> SigningAuthority:
        """Build from a cacerts-style chain (signing cert up to the root, root optional)."""
        root_ders = {r.public_bytes(serialization.Encoding.DER) for r in roots}
        chain = [c for c in cert_chain if c.public_bytes(serialization.Encoding.DER) not in root_ders]
        if not chain or chain[0] != signing_cert:
            chain.insert(0, signing_cert)
        if signing_cert.public_bytes(serialization.Encoding.DER) in root_ders:
            chain = []
        return cls(
            signing_cert=signing_cert,
            signing_key=signing_key,
            chain=tuple(chain),
            roots=tuple(roots),
            source=source,
        )

    @property
    def is_self_signed(self) -> bool:
        return not self.chain

    def trust_bundle_pem(self) -> str:
        return self.response_tail[-1]

    def response_chain(self, leaf_pem: str) -> list[str]:
        return [leaf_pem, *self.response_tail]

    def expiry(self) -> datetime:
        return self.signing_cert.not_valid_after_utc

    def root_expiry(self) -> datetime:
        return min(r.not_valid_after_utc for r in self.roots)

    def _check(self) -> None:
        where = self.source
        if not self.roots:
            raise CaMaterialError(f"{where}: no root certificate; the trust bundle must hold at least one")
        for root in self.roots:
            if not _is_ca(root):
                raise CaMaterialError(
                    f"{where}: root {root.subject.rfc4514_string()!r} is not a CA certificate"
                )
        if not _is_ca(self.signing_cert):
            raise CaMaterialError(
                f"{where}: the signing certificate {self.signing_cert.subject.rfc4514_string()!r} "
                "is not a CA (it needs basicConstraints cA=true and keyCertSign)"
            )
        signing_public = self.signing_cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        key_public = self.signing_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if signing_public != key_public:
            raise CaMaterialError(
                f"{where}: the CA private key does not belong to the signing certificate; "
                "check that the key and certificate files are a pair"
            )
        self._check_chain_reaches_a_root()

    def _check_chain_reaches_a_root(self) -> None:
        path = [self.signing_cert, *self.chain[1:]] if self.chain else [self.signing_cert]
        for child, parent in itertools.pairwise(path):
            self._check_issued(child, parent)
        top = path[-1]
        for root in self.roots:
            if top == root and _is_self_signed(root):
                return
            try:
                top.verify_directly_issued_by(root)
                return
            except (ValueError, TypeError, InvalidSignature):
                continue
        raise CaMaterialError(
            f"{self.source}: the certificate chain does not lead to any root in the trust bundle "
            f"(top of chain: {top.issuer.rfc4514_string()!r}); "
            "cert-chain.pem must run from the signing certificate up to a root in root-cert.pem"
        )

    def _check_issued(self, child: x509.Certificate, parent: x509.Certificate) -> None:
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature) as err:
            raise CaMaterialError(
                f"{self.source}: {child.subject.rfc4514_string()!r} in the chain is not signed by "
                f"the next certificate {parent.subject.rfc4514_string()!r}; "
                "order cert-chain.pem from the signing certificate up to the root"
            ) from err
