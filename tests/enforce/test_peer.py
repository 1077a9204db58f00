"""The SPIFFE peer check: who a peer's certificate names, whether it may connect, and the cache of answers."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from ca.enforce.peer import PeerCache, PeerRefused, check, check_not_revoked, identify
from ca.enforce.xfcc import cert_hash
from ca.issuance.crl import NO_REVOCATIONS, CertificateRef, RevocationLists
from ca.issuance.spiffe_id import SpiffeId
from tests.support.clock import FakeClock
from tests.support.crls import crl_revoking
from tests.support.pki import ec_key, make_hierarchy
from tests.support.svids import FakeCa, make_svid


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


def test_a_revoked_peer_is_refused_from_the_next_lookup_even_when_cached(clock: FakeClock) -> None:
    ca = FakeCa(clock)
    revoked, kept = make_svid(clock, ca), make_svid(clock, ca)
    in_use: list[RevocationLists] = [NO_REVOCATIONS]
    cache = PeerCache(revocations=lambda: in_use[0])
    ders = {svid: svid.leaf.public_bytes(serialization.Encoding.DER) for svid in (revoked, kept)}
    for der in ders.values():
        cache.identify(cert_hash_bytes(der), lambda der=der: der)  # type: ignore[misc]

    crl = x509.load_der_x509_crl(crl_revoking(ca.issuer.authority, [revoked.leaf], clock.now(), "superseded"))
    in_use[0] = RevocationLists.checked([crl], [ca.issuer.authority.signing_cert])

    with pytest.raises(PeerRefused) as refused:
        cache.identify(cert_hash_bytes(ders[revoked]), lambda: ders[revoked])
    assert refused.value.reason == "certificate_revoked"
    assert f"serial {revoked.leaf.serial_number:x}" in refused.value.detail
    assert "superseded" in refused.value.detail
    identity = cache.identify(cert_hash_bytes(ders[kept]), lambda: ders[kept])
    assert identity.certificate.serial == kept.leaf.serial_number


def test_the_same_serial_from_another_issuer_key_is_not_revoked(clock: FakeClock) -> None:
    ca, other = FakeCa(clock), FakeCa(clock)
    revoked = make_svid(clock, ca)
    crl = x509.load_der_x509_crl(crl_revoking(ca.issuer.authority, [revoked.leaf], clock.now()))
    lists = RevocationLists.checked([crl], [ca.issuer.authority.signing_cert])
    identity = identify(revoked.leaf.public_bytes(serialization.Encoding.DER))
    with pytest.raises(PeerRefused):
        check_not_revoked(identity, lists)
    other_signer = other.issuer.authority.signing_cert
    assert other_signer.subject == ca.issuer.authority.signing_cert.subject  # one name, two keys
    elsewhere = replace(identity, certificate=CertificateRef.of(make_svid(clock, other).leaf))
    check_not_revoked(
        replace(elsewhere, certificate=replace(elsewhere.certificate, serial=revoked.leaf.serial_number)),
        lists,
    )
    without_key_id = replace(identity.certificate, issuer_key_id=None)
    with pytest.raises(PeerRefused):  # a certificate without an AKI is matched by its issuer's name
        check_not_revoked(replace(identity, certificate=without_key_id), lists)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
