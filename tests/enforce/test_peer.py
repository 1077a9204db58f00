"""The SPIFFE peer check: who a peer's certificate names, whether it may connect, and the cache of answers."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from ca.enforce.peer import PeerCache, PeerRefused, check, identify
from ca.enforce.xfcc import cert_hash
from ca.issuance.spiffe_id import SpiffeId
from tests.support.pki import ec_key, make_hierarchy


def _leaf(uris: list[str], *, days: int = 1) -> bytes:
    hierarchy, key, now = make_hierarchy(), ec_key(), datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(hierarchy.signing.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=2))
        .not_valid_after(now + timedelta(days=days))
    )
    if uris:
        names = [x509.UniformResourceIdentifier(u) for u in uris]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=True)
    return builder.sign(hierarchy.signing_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


NOW = datetime.now(UTC)


def test_a_mesh_peer_is_identified() -> None:
    der = _leaf(["spiffe://cluster.local/ns/shop/sa/client"])
    identity = identify(der)
    assert identity.uri == "spiffe://cluster.local/ns/shop/sa/client"
    assert identity.der_hash == cert_hash(der)
    check(identity, trust_domain="cluster.local", now=NOW)
    check(identity, trust_domain="cluster.local", now=NOW, expected=identity.spiffe_id)


@pytest.mark.parametrize(
    ("uris", "reason"),
    [
        ([], "bad_spiffe_id"),
        (["spiffe://cluster.local/a", "spiffe://cluster.local/b"], "bad_spiffe_id"),
        (["https://cluster.local/ns/x"], "bad_spiffe_id"),
        (["spiffe://cluster.local.evil/ns/shop/sa/client"], "foreign_trust_domain"),
    ],
)
def test_peers_that_are_not_one_spiffe_id_of_the_trust_domain_are_refused(
    uris: list[str], reason: str
) -> None:
    with pytest.raises(PeerRefused) as refused:
        check(identify(_leaf(uris)), trust_domain="cluster.local", now=NOW)
    assert refused.value.reason == reason


def test_an_expected_identity_must_match_and_an_expired_certificate_fails() -> None:
    identity = identify(_leaf(["spiffe://cluster.local/ns/shop/sa/client"], days=1))
    with pytest.raises(PeerRefused, match=r"not spiffe://cluster\.local/ns/shop/sa/other") as wrong:
        check(
            identity,
            trust_domain="cluster.local",
            now=NOW,
            expected=SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/other"),
        )
    assert wrong.value.reason == "unexpected_identity"
    with pytest.raises(PeerRefused) as expired:
        check(identity, trust_domain="cluster.local", now=NOW + timedelta(days=2))
    assert expired.value.reason == "peer_certificate_expired"


def test_the_peer_cache_answers_repeats_and_forgets_the_oldest() -> None:
    cache = PeerCache(size=2)
    loads: list[bytes] = []

    def loader(der: bytes) -> Callable[[], bytes]:
        def load() -> bytes:
            loads.append(der)
            return der

        return load

    good, bad = _leaf(["spiffe://cluster.local/a"]), _leaf([])
    assert cache.identify(cert_hash_bytes(good), loader(good)) is cache.identify(
        cert_hash_bytes(good), loader(good)
    )
    for _ in range(2):
        with pytest.raises(PeerRefused):
            cache.identify(cert_hash_bytes(bad), loader(bad))
    assert loads == [good, bad]  # each certificate parsed once
    third = _leaf(["spiffe://cluster.local/c"])
    cache.identify(cert_hash_bytes(third), loader(third))
    cache.identify(cert_hash_bytes(good), loader(good))
    assert loads == [good, bad, third, good]  # the oldest was forgotten


def cert_hash_bytes(der: bytes) -> bytes:
    return hashlib.sha256(der).digest()


def test_an_unparsable_certificate_is_refused() -> None:
    with pytest.raises(PeerRefused) as refused:
        identify(b"\x30\x03\x02\x01\x01")
    assert refused.value.reason == "bad_certificate"
