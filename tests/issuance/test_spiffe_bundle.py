"""The SPIFFE bundle document: a JWK set of x509-svid keys, read back by independent parsers (pyjwt's
JWK parser for the key members, py-spiffe for the certificates)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from spiffe import TrustDomain
from spiffe.bundle.x509_bundle.x509_bundle import X509Bundle

from ca.errors import CaMaterialError
from ca.issuance.keys import KeyAlgorithm, PrivateKey
from ca.issuance.profile import signature_hash
from ca.issuance.spiffe_bundle import (
    SpiffeBundle,
    next_sequence,
    x509_svid_key,
)
from tests.support.clock import FakeClock
from tests.support.issuing import TRUST_DOMAIN, make_root
from tests.support.pki import make_hierarchy, rsa_key

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


def root_with(key: PrivateKey | ed25519.Ed25519PrivateKey) -> x509.Certificate:
    """A self-signed CA certificate on `key` (Ed25519 too, which meshca's own roots never use)."""
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, TRUST_DOMAIN)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    )
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return builder.sign(key, None)
    return builder.sign(key, signature_hash(key))


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def public_der(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="module")
def ec_root() -> x509.Certificate:
    return make_root(FakeClock(NOW), KeyAlgorithm.EC_P256).roots[0]


@pytest.mark.parametrize(
    ("key", "fixed", "key_members"),
    [
        (ec.generate_private_key(ec.SECP256R1()), {"kty": "EC", "crv": "P-256"}, {"x", "y"}),
        (ec.generate_private_key(ec.SECP384R1()), {"kty": "EC", "crv": "P-384"}, {"x", "y"}),
        (ec.generate_private_key(ec.SECP521R1()), {"kty": "EC", "crv": "P-521"}, {"x", "y"}),
        (rsa_key(2048), {"kty": "RSA"}, {"n", "e"}),
        (ed25519.Ed25519PrivateKey.generate(), {"kty": "OKP", "crv": "Ed25519"}, {"x"}),
    ],
    ids=["p256", "p384", "p521", "rsa2048", "ed25519"],
)
def test_each_root_is_an_x509_svid_key_that_a_jwk_parser_reads_back(
    key: PrivateKey | ed25519.Ed25519PrivateKey, fixed: dict[str, str], key_members: set[str]
) -> None:
    root = root_with(key)
    jwk = x509_svid_key(root)
    # No kid: the X509-SVID specification forbids one on these keys.
    assert set(jwk) == {"use", "x5c", *fixed, *key_members}
    assert {k: jwk[k] for k in fixed} == fixed
    assert jwk["use"] == "x509-svid"
    assert jwk["x5c"] == [base64.standard_b64encode(der(root)).decode()]
    # The key members are RFC 7518/8037 encodings of the certificate's own key.
    parsed = jwt.PyJWK.from_dict({k: v for k, v in jwk.items() if k not in ("x5c", "use")})
    parsed_key: Any = parsed.key
    assert parsed_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == public_der(root)


def test_ec_coordinates_keep_their_leading_zeros() -> None:
    """RFC 7518: x and y take the curve's full length even when the number is shorter."""
    key = next(
        k
        for k in (ec.generate_private_key(ec.SECP256R1()) for _ in range(10_000))
        if k.public_key().public_numbers().x < 2**248
    )
    jwk = x509_svid_key(root_with(key))
    x = base64.urlsafe_b64decode(jwk["x"] + "=")
    assert len(x) == 32 and x[0] == 0
    assert int.from_bytes(x, "big") == key.public_key().public_numbers().x


def test_the_document_members(ec_root: x509.Certificate) -> None:
    bundle = SpiffeBundle.of([ec_root], sequence=42, refresh_hint=timedelta(minutes=10))
    document = json.loads(bundle.to_json())
    assert set(document) == {"keys", "spiffe_refresh_hint", "spiffe_sequence"}
    assert document["spiffe_sequence"] == 42
    assert document["spiffe_refresh_hint"] == 600
    assert document["keys"] == [x509_svid_key(ec_root)]
    assert SpiffeBundle.of([ec_root], sequence=1).document()["spiffe_refresh_hint"] == 300


def test_py_spiffe_takes_the_certificates_of_every_key(ec_root: x509.Certificate) -> None:
    other = make_hierarchy().root
    document = json.loads(SpiffeBundle.of([ec_root, other], sequence=1).to_json())
    # As a consumer does (X509-SVID section 6.2): the first x5c value of every x509-svid key.
    ders = [base64.standard_b64decode(key["x5c"][0]) for key in document["keys"] if key["use"] == "x509-svid"]
    parsed = X509Bundle.parse_raw(TrustDomain(TRUST_DOMAIN), b"".join(ders))
    assert {der(c) for c in parsed.x509_authorities} == {der(ec_root), der(other)}
    assert [base64.standard_b64decode(k["x5c"][0]) for k in document["keys"]] == [der(ec_root), der(other)]


def test_same_keys_means_the_same_roots_in_the_same_order(ec_root: x509.Certificate) -> None:
    other = make_hierarchy().root
    bundle = SpiffeBundle.of([ec_root, other], sequence=1)
    assert bundle.same_keys([ec_root, other])
    assert not bundle.same_keys([other, ec_root])
    assert not bundle.same_keys([ec_root])


def test_a_bundle_needs_a_root() -> None:
    with pytest.raises(CaMaterialError, match="at least one root"):
        SpiffeBundle.of([], sequence=1)


def test_a_root_must_be_a_ca() -> None:
    leaf = make_hierarchy()
    not_ca = (
        x509.CertificateBuilder()
        .subject_name(leaf.root.subject)
        .issuer_name(leaf.root.subject)
        .public_key(leaf.root_key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(leaf.root_key, signature_hash(leaf.root_key))
    )
    with pytest.raises(CaMaterialError, match="not a CA certificate"):
        SpiffeBundle.of([not_ca], sequence=1)


@pytest.mark.parametrize("sequence", [-1, 2**63])
def test_the_sequence_fits_a_signed_64_bit_integer(ec_root: x509.Certificate, sequence: int) -> None:
    with pytest.raises(ValueError, match="sequence"):
        SpiffeBundle.of([ec_root], sequence=sequence)
    assert SpiffeBundle.of([ec_root], sequence=2**63 - 1).sequence == 2**63 - 1


@pytest.mark.parametrize("hint", [timedelta(0), timedelta(milliseconds=1500)])
def test_the_refresh_hint_is_whole_seconds(ec_root: x509.Certificate, hint: timedelta) -> None:
    with pytest.raises(ValueError, match="whole number of seconds"):
        SpiffeBundle.of([ec_root], sequence=1, refresh_hint=hint)


def test_the_first_sequence_is_the_unix_time() -> None:
    assert next_sequence(None, NOW) == int(NOW.timestamp())


def test_the_sequence_follows_the_clock_and_always_goes_up() -> None:
    now_s = int(NOW.timestamp())
    assert next_sequence(now_s - 1, NOW) == now_s
    assert next_sequence(now_s, NOW) == now_s + 1  # two changes within one second
    assert next_sequence(now_s + 100, NOW) == now_s + 101  # the clock went back
    assert next_sequence(now_s - 3600, NOW + timedelta(seconds=1)) == now_s + 1
