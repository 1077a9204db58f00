"""Authentication by client certificate: a valid SVID of the trust domain names the caller."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from ca.auth.base import Credentials
from ca.auth.client_cert import ClientCertificateAuthenticator
from ca.errors import AuthenticationError
from ca.issuance.authority import SigningAuthority
from ca.issuance.csr import parse_csr
from ca.issuance.issuer import IssuancePolicy, Issuer
from ca.issuance.key_policy import KeyPolicy
from ca.issuance.keys import KeyAlgorithm
from ca.issuance.selfsigned import RootFactory
from ca.issuance.spiffe_id import SpiffeId
from tests.support.clock import FakeClock
from tests.support.pki import ec_key, make_csr
from tests.support.tokens import TRUST_DOMAIN


@pytest.fixture
def svid_clock() -> FakeClock:
    return FakeClock(datetime(2030, 1, 1, tzinfo=UTC))


@pytest.fixture
def authority(svid_clock: FakeClock) -> SigningAuthority:
    factory = RootFactory(trust_domain=TRUST_DOMAIN, key_algorithm=KeyAlgorithm.EC_P256, clock=svid_clock)
    return factory.create(source="test")


def _svid(authority: SigningAuthority, clock: FakeClock, spiffe_id: SpiffeId, ttl: int = 3600) -> str:
    issuer = Issuer(authority=authority, policy=IssuancePolicy(), clock=clock)
    csr = parse_csr(make_csr(ec_key()), KeyPolicy())
    return issuer.issue(spiffe_id=spiffe_id, csr=csr, requested_ttl_seconds=ttl).chain[0]


def _custom_leaf(authority: SigningAuthority, clock: FakeClock, names: list[x509.GeneralName] | None) -> str:
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(authority.signing_cert.subject)
        .public_key(ec_key().public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(clock.now() - timedelta(minutes=1))
        .not_valid_after(clock.now() + timedelta(hours=1))
    )
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=True)
    cert = builder.sign(authority.signing_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _cert_auth(clock: FakeClock) -> ClientCertificateAuthenticator:
    return ClientCertificateAuthenticator(trust_domain=TRUST_DOMAIN, clock=clock)


def _cert_refusal(auth: ClientCertificateAuthenticator, pem: str) -> AuthenticationError:
    with pytest.raises(AuthenticationError) as caught:
        auth.authenticate(Credentials(peer_certificate_pem=pem))
    assert caught.value.reason == "client_cert_invalid"
    assert "service-account token" in caught.value.message
    return caught.value


def test_valid_svid_yields_the_caller(authority: SigningAuthority, svid_clock: FakeClock) -> None:
    pem = _svid(authority, svid_clock, SpiffeId.for_workload(TRUST_DOMAIN, "shop", "web"))
    caller = _cert_auth(svid_clock).authenticate(Credentials(peer_certificate_pem=pem))
    assert caller is not None
    assert caller.spiffe_id.uri == "spiffe://cluster.local/ns/shop/sa/web"
    assert (caller.namespace, caller.service_account) == ("shop", "web")
    assert caller.method == "client-certificate"
    assert caller.expires_at == svid_clock.now() + timedelta(hours=1)


def test_no_client_certificate_is_not_this_authenticators_kind(svid_clock: FakeClock) -> None:
    assert _cert_auth(svid_clock).authenticate(Credentials(bearer_token="t")) is None


def test_unparsable_client_certificate_is_refused(svid_clock: FakeClock) -> None:
    assert "cannot be parsed" in _cert_refusal(_cert_auth(svid_clock), "garbage").message


def test_expired_svid_is_refused(authority: SigningAuthority, svid_clock: FakeClock) -> None:
    pem = _svid(authority, svid_clock, SpiffeId.for_workload(TRUST_DOMAIN, "shop", "web"))
    auth = _cert_auth(svid_clock)
    svid_clock.advance(timedelta(hours=1) - timedelta(seconds=1))
    assert auth.authenticate(Credentials(peer_certificate_pem=pem)) is not None
    svid_clock.advance(timedelta(seconds=1))
    assert "valid only from" in _cert_refusal(auth, pem).message


def test_not_yet_valid_svid_is_refused(authority: SigningAuthority, svid_clock: FakeClock) -> None:
    pem = _svid(authority, svid_clock, SpiffeId.for_workload(TRUST_DOMAIN, "shop", "web"))
    svid_clock.advance(timedelta(minutes=-3))
    assert "valid only from" in _cert_refusal(_cert_auth(svid_clock), pem).message


def test_svid_of_another_trust_domain_is_refused(authority: SigningAuthority, svid_clock: FakeClock) -> None:
    pem = _svid(authority, svid_clock, SpiffeId.for_workload("example.org", "shop", "web"))
    err = _cert_refusal(_cert_auth(svid_clock), pem)
    assert "not a workload of trust domain cluster.local" in err.message


@pytest.mark.parametrize("path", ["", "/ns/shop", "/ns/shop/sa/web/extra", "/agent/node-1"])
def test_svid_with_a_non_workload_path_is_refused(
    path: str, authority: SigningAuthority, svid_clock: FakeClock
) -> None:
    pem = _svid(authority, svid_clock, SpiffeId(TRUST_DOMAIN, path))
    assert "not a workload" in _cert_refusal(_cert_auth(svid_clock), pem).message


def test_certificate_with_two_uri_sans_is_refused(authority: SigningAuthority, svid_clock: FakeClock) -> None:
    pem = _custom_leaf(
        authority,
        svid_clock,
        [
            x509.UniformResourceIdentifier("spiffe://cluster.local/ns/shop/sa/web"),
            x509.UniformResourceIdentifier("spiffe://cluster.local/ns/kube-system/sa/admin"),
        ],
    )
    assert "2 URI SANs" in _cert_refusal(_cert_auth(svid_clock), pem).message


def test_certificate_without_uri_san_is_refused(authority: SigningAuthority, svid_clock: FakeClock) -> None:
    pem = _custom_leaf(authority, svid_clock, [x509.DNSName("web.shop.svc")])
    assert "0 URI SANs" in _cert_refusal(_cert_auth(svid_clock), pem).message


def test_certificate_without_san_is_refused(authority: SigningAuthority, svid_clock: FakeClock) -> None:
    pem = _custom_leaf(authority, svid_clock, None)
    assert "no subject alternative name" in _cert_refusal(_cert_auth(svid_clock), pem).message


def test_certificate_with_a_non_spiffe_uri_is_refused(
    authority: SigningAuthority, svid_clock: FakeClock
) -> None:
    pem = _custom_leaf(
        authority, svid_clock, [x509.UniformResourceIdentifier("https://cluster.local/ns/a/sa/b")]
    )
    assert "invalid SPIFFE ID" in _cert_refusal(_cert_auth(svid_clock), pem).message


def test_a_revoked_svid_is_refused_and_others_pass(
    authority: SigningAuthority, svid_clock: FakeClock
) -> None:
    web = SpiffeId.for_workload(TRUST_DOMAIN, "shop", "web")
    revoked_pem, other_pem = _svid(authority, svid_clock, web), _svid(authority, svid_clock, web)
    revoked = format(x509.load_pem_x509_certificate(revoked_pem.encode()).serial_number, "x")
    asked: list[str] = []

    def is_revoked(serial: str) -> bool:
        asked.append(serial)
        return serial == revoked

    auth = ClientCertificateAuthenticator(trust_domain=TRUST_DOMAIN, clock=svid_clock, is_revoked=is_revoked)
    assert auth.authenticate(Credentials(peer_certificate_pem=other_pem)) is not None
    with pytest.raises(AuthenticationError) as caught:
        auth.authenticate(Credentials(peer_certificate_pem=revoked_pem))
    assert caught.value.reason == "client_cert_revoked"
    assert f"serial {revoked}" in caught.value.message and "service-account token" in caught.value.message
    assert asked[-1] == revoked


def test_the_caller_carries_its_certificates_serial(
    authority: SigningAuthority, svid_clock: FakeClock
) -> None:
    pem = _svid(authority, svid_clock, SpiffeId.for_workload(TRUST_DOMAIN, "shop", "web"))
    caller = _cert_auth(svid_clock).authenticate(Credentials(peer_certificate_pem=pem))
    assert caller is not None
    assert caller.certificate_serial == format(
        x509.load_pem_x509_certificate(pem.encode()).serial_number, "x"
    )
