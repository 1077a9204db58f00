"""Certificate templates: what meshca puts in the certificates it makes.

Pure code. Each function returns a `CertificateBuilder`; `sign` turns one into a
certificate. Profiles follow the SPIFFE X.509-SVID rules and Istio's leaf
profile (REFERENCE §3).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca.errors import SigningError
from ca.issuance.keys import PrivateKey, PublicKey
from ca.issuance.spiffe_id import SpiffeId

CLOCK_SKEW = timedelta(minutes=2)
ROOT_VALIDITY = timedelta(days=3650)


def _key_usage(*, digital_signature: bool, key_encipherment: bool, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def leaf_key_usage(key: PublicKey) -> x509.KeyUsage:
    # RFC 5480: keyEncipherment has no meaning for EC keys, so only RSA leaves get it.
    return _key_usage(
        digital_signature=True,
        key_encipherment=isinstance(key, rsa.RSAPublicKey),
        cert_sign=False,
    )


def leaf_validity(*, now: datetime, ttl: timedelta, issuer: x509.Certificate) -> tuple[datetime, datetime]:
    """NotBefore backdated for clock skew; NotAfter clamped to the issuer's NotAfter."""
    issuer_not_after = issuer.not_valid_after_utc
    if issuer_not_after <= now:
        raise SigningError(
            f"the CA signing certificate expired at {issuer_not_after.isoformat()}; "
            "rotate the CA certificate (replace the cacerts files or the CA secret)",
            reason="ca_expired",
        )
    not_before = max(now - CLOCK_SKEW, issuer.not_valid_before_utc)
    # Compared as durations first: now + ttl can overflow datetime for huge TTLs.
    if ttl >= issuer_not_after - now:
        return not_before, issuer_not_after
    return not_before, now + ttl


def _with_key_ids(
    builder: x509.CertificateBuilder, subject_key: PublicKey, issuer: x509.Certificate | None
) -> x509.CertificateBuilder:
    builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key), critical=False)
    if issuer is None:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(subject_key)
    else:
        aki = authority_key_identifier(issuer)
    return builder.add_extension(aki, critical=False)


def authority_key_identifier(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """The AKI of what `issuer` signs: its SubjectKeyIdentifier, or one derived from its key."""
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer.public_key()  # type: ignore[arg-type]
        )


def _leaf(
    *,
    subject_key: PublicKey,
    names: Sequence[x509.GeneralName],
    issuer: x509.Certificate,
    serial: int,
    not_before: datetime,
    not_after: datetime,
) -> x509.CertificateBuilder:
    """Empty subject, critical SAN, cA=false, critical key usage, mTLS EKUs, AKI/SKI."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(issuer.subject)
        .public_key(subject_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(leaf_key_usage(subject_key), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=True)
    )
    return _with_key_ids(builder, subject_key, issuer)


def workload_leaf(
    *,
    subject_key: PublicKey,
    spiffe_id: SpiffeId,
    issuer: x509.Certificate,
    serial: int,
    not_before: datetime,
    not_after: datetime,
) -> x509.CertificateBuilder:
    """An X.509-SVID: exactly one URI SAN, the workload's SPIFFE ID."""
    return _leaf(
        subject_key=subject_key,
        names=[x509.UniformResourceIdentifier(spiffe_id.uri)],
        issuer=issuer,
        serial=serial,
        not_before=not_before,
        not_after=not_after,
    )


def _general_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def serving_leaf(
    *,
    subject_key: PublicKey,
    hosts: Sequence[str],
    spiffe_id: SpiffeId,
    issuer: x509.Certificate,
    serial: int,
    not_before: datetime,
    not_after: datetime,
) -> x509.CertificateBuilder:
    """The CA server's own TLS certificate: its DNS names and IPs plus its SPIFFE ID."""
    return _leaf(
        subject_key=subject_key,
        names=[*_general_names(hosts), x509.UniformResourceIdentifier(spiffe_id.uri)],
        issuer=issuer,
        serial=serial,
        not_before=not_before,
        not_after=not_after,
    )


def _ca(
    *,
    subject: x509.Name,
    subject_key: PublicKey,
    trust_domain: str,
    issuer: x509.Certificate | None,
    serial: int,
    not_before: datetime,
    not_after: datetime,
    path_length: int | None,
) -> x509.CertificateBuilder:
    """cA=true, keyCertSign and cRLSign, the trust domain's SPIFFE ID; `issuer` None: self-signed."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer.subject)
        .public_key(subject_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            _key_usage(digital_signature=True, key_encipherment=False, cert_sign=True),
            critical=True,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(SpiffeId(trust_domain).uri)]),
            critical=False,
        )
    )
    return _with_key_ids(builder, subject_key, issuer)


def self_signed_root(
    *,
    key: PrivateKey,
    trust_domain: str,
    serial: int,
    now: datetime,
    validity: timedelta = ROOT_VALIDITY,
) -> x509.CertificateBuilder:
    """A self-signed root: O=<trust domain>, cA=true, and the trust domain's SPIFFE ID."""
    return _ca(
        subject=x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain)]),
        subject_key=key.public_key(),
        trust_domain=trust_domain,
        issuer=None,
        serial=serial,
        not_before=now - CLOCK_SKEW,
        not_after=now + validity,
        path_length=None,
    )


def intermediate_ca(
    *,
    subject_key: PublicKey,
    trust_domain: str,
    issuer: x509.Certificate,
    serial: int,
    not_before: datetime,
    not_after: datetime,
) -> x509.CertificateBuilder:
    """A signing CA under a root: pathLen 0 (it signs leaves only), and a serial in its name so
    that two generations never share a subject (a CRL is found by its issuer's name)."""
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
            x509.NameAttribute(NameOID.COMMON_NAME, f"meshca signing CA {serial:032x}"[:64]),
        ]
    )
    return _ca(
        subject=subject,
        subject_key=subject_key,
        trust_domain=trust_domain,
        issuer=issuer,
        serial=serial,
        not_before=not_before,
        not_after=not_after,
        path_length=0,
    )


def sign(builder: x509.CertificateBuilder, key: PrivateKey) -> x509.Certificate:
    return builder.sign(key, signature_hash(key))


def signature_hash(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384:
    """The digest a CA key signs with: SHA-384 for P-384, SHA-256 otherwise."""
    return hashes.SHA384() if _is_p384(key) else hashes.SHA256()


def _is_p384(key: PrivateKey) -> bool:
    return isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
