"""Leaf and root certificate profiles, TTL policy and issuance (REFERENCE §3)."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca.errors import ConfigError, ErrorKind, InvalidRequestError, SigningError
from ca.issuance.authority import SigningAuthority, cert_pem
from ca.issuance.csr import ParsedCsr, parse_csr
from ca.issuance.issuer import IssuancePolicy, IssuedCertificate, Issuer, OverMaxTtl, random_serial
from ca.issuance.keys import KeyAlgorithm, KeyPolicy, PrivateKey
from ca.issuance.profile import CLOCK_SKEW
from ca.issuance.selfsigned import RootFactory
from ca.issuance.spiffe_id import SpiffeId
from ca.issuance.x509_der import certificate_fingerprints
from tests.support.clock import FakeClock
from tests.support.pki import Hierarchy, make_csr, make_hierarchy, pem, rsa_key
from tests.support.validate import assert_valid_svid

TRUST_DOMAIN = "cluster.local"
WEB = SpiffeId.for_workload(TRUST_DOMAIN, "shop", "web")
E = TypeVar("E", bound=x509.ExtensionType)
ROOT_SERIAL = 0x1234


@pytest.fixture(scope="module")
def rsa2048() -> rsa.RSAPrivateKey:
    return rsa_key(2048)


@pytest.fixture(scope="module")
def rsa_ca_key() -> rsa.RSAPrivateKey:
    return rsa_key(2048)


@pytest.fixture(scope="module")
def leaf_keys(rsa2048: rsa.RSAPrivateKey) -> dict[str, PrivateKey]:
    return {
        "ec-p256": ec.generate_private_key(ec.SECP256R1()),
        "ec-p384": ec.generate_private_key(ec.SECP384R1()),
        "rsa-2048": rsa2048,
    }


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime.now(UTC))


@pytest.fixture
def serials() -> Iterator[int]:
    return itertools.count(1001)


def _root(
    clock: FakeClock, algorithm: KeyAlgorithm = KeyAlgorithm.EC_P256, key: PrivateKey | None = None
) -> SigningAuthority:
    factory = RootFactory(
        trust_domain=TRUST_DOMAIN,
        key_algorithm=algorithm,
        clock=clock,
        serials=lambda: ROOT_SERIAL,
        **({"generate_key": lambda _alg: key} if key is not None else {}),
    )
    return factory.create(source="test root")


@pytest.fixture
def root(clock: FakeClock) -> SigningAuthority:
    return _root(clock)


def _from_hierarchy(h: Hierarchy) -> SigningAuthority:
    return SigningAuthority.from_parts(
        signing_cert=h.signing,
        signing_key=h.signing_key,
        cert_chain=[h.signing, h.intermediate, h.root],
        roots=[h.root],
        source="test hierarchy",
    )


def _csr(key: PrivateKey, *, uris: tuple[str, ...] = (), dns: tuple[str, ...] = ()) -> ParsedCsr:
    return parse_csr(make_csr(key, uris=uris, dns=dns), KeyPolicy())


def _spki(key: object) -> bytes:
    assert isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class CountingSerials:
    def __init__(self) -> None:
        self.used = 0

    def __call__(self) -> int:
        self.used += 1
        return self.used


def _issuer(
    authority: SigningAuthority,
    clock: FakeClock,
    serials: Iterator[int] | None = None,
    **policy: object,
) -> Issuer:
    source = serials if serials is not None else itertools.count(1)
    return Issuer(
        authority=authority,
        policy=IssuancePolicy(**policy),  # type: ignore[arg-type]
        clock=clock,
        serials=lambda: next(source),
    )


def _issue(issuer: Issuer, key: PrivateKey, ttl: int = 0, spiffe_id: SpiffeId = WEB) -> IssuedCertificate:
    return issuer.issue(spiffe_id=spiffe_id, csr=_csr(key), requested_ttl_seconds=ttl)


def _ext(cert: x509.Certificate, kind: type[E]) -> x509.Extension[E]:
    return cert.extensions.get_extension_for_class(kind)


@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p384", "rsa-2048"])
def test_leaf_follows_the_svid_profile(
    key_type: str,
    leaf_keys: dict[str, PrivateKey],
    root: SigningAuthority,
    clock: FakeClock,
    serials: Iterator[int],
) -> None:
    key = leaf_keys[key_type]
    issued = _issue(_issuer(root, clock, serials), key)
    leaf = issued.certificate

    assert leaf.version is x509.Version.v3
    assert leaf.subject == x509.Name([])
    assert leaf.issuer == root.signing_cert.subject
    leaf.verify_directly_issued_by(root.signing_cert)
    assert _spki(leaf.public_key()) == _spki(key.public_key())

    san = _ext(leaf, x509.SubjectAlternativeName)
    assert san.critical
    assert list(san.value) == [x509.UniformResourceIdentifier(WEB.uri)]

    basic = _ext(leaf, x509.BasicConstraints)
    assert basic.critical
    assert basic.value.ca is False

    usage = _ext(leaf, x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert usage.value.key_encipherment is isinstance(key, rsa.RSAPrivateKey)
    assert not usage.value.key_cert_sign
    assert not usage.value.crl_sign
    assert not usage.value.content_commitment
    assert not usage.value.data_encipherment
    assert not usage.value.key_agreement

    eku = _ext(leaf, x509.ExtendedKeyUsage)
    assert set(eku.value) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}

    ski = _ext(leaf, x509.SubjectKeyIdentifier).value
    assert ski.digest == x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest
    aki = _ext(leaf, x509.AuthorityKeyIdentifier).value
    issuer_ski = _ext(root.signing_cert, x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == issuer_ski.digest

    assert leaf.serial_number == 1001
    assert issued.serial == 1001
    assert leaf.not_valid_before_utc == clock.now() - timedelta(minutes=2)
    assert leaf.not_valid_after_utc == clock.now() + timedelta(hours=24)
    assert issued.not_before == leaf.not_valid_before_utc
    assert issued.not_after == leaf.not_valid_after_utc
    assert issued.spiffe_id == WEB
    assert issued.authority is root


def test_serials_come_from_the_injected_source(
    root: SigningAuthority, clock: FakeClock, leaf_keys: dict[str, PrivateKey]
) -> None:
    issuer = _issuer(root, clock, iter([7, 2**127 + 5, 42]))
    key = leaf_keys["ec-p256"]
    assert [_issue(issuer, key).certificate.serial_number for _ in range(3)] == [7, 2**127 + 5, 42]


def test_random_serials_are_positive_and_at_most_128_bits() -> None:
    values = {random_serial() for _ in range(200)}
    assert len(values) == 200
    assert all(0 < v < 2**128 for v in values)
    assert max(v.bit_length() for v in values) > 120


def test_leaf_is_signed_with_the_issuer_key_hash(clock: FakeClock, leaf_keys: dict[str, PrivateKey]) -> None:
    p384_root = _root(clock, KeyAlgorithm.EC_P384)
    leaf = _issue(_issuer(p384_root, clock), leaf_keys["ec-p256"]).certificate
    assert isinstance(leaf.signature_hash_algorithm, hashes.SHA384)
    p256_leaf = _issue(_issuer(_root(clock), clock), leaf_keys["ec-p256"]).certificate
    assert isinstance(p256_leaf.signature_hash_algorithm, hashes.SHA256)


@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p384", "rsa-2048"])
def test_self_signed_ec_chain_passes_independent_validators(
    key_type: str, leaf_keys: dict[str, PrivateKey], root: SigningAuthority, clock: FakeClock
) -> None:
    issued = _issue(_issuer(root, clock), leaf_keys[key_type])
    assert_valid_svid(issued.chain, leaf_keys[key_type], WEB.uri, clock.now())


@pytest.mark.parametrize("key_type", ["ec-p256", "rsa-2048"])
def test_self_signed_rsa_chain_passes_independent_validators(
    key_type: str, leaf_keys: dict[str, PrivateKey], clock: FakeClock, rsa_ca_key: rsa.RSAPrivateKey
) -> None:
    rsa_root = _root(clock, KeyAlgorithm.RSA_2048, rsa_ca_key)
    issued = _issue(_issuer(rsa_root, clock), leaf_keys[key_type])
    assert_valid_svid(issued.chain, leaf_keys[key_type], WEB.uri, clock.now())


@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p384", "rsa-2048"])
def test_intermediate_chain_passes_independent_validators(
    key_type: str, leaf_keys: dict[str, PrivateKey], clock: FakeClock
) -> None:
    authority = _from_hierarchy(make_hierarchy(now=clock.now()))
    issued = _issue(_issuer(authority, clock), leaf_keys[key_type])
    assert len(issued.chain) == 4
    assert_valid_svid(issued.chain, leaf_keys[key_type], WEB.uri, clock.now())


def test_rsa_signing_ca_in_a_hierarchy_passes_independent_validators(
    leaf_keys: dict[str, PrivateKey], clock: FakeClock, rsa_ca_key: rsa.RSAPrivateKey
) -> None:
    authority = _from_hierarchy(make_hierarchy(now=clock.now(), signing_key=rsa_ca_key))
    issued = _issue(_issuer(authority, clock), leaf_keys["ec-p256"])
    assert_valid_svid(issued.chain, leaf_keys["ec-p256"], WEB.uri, clock.now())


def test_self_signed_response_chain_is_leaf_then_root_bundle(
    root: SigningAuthority, clock: FakeClock, leaf_keys: dict[str, PrivateKey]
) -> None:
    issued = _issue(_issuer(root, clock), leaf_keys["ec-p256"])
    assert len(issued.chain) == 2
    assert x509.load_pem_x509_certificate(issued.chain[0].encode()) == issued.certificate
    assert x509.load_pem_x509_certificates(issued.chain[1].encode()) == [root.signing_cert]
    assert root.is_self_signed


def test_intermediate_response_chain_is_leaf_signing_intermediate_root(
    clock: FakeClock, leaf_keys: dict[str, PrivateKey]
) -> None:
    h = make_hierarchy(now=clock.now())
    authority = _from_hierarchy(h)
    assert not authority.is_self_signed
    issued = _issue(_issuer(authority, clock), leaf_keys["ec-p256"])
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
    issued = _issue(_issuer(authority, clock), leaf_keys["ec-p256"])
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
    issued = _issue(_issuer(authority, clock), leaf_keys["ec-p256"])
    assert len(issued.chain) == 4
    assert x509.load_pem_x509_certificates(issued.chain[-1].encode()) == [h.root, other.root]


@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p384", "rsa-2048"])
def test_issued_certificate_fingerprints(
    root: SigningAuthority, clock: FakeClock, leaf_keys: dict[str, PrivateKey], key_type: str
) -> None:
    key = leaf_keys[key_type]
    issued = _issue(_issuer(root, clock), key)
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
    leaf = _issue(_issuer(root, clock), leaf_keys["ec-p256"], ttl=requested).certificate
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
            _issue(issuer, leaf_keys["ec-p256"], ttl=ttl)
        assert caught.value.reason == reason
    assert serials.used == 0


def test_clamped_huge_ttl_issues_a_leaf_ending_with_the_ca(
    root: SigningAuthority, clock: FakeClock, leaf_keys: dict[str, PrivateKey]
) -> None:
    issuer = _issuer(root, clock, max_ttl=timedelta(days=999_999_999), over_max=OverMaxTtl.CLAMP)
    leaf = _issue(issuer, leaf_keys["ec-p256"], ttl=2**62).certificate
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


def test_not_after_is_clamped_to_the_issuer(
    root: SigningAuthority, clock: FakeClock, leaf_keys: dict[str, PrivateKey]
) -> None:
    root_end = root.signing_cert.not_valid_after_utc
    clock.set(root_end - timedelta(hours=1))
    issued = _issue(_issuer(root, clock), leaf_keys["ec-p256"])
    assert issued.certificate.not_valid_after_utc == root_end
    assert issued.not_after == root_end
    assert issued.certificate.not_valid_before_utc == clock.now() - CLOCK_SKEW


def test_not_after_is_clamped_to_the_signing_ca_not_the_root(
    clock: FakeClock, leaf_keys: dict[str, PrivateKey]
) -> None:
    h = make_hierarchy(now=clock.now())
    issuer = _issuer(_from_hierarchy(h), clock, max_ttl=timedelta(days=365))
    leaf = _issue(issuer, leaf_keys["ec-p256"], ttl=300 * 86400).certificate
    assert leaf.not_valid_after_utc == h.signing.not_valid_after_utc
    assert leaf.not_valid_after_utc < h.root.not_valid_after_utc


def test_not_before_is_not_earlier_than_the_issuer(
    root: SigningAuthority, clock: FakeClock, leaf_keys: dict[str, PrivateKey]
) -> None:
    clock.advance(timedelta(seconds=-60))
    leaf = _issue(_issuer(root, clock), leaf_keys["ec-p256"]).certificate
    assert leaf.not_valid_before_utc == root.signing_cert.not_valid_before_utc


def test_signing_one_second_before_the_issuer_expires_works(
    root: SigningAuthority, clock: FakeClock, leaf_keys: dict[str, PrivateKey]
) -> None:
    clock.set(root.signing_cert.not_valid_after_utc - timedelta(seconds=1))
    leaf = _issue(_issuer(root, clock), leaf_keys["ec-p256"]).certificate
    assert leaf.not_valid_after_utc == root.signing_cert.not_valid_after_utc


@pytest.mark.parametrize("after", [timedelta(0), timedelta(seconds=1), timedelta(days=400)])
def test_signing_is_refused_once_the_issuer_has_expired(
    after: timedelta, root: SigningAuthority, clock: FakeClock, leaf_keys: dict[str, PrivateKey]
) -> None:
    issuer = _issuer(root, clock)
    _issue(issuer, leaf_keys["ec-p256"])
    clock.set(root.signing_cert.not_valid_after_utc + after)
    with pytest.raises(SigningError) as caught:
        _issue(issuer, leaf_keys["ec-p256"])
    assert caught.value.reason == "ca_expired"
    assert "expired" in caught.value.message
    assert caught.value.kind is ErrorKind.INTERNAL


def test_expired_signing_ca_in_a_hierarchy_is_refused(
    clock: FakeClock, leaf_keys: dict[str, PrivateKey]
) -> None:
    h = make_hierarchy(now=clock.now())
    issuer = _issuer(_from_hierarchy(h), clock)
    clock.set(h.signing.not_valid_after_utc + timedelta(seconds=1))
    with pytest.raises(SigningError) as caught:
        _issue(issuer, leaf_keys["ec-p256"])
    assert caught.value.reason == "ca_expired"


def test_strict_mode_refuses_a_csr_naming_another_identity(
    root: SigningAuthority, clock: FakeClock, leaf_keys: dict[str, PrivateKey]
) -> None:
    issuer = _issuer(root, clock, strict_csr_names=True)
    other = "spiffe://cluster.local/ns/kube-system/sa/admin"
    with pytest.raises(InvalidRequestError) as caught:
        issuer.issue(spiffe_id=WEB, csr=_csr(leaf_keys["ec-p256"], uris=(other,)), requested_ttl_seconds=0)
    assert caught.value.reason == "csr_identity_mismatch"
    assert other in caught.value.message
    assert WEB.uri in caught.value.message


def test_strict_mode_refuses_dns_names(
    root: SigningAuthority, clock: FakeClock, leaf_keys: dict[str, PrivateKey]
) -> None:
    issuer = _issuer(root, clock, strict_csr_names=True)
    csr = _csr(leaf_keys["ec-p256"], uris=(WEB.uri,), dns=("web.shop.svc",))
    with pytest.raises(InvalidRequestError) as caught:
        issuer.issue(spiffe_id=WEB, csr=csr, requested_ttl_seconds=0)
    assert caught.value.reason == "csr_identity_mismatch"
    assert "web.shop.svc" in caught.value.message


@pytest.mark.parametrize("uris", [(), (WEB.uri,)])
def test_strict_mode_accepts_the_callers_own_identity(
    uris: tuple[str, ...], root: SigningAuthority, clock: FakeClock, leaf_keys: dict[str, PrivateKey]
) -> None:
    issuer = _issuer(root, clock, strict_csr_names=True)
    issued = issuer.issue(spiffe_id=WEB, csr=_csr(leaf_keys["ec-p256"], uris=uris), requested_ttl_seconds=0)
    assert issued.spiffe_id == WEB


def test_ignore_mode_issues_only_the_callers_identity(
    root: SigningAuthority, clock: FakeClock, leaf_keys: dict[str, PrivateKey]
) -> None:
    issuer = _issuer(root, clock)
    csr = _csr(
        leaf_keys["ec-p256"],
        uris=("spiffe://cluster.local/ns/kube-system/sa/admin", "spiffe://evil.org/x"),
        dns=("admin.example",),
    )
    leaf = issuer.issue(spiffe_id=WEB, csr=csr, requested_ttl_seconds=0).certificate
    san = _ext(leaf, x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(WEB.uri)]


def test_strict_mode_checks_names_before_signing(
    root: SigningAuthority, clock: FakeClock, leaf_keys: dict[str, PrivateKey]
) -> None:
    serials = CountingSerials()
    issuer = Issuer(
        authority=root, policy=IssuancePolicy(strict_csr_names=True), clock=clock, serials=serials
    )
    with pytest.raises(InvalidRequestError):
        issuer.issue(spiffe_id=WEB, csr=_csr(leaf_keys["ec-p256"], dns=("x",)), requested_ttl_seconds=0)
    assert serials.used == 0


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
    authority = _root(clock, algorithm, key)
    cert = authority.signing_cert

    assert isinstance(authority.signing_key, key_class)
    assert cert.subject == x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, TRUST_DOMAIN)])
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)
    assert isinstance(cert.signature_hash_algorithm, hash_class)
    assert cert.serial_number == ROOT_SERIAL

    basic = _ext(cert, x509.BasicConstraints)
    assert basic.critical and basic.value.ca is True
    usage = _ext(cert, x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.key_encipherment

    san = _ext(cert, x509.SubjectAlternativeName).value
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    assert uris == ["spiffe://cluster.local"]
    assert SpiffeId.parse(uris[0]).path == ""

    ski = _ext(cert, x509.SubjectKeyIdentifier).value
    assert ski.digest == x509.SubjectKeyIdentifier.from_public_key(authority.signing_key.public_key()).digest
    assert _ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == ski.digest

    assert cert.not_valid_before_utc == clock.now() - CLOCK_SKEW
    assert cert.not_valid_after_utc == clock.now() + timedelta(days=3650)

    assert authority.is_self_signed
    assert authority.chain == ()
    assert authority.roots == (cert,)
    assert authority.source == "test root"
    assert authority.trust_bundle_pem() == pem(cert).decode()


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


def test_use_authority_switches_the_signer(clock: FakeClock, leaf_keys: dict[str, PrivateKey]) -> None:
    first, second = _root(clock), _root(clock)
    issuer = _issuer(first, clock)
    issuer.use_authority(second)
    assert issuer.authority is second
    issued = _issue(issuer, leaf_keys["ec-p256"])
    issued.certificate.verify_directly_issued_by(second.signing_cert)
    assert issued.authority is second


def test_issuer_exposes_its_policy(root: SigningAuthority, clock: FakeClock) -> None:
    policy = IssuancePolicy(strict_csr_names=True)
    assert Issuer(authority=root, policy=policy, clock=clock).policy is policy
