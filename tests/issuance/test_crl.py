"""CRLs: what the CA signs (issuer, key id, number, dates, one reason per entry, unexpired entries only)
and what the data planes accept (signed by a trusted CA) and look up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ca.errors import ConfigError, InvalidRequestError
from ca.issuance.authority import SigningAuthority
from ca.issuance.crl import (
    CRL_BACKDATE,
    REVOCATION_REASONS,
    CertificateRef,
    InvalidCrlError,
    RevocationLists,
    build_crl,
    check_in_force,
    crl_der,
    crl_number,
    crl_terms,
    crls_pem,
    key_identifier,
    load_der_crls,
    load_pem_crls,
    reason_name,
    trusted_crl_issuers,
)
from ca.issuance.keys import KeyAlgorithm
from ca.ledger.rotation import Revocation
from tests.support.clock import FakeClock
from tests.support.crls import Revoked
from tests.support.issuing import authority_from, issue_leaf, make_issuer, make_root
from tests.support.pki import Hierarchy, ec_key, make_hierarchy

NOW = datetime(2026, 12, 7, 10, 30, 15, tzinfo=UTC)
DAY = timedelta(days=1)
VALIDITY = timedelta(hours=6)


def _ref(issuer: x509.Certificate, serial: int) -> CertificateRef:
    return CertificateRef(
        issuer=issuer.subject.public_bytes(), issuer_key_id=key_identifier(issuer), serial=serial
    )


def _revoked(
    serial: int, *, reason: str = "keyCompromise", at: datetime = NOW, left: timedelta = DAY
) -> Revoked:
    return Revoked(serial=format(serial, "x"), revoked_at=at, reason=reason, not_after=NOW + left)


@pytest.fixture(scope="module")
def root() -> SigningAuthority:
    return make_root(FakeClock(NOW - DAY))


@pytest.fixture(scope="module")
def signing_ca(hierarchy: Hierarchy) -> SigningAuthority:
    return authority_from(hierarchy)


def test_the_crl_is_the_signing_certificates_and_verifies_against_it(signing_ca: SigningAuthority) -> None:
    crl = build_crl(signing_ca, [_revoked(0x1A)], now=NOW, validity=VALIDITY)
    assert crl.issuer == signing_ca.signing_cert.subject
    assert crl.is_signature_valid(signing_ca.signing_cert.public_key())  # type: ignore[arg-type]
    assert not crl.is_signature_valid(signing_ca.roots[0].public_key())  # type: ignore[arg-type]
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = signing_ca.signing_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert isinstance(crl.signature_hash_algorithm, hashes.SHA256)


def test_dates_and_number_follow_this_update(root: SigningAuthority) -> None:
    crl = build_crl(root, [], now=NOW, validity=VALIDITY)
    this_update = NOW - CRL_BACKDATE
    assert crl.last_update_utc == this_update
    assert crl.next_update_utc == this_update + VALIDITY
    assert crl_number(crl) == int(this_update.timestamp() * 1000)
    later = build_crl(root, [], now=NOW + timedelta(milliseconds=1), validity=VALIDITY)
    assert crl_number(later) == crl_number(crl) + 1


def test_this_update_is_backdated_by_the_clock_skew_leaves_allow() -> None:
    assert timedelta(minutes=2) == CRL_BACKDATE
    assert crl_terms(NOW, VALIDITY).this_update == NOW - timedelta(minutes=2)


def test_an_empty_crl_is_still_a_signed_crl(root: SigningAuthority) -> None:
    crl = build_crl(root, [], now=NOW, validity=VALIDITY)
    assert len(crl) == 0
    assert crl.is_signature_valid(root.signing_cert.public_key())  # type: ignore[arg-type]


def test_only_unexpired_certificates_are_listed(root: SigningAuthority) -> None:
    entries = [
        _revoked(1, left=timedelta(seconds=1)),
        _revoked(2, left=timedelta(0)),
        _revoked(3, left=-DAY),
        _revoked(4),
    ]
    crl = build_crl(root, entries, now=NOW, validity=VALIDITY)
    assert sorted(r.serial_number for r in crl) == [1, 4]


def test_each_entry_carries_its_reason_and_date(root: SigningAuthority) -> None:
    revoked_at = NOW - timedelta(minutes=7)
    entries = [_revoked(n + 1, reason=name, at=revoked_at) for n, name in enumerate(REVOCATION_REASONS)]
    crl = build_crl(root, entries, now=NOW, validity=VALIDITY)
    for n, name in enumerate(REVOCATION_REASONS):
        listed = crl.get_revoked_certificate_by_serial_number(n + 1)
        assert listed is not None
        assert listed.revocation_date_utc == revoked_at
        if name == "unspecified":  # RFC 5280 5.3.1: leave the reason out rather than say unspecified
            assert not listed.extensions
        else:
            assert (
                listed.extensions.get_extension_for_class(x509.CRLReason).value.reason
                is REVOCATION_REASONS[name]
            )


def test_a_serial_revoked_twice_is_listed_once_with_its_first_revocation(root: SigningAuthority) -> None:
    first = _revoked(7, reason="superseded", at=NOW - timedelta(minutes=5))
    again = _revoked(7, reason="keyCompromise", at=NOW - timedelta(minutes=1))
    crl = build_crl(root, [again, first], now=NOW, validity=VALIDITY)
    assert len(crl) == 1
    found = RevocationLists.checked([crl], [root.signing_cert]).find(_ref(root.signing_cert, 7))
    assert found is not None
    assert (found.reason, found.revoked_at) == ("superseded", first.revoked_at)


def test_the_ledgers_revocations_are_accepted_as_they_are(root: SigningAuthority) -> None:
    revocation = Revocation(
        serial="abc", spiffe_id=None, revoked_at=NOW, reason="cessationOfOperation", not_after=NOW + DAY
    )
    crl = build_crl(root, [revocation], now=NOW, validity=VALIDITY)
    assert [r.serial_number for r in crl] == [0xABC]


def test_a_p384_ca_signs_with_sha384() -> None:
    authority = make_root(FakeClock(NOW), KeyAlgorithm.EC_P384)
    crl = build_crl(authority, [], now=NOW, validity=VALIDITY)
    assert isinstance(crl.signature_hash_algorithm, hashes.SHA384)
    assert crl.is_signature_valid(authority.signing_cert.public_key())  # type: ignore[arg-type]


def test_bad_terms_are_refused(root: SigningAuthority) -> None:
    with pytest.raises(ConfigError, match="validity must be positive"):
        build_crl(root, [], now=NOW, validity=timedelta(0))
    with pytest.raises(InvalidRequestError, match="unknown revocation reason"):
        build_crl(root, [_revoked(1, reason="stolen")], now=NOW, validity=VALIDITY)


reasons = st.sampled_from(sorted(REVOCATION_REASONS))
entries = st.lists(
    st.builds(
        Revoked,
        serial=st.integers(min_value=1, max_value=2**159 - 1).map(lambda n: format(n, "x")),
        revoked_at=st.integers(min_value=0, max_value=30 * 86400).map(lambda s: NOW - timedelta(seconds=s)),
        reason=reasons,
        not_after=st.integers(min_value=-86400, max_value=86400).map(lambda s: NOW + timedelta(seconds=s)),
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(revoked=entries)
def test_the_crl_lists_exactly_the_unexpired_revocations(
    root: SigningAuthority, revoked: list[Revoked]
) -> None:
    crl = build_crl(root, revoked, now=NOW, validity=VALIDITY)
    expected: dict[int, Revoked] = {}
    for entry in revoked:
        serial = int(entry.serial, 16)
        if entry.not_after > NOW and (
            serial not in expected or entry.revoked_at < expected[serial].revoked_at
        ):
            expected[serial] = entry
    back = load_der_crls([crl_der(crl)])[0]
    lists = RevocationLists.checked([back], [root.signing_cert])
    assert lists.entry_count == len(expected)
    for serial, entry in expected.items():
        found = lists.find(_ref(root.signing_cert, serial))
        assert found is not None
        assert found.reason == entry.reason
        assert found.revoked_at == entry.revoked_at
    for entry in revoked:
        if int(entry.serial, 16) not in expected:
            assert lists.find(_ref(root.signing_cert, int(entry.serial, 16))) is None


# ----------------------------------------------------------------- acceptance by the data planes


def _forged(authority: SigningAuthority) -> x509.CertificateRevocationList:
    """A CRL naming `authority`'s signing certificate as issuer, signed by another key."""
    return (
        x509.CertificateRevocationListBuilder()
        .issuer_name(authority.signing_cert.subject)
        .last_update(NOW)
        .next_update(NOW + VALIDITY)
        .sign(ec_key(), hashes.SHA256())
    )


def test_a_crl_signed_by_another_key_is_refused(root: SigningAuthority) -> None:
    with pytest.raises(InvalidCrlError, match="signature does not verify"):
        RevocationLists.checked([_forged(root)], [root.signing_cert])


def test_a_crl_from_a_ca_not_trusted_is_refused(root: SigningAuthority, signing_ca: SigningAuthority) -> None:
    crl = build_crl(signing_ca, [], now=NOW, validity=VALIDITY)
    with pytest.raises(InvalidCrlError, match="no trusted CA has that name"):
        RevocationLists.checked([crl], [root.signing_cert])


def test_an_intermediate_signing_ca_is_trusted_through_the_chain(
    hierarchy: Hierarchy, signing_ca: SigningAuthority
) -> None:
    crl = build_crl(signing_ca, [_revoked(5)], now=NOW, validity=VALIDITY)
    issuers = trusted_crl_issuers([hierarchy.signing, hierarchy.intermediate], [hierarchy.root])
    assert issuers == [hierarchy.root, hierarchy.intermediate, hierarchy.signing]
    lists = RevocationLists.checked([crl], issuers)
    assert lists.find(_ref(hierarchy.signing, 5)) is not None
    assert lists.find(_ref(hierarchy.intermediate, 5)) is None


def test_an_intermediate_that_does_not_lead_to_a_root_is_not_trusted(hierarchy: Hierarchy) -> None:
    stranger = make_hierarchy()
    issuers = trusted_crl_issuers([stranger.signing, stranger.intermediate], [hierarchy.root])
    assert issuers == [hierarchy.root]


def test_a_ca_without_crl_sign_cannot_sign_crls(root: SigningAuthority) -> None:
    key = ec_key()
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "no crl sign")])
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + DAY)
        .add_extension(usage, critical=True)
        .sign(key, hashes.SHA256())
    )
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(name)
        .last_update(NOW)
        .next_update(NOW + VALIDITY)
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(InvalidCrlError, match="lacks cRLSign"):
        RevocationLists.checked([crl], [cert])


def test_pem_files_hold_crls_one_after_another(root: SigningAuthority, signing_ca: SigningAuthority) -> None:
    crls = [
        build_crl(root, [_revoked(1)], now=NOW, validity=VALIDITY),
        build_crl(signing_ca, [_revoked(2), _revoked(3)], now=NOW + timedelta(seconds=1), validity=VALIDITY),
    ]
    back = load_pem_crls(crls_pem(crls), "crl.pem")
    assert [len(c) for c in back] == [1, 2]
    lists = RevocationLists.checked(back, [root.signing_cert, signing_ca.signing_cert])
    assert lists.number == crl_number(crls[1])
    assert lists.next_update == crls[0].next_update_utc
    assert lists.pem() == crls_pem(crls)
    assert load_der_crls(lists.ders())[1] == crls[1]


def test_files_that_are_not_crls_are_refused(root: SigningAuthority) -> None:
    assert load_pem_crls(b"", "crl.pem") == []
    with pytest.raises(InvalidCrlError, match="holds no PEM CRL"):
        load_pem_crls(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "crl.pem")
    with pytest.raises(InvalidCrlError, match=r"CRL 1 in crl\.pem does not parse"):
        load_pem_crls(b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n", "crl.pem")
    with pytest.raises(InvalidCrlError, match="revocation list 2 is not a DER CRL"):
        load_der_crls([crl_der(build_crl(root, [], now=NOW, validity=VALIDITY)), b"\x30\x03\x02\x01\x01"])


def test_reason_names_read_back() -> None:
    assert reason_name(None) == "unspecified"
    assert reason_name(x509.ReasonFlags.key_compromise) == "keyCompromise"
    assert not RevocationLists()


def test_a_leaf_is_found_by_its_authority_key_and_serial(root: SigningAuthority) -> None:
    clock = FakeClock(NOW)
    issuer = make_issuer(root, clock)
    revoked, kept = issue_leaf(issuer, ec_key()).certificate, issue_leaf(issuer, ec_key()).certificate
    crl = build_crl(
        root,
        [
            Revoked(
                serial=format(revoked.serial_number, "x"),
                revoked_at=NOW,
                reason="superseded",
                not_after=revoked.not_valid_after_utc,
            )
        ],
        now=NOW,
        validity=VALIDITY,
    )
    lists = RevocationLists.checked([crl], [root.signing_cert])
    found = lists.find(CertificateRef.of(revoked))
    assert found is not None and found.reason == "superseded"
    assert lists.find(CertificateRef.of(kept)) is None


def test_a_crl_is_in_force_from_this_update_to_next_update(root: SigningAuthority) -> None:
    crl = build_crl(root, [], now=NOW, validity=VALIDITY)
    this_update = NOW - CRL_BACKDATE
    check_in_force(crl, this_update)
    check_in_force(crl, this_update + VALIDITY - timedelta(seconds=1))
    with pytest.raises(InvalidCrlError, match="after this node's clock"):
        check_in_force(crl, this_update - timedelta(seconds=1))
    with pytest.raises(InvalidCrlError, match="expired at"):
        check_in_force(crl, this_update + VALIDITY)
