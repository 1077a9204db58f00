"""Who a mutual-TLS peer is: the SPIFFE check on its verified certificate (pure code).

The TLS library has already checked that the certificate chains to the trust
bundle; this adds the SPIFFE rules: exactly one URI SAN, a valid SPIFFE ID, in
our trust domain (and, for outbound connections, the expected ID). Results are
cached by the certificate's DER bytes: peers reconnect with the same
certificate many times, and parsing it is the most expensive Python step of a
handshake. Revocation is looked up on every handshake, outside the cache, in
the CA's CRLs loaded now (a dictionary lookup by issuer and serial), so a CRL
that arrives refuses the peer at its next handshake, with either TLS engine,
before a byte reaches the application.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509

from ca.enforce.xfcc import cert_hash
from ca.errors import InvalidSpiffeIdError
from ca.issuance.crl import NO_REVOCATIONS, CertificateRef, RevocationLists
from ca.issuance.spiffe_id import SpiffeId
from ca.issuance.svid_id import svid_spiffe_id


class PeerRefused(Exception):
    """The peer's certificate is not acceptable; `reason` is a metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, kw_only=True)
class PeerIdentity:
    spiffe_id: SpiffeId
    der_hash: str  # hex SHA-256 of the certificate (the XFCC Hash)
    not_after: datetime
    certificate: CertificateRef  # what a CRL entry is matched on

    @property
    def uri(self) -> str:
        return self.spiffe_id.uri


def identify(der: bytes) -> PeerIdentity:
    """The SPIFFE identity in a certificate; PeerRefused (reason bad_spiffe_id) if it has none."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as err:
        raise PeerRefused("bad_certificate", f"the certificate does not parse: {err}") from err
    try:
        spiffe_id = svid_spiffe_id(cert)
    except (InvalidSpiffeIdError, ValueError) as err:
        raise PeerRefused("bad_spiffe_id", f"the certificate is not an X.509-SVID: {err}") from err
    return PeerIdentity(
        spiffe_id=spiffe_id,
        der_hash=cert_hash(der),
        not_after=cert.not_valid_after_utc,
        certificate=CertificateRef.of(cert),
    )


def check(
    identity: PeerIdentity, *, trust_domain: str, now: datetime, expected: SpiffeId | None = None
) -> None:
    """Raise PeerRefused unless the identity is in the trust domain (and is `expected`, if given)."""
    if not identity.spiffe_id.is_member_of(trust_domain):
        raise PeerRefused("foreign_trust_domain", f"{identity.uri} is not in trust domain {trust_domain}")
    if expected is not None and identity.spiffe_id != expected:
        raise PeerRefused("unexpected_identity", f"the peer is {identity.uri}, not {expected}")
    if now >= identity.not_after:
        # A resumed TLS session skips re-verification; an expired certificate must still fail.
        raise PeerRefused("peer_certificate_expired", f"the certificate of {identity.uri} has expired")


def check_not_revoked(identity: PeerIdentity, revocations: RevocationLists) -> None:
    """PeerRefused (reason certificate_revoked) if the CRLs list the peer's certificate."""
    listing = revocations.find(identity.certificate)
    if listing is not None:
        raise PeerRefused(
            "certificate_revoked",
            f"the certificate of {identity.uri} (serial {identity.certificate.serial:x}) was revoked "
            f"at {listing.revoked_at.isoformat()} ({listing.reason})",
        )


class PeerCache:
    """Certificate fingerprint (SHA-256 of the DER) -> identity or refusal, for the last `size`
    distinct certificates. The DER is fetched only for a certificate not seen before. Every
    answer is checked against `revocations()`, the CRLs in use at that moment.

    Not thread-safe: each event loop keeps its own.
    """

    def __init__(
        self, size: int = 4096, revocations: Callable[[], RevocationLists] = lambda: NO_REVOCATIONS
    ) -> None:
        self._size = size
        self._entries: OrderedDict[bytes, PeerIdentity | PeerRefused] = OrderedDict()
        self._revocations = revocations

    def identify(self, fingerprint: bytes, der: Callable[[], bytes | None]) -> PeerIdentity:
        entry = self._entries.get(fingerprint)
        if entry is None:
            entry = self._identify(der())
            self._entries[fingerprint] = entry
            if len(self._entries) > self._size:
                self._entries.popitem(last=False)
        if isinstance(entry, PeerRefused):
            raise PeerRefused(entry.reason, entry.detail)
        check_not_revoked(entry, self._revocations())
        return entry

    @staticmethod
    def _identify(der: bytes | None) -> PeerIdentity | PeerRefused:
        if der is None:
            return PeerRefused("no_certificate", "the peer's certificate could not be read")
        try:
            return identify(der)
        except PeerRefused as refused:
            return refused
