"""X.509-SVID leaves written as DER from a template, then signed. Pure code.

`cryptography`'s CertificateBuilder checks every part of a certificate in Python, then
encodes and signs it in Rust and parses the result back: about 135 us per workload leaf
on the development host, of which the ECDSA signature is 35 us. A workload leaf differs
from the next only in its serial, validity, public key, SPIFFE ID and the key identifier
derived from the key, so the rest is cut once per signing CA (and key kind) out of a
prototype leaf that `profile.workload_leaf` builds and `cryptography` signs, and each
leaf is those bytes with its own parts encoded between them. The parts are written the
way `cryptography` writes them (DER has one encoding of each value), and
tests/issuance/test_leaf_der.py holds every template leaf's TBSCertificate byte-equal to
the builder's over random keys, serials, times and identities.
"""

from __future__ import annotations

import binascii
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from ca.issuance import profile
from ca.issuance.authority import SigningAuthority
from ca.issuance.keys import PublicKey
from ca.issuance.spiffe_id import SpiffeId
from ca.issuance.x509_der import DerError, element_at

VERSION_3 = b"\xa0\x03\x02\x01\x02"  # [0] EXPLICIT INTEGER 2
EMPTY_NAME = b"\x30\x00"
# The extensions profile._leaf adds, in its order; the template keeps all but SAN and SKI.
EXTENSION_ORDER = (
    x509.OID_BASIC_CONSTRAINTS,
    x509.OID_KEY_USAGE,
    x509.OID_EXTENDED_KEY_USAGE,
    x509.OID_SUBJECT_ALTERNATIVE_NAME,
    x509.OID_SUBJECT_KEY_IDENTIFIER,
    x509.OID_AUTHORITY_KEY_IDENTIFIER,
)
SAN_HEAD = b"\x06\x03\x55\x1d\x11\x01\x01\xff"  # OID 2.5.29.17, critical TRUE
SKI_HEAD = b"\x06\x03\x55\x1d\x0e"  # OID 2.5.29.14, not critical
URI_TAG = 0x86  # GeneralName uniformResourceIdentifier: [6] IMPLICIT IA5String


def _length(size: int) -> bytes:
    if size < 0x80:
        return bytes((size,))
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(octets),)) + octets


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes((tag,)) + _length(len(content)) + content


def integer(value: int) -> bytes:
    """A non-negative INTEGER: big-endian, with a leading zero octet when the top bit is set."""
    if value < 0:
        raise ValueError("serial numbers are positive")
    return _tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def asn1_time(moment: datetime) -> bytes:
    """RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050; whole seconds, UTC."""
    moment = moment.astimezone(UTC)
    if 1950 <= moment.year < 2050:
        return _tlv(0x17, moment.strftime("%y%m%d%H%M%SZ").encode())
    return _tlv(0x18, f"{moment.year:04d}".encode() + moment.strftime("%m%d%H%M%SZ").encode())


def _children(der: bytes) -> list[bytes]:
    """The elements inside the constructed element `der`."""
    start, end = element_at(der, 0)
    found = []
    while start < end:
        _, child_end = element_at(der, start)
        found.append(der[start:child_end])
        start = child_end
    return found


def _content(der: bytes) -> bytes:
    start, end = element_at(der, 0)
    return der[start:end]


def key_identifier(spki: bytes) -> bytes:
    """RFC 5280 4.2.1.2 method 1, as SubjectKeyIdentifier.from_public_key computes it: SHA-1 of
    the subjectPublicKey BIT STRING's bits."""
    _, bits = _children(spki)
    if bits[:1] != b"\x03":
        raise DerError("a SubjectPublicKeyInfo ends with a BIT STRING")
    return hashlib.sha1(_content(bits)[1:]).digest()  # past the unused-bits octet


@dataclass(frozen=True)
class LeafTemplate:
    """What every workload leaf of one signing CA and key kind shares, as DER."""

    signature_algorithm: bytes  # AlgorithmIdentifier, in the TBSCertificate and after it
    issuer_name: bytes
    before_san: bytes  # basicConstraints, keyUsage, extendedKeyUsage
    after_ski: bytes  # authorityKeyIdentifier
    signature_hash: hashes.HashAlgorithm

    @classmethod
    def from_prototype(cls, prototype: x509.Certificate) -> LeafTemplate:
        """The template of leaves like `prototype`, a leaf profile.workload_leaf built."""
        version, _serial, algorithm, issuer, _validity, subject, _spki, extensions = _children(
            prototype.tbs_certificate_bytes
        )
        if version != VERSION_3 or subject != EMPTY_NAME or extensions[:1] != b"\xa3":
            raise DerError("the prototype is not a v3 leaf with an empty subject and extensions")
        items = _children(_content(extensions))  # in the order cryptography lists them
        if [extension.oid for extension in prototype.extensions] != list(EXTENSION_ORDER):
            raise DerError("the prototype's extensions are not profile._leaf's, in its order")
        if prototype.signature_hash_algorithm is None:
            raise DerError("the prototype's signature has no separate hash")
        return cls(
            signature_algorithm=algorithm,
            issuer_name=issuer,
            before_san=b"".join(items[:3]),
            after_ski=items[5],
            signature_hash=prototype.signature_hash_algorithm,
        )

    def tbs_certificate(
        self, *, serial: int, not_before: datetime, not_after: datetime, spki: bytes, uri: str
    ) -> bytes:
        san = _tlv(0x30, SAN_HEAD + _tlv(0x04, _tlv(0x30, _tlv(URI_TAG, uri.encode("ascii")))))
        ski = _tlv(0x30, SKI_HEAD + _tlv(0x04, _tlv(0x04, key_identifier(spki))))
        extensions = _tlv(0xA3, _tlv(0x30, self.before_san + san + ski + self.after_ski))
        validity = _tlv(0x30, asn1_time(not_before) + asn1_time(not_after))
        return _tlv(
            0x30,
            VERSION_3
            + integer(serial)
            + self.signature_algorithm
            + self.issuer_name
            + validity
            + EMPTY_NAME
            + spki
            + extensions,
        )

    def certificate(self, tbs_certificate: bytes, signature: bytes) -> bytes:
        return _tlv(0x30, tbs_certificate + self.signature_algorithm + _tlv(0x03, b"\x00" + signature))


def sign(tbs_certificate: bytes, key: object, signature_hash: hashes.HashAlgorithm) -> bytes:
    """The CA key's signature over the TBSCertificate, as the template's algorithm says."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(tbs_certificate, ec.ECDSA(signature_hash))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(tbs_certificate, padding.PKCS1v15(), signature_hash)
    raise TypeError(f"no template signing with a {type(key).__name__}")


def pem(certificate_der: bytes) -> str:
    """PEM as cryptography writes it: 64 characters a line."""
    lines = [binascii.b2a_base64(certificate_der[i : i + 48]) for i in range(0, len(certificate_der), 48)]
    return "-----BEGIN CERTIFICATE-----\n" + b"".join(lines).decode() + "-----END CERTIFICATE-----\n"


class LeafWriter:
    """Workload leaves as DER: through a template per signing CA and key kind, made from the first
    leaf the builder writes for them; through the builder alone where a template cannot be made
    (a CA key the template does not sign with). SPIFFE IDs are ASCII (ca.issuance.spiffe_id), as
    the URI's IA5String needs."""

    def __init__(self) -> None:
        self._fingerprint = ""
        self._templates: dict[bool, LeafTemplate | None] = {}

    def issue(
        self,
        authority: SigningAuthority,
        subject_key: PublicKey,
        *,
        spiffe_id: SpiffeId,
        serial: int,
        validity: tuple[datetime, datetime],
    ) -> bytes:
        if authority.fingerprint != self._fingerprint:  # a new CA: the old templates are done with
            self._fingerprint, self._templates = authority.fingerprint, {}
        kind = isinstance(subject_key, rsa.RSAPublicKey)  # the only difference: keyUsage
        template = self._templates.get(kind)
        if template is None:
            leaf = _built(authority, subject_key, spiffe_id=spiffe_id, serial=serial, validity=validity)
            if kind not in self._templates:  # the first leaf of its kind: made into the template
                self._templates[kind] = _template_of(leaf, authority)
            return leaf.public_bytes(serialization.Encoding.DER)
        spki = subject_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        tbs = template.tbs_certificate(
            serial=serial, not_before=validity[0], not_after=validity[1], spki=spki, uri=spiffe_id.uri
        )
        return template.certificate(tbs, sign(tbs, authority.signing_key, template.signature_hash))


def _built(
    authority: SigningAuthority,
    subject_key: PublicKey,
    *,
    spiffe_id: SpiffeId,
    serial: int,
    validity: tuple[datetime, datetime],
) -> x509.Certificate:
    builder = profile.workload_leaf(
        subject_key=subject_key,
        spiffe_id=spiffe_id,
        issuer=authority.signing_cert,
        serial=serial,
        not_before=validity[0],
        not_after=validity[1],
    )
    return profile.sign(builder, authority.signing_key)


def _template_of(prototype: x509.Certificate, authority: SigningAuthority) -> LeafTemplate | None:
    if not isinstance(authority.signing_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        return None
    try:
        return LeafTemplate.from_prototype(prototype)
    except DerError:
        return None
