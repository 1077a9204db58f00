"""Certificate revocation lists (RFC 5280): the CA builds them, the data planes check them. Pure code.

The CA signs its CRL with the key that signs leaves, so the CRL's issuer is the
leaves' issuer (what Envoy's `only_verify_leaf_cert_crl` looks for). It lists only
revoked certificates that have not expired yet, so short lifetimes keep it small.

- thisUpdate is backdated by the clock skew that leaves' NotBefore allows: Envoy
  refuses a CRL from its future, and with it every handshake, so a node whose clock
  runs a little behind the CA's must still accept a CRL made a moment ago.
- The CRL number is the milliseconds since the epoch of thisUpdate, so CA replicas
  building from one ledger never reuse a number and a later CRL has a larger one.
- Each entry carries its CRLReason, except `unspecified`, which RFC 5280 (5.3.1)
  says to express by leaving the reason out.

The agent and the enforcer accept a CRL only when a CA they trust signed it: a root
of the trust bundle, an intermediate of their own chain that leads to one, or a CA
certificate the CA sent with its CRLs that leads to one (`supplied_crl_issuers`). The
last is what a CA rotation needs: leaves of two signing CAs are live at once, a node's
own chain names one of them, and Envoy wants a CRL from the issuer of every peer leaf.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from ca.errors import ConfigError, InvalidRequestError, MeshcaError
from ca.issuance import profile
from ca.issuance.authority import SigningAuthority

# RFC 5280 CRLReason names, as operators type them, and cryptography's flags.
REVOCATION_REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "cACompromise": x509.ReasonFlags.ca_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "privilegeWithdrawn": x509.ReasonFlags.privilege_withdrawn,
}
_REASON_NAMES = {flag: name for name, flag in REVOCATION_REASONS.items()}

CRL_BACKDATE = profile.CLOCK_SKEW
CRL_VALIDITY = timedelta(hours=24)  # the CA's CRLs by default (`meshca serve --crl-validity`)
# The CA signs the next CRL once half the validity has passed since thisUpdate (set CRL_BACKDATE
# back), and an agent that reconnects after a CA restart waits up to a minute: below this, the
# next CRL would come within minutes and reach such an agent barely before the old one expires.
MIN_CRL_VALIDITY = timedelta(minutes=10)
_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----\r?\n?", re.DOTALL)


class InvalidCrlError(MeshcaError):
    """A revocation list that must not be used: unparsable, or not signed by a trusted CA."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="crl_invalid")


class RevokedCertificate(Protocol):
    """What a CRL needs of a revocation (ca.ledger.rotation.Revocation has it)."""

    @property
    def serial(self) -> str:
        """Lower-case hex, as the ledger keeps serials."""
        ...

    @property
    def revoked_at(self) -> datetime: ...

    @property
    def reason(self) -> str:
        """A REVOCATION_REASONS name."""
        ...

    @property
    def not_after(self) -> datetime:
        """The certificate's own expiry: after it the entry leaves the CRL."""
        ...


@dataclass(frozen=True, kw_only=True)
class CrlTerms:
    this_update: datetime
    next_update: datetime
    number: int


def crl_terms(now: datetime, validity: timedelta, *, backdate: timedelta = CRL_BACKDATE) -> CrlTerms:
    """thisUpdate, nextUpdate and the number of a CRL made at `now`."""
    if validity <= timedelta(0):
        raise ConfigError(f"a CRL's validity must be positive (got {validity}); give a duration above 0")
    this_update = now - backdate
    return CrlTerms(
        this_update=this_update,
        next_update=this_update + validity,
        number=_epoch_milliseconds(this_update),
    )


def _epoch_milliseconds(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def reason_flag(name: str) -> x509.ReasonFlags:
    try:
        return REVOCATION_REASONS[name]
    except KeyError:
        raise InvalidRequestError(
            f"unknown revocation reason {name!r}; use one of {', '.join(REVOCATION_REASONS)}",
            reason="revocation_reason_invalid",
        ) from None


def reason_name(flag: x509.ReasonFlags | None) -> str:
    """The RFC 5280 name of a CRL entry's reason; an entry without one is `unspecified`."""
    return "unspecified" if flag is None else _REASON_NAMES.get(flag, flag.name)


def listed(revoked: Iterable[RevokedCertificate], now: datetime) -> list[RevokedCertificate]:
    """The revocations a CRL made at `now` lists: unexpired, one per serial (the earliest),
    in serial order."""
    earliest: dict[int, RevokedCertificate] = {}
    for entry in revoked:
        if entry.not_after <= now:
            continue
        serial = int(entry.serial, 16)
        known = earliest.get(serial)
        if known is None or entry.revoked_at < known.revoked_at:
            earliest[serial] = entry
    return [earliest[serial] for serial in sorted(earliest)]


def _entry(revocation: RevokedCertificate) -> x509.RevokedCertificate:
    builder = (
        x509.RevokedCertificateBuilder()
        .serial_number(int(revocation.serial, 16))
        .revocation_date(revocation.revoked_at)
    )
    flag = reason_flag(revocation.reason)
    if flag is not x509.ReasonFlags.unspecified:
        builder = builder.add_extension(x509.CRLReason(flag), critical=False)
    return builder.build()


def build_crl(
    authority: SigningAuthority,
    revoked: Iterable[RevokedCertificate],
    *,
    now: datetime,
    validity: timedelta,
) -> x509.CertificateRevocationList:
    """The CRL of `authority`'s signing certificate at `now`, valid for `validity`."""
    terms = crl_terms(now, validity)
    issuer = authority.signing_cert
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(terms.this_update)
        .next_update(terms.next_update)
        .add_extension(profile.authority_key_identifier(issuer), critical=False)
        .add_extension(x509.CRLNumber(terms.number), critical=False)
    )
    for revocation in listed(revoked, now):
        builder = builder.add_revoked_certificate(_entry(revocation))
    key = authority.signing_key
    return builder.sign(key, profile.signature_hash(key))


def crl_der(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.DER)


def crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0


# ----------------------------------------------------------------- the data planes' side


def load_der_crls(ders: Sequence[bytes]) -> list[x509.CertificateRevocationList]:
    crls = []
    for index, der in enumerate(ders):
        try:
            crls.append(x509.load_der_x509_crl(der))
        except ValueError as err:
            raise InvalidCrlError(f"revocation list {index + 1} is not a DER CRL ({err})") from err
    return crls


def load_pem_crls(data: bytes, source: str) -> list[x509.CertificateRevocationList]:
    """Every CRL in a PEM file (they follow one another); InvalidCrlError if one does not parse."""
    crls = []
    for index, block in enumerate(_PEM_CRL.findall(data)):
        try:
            crls.append(x509.load_pem_x509_crl(block))
        except ValueError as err:
            raise InvalidCrlError(f"CRL {index + 1} in {source} does not parse ({err})") from err
    if not crls and data.strip():
        raise InvalidCrlError(f"{source} holds no PEM CRL (-----BEGIN X509 CRL-----)")
    return crls


def crls_pem(crls: Iterable[x509.CertificateRevocationList]) -> bytes:
    return b"".join(crl.public_bytes(serialization.Encoding.PEM) for crl in crls)


def certificates_pem(certs: Iterable[x509.Certificate]) -> bytes:
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in certs)


def _is_crl_signer(cert: x509.Certificate) -> bool:
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return usage.crl_sign


def _signed_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def trusted_crl_issuers(
    intermediates: Sequence[x509.Certificate], roots: Sequence[x509.Certificate]
) -> list[x509.Certificate]:
    """The roots, and each intermediate (a chain runs leaf-side first) that a trusted one signed."""
    trusted = list(roots)
    for cert in reversed(intermediates):
        if any(_signed_by(cert, parent) for parent in trusted):
            trusted.append(cert)
    return trusted


def _is_ca(cert: x509.Certificate) -> bool:
    """A CA certificate that may sign certificates: basicConstraints cA, and keyCertSign when it
    has a key usage at all."""
    try:
        if not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return False
    except x509.ExtensionNotFound:
        return False
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    except x509.ExtensionNotFound:
        return True


def certificate_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True, kw_only=True)
class IgnoredIssuer:
    """A CA certificate sent with the CRLs that is not trusted, and why."""

    cert: x509.Certificate
    reason: str


@dataclass(frozen=True, kw_only=True)
class SuppliedIssuers:
    """What became of the CA certificates sent with the CRLs."""

    trusted: tuple[x509.Certificate, ...]  # each chains to a root; none already trusted before
    ignored: tuple[IgnoredIssuer, ...]


def supplied_crl_issuers(
    supplied: Sequence[x509.Certificate], trusted: Sequence[x509.Certificate]
) -> SuppliedIssuers:
    """Which of the `supplied` certificates to trust as CRL issuers besides the `trusted` ones
    (the roots and the node's own intermediates, `trusted_crl_issuers`): those that are CA
    certificates and are signed by a trusted one or, in turn, by a supplied one so trusted, in
    whatever order they come. The rest are ignored, with the reason. cRLSign is checked on the
    certificate that signs a CRL, by `check_crl`."""
    known = {certificate_der(cert) for cert in trusted}
    anchors = list(trusted)
    pending: list[x509.Certificate] = []
    for cert in supplied:
        der = certificate_der(cert)
        if der not in known:
            known.add(der)
            pending.append(cert)
    ignored = [
        IgnoredIssuer(cert=cert, reason="it is not a CA certificate (basicConstraints cA, keyCertSign)")
        for cert in pending
        if not _is_ca(cert)
    ]
    pending = [cert for cert in pending if _is_ca(cert)]
    accepted: list[x509.Certificate] = []
    progress = True
    while pending and progress:
        progress = False
        for cert in list(pending):
            if any(_signed_by(cert, parent) for parent in anchors):
                accepted.append(cert)
                anchors.append(cert)
                pending.remove(cert)
                progress = True
    ignored += [
        IgnoredIssuer(cert=cert, reason="it does not chain to a root of the trust bundle this node holds")
        for cert in pending
    ]
    return SuppliedIssuers(trusted=tuple(accepted), ignored=tuple(ignored))


def check_crl(crl: x509.CertificateRevocationList, issuers: Sequence[x509.Certificate]) -> x509.Certificate:
    """The trusted certificate that signed `crl`; InvalidCrlError if none did."""
    named = [cert for cert in issuers if cert.subject == crl.issuer]
    for cert in named:
        if crl.is_signature_valid(cert.public_key()):  # type: ignore[arg-type]
            if not _is_crl_signer(cert):
                raise InvalidCrlError(
                    f"the CRL of {crl.issuer.rfc4514_string()!r} is signed by a CA certificate "
                    "whose key usage lacks cRLSign"
                )
            return cert
    problem = "its signature does not verify" if named else "no trusted CA has that name"
    raise InvalidCrlError(
        f"the CRL of {crl.issuer.rfc4514_string()!r} is not from a trusted CA ({problem}); "
        "it must be signed by the CA that issues the workload certificates"
    )


def check_in_force(crl: x509.CertificateRevocationList, now: datetime) -> None:
    """InvalidCrlError unless `now` lies between the CRL's thisUpdate and nextUpdate: Envoy refuses
    every handshake checked against a CRL outside them."""
    who = crl.issuer.rfc4514_string()
    if crl.last_update_utc > now:
        raise InvalidCrlError(
            f"the CRL of {who!r} starts at {crl.last_update_utc.isoformat()}, after this node's clock "
            f"({now.isoformat()}); check the clocks of the CA and of this node"
        )
    next_update = crl.next_update_utc
    if next_update is not None and next_update <= now:
        raise InvalidCrlError(
            f"the CRL of {who!r} expired at {next_update.isoformat()} (nextUpdate); "
            "the CA must publish a newer one"
        )


@dataclass(frozen=True, kw_only=True)
class Listing:
    """Why and when a certificate was revoked, as a CRL says."""

    reason: str  # a REVOCATION_REASONS name
    revoked_at: datetime


def key_identifier(cert: x509.Certificate) -> bytes:
    """What certificates `cert` signs name as their authority key: its SubjectKeyIdentifier (or,
    without one, the identifier derived from its key as RFC 5280 method 1 does)."""
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest


@dataclass(frozen=True, kw_only=True)
class CertificateRef:
    """What a CRL entry is matched on: the issuer (its name, and its key when the certificate
    names it) and the serial. Two CAs of one name (a root and its successor, say) keep apart."""

    issuer: bytes  # the issuer's name, DER
    issuer_key_id: bytes | None  # the certificate's AuthorityKeyIdentifier keyIdentifier
    serial: int

    @classmethod
    def of(cls, cert: x509.Certificate) -> CertificateRef:
        try:
            key_id = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
        except x509.ExtensionNotFound:
            key_id = None
        return cls(issuer=cert.issuer.public_bytes(), issuer_key_id=key_id, serial=cert.serial_number)


@dataclass(frozen=True, kw_only=True, eq=False)
class RevocationLists:
    """Checked CRLs, and their entries indexed by issuer key and by issuer name (with the serial)
    for a lookup per handshake."""

    crls: tuple[x509.CertificateRevocationList, ...] = ()
    # CA certificates sent with the CRLs and trusted as their issuers (not of the node's own
    # chain or roots): written beside crl.pem so that the enforcer trusts them too.
    extra_issuers: tuple[x509.Certificate, ...] = ()
    by_key: Mapping[tuple[bytes, int], Listing] = field(default_factory=dict, repr=False)
    by_name: Mapping[tuple[bytes, int], Listing] = field(default_factory=dict, repr=False)

    @classmethod
    def checked(
        cls,
        crls: Sequence[x509.CertificateRevocationList],
        issuers: Sequence[x509.Certificate],
        *,
        extra_issuers: Sequence[x509.Certificate] = (),
    ) -> RevocationLists:
        """The CRLs if a trusted issuer (of `issuers` or `extra_issuers`) signed every one;
        InvalidCrlError if not. The extra issuers are kept with them."""
        signers = [check_crl(crl, [*issuers, *extra_issuers]) for crl in crls]
        by_key: dict[tuple[bytes, int], Listing] = {}
        by_name: dict[tuple[bytes, int], Listing] = {}
        for crl, signer in zip(crls, signers, strict=True):
            key_id, name = key_identifier(signer), crl.issuer.public_bytes()
            for revoked in crl:
                listing = Listing(reason=_entry_reason(revoked), revoked_at=revoked.revocation_date_utc)
                by_key[(key_id, revoked.serial_number)] = listing
                by_name[(name, revoked.serial_number)] = listing
        return cls(crls=tuple(crls), extra_issuers=tuple(extra_issuers), by_key=by_key, by_name=by_name)

    def __bool__(self) -> bool:
        return bool(self.crls)

    def find(self, cert: CertificateRef) -> Listing | None:
        """The certificate's listing, if a CRL of its issuer lists it: matched by the issuer's key
        when the certificate names it, else by the issuer's name."""
        if cert.issuer_key_id is not None:
            return self.by_key.get((cert.issuer_key_id, cert.serial))
        return self.by_name.get((cert.issuer, cert.serial))

    @property
    def number(self) -> int:
        """The largest CRL number among them (0 with none)."""
        return max((crl_number(crl) for crl in self.crls), default=0)

    @property
    def next_update(self) -> datetime | None:
        """When the first of them is due to be replaced."""
        dates = [crl.next_update_utc for crl in self.crls if crl.next_update_utc is not None]
        return min(dates, default=None)

    @property
    def entry_count(self) -> int:
        return len(self.by_key)

    def ders(self) -> list[bytes]:
        return [crl_der(crl) for crl in self.crls]

    def pem(self) -> bytes:
        return crls_pem(self.crls)

    def extra_issuers_pem(self) -> bytes:
        return certificates_pem(self.extra_issuers)


def _entry_reason(revoked: x509.RevokedCertificate) -> str:
    try:
        return reason_name(revoked.extensions.get_extension_for_class(x509.CRLReason).value.reason)
    except x509.ExtensionNotFound:
        return "unspecified"


NO_REVOCATIONS = RevocationLists()
