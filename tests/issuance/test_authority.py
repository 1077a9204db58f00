"""The signing authority refuses CA material that cannot sign: wrong key, not a CA, broken chain."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from ca.issuance.authority import valid_at
from ca.issuance.keys import PrivateKey, private_key_pem
from tests.support.issuing import cacerts_error
from tests.support.pki import Hierarchy, ec_key, make_hierarchy, pem


@pytest.fixture(scope="module")
def other_hierarchy() -> Hierarchy:
    return make_hierarchy()


def _leaf_cert(issuer: x509.Certificate, issuer_key: PrivateKey, key: PrivateKey) -> x509.Certificate:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not a CA")]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )


def test_key_not_matching_the_certificate_is_refused(hierarchy: Hierarchy, tmp_path: Path) -> None:
    directory = hierarchy.write_cacerts(tmp_path / "cacerts")
    (directory / "ca-key.pem").write_bytes(private_key_pem(ec_key()))
    err = cacerts_error(directory)
    assert "does not belong to the signing certificate" in err.message


def test_signing_certificate_that_is_not_a_ca_is_refused(hierarchy: Hierarchy, tmp_path: Path) -> None:
    key = ec_key()
    not_ca = _leaf_cert(hierarchy.intermediate, hierarchy.intermediate_key, key)
    directory = hierarchy.write_cacerts(tmp_path / "cacerts")
    (directory / "ca-cert.pem").write_bytes(pem(not_ca))
    (directory / "ca-key.pem").write_bytes(private_key_pem(key))
    (directory / "cert-chain.pem").write_bytes(
        pem(not_ca) + pem(hierarchy.intermediate) + pem(hierarchy.root)
    )
    err = cacerts_error(directory)
    assert "is not a CA" in err.message
    assert "keyCertSign" in err.message


def test_chain_not_reaching_the_root_is_refused(
    hierarchy: Hierarchy, other_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    directory = hierarchy.write_cacerts(tmp_path / "cacerts")
    (directory / "root-cert.pem").write_bytes(pem(other_hierarchy.root))
    err = cacerts_error(directory)
    assert "does not lead to any root" in err.message
    assert "root-cert.pem" in err.message


def test_chain_out_of_order_is_refused(
    hierarchy: Hierarchy, other_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    directory = hierarchy.write_cacerts(tmp_path / "cacerts")
    (directory / "cert-chain.pem").write_bytes(
        pem(hierarchy.signing) + pem(other_hierarchy.intermediate) + pem(hierarchy.root)
    )
    err = cacerts_error(directory)
    assert "is not signed by" in err.message


def test_garbage_certificate_file_is_refused(hierarchy: Hierarchy, tmp_path: Path) -> None:
    directory = hierarchy.write_cacerts(tmp_path / "cacerts")
    (directory / "root-cert.pem").write_text("not a certificate\n")
    err = cacerts_error(directory)
    assert "root-cert.pem" in err.message


def test_a_certificate_is_valid_from_its_not_before_until_just_before_its_not_after(
    hierarchy: Hierarchy,
) -> None:
    cert = _leaf_cert(hierarchy.root, hierarchy.root_key, ec_key())
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    assert not valid_at(cert, start - timedelta(seconds=1))
    assert valid_at(cert, start)
    assert valid_at(cert, end - timedelta(seconds=1))
    assert not valid_at(cert, end)
