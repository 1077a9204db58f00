"""Slicing the SubjectPublicKeyInfo out of certificate DER: equal to cryptography's own encoding."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ca.issuance.x509_der import DerError, subject_public_key_info

_KEYS = {
    "ec-p256": ec.generate_private_key(ec.SECP256R1()),
    "ec-p384": ec.generate_private_key(ec.SECP384R1()),
    "rsa-2048": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ed25519": ed25519.Ed25519PrivateKey.generate(),
}
_SIGNER = ec.generate_private_key(ec.SECP256R1())
_CN_CHARS = st.characters(min_codepoint=0x20, max_codepoint=0xFFFF, blacklist_categories=("Cs",))


def _certificate(subject_cn: str, issuer_cn: str, serial: int, key_name: str, san_count: int) -> bytes:
    key = _KEYS[key_name]
    now = datetime(2026, 1, 1, tzinfo=UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]) if subject_cn else x509.Name([])
        )
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)]))
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(hours=1))
    )
    if san_count:
        names = [x509.UniformResourceIdentifier(f"spiffe://td/ns/n/sa/{i}") for i in range(san_count)]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=True)
    return builder.sign(_SIGNER, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


@settings(max_examples=60, deadline=None)
@given(
    subject_cn=st.text(_CN_CHARS, min_size=0, max_size=30),
    issuer_cn=st.text(_CN_CHARS, min_size=1, max_size=30),
    serial=st.integers(min_value=1, max_value=2**159 - 1),
    key_name=st.sampled_from(sorted(_KEYS)),
    san_count=st.integers(min_value=0, max_value=40),  # long extensions: multi-byte lengths
)
def test_the_slice_is_the_encoding_cryptography_writes(
    subject_cn: str, issuer_cn: str, serial: int, key_name: str, san_count: int
) -> None:
    der = _certificate(subject_cn, issuer_cn, serial, key_name, san_count)
    expected = (
        _KEYS[key_name]
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert subject_public_key_info(der) == expected


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
@example(b"\x30\x02\x30\x00")  # an empty TBSCertificate
@example(b"\x30\x84\xff\xff\xff\xff")  # a length far past the end
def test_garbage_raises_der_error_and_nothing_else(data: bytes) -> None:
    try:
        sliced = subject_public_key_info(data)
    except DerError:
        return
    assert sliced[:1] == b"\x30" and sliced in data


@pytest.mark.parametrize("cut", [1, 2, 10, 100])
def test_a_truncated_certificate_is_refused(cut: int) -> None:
    der = _certificate("leaf", "ca", 7, "ec-p256", 1)
    with pytest.raises(DerError):
        subject_public_key_info(der[:cut])
