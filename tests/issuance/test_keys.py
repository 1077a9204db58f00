"""Key types: names parsed from flags, keys generated for each, the labels audits use, the key
policy the CA applies to CSRs, and private keys to and from PEM."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from hypothesis import example, given
from hypothesis import strategies as st

from ca.errors import ConfigError, InvalidRequestError
from ca.issuance.key_policy import KeyPolicy
from ca.issuance.keys import (
    KeyAlgorithm,
    PrivateKey,
    generate_private_key,
    key_type_label,
    load_private_key_pem,
    private_key_pem,
)
from tests.support.pki import make_hierarchy, pem

CHOICES = "ec-p256, ec-p384, rsa-2048, rsa-3072, rsa-4096"


@pytest.fixture(scope="module")
def rsa1024() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("algorithm", list(KeyAlgorithm))
def test_every_key_type_is_parsed_from_its_name_in_any_case(algorithm: KeyAlgorithm) -> None:
    assert KeyAlgorithm.parse(algorithm.value) is algorithm
    assert KeyAlgorithm.parse(algorithm.value.upper()) is algorithm


@given(st.text(max_size=20).filter(lambda t: t.lower() not in {a.value for a in KeyAlgorithm}))
def test_any_other_name_is_refused_with_the_choices(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        KeyAlgorithm.parse(text)
    assert caught.value.message == f"unknown key type {text!r}; choose one of {CHOICES}"


# --------------------------------------------------------------------------- generation and labels


@pytest.mark.parametrize("algorithm", list(KeyAlgorithm))
def test_a_generated_key_is_of_the_type_asked_for(algorithm: KeyAlgorithm) -> None:
    key = generate_private_key(algorithm)
    assert key_type_label(key.public_key()) == algorithm.value
    assert KeyPolicy().check(key.public_key()) == key.public_key()


@pytest.mark.parametrize(
    ("key", "label"),
    [
        (ec.generate_private_key(ec.SECP521R1()), "ec-p521"),
        (ec.generate_private_key(ec.SECP256K1()), "ec-secp256k1"),
        (ed25519.Ed25519PrivateKey.generate(), "ed25519"),
        (ed448.Ed448PrivateKey.generate(), "ed448"),
    ],
)
def test_keys_meshca_does_not_generate_are_labelled_too(key: ec.EllipticCurvePrivateKey, label: str) -> None:
    assert key_type_label(key.public_key()) == label


def test_an_rsa_label_carries_the_key_size(rsa1024: rsa.RSAPrivateKey) -> None:
    assert key_type_label(rsa1024.public_key()) == "rsa-1024"


# --------------------------------------------------------------------------- the key policy


@pytest.mark.parametrize(
    ("key", "label"),
    [
        (ec.generate_private_key(ec.SECP521R1()), "ec-p521"),
        (ec.generate_private_key(ec.SECP256K1()), "ec-secp256k1"),
        (ed25519.Ed25519PrivateKey.generate(), "ed25519"),
    ],
)
def test_the_policy_refuses_other_curves_and_algorithms(key: ec.EllipticCurvePrivateKey, label: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        KeyPolicy().check(key.public_key())
    assert caught.value.reason == "key_type_not_allowed"
    assert caught.value.message == (
        f"the CSR's key type {label} is not allowed; use an EC P-256 or P-384 key, "
        "or RSA with 2048 to 8192 bits"
    )


def test_the_policy_refuses_rsa_outside_its_sizes_and_names_them(rsa1024: rsa.RSAPrivateKey) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        KeyPolicy().check(rsa1024.public_key())
    assert "key type rsa-1024 is not allowed" in caught.value.message
    rsa2048 = generate_private_key(KeyAlgorithm.RSA_2048).public_key()
    with pytest.raises(InvalidRequestError) as caught:
        KeyPolicy(min_rsa_bits=3072).check(rsa2048)
    assert caught.value.message.endswith("or RSA with 3072 to 8192 bits")
    assert KeyPolicy(min_rsa_bits=1024, max_rsa_bits=1024).check(rsa1024.public_key())


@given(st.integers(min_value=0, max_value=20_000))
def test_an_rsa_label_is_allowed_exactly_within_the_sizes(bits: int) -> None:
    assert KeyPolicy().allows_label(f"rsa-{bits}") == (2048 <= bits <= 8192)
    narrow = KeyPolicy(min_rsa_bits=3072, max_rsa_bits=4096)
    assert narrow.allows_label(f"rsa-{bits}") == (3072 <= bits <= 4096)


@pytest.mark.parametrize(
    ("label", "allowed"),
    [("ec-p256", True), ("ec-p384", True), ("ec-p521", False), ("ec-secp256k1", False), ("ed25519", False)],
)
def test_curve_labels_follow_the_policys_curves(label: str, allowed: bool) -> None:
    assert KeyPolicy().allows_label(label) is allowed
    assert KeyPolicy(ec_curves=frozenset({"secp521r1"})).allows_label(label) is (label == "ec-p521")


@given(st.text(max_size=12))
@example("²")  # a digit to str.isdigit, but not to int()
@example("٢٠٤٨")  # 2048 to int(), in Arabic-Indic digits: no key size a certificate states
def test_a_label_that_names_no_size_is_not_allowed(text: str) -> None:
    label = f"rsa-{text}"
    allowed = text.isascii() and text.isdigit() and 2048 <= int(text) <= 8192
    assert KeyPolicy().allows_label(label) is allowed


# --------------------------------------------------------------------------- PEM


@pytest.mark.parametrize("algorithm", [KeyAlgorithm.EC_P256, KeyAlgorithm.EC_P384, KeyAlgorithm.RSA_2048])
def test_a_private_key_survives_pem(algorithm: KeyAlgorithm) -> None:
    key = generate_private_key(algorithm)
    pem = private_key_pem(key)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS#8, unencrypted
    loaded = load_private_key_pem(pem, "key.pem")
    assert loaded.private_numbers() == key.private_numbers()


@pytest.mark.parametrize("algorithm", [KeyAlgorithm.EC_P256, KeyAlgorithm.RSA_2048])
def test_traditional_pem_keys_are_read_too(algorithm: KeyAlgorithm) -> None:
    key = generate_private_key(algorithm)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,  # SEC1 for EC, PKCS#1 for RSA
        serialization.NoEncryption(),
    )
    assert key_type_label(load_private_key_pem(pem, "ca-key.pem").public_key()) == algorithm.value


def _refusal(data: bytes, source: str = "/etc/cacerts/ca-key.pem") -> str:
    with pytest.raises(ConfigError) as caught:
        load_private_key_pem(data, source)
    return caught.value.message


def test_an_encrypted_key_is_refused_with_what_to_provide() -> None:
    key: PrivateKey = generate_private_key(KeyAlgorithm.EC_P256)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    message = _refusal(pem)
    assert message.startswith("/etc/cacerts/ca-key.pem does not hold an unencrypted PEM private key (")
    assert message.endswith("provide a PKCS#8, PKCS#1 or SEC1 PEM key without a passphrase")


def test_a_key_meshca_cannot_sign_with_is_refused_by_its_type() -> None:
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert _refusal(pem, "k.pem") == "k.pem holds a Ed25519PrivateKey; meshca signs with EC or RSA keys"


@given(st.binary(max_size=200))
def test_bytes_that_are_no_key_are_a_config_error(data: bytes) -> None:
    assert "does not hold an unencrypted PEM private key" in _refusal(data)


def test_a_certificate_is_not_a_key() -> None:
    assert "does not hold an unencrypted PEM private key" in _refusal(pem(make_hierarchy().root))
