"""The agent's check of a CA response (`accept_response`) and the SVID it yields, in its forms."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from hypothesis import given
from hypothesis import strategies as st

from ca.agent.svid import BadResponseError, Svid, accept_response
from ca.issuance.csr import parse_csr
from ca.issuance.issuer import IssuancePolicy, Issuer
from ca.issuance.key_policy import KeyPolicy
from ca.issuance.keys import PrivateKey, load_private_key_pem
from ca.issuance.spiffe_id import SpiffeId
from tests.support.clock import FakeClock
from tests.support.issuing import authority_from
from tests.support.pki import ec_key, make_csr, make_hierarchy, pem
from tests.support.svids import CART, FakeCa

TRUST_DOMAIN = "cluster.local"
KEY = ec_key()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def issued(ca: FakeCa, key: PrivateKey, ttl_seconds: int = 3600) -> list[str]:
    csr = parse_csr(make_csr(key), KeyPolicy())
    return ca.issuer.issue(spiffe_id=CART, csr=csr, requested_ttl_seconds=ttl_seconds).chain


def accept(pems: list[str], key: PrivateKey, clock: FakeClock, **overrides: object) -> Svid:
    options: dict[str, object] = {"trust_domain": TRUST_DOMAIN, "expected": CART, "now": clock.now()}
    options.update(overrides)
    return accept_response(pems, key, **options)  # type: ignore[arg-type]


def refusal(pems: list[str], key: PrivateKey, clock: FakeClock, **overrides: object) -> str:
    with pytest.raises(BadResponseError) as caught:
        accept(pems, key, clock, **overrides)
    assert caught.value.reason == "bad_response"
    assert caught.value.message.startswith("the CA's response was not used: ")
    return caught.value.message.removeprefix("the CA's response was not used: ")


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


# --------------------------------------------------------------------------- accepted


def test_a_response_for_our_key_and_identity_becomes_the_svid(clock: FakeClock) -> None:
    ca, key = FakeCa(clock), ec_key()
    pems = issued(ca, key, ttl_seconds=7200)
    svid = accept(pems, key, clock)
    assert svid.spiffe_id == CART
    assert svid.key is key
    assert [der(c) for c in svid.chain] == [
        der(x509.load_pem_x509_certificate(p.encode())) for p in pems[:-1]
    ]
    assert svid.leaf is svid.chain[0]
    assert svid.roots == tuple(x509.load_pem_x509_certificates(pems[-1].encode()))
    assert svid.not_after - svid.not_before == timedelta(hours=2, minutes=2)  # NotBefore is backdated 2 min
    assert svid.not_before == svid.leaf.not_valid_before_utc


def test_any_expected_identity_of_the_trust_domain_is_taken_when_none_is_expected(clock: FakeClock) -> None:
    ca, key = FakeCa(clock), ec_key()
    assert accept(issued(ca, key), key, clock, expected=None).spiffe_id == CART


def test_a_chain_through_intermediates_validates_to_the_root(clock: FakeClock) -> None:
    hierarchy = make_hierarchy(clock.now())
    issuer = Issuer(authority=authority_from(hierarchy), policy=IssuancePolicy(), clock=clock)
    key = ec_key()
    pems = issuer.issue(
        spiffe_id=CART, csr=parse_csr(make_csr(key), KeyPolicy()), requested_ttl_seconds=0
    ).chain
    svid = accept(pems, key, clock)
    assert [c.subject for c in svid.chain[1:]] == [hierarchy.signing.subject, hierarchy.intermediate.subject]
    assert svid.roots == (hierarchy.root,)


def test_a_root_bundle_of_several_roots_is_kept_whole(clock: FakeClock) -> None:
    ca, key = FakeCa(clock), ec_key()
    pems = issued(ca, key)
    other_root = pem(make_hierarchy(clock.now()).root).decode()
    svid = accept([*pems[:-1], other_root + pems[-1]], key, clock)
    assert len(svid.roots) == 2
    assert svid.roots_pem() == (other_root + pems[-1]).encode()


def test_the_svid_in_pem_and_der(clock: FakeClock) -> None:
    ca, key = FakeCa(clock), ec_key()
    pems = issued(ca, key)
    svid = accept(pems, key, clock)
    assert svid.chain_pem() == "".join(pems[:-1]).encode()
    assert svid.roots_pem() == pems[-1].encode()
    assert load_private_key_pem(svid.key_pem(), "key.pem").private_numbers() == key.private_numbers()
    assert svid.chain_der() == b"".join(der(c) for c in svid.chain)
    assert svid.roots_der() == b"".join(der(r) for r in svid.roots)
    loaded = serialization.load_der_private_key(svid.key_der(), password=None)
    assert loaded.private_numbers() == key.private_numbers()  # type: ignore[union-attr]
    assert svid.roots_fingerprint() == hashlib.sha256(svid.roots_der()).hexdigest()


def test_the_key_never_shows_in_the_svids_repr(clock: FakeClock) -> None:
    ca, key = FakeCa(clock), ec_key()
    svid = accept(issued(ca, key), key, clock)
    assert "key=" not in repr(svid)
    assert svid.key_pem().decode().splitlines()[1] not in repr(svid)


# --------------------------------------------------------------------------- refused


def test_a_leaf_for_another_key_is_refused(clock: FakeClock) -> None:
    ca, key = FakeCa(clock), ec_key()
    message = refusal(issued(ca, key), ec_key(), clock)
    assert message == "the leaf certificate is for a different key than the one this agent generated"


def test_a_leaf_outside_the_trust_domain_is_refused(clock: FakeClock) -> None:
    ca, key = FakeCa(clock), ec_key()
    message = refusal(issued(ca, key), key, clock, trust_domain="other.example", expected=None)
    assert message == f"the leaf names {CART}, outside trust domain other.example"


def test_a_leaf_for_another_workload_is_refused(clock: FakeClock) -> None:
    ca, key = FakeCa(clock), ec_key()
    web = SpiffeId.for_workload(TRUST_DOMAIN, "shop", "web")
    assert (
        refusal(issued(ca, key), key, clock, expected=web)
        == f"the leaf names {CART}, but this workload is {web}"
    )


def test_a_chain_from_another_ca_is_refused(clock: FakeClock) -> None:
    ca, key = FakeCa(clock), ec_key()
    pems = issued(ca, key)
    stranger = pem(make_hierarchy(clock.now()).root).decode()
    message = refusal([*pems[:-1], stranger], key, clock)
    assert message.startswith("the chain does not validate to the returned roots (")


def test_an_expired_leaf_is_refused(clock: FakeClock) -> None:
    ca, key = FakeCa(clock), ec_key()
    pems = issued(ca, key, ttl_seconds=600)
    assert accept(pems, key, clock, now=clock.now() + timedelta(minutes=9))
    message = refusal(pems, key, clock, now=clock.now() + timedelta(minutes=11))
    assert message.startswith("the chain does not validate to the returned roots (")


@pytest.mark.parametrize("count", [0, 1])
def test_a_response_without_leaf_and_roots_is_refused(clock: FakeClock, count: int) -> None:
    ca, key = FakeCa(clock), ec_key()
    pems = issued(ca, key)[:count]
    expected = f"the chain has {count} element(s); expected the leaf and the root bundle"
    assert refusal(pems, key, clock) == expected


def _hand_made_leaf(ca: FakeCa, key: PrivateKey, uris: list[str], clock: FakeClock) -> str:
    authority = ca.issuer.authority
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(authority.signing_cert.subject)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(clock.now() - timedelta(minutes=1))
        .not_valid_after(clock.now() + timedelta(hours=1))
    )
    if uris:
        names = [x509.UniformResourceIdentifier(u) for u in uris]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=True)
    return pem(builder.sign(authority.signing_key, hashes.SHA256())).decode()


@pytest.mark.parametrize(
    ("uris", "problem"),
    [
        ([], "it has no subject alternative name"),
        (
            [CART.uri, "spiffe://cluster.local/ns/shop/sa/web"],
            "it has 2 URI SANs; an X.509-SVID has exactly one",
        ),
    ],
)
def test_a_leaf_that_is_no_svid_is_refused(clock: FakeClock, uris: list[str], problem: str) -> None:
    ca, key = FakeCa(clock), ec_key()
    roots = issued(ca, key)[-1]
    message = refusal([_hand_made_leaf(ca, key, uris, clock), roots], key, clock)
    assert message == f"the leaf is not an X.509-SVID: {problem}"


@given(st.lists(st.text(max_size=80), min_size=2, max_size=4))
def test_text_that_is_no_certificate_is_refused_as_unparsable(pems: list[str]) -> None:
    with pytest.raises(BadResponseError) as caught:
        accept_response(pems, KEY, trust_domain=TRUST_DOMAIN, expected=None, now=FakeClock().now())
    assert caught.value.message.startswith("the CA's response was not used: a certificate cannot be parsed (")


def test_one_unparsable_element_spoils_the_response(clock: FakeClock) -> None:
    ca, key = FakeCa(clock), ec_key()
    pems = issued(ca, key)
    for broken in (["garbage", *pems[1:]], [*pems[:-1], "garbage"], [pems[0][:-40], *pems[1:]]):
        assert refusal(broken, key, clock).startswith("a certificate cannot be parsed (")
