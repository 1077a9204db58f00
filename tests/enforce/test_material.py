"""The certificate files the enforcer serves with: read as one issuance, versioned, checked."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509

from ca.agent.output import write_svid
from ca.enforce.material import check_material, read_files, version_of
from ca.errors import ConfigError
from ca.issuance.cert_dir import CRL
from ca.issuance.crl import CertificateRef, crls_pem
from tests.support.clock import FakeClock
from tests.support.crls import crl_revoking
from tests.support.svids import FakeCa, make_svid


def test_the_agents_files_are_read_as_one_issuance(tmp_path: Path) -> None:
    clock = FakeClock()
    assert version_of(tmp_path) is None
    svid = make_svid(clock)
    write_svid(tmp_path, svid)
    version, files = read_files(tmp_path)
    assert version.startswith("link:..")
    material = check_material(files, version=version, trust_domain="cluster.local", now=clock.now())
    assert material.serial == svid.leaf.serial_number
    assert material.spiffe_id == svid.spiffe_id
    assert "key_pem" not in repr(material)  # the key never reaches a log line
    write_svid(tmp_path, make_svid(clock))
    assert version_of(tmp_path) != version


def test_plain_files_are_versioned_by_their_stamps(tmp_path: Path) -> None:
    svid = make_svid(FakeClock())
    (tmp_path / "cert-chain.pem").write_bytes(svid.chain_pem())
    (tmp_path / "key.pem").write_bytes(svid.key_pem())
    (tmp_path / "root-cert.pem").write_bytes(svid.roots_pem())
    version = version_of(tmp_path)
    assert version is not None and version.startswith("files:")


@pytest.mark.parametrize("problem", ["other key", "other trust domain", "expired", "garbage"])
def test_unusable_files_are_refused_with_the_reason(problem: str) -> None:
    clock = FakeClock()
    svid = make_svid(clock)
    files = {"cert-chain.pem": svid.chain_pem(), "key.pem": svid.key_pem(), "root-cert.pem": svid.roots_pem()}
    trust_domain, now = "cluster.local", clock.now()
    if problem == "other key":
        files["key.pem"] = make_svid(clock).key_pem()
        match = "does not belong"
    elif problem == "other trust domain":
        trust_domain, match = "example.org", "outside trust domain"
    elif problem == "expired":
        now, match = now + timedelta(days=365), "expired"
    else:
        files["cert-chain.pem"], match = b"not pem", "do not parse"
    with pytest.raises(ConfigError, match=match):
        check_material(files, version="v", trust_domain=trust_domain, now=now)


def test_crl_pem_is_read_with_the_set_and_checked_against_the_trust_bundle(tmp_path: Path) -> None:
    clock = FakeClock()
    ca = FakeCa(clock)
    svid, revoked = make_svid(clock, ca), make_svid(clock, ca)
    crl = x509.load_der_x509_crl(crl_revoking(ca.issuer.authority, [revoked.leaf], clock.now()))
    write_svid(tmp_path, svid)
    version, files = read_files(tmp_path)
    assert CRL not in files
    material = check_material(files, version=version, trust_domain="cluster.local", now=clock.now())
    assert not material.revocations

    write_svid(tmp_path, svid, crl_pem=crls_pem([crl]))
    assert version_of(tmp_path) != version
    version, files = read_files(tmp_path)
    material = check_material(files, version=version, trust_domain="cluster.local", now=clock.now())
    assert material.revocations.find(CertificateRef.of(revoked.leaf)) is not None
    assert material.revocations.find(CertificateRef.of(svid.leaf)) is None

    foreign = x509.load_der_x509_crl(crl_revoking(FakeCa(clock).issuer.authority, [], clock.now()))
    files[CRL] = crls_pem([crl, foreign])
    with pytest.raises(ConfigError, match=r"crl\.pem cannot be used: .*not from a trusted CA"):
        check_material(files, version=version, trust_domain="cluster.local", now=clock.now())
    files[CRL] = b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"
    with pytest.raises(ConfigError, match=r"crl\.pem cannot be used: .*does not parse"):
        check_material(files, version=version, trust_domain="cluster.local", now=clock.now())


def test_a_plain_crl_file_is_part_of_the_version(tmp_path: Path) -> None:
    clock = FakeClock()
    ca = FakeCa(clock)
    svid = make_svid(clock, ca)
    (tmp_path / "cert-chain.pem").write_bytes(svid.chain_pem())
    (tmp_path / "key.pem").write_bytes(svid.key_pem())
    (tmp_path / "root-cert.pem").write_bytes(svid.roots_pem())
    without = version_of(tmp_path)
    crl = x509.load_der_x509_crl(crl_revoking(ca.issuer.authority, [], clock.now()))
    (tmp_path / CRL).write_bytes(crls_pem([crl]))
    assert version_of(tmp_path) not in (None, without)
    assert read_files(tmp_path)[1][CRL] == crls_pem([crl])
