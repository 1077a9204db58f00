"""The proof an agent sends to move its control stream to a new certificate."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cryptography import x509

from ca.errors import AuthenticationError
from ca.issuance.keys import KeyAlgorithm, PrivateKey, generate_private_key
from ca.issuance.possession import check_possession, prove_possession, rebind_statement
from tests.support.pki import _ca_cert


def self_signed(key: PrivateKey) -> x509.Certificate:
    return _ca_cert(subject="holder", key=key, issuer_cert=None, issuer_key=key, now=datetime.now(UTC))


@pytest.mark.parametrize("algorithm", [KeyAlgorithm.EC_P256, KeyAlgorithm.EC_P384, KeyAlgorithm.RSA_2048])
def test_a_proof_verifies_with_its_key_for_its_statement_only(algorithm: KeyAlgorithm) -> None:
    key, other = generate_private_key(algorithm), generate_private_key(algorithm)
    statement = rebind_statement("a1", "b2")
    proof = prove_possession(key, statement)
    check_possession(self_signed(key), statement, proof)
    for cert, said in ((self_signed(other), statement), (self_signed(key), rebind_statement("a1", "b3"))):
        with pytest.raises(AuthenticationError) as refused:
            check_possession(cert, said, proof)
        assert refused.value.reason == "rebind_proof_invalid"


def test_the_statement_names_both_serials_and_cannot_be_shifted() -> None:
    assert rebind_statement("a1", "b2") == b"meshca.control.v1 Rebind\x00a1\x00b2"
    assert rebind_statement("a", "1b2") != rebind_statement("a1", "b2")
