"""Issuance: serials, TTL policy, the chain in a response, strict CSR names, the signer (REFERENCE §3)."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ca.errors import ConfigError, ErrorKind, InvalidRequestError, SigningError
from ca.issuance.authority import SigningAuthority, cert_pem
from ca.issuance.issuer import IssuancePolicy, Issuer, OverMaxTtl, random_serial
from ca.issuance.keys import KeyAlgorithm, PrivateKey
from ca.issuance.profile import CLOCK_SKEW
from ca.issuance.x509_der import certificate_fingerprints
from tests.support.clock import FakeClock
from tests.support.issuing import (
    WEB,
    authority_from,
    extension,
    issue_leaf,
    leaf_csr,
    make_issuer,
    make_root,
)
from tests.support.pki import make_hierarchy
from tests.support.validate import assert_valid_svid


class CountingSerials:
    def __init__(self) -> None:
        self.used = 0

    def __call__(self) -> int:
        self.used += 1
        return self.used


def test_serials_come_from_the_injected_source(
    root: SigningAuthority, clock: FakeClock, leaf_keys: dict[str, PrivateKey]
) -> None:
    issuer = make_issuer(root, clock, iter([7, 2**127 + 5, 42]))
    key = leaf_keys["ec-p256"]
    assert [issue_leaf(issuer, key).certificate.serial_number for _ in range(3)] == [7, 2**127 + 5, 42]


def test_random_serials_are_positive_and_at_most_128_bits() -> None:
    values = {random_serial() for _ in range(200)}
    assert len(values) == 200
    assert all(0 < v < 2**128 for v in values)
    assert max(v.bit_length() for v in values) > 120


@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p384", "rsa-2048"])
def test_self_signed_ec_chain_passes_independent_validators(
    key_type: str, leaf_keys: dict[str, PrivateKey], root: SigningAuthority, clock: FakeClock
) -> None:
    issued = issue_leaf(make_issuer(root, clock), leaf_keys[key_type])
    assert_valid_svid(issued.chain, leaf_keys[key_type], WEB.uri, clock.now())


@pytest.mark.parametrize("key_type", ["ec-p256", "rsa-2048"])
def test_self_signed_rsa_chain_passes_independent_validators(
    key_type: str, leaf_keys: dict[str, PrivateKey], clock: FakeClock, rsa_ca_key: rsa.RSAPrivateKey
) -> None:
    rsa_root = make_root(clock, KeyAlgorithm.RSA_2048, rsa_ca_key)
    issued = issue_leaf(make_issuer(rsa_root, clock), leaf_keys[key_type])
    assert_valid_svid(issued.chain, leaf_keys[key_type], WEB.uri, clock.now())


@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p384", "rsa-2048"])
def test_intermediate_chain_passes_independent_validators(
    key_type: str, leaf_keys: dict[str, PrivateKey], clock: FakeClock
) -> None:
    authority = authority_from(make_hierarchy(now=clock.now()))
    issued = issue_leaf(make_issuer(authority, clock), leaf_keys[key_type])
    assert len(issued.chain) == 4
    assert_valid_svid(issued.chain, leaf_keys[key_type], WEB.uri, clock.now())


def test_rsa_signing_ca_in_a_hierarchy_passes_independent_validators(
    leaf_keys: dict[str, PrivateKey], clock: FakeClock, rsa_ca_key: rsa.RSAPrivateKey
) -> None:
    authority = authority_from(make_hierarchy(now=clock.now(), signing_key=rsa_ca_key))
    issued = issue_leaf(make_issuer(authority, clock), leaf_keys["ec-p256"])
    assert_valid_svid(issued.chain, leaf_keys["ec-p256"], WEB.uri, clock.now())


def test_self_signed_response_chain_is_leaf_then_root_bundle(
    root: SigningAuthority, clock: FakeClock, leaf_keys: dict[str, PrivateKey]
) -> None:
    issued = issue_leaf(make_issuer(root, clock), leaf_keys["ec-p256"])
    assert len(issued.chain) == 2
    assert x509.load_pem_x509_certificate(issued.chain[0].encode()) == issued.certificate
    assert x509.load_pem_x509_certificates(issued.chain[1].encode()) == [root.signing_cert]
    assert root.is_self_signed


def test_intermediate_response_chain_is_leaf_signing_intermediate_root(
    clock: FakeClock, leaf_keys: dict[str, PrivateKey]
) -> None:
    h = make_hierarchy(now=clock.now())
    authority = authority_from(h)
    assert not authority.is_self_signed
    issued = issue_leaf(make_issuer(authority, clock), leaf_keys["ec-p256"])
    certs = [x509.load_pem_x509_certificate(c.encode()) for c in issued.chain[:3]]
    assert certs == [issued.certificate, h.signing, h.intermediate]
    assert x509.load_pem_x509_certificates(issued.chain[3].encode()) == [h.root]
    assert issued.certificate.issuer == h.signing.subject


def test_chain_without_the_root_in_cert_chain_gives_the_same_response(
    clock: FakeClock, leaf_keys: dict[str, PrivateKey]
) -> None:
    h = make_hierarchy(now=clock.now())
    authority = SigningAuthority.from_parts(
        signing_cert=h.signing,
        signing_key=h.signing_key,
        cert_chain=[h.intermediate],
        roots=[h.root],
        source="test",
    )
    issued = issue_leaf(make_issuer(authority, clock), leaf_keys["ec-p256"])
    assert issued.chain[1:] == [cert_pem(h.signing), cert_pem(h.intermediate), cert_pem(h.root)]


def test_root_bundle_with_several_roots_is_one_last_element(
    clock: FakeClock, leaf_keys: dict[str, PrivateKey]
) -> None:
    h = make_hierarchy(now=clock.now())
    other = make_hierarchy(now=clock.now())
    authority = SigningAuthority.from_parts(
        signing_cert=h.signing,
        signing_key=h.signing_key,
        cert_chain=[h.signing, h.intermediate, h.root],
        roots=[h.root, other.root],
        source="test",
    )
    issued = issue_leaf(make_issuer(authority, clock), leaf_keys["ec-p256"])
    assert len(issued.chain) == 4
    assert x509.load_pem_x509_certificates(issued.chain[-1].encode()) == [h.root, other.root]


@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p384", "rsa-2048"])
def test_issued_certificate_fingerprints(
    root: SigningAuthority, clock: FakeClock, leaf_keys: dict[str, PrivateKey], key_type: str
) -> None:
    key = leaf_keys[key_type]
    issued = issue_leaf(make_issuer(root, clock), key)
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    der = issued.certificate.public_bytes(serialization.Encoding.DER)
    fingerprints = certificate_fingerprints(issued.chain[0])
    assert fingerprints == (hashlib.sha256(spki).hexdigest(), hashlib.sha256(der).hexdigest())
    assert issued.key_type == key_type


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        (0, timedelta(hours=24)),
        (1, timedelta(seconds=1)),
        (3600, timedelta(hours=1)),
        (90 * 86400, timedelta(days=90)),
    ],
)
def test_leaf_lifetime_follows_the_request(
    requested: int,
    expected: timedelta,
    root: SigningAuthority,
    clock: FakeClock,
    leaf_keys: dict[str, PrivateKey],
) -> None:
    leaf = issue_leaf(make_issuer(root, clock), leaf_keys["ec-p256"], ttl=requested).certificate
    assert leaf.not_valid_after_utc == clock.now() + expected
    assert leaf.not_valid_before_utc == clock.now() - CLOCK_SKEW


@pytest.mark.parametrize("requested", [-1, -3600, -(2**62)])
def test_negative_ttl_is_refused(requested: int) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        IssuancePolicy().resolve_ttl(requested)
    assert caught.value.reason == "ttl_invalid"
    assert "negative" in caught.value.message
    assert caught.value.kind is ErrorKind.INVALID_ARGUMENT


@pytest.mark.parametrize("requested", [90 * 86400 + 1, 365 * 86400, 2**31, 2**62, 2**63 - 1, 2**80])
def test_ttl_over_the_maximum_is_refused(requested: int) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        IssuancePolicy().resolve_ttl(requested)
    assert caught.value.reason == "ttl_over_max"
    assert str(90 * 86400) in caught.value.message
    assert "maximum" in caught.value.message


@pytest.mark.parametrize("requested", [90 * 86400 + 1, 2**62, 2**80])
def test_ttl_over_the_maximum_is_clamped_when_configured(requested: int) -> None:
    policy = IssuancePolicy(over_max=OverMaxTtl.CLAMP)
    assert policy.resolve_ttl(requested) == timedelta(days=90)


def test_ttl_at_the_maximum_is_accepted() -> None:
    assert IssuancePolicy(max_ttl=timedelta(hours=48)).resolve_ttl(48 * 3600) == timedelta(hours=48)


def test_custom_default_ttl_is_used_for_zero() -> None:
    policy = IssuancePolicy(default_ttl=timedelta(hours=1), max_ttl=timedelta(hours=2))
    assert policy.resolve_ttl(0) == timedelta(hours=1)


def test_issue_refuses_a_bad_ttl_before_signing(
    root: SigningAuthority, clock: FakeClock, leaf_keys: dict[str, PrivateKey]
) -> None:
    serials = CountingSerials()
    issuer = Issuer(authority=root, policy=IssuancePolicy(), clock=clock, serials=serials)
    for ttl, reason in ((-5, "ttl_invalid"), (2**62, "ttl_over_max")):
        with pytest.raises(InvalidRequestError) as caught:
            issue_leaf(issuer, leaf_keys["ec-p256"], ttl=ttl)
        assert caught.value.reason == reason
    assert serials.used == 0


def test_clamped_huge_ttl_issues_a_leaf_ending_with_the_ca(
    root: SigningAuthority, clock: FakeClock, leaf_keys: dict[str, PrivateKey]
) -> None:
    issuer = make_issuer(root, clock, max_ttl=timedelta(days=999_999_999), over_max=OverMaxTtl.CLAMP)
    leaf = issue_leaf(issuer, leaf_keys["ec-p256"], ttl=2**62).certificate
    assert leaf.not_valid_after_utc == root.signing_cert.not_valid_after_utc


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"default_ttl": timedelta(days=2), "max_ttl": timedelta(days=1)}, ["--default-ttl", "--max-ttl"]),
        ({"default_ttl": timedelta(0)}, ["positive"]),
        ({"default_ttl": timedelta(seconds=-1)}, ["positive"]),
        ({"max_ttl": timedelta(0)}, ["positive"]),
        ({"max_ttl": timedelta(days=-90)}, ["positive"]),
    ],
)
def test_policy_configuration_errors(settings: dict[str, timedelta], words: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        IssuancePolicy(**settings)  # type: ignore[arg-type]
    assert caught.value.kind is ErrorKind.CONFIG
    for word in words:
        assert word in caught.value.message


def test_default_equal_to_max_is_allowed() -> None:
    policy = IssuancePolicy(default_ttl=timedelta(days=1), max_ttl=timedelta(days=1))
    assert policy.resolve_ttl(0) == timedelta(days=1)


def test_signing_one_second_before_the_issuer_expires_works(
    root: SigningAuthority, clock: FakeClock, leaf_keys: dict[str, PrivateKey]
) -> None:
    clock.set(root.signing_cert.not_valid_after_utc - timedelta(seconds=1))
    leaf = issue_leaf(make_issuer(root, clock), leaf_keys["ec-p256"]).certificate
    assert leaf.not_valid_after_utc == root.signing_cert.not_valid_after_utc


@pytest.mark.parametrize("after", [timedelta(0), timedelta(seconds=1), timedelta(days=400)])
def test_signing_is_refused_once_the_issuer_has_expired(
    after: timedelta, root: SigningAuthority, clock: FakeClock, leaf_keys: dict[str, PrivateKey]
) -> None:
    issuer = make_issuer(root, clock)
    issue_leaf(issuer, leaf_keys["ec-p256"])
    clock.set(root.signing_cert.not_valid_after_utc + after)
    with pytest.raises(SigningError) as caught:
        issue_leaf(issuer, leaf_keys["ec-p256"])
    assert caught.value.reason == "ca_expired"
    assert "expired" in caught.value.message
    assert caught.value.kind is ErrorKind.INTERNAL


def test_expired_signing_ca_in_a_hierarchy_is_refused(
    clock: FakeClock, leaf_keys: dict[str, PrivateKey]
) -> None:
    h = make_hierarchy(now=clock.now())
    issuer = make_issuer(authority_from(h), clock)
    clock.set(h.signing.not_valid_after_utc + timedelta(seconds=1))
    with pytest.raises(SigningError) as caught:
        issue_leaf(issuer, leaf_keys["ec-p256"])
    assert caught.value.reason == "ca_expired"


def test_strict_mode_refuses_a_csr_naming_another_identity(
    root: SigningAuthority, clock: FakeClock, leaf_keys: dict[str, PrivateKey]
) -> None:
    issuer = make_issuer(root, clock, strict_csr_names=True)
    other = "spiffe://cluster.local/ns/kube-system/sa/admin"
    with pytest.raises(InvalidRequestError) as caught:
        issuer.issue(
            spiffe_id=WEB, csr=leaf_csr(leaf_keys["ec-p256"], uris=(other,)), requested_ttl_seconds=0
        )
    assert caught.value.reason == "csr_identity_mismatch"
    assert other in caught.value.message
    assert WEB.uri in caught.value.message


def test_strict_mode_refuses_dns_names(
    root: SigningAuthority, clock: FakeClock, leaf_keys: dict[str, PrivateKey]
) -> None:
    issuer = make_issuer(root, clock, strict_csr_names=True)
    csr = leaf_csr(leaf_keys["ec-p256"], uris=(WEB.uri,), dns=("web.shop.svc",))
    with pytest.raises(InvalidRequestError) as caught:
        issuer.issue(spiffe_id=WEB, csr=csr, requested_ttl_seconds=0)
    assert caught.value.reason == "csr_identity_mismatch"
    assert "web.shop.svc" in caught.value.message


@pytest.mark.parametrize("uris", [(), (WEB.uri,)])
def test_strict_mode_accepts_the_callers_own_identity(
    uris: tuple[str, ...], root: SigningAuthority, clock: FakeClock, leaf_keys: dict[str, PrivateKey]
) -> None:
    issuer = make_issuer(root, clock, strict_csr_names=True)
    issued = issuer.issue(
        spiffe_id=WEB, csr=leaf_csr(leaf_keys["ec-p256"], uris=uris), requested_ttl_seconds=0
    )
    assert issued.spiffe_id == WEB


def test_ignore_mode_issues_only_the_callers_identity(
    root: SigningAuthority, clock: FakeClock, leaf_keys: dict[str, PrivateKey]
) -> None:
    issuer = make_issuer(root, clock)
    csr = leaf_csr(
        leaf_keys["ec-p256"],
        uris=("spiffe://cluster.local/ns/kube-system/sa/admin", "spiffe://evil.org/x"),
        dns=("admin.example",),
    )
    leaf = issuer.issue(spiffe_id=WEB, csr=csr, requested_ttl_seconds=0).certificate
    san = extension(leaf, x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(WEB.uri)]


def test_strict_mode_checks_names_before_signing(
    root: SigningAuthority, clock: FakeClock, leaf_keys: dict[str, PrivateKey]
) -> None:
    serials = CountingSerials()
    issuer = Issuer(
        authority=root, policy=IssuancePolicy(strict_csr_names=True), clock=clock, serials=serials
    )
    with pytest.raises(InvalidRequestError):
        issuer.issue(spiffe_id=WEB, csr=leaf_csr(leaf_keys["ec-p256"], dns=("x",)), requested_ttl_seconds=0)
    assert serials.used == 0


def test_use_authority_switches_the_signer(clock: FakeClock, leaf_keys: dict[str, PrivateKey]) -> None:
    first, second = make_root(clock), make_root(clock)
    issuer = make_issuer(first, clock)
    issuer.use_authority(second)
    assert issuer.authority is second
    issued = issue_leaf(issuer, leaf_keys["ec-p256"])
    issued.certificate.verify_directly_issued_by(second.signing_cert)
    assert issued.authority is second


def test_issuer_exposes_its_policy(root: SigningAuthority, clock: FakeClock) -> None:
    policy = IssuancePolicy(strict_csr_names=True)
    assert Issuer(authority=root, policy=policy, clock=clock).policy is policy
