"""The leaf and root certificate profiles and the validity window a leaf gets (REFERENCE §3)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca.issuance import profile
from ca.issuance.authority import SigningAuthority
from ca.issuance.keys import KeyAlgorithm, PrivateKey, generate_private_key
from ca.issuance.profile import CLOCK_SKEW
from ca.issuance.spiffe_id import SpiffeId
from tests.support.clock import FakeClock
from tests.support.issuing import (
    ROOT_SERIAL,
    TRUST_DOMAIN,
    WEB,
    authority_from,
    extension,
    issue_leaf,
    make_issuer,
    make_root,
)
from tests.support.pki import make_hierarchy, pem


def _spki(key: object) -> bytes:
    assert isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p384", "rsa-2048"])
def test_leaf_follows_the_svid_profile(
    key_type: str,
    leaf_keys: dict[str, PrivateKey],
    root: SigningAuthority,
    clock: FakeClock,
    serials: Iterator[int],
) -> None:
    key = leaf_keys[key_type]
    issued = issue_leaf(make_issuer(root, clock, serials), key)
    leaf = issued.certificate

    assert leaf.version is x509.Version.v3
    assert leaf.subject == x509.Name([])
    assert leaf.issuer == root.signing_cert.subject
    leaf.verify_directly_issued_by(root.signing_cert)
    assert _spki(leaf.public_key()) == _spki(key.public_key())

    san = extension(leaf, x509.SubjectAlternativeName)
    assert san.critical
    assert list(san.value) == [x509.UniformResourceIdentifier(WEB.uri)]

    basic = extension(leaf, x509.BasicConstraints)
    assert basic.critical
    assert basic.value.ca is False

    usage = extension(leaf, x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert usage.value.key_encipherment is isinstance(key, rsa.RSAPrivateKey)
    assert not usage.value.key_cert_sign
    assert not usage.value.crl_sign
    assert not usage.value.content_commitment
    assert not usage.value.data_encipherment
    assert not usage.value.key_agreement

    eku = extension(leaf, x509.ExtendedKeyUsage)
    assert set(eku.value) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}

    ski = extension(leaf, x509.SubjectKeyIdentifier).value
    assert ski.digest == x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest
    aki = extension(leaf, x509.AuthorityKeyIdentifier).value
    issuer_ski = extension(root.signing_cert, x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == issuer_ski.digest

    assert leaf.serial_number == 1001
    assert issued.serial == 1001
    assert leaf.not_valid_before_utc == clock.now() - timedelta(minutes=2)
    assert leaf.not_valid_after_utc == clock.now() + timedelta(hours=24)
    assert issued.not_before == leaf.not_valid_before_utc
    assert issued.not_after == leaf.not_valid_after_utc
    assert issued.spiffe_id == WEB
    assert issued.authority is root


def test_leaf_is_signed_with_the_issuer_key_hash(clock: FakeClock, leaf_keys: dict[str, PrivateKey]) -> None:
    p384_root = make_root(clock, KeyAlgorithm.EC_P384)
    leaf = issue_leaf(make_issuer(p384_root, clock), leaf_keys["ec-p256"]).certificate
    assert isinstance(leaf.signature_hash_algorithm, hashes.SHA384)
    p256_leaf = issue_leaf(make_issuer(make_root(clock), clock), leaf_keys["ec-p256"]).certificate
    assert isinstance(p256_leaf.signature_hash_algorithm, hashes.SHA256)


def test_not_after_is_clamped_to_the_issuer(
    root: SigningAuthority, clock: FakeClock, leaf_keys: dict[str, PrivateKey]
) -> None:
    root_end = root.signing_cert.not_valid_after_utc
    clock.set(root_end - timedelta(hours=1))
    issued = issue_leaf(make_issuer(root, clock), leaf_keys["ec-p256"])
    assert issued.certificate.not_valid_after_utc == root_end
    assert issued.not_after == root_end
    assert issued.certificate.not_valid_before_utc == clock.now() - CLOCK_SKEW


def test_not_after_is_clamped_to_the_signing_ca_not_the_root(
    clock: FakeClock, leaf_keys: dict[str, PrivateKey]
) -> None:
    h = make_hierarchy(now=clock.now())
    issuer = make_issuer(authority_from(h), clock, max_ttl=timedelta(days=365))
    leaf = issue_leaf(issuer, leaf_keys["ec-p256"], ttl=300 * 86400).certificate
    assert leaf.not_valid_after_utc == h.signing.not_valid_after_utc
    assert leaf.not_valid_after_utc < h.root.not_valid_after_utc


def test_not_before_is_not_earlier_than_the_issuer(
    root: SigningAuthority, clock: FakeClock, leaf_keys: dict[str, PrivateKey]
) -> None:
    clock.advance(timedelta(seconds=-60))
    leaf = issue_leaf(make_issuer(root, clock), leaf_keys["ec-p256"]).certificate
    assert leaf.not_valid_before_utc == root.signing_cert.not_valid_before_utc


@pytest.mark.parametrize(
    ("algorithm", "key_class", "hash_class"),
    [
        (KeyAlgorithm.EC_P256, ec.EllipticCurvePrivateKey, hashes.SHA256),
        (KeyAlgorithm.EC_P384, ec.EllipticCurvePrivateKey, hashes.SHA384),
        (KeyAlgorithm.RSA_2048, rsa.RSAPrivateKey, hashes.SHA256),
    ],
)
def test_root_profile(
    algorithm: KeyAlgorithm,
    key_class: type,
    hash_class: type,
    clock: FakeClock,
    rsa_ca_key: rsa.RSAPrivateKey,
) -> None:
    key = rsa_ca_key if algorithm is KeyAlgorithm.RSA_2048 else None
    authority = make_root(clock, algorithm, key)
    cert = authority.signing_cert

    assert isinstance(authority.signing_key, key_class)
    assert cert.subject == x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, TRUST_DOMAIN)])
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)
    assert isinstance(cert.signature_hash_algorithm, hash_class)
    assert cert.serial_number == ROOT_SERIAL

    basic = extension(cert, x509.BasicConstraints)
    assert basic.critical and basic.value.ca is True
    usage = extension(cert, x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.key_encipherment

    san = extension(cert, x509.SubjectAlternativeName).value
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    assert uris == ["spiffe://cluster.local"]
    assert SpiffeId.parse(uris[0]).path == ""

    ski = extension(cert, x509.SubjectKeyIdentifier).value
    assert ski.digest == x509.SubjectKeyIdentifier.from_public_key(authority.signing_key.public_key()).digest
    assert extension(cert, x509.AuthorityKeyIdentifier).value.key_identifier == ski.digest

    assert cert.not_valid_before_utc == clock.now() - CLOCK_SKEW
    assert cert.not_valid_after_utc == clock.now() + timedelta(days=3650)

    assert authority.is_self_signed
    assert authority.chain == ()
    assert authority.roots == (cert,)
    assert authority.source == "test root"
    assert authority.trust_bundle_pem() == pem(cert).decode()


def test_a_signing_ca_under_a_root_signs_leaves_only_and_names_its_generation() -> None:
    clock = FakeClock()
    root_key = generate_private_key(KeyAlgorithm.EC_P256)
    root = profile.sign(
        profile.self_signed_root(key=root_key, trust_domain="cluster.local", serial=7, now=clock.now()),
        root_key,
    )
    made = []
    for serial in (1, 2):
        key = generate_private_key(KeyAlgorithm.EC_P256)
        not_before, not_after = clock.now(), clock.now() + timedelta(days=60)
        made.append(
            profile.sign(
                profile.intermediate_ca(
                    subject_key=key.public_key(),
                    trust_domain="cluster.local",
                    issuer=root,
                    serial=serial,
                    not_before=not_before,
                    not_after=not_after,
                ),
                root_key,
            )
        )
    first, second = made
    assert first.subject != second.subject  # a CRL is found by its issuer's name
    assert first.issuer == root.subject
    first.verify_directly_issued_by(root)
    basic = first.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca and basic.value.path_length == 0
    usage = first.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    san = first.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://cluster.local"]
    aki = first.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
