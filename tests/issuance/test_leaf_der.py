"""Template leaves are the builder's leaves: the same TBSCertificate, byte for byte, and a valid signature.

Each case builds the leaf both ways from the same serial, validity, key and identity: through
`profile.workload_leaf` and `cryptography`'s builder, and through a LeafTemplate made from
another leaf of the same CA and key kind. ECDSA signatures are randomised, so the signed parts
are compared (the TBSCertificate) and the template leaf's signature is verified.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ca.issuance import leaf_der, profile
from ca.issuance.authority import SigningAuthority
from ca.issuance.keys import KeyAlgorithm, PrivateKey, PublicKey
from ca.issuance.leaf_der import LeafTemplate, LeafWriter
from ca.issuance.spiffe_id import SpiffeId
from tests.support.clock import FakeClock
from tests.support.issuing import make_root
from tests.support.pki import rsa_key

EPOCH = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)
CA_ALGORITHMS = (KeyAlgorithm.EC_P256, KeyAlgorithm.EC_P384, KeyAlgorithm.RSA_2048)


@pytest.fixture(scope="module")
def authorities() -> dict[KeyAlgorithm, SigningAuthority]:
    # A root good for 150 years, so that validities on both sides of 2050 stay under it.
    clock = FakeClock(datetime(1990, 1, 1, tzinfo=UTC))
    return {algorithm: make_root(clock, algorithm) for algorithm in CA_ALGORITHMS}


@pytest.fixture(scope="module")
def subject_keys() -> dict[str, PrivateKey]:
    return {
        "ec-p256": ec.generate_private_key(ec.SECP256R1()),
        "ec-p384": ec.generate_private_key(ec.SECP384R1()),
        "rsa-2048": rsa_key(2048),
    }


def _builder_leaf(
    authority: SigningAuthority,
    key: PublicKey,
    spiffe_id: SpiffeId,
    serial: int,
    validity: tuple[datetime, datetime],
) -> x509.Certificate:
    builder = profile.workload_leaf(
        subject_key=key,
        spiffe_id=spiffe_id,
        issuer=authority.signing_cert,
        serial=serial,
        not_before=validity[0],
        not_after=validity[1],
    )
    return profile.sign(builder, authority.signing_key)


def _spki(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


serials = st.one_of(
    st.integers(min_value=1, max_value=2**159 - 1),
    st.sampled_from([1, 127, 128, 255, 256, 2**63, 2**127, 2**159 - 1]),
)
moments = st.datetimes(
    min_value=datetime(1990, 1, 1), max_value=datetime(2120, 1, 1), timezones=st.just(UTC)
) | st.sampled_from(
    [
        datetime(2049, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2050, 1, 1, tzinfo=UTC),
        EPOCH,
    ]
)
path_segments = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._", min_size=1, max_size=60)
paths = st.lists(path_segments.filter(lambda s: s not in (".", "..")), min_size=1, max_size=40).filter(
    lambda segments: len("/".join(segments)) < 2000  # SPIFFE IDs stop at 2048 bytes
) | st.just(["x" * 120, "y" * 130])  # lengths over 127 and 255: long-form DER lengths


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ca=st.sampled_from(CA_ALGORITHMS),
    key_kind=st.sampled_from(["ec-p256", "ec-p384", "rsa-2048"]),
    serial=serials,
    start=moments,
    span=st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=400)),
    segments=paths,
)
def test_a_template_leaf_is_the_builders_leaf(
    authorities: dict[KeyAlgorithm, SigningAuthority],
    subject_keys: dict[str, PrivateKey],
    ca: KeyAlgorithm,
    key_kind: str,
    serial: int,
    start: datetime,
    span: timedelta,
    segments: list[str],
) -> None:
    authority = authorities[ca]
    key = subject_keys[key_kind].public_key()
    spiffe_id = SpiffeId.parse("spiffe://cluster.local/" + "/".join(segments))
    validity = (start, min(start + span, datetime(2120, 1, 1, tzinfo=UTC)))
    prototype = _builder_leaf(
        authority, key, SpiffeId.parse("spiffe://cluster.local/ns/a/sa/b"), 7, (EPOCH, EPOCH)
    )
    template = LeafTemplate.from_prototype(prototype)
    expected = _builder_leaf(authority, key, spiffe_id, serial, validity)

    tbs = template.tbs_certificate(
        serial=serial, not_before=validity[0], not_after=validity[1], spki=_spki(key), uri=spiffe_id.uri
    )
    assert tbs == expected.tbs_certificate_bytes
    signature = leaf_der.sign(tbs, authority.signing_key, template.signature_hash)
    der = template.certificate(tbs, signature)
    leaf = x509.load_der_x509_certificate(der)
    leaf.verify_directly_issued_by(authority.signing_cert)
    assert leaf.tbs_certificate_bytes == expected.tbs_certificate_bytes
    assert leaf.signature_algorithm_oid == expected.signature_algorithm_oid
    assert leaf_der.pem(der) == leaf.public_bytes(serialization.Encoding.PEM).decode()


def test_the_writer_makes_its_template_from_the_first_leaf_and_uses_it_after(
    authorities: dict[KeyAlgorithm, SigningAuthority], subject_keys: dict[str, PrivateKey]
) -> None:
    authority = authorities[KeyAlgorithm.EC_P256]
    writer = LeafWriter()
    spiffe_id = SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/cart")
    for kind in ("ec-p256", "rsa-2048", "ec-p384"):
        key = subject_keys[kind].public_key()
        for serial in (11, 12):
            der = writer.issue(authority, key, spiffe_id=spiffe_id, serial=serial, validity=(EPOCH, EPOCH))
            leaf = x509.load_der_x509_certificate(der)
            leaf.verify_directly_issued_by(authority.signing_cert)
            expected = _builder_leaf(authority, key, spiffe_id, serial, (EPOCH, EPOCH))
            assert leaf.tbs_certificate_bytes == expected.tbs_certificate_bytes
    # One template per key kind that differs in keyUsage: RSA or not.
    assert sorted(writer._templates) == [False, True]


def test_a_new_signing_ca_gets_new_templates(
    authorities: dict[KeyAlgorithm, SigningAuthority], subject_keys: dict[str, PrivateKey]
) -> None:
    writer = LeafWriter()
    spiffe_id = SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/cart")
    key = subject_keys["ec-p256"].public_key()
    for algorithm in (KeyAlgorithm.EC_P256, KeyAlgorithm.RSA_2048, KeyAlgorithm.EC_P256):
        authority = authorities[algorithm]
        for serial in (1, 2):
            der = writer.issue(authority, key, spiffe_id=spiffe_id, serial=serial, validity=(EPOCH, EPOCH))
            leaf = x509.load_der_x509_certificate(der)
            leaf.verify_directly_issued_by(authority.signing_cert)
            assert leaf.issuer == authority.signing_cert.subject


def test_a_prototype_that_is_not_a_workload_leaf_gives_no_template(
    authorities: dict[KeyAlgorithm, SigningAuthority],
) -> None:
    with pytest.raises(leaf_der.DerError, match="not a v3 leaf"):
        LeafTemplate.from_prototype(authorities[KeyAlgorithm.EC_P256].signing_cert)


@pytest.mark.parametrize(
    ("value", "der"),
    [
        (1, b"\x02\x01\x01"),
        (127, b"\x02\x01\x7f"),
        (128, b"\x02\x02\x00\x80"),
        (256, b"\x02\x02\x01\x00"),
    ],
)
def test_integers_are_minimal_and_positive(value: int, der: bytes) -> None:
    assert leaf_der.integer(value) == der


def test_times_switch_to_generalized_time_in_2050() -> None:
    assert leaf_der.asn1_time(datetime(2049, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)) == (
        b"\x17\x0d491231235959Z"
    )
    assert leaf_der.asn1_time(datetime(2050, 1, 1, tzinfo=UTC)) == b"\x18\x0f20500101000000Z"
