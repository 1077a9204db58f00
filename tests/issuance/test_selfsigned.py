"""The self-signed root: its factory, trust domain and key generation."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from ca.issuance.keys import KeyAlgorithm, PrivateKey
from ca.issuance.selfsigned import RootFactory
from tests.support.clock import FakeClock


def test_root_uses_the_injected_key_generator(clock: FakeClock, rsa_ca_key: rsa.RSAPrivateKey) -> None:
    requested: list[KeyAlgorithm] = []

    def generate(algorithm: KeyAlgorithm) -> PrivateKey:
        requested.append(algorithm)
        return rsa_ca_key

    factory = RootFactory(
        trust_domain="example.org", key_algorithm=KeyAlgorithm.RSA_3072, clock=clock, generate_key=generate
    )
    authority = factory.create(source="x")
    assert requested == [KeyAlgorithm.RSA_3072]
    assert authority.signing_key is rsa_ca_key
    assert (
        authority.signing_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
        == "example.org"
    )
