"""Which workload keys the CA certifies: EC P-256 and P-384, RSA within the size bounds."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ca.errors import InvalidRequestError
from ca.issuance.key_policy import KeyPolicy


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1()])
def test_the_default_policy_takes_p256_and_p384(curve: ec.EllipticCurve) -> None:
    key = ec.generate_private_key(curve).public_key()
    assert KeyPolicy().check(key) is key


def test_rsa_is_taken_within_its_bounds_only() -> None:
    key = rsa.generate_private_key(65537, 2048).public_key()
    assert KeyPolicy().check(key) is key
    with pytest.raises(InvalidRequestError) as refused:
        KeyPolicy(min_rsa_bits=3072).check(key)
    assert refused.value.reason == "key_type_not_allowed"
    assert "RSA with 3072 to 8192 bits" in refused.value.message


@pytest.mark.parametrize(
    "key",
    [ec.generate_private_key(ec.SECP521R1()).public_key(), ed25519.Ed25519PrivateKey.generate().public_key()],
)
def test_other_keys_are_refused_saying_which_are_allowed(key: object) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        KeyPolicy().check(key)  # type: ignore[arg-type]
    assert refused.value.reason == "key_type_not_allowed"
    assert "use an EC P-256 or P-384 key" in refused.value.message


@pytest.mark.parametrize(
    ("label", "allowed"),
    [
        ("ec-p256", True),
        ("ec-p384", True),
        ("ec-p521", False),
        ("rsa-2048", True),
        ("rsa-8192", True),
        ("rsa-1024", False),
        ("rsa-16384", False),
        ("rsa-" + "\uff12\uff10\uff14\uff18", False),  # full-width digits: isdigit() takes them, int() not
        ("rsa-", False),
        ("ed25519", False),
    ],
)
def test_key_labels_are_allowed_as_the_keys_are(label: str, allowed: bool) -> None:
    assert KeyPolicy().allows_label(label) is allowed


def test_a_narrower_policy_narrows_the_labels() -> None:
    policy = KeyPolicy(ec_curves=frozenset({"secp384r1"}))
    assert not policy.allows_label("ec-p256") and policy.allows_label("ec-p384")
