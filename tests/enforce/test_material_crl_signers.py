"""The enforcer's crl.pem across a CA rotation: CRLs of a signing CA outside the workload's own
chain are trusted through crl-signers.pem, written beside crl.pem by the agent, when its
certificates chain to root-cert.pem; otherwise the set is refused as before."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from cryptography import x509

from ca.agent.output import write_svid
from ca.enforce.material import check_material, read_files, version_of
from ca.errors import ConfigError
from ca.issuance.cert_dir import CRL_SIGNERS
from ca.issuance.crl import CertificateRef, certificates_pem, crls_pem
from tests.support.clock import FakeClock
from tests.support.crls import crl_revoking
from tests.support.issuing import authority_from
from tests.support.pki import make_hierarchy
from tests.support.signing_cas import two_signing_cas
from tests.support.svids import FakeCa, make_svid

TRUST_DOMAIN = "cluster.local"


def _crl(der: bytes) -> x509.CertificateRevocationList:
    return x509.load_der_x509_crl(der)


def test_crls_of_the_other_signing_ca_are_trusted_through_crl_signers_pem(tmp_path: Path) -> None:
    clock = FakeClock()
    cas = two_signing_cas(clock.now())
    svid = make_svid(clock, FakeCa(clock, authority=cas.first))
    peer = make_svid(clock, FakeCa(clock, authority=cas.second))
    crls = crls_pem(
        [
            _crl(crl_revoking(cas.first, [], clock.now())),
            _crl(crl_revoking(cas.second, [peer.leaf], clock.now())),
        ]
    )

    write_svid(tmp_path, svid, crl_pem=crls)  # as an agent without the CA certificates would
    version, files = read_files(tmp_path)
    with pytest.raises(ConfigError, match=r"crl\.pem cannot be used: .*not from a trusted CA"):
        check_material(files, version=version, trust_domain=TRUST_DOMAIN, now=clock.now())

    write_svid(tmp_path, svid, crl_pem=crls, crl_signers_pem=certificates_pem([cas.second.signing_cert]))
    assert version_of(tmp_path) != version
    version, files = read_files(tmp_path)
    assert CRL_SIGNERS in files
    material = check_material(files, version=version, trust_domain=TRUST_DOMAIN, now=clock.now())
    assert material.revocations.find(CertificateRef.of(peer.leaf)) is not None
    assert material.revocations.find(CertificateRef.of(svid.leaf)) is None
    assert material.revocations.extra_issuers == (cas.second.signing_cert,)


def test_a_crl_signer_that_does_not_chain_to_root_cert_pem_is_ignored_and_its_crl_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    cas = two_signing_cas(clock.now())
    stranger = authority_from(make_hierarchy(clock.now()))  # another root
    svid = make_svid(clock, FakeCa(clock, authority=cas.first))
    crls = crls_pem(
        [_crl(crl_revoking(cas.first, [], clock.now())), _crl(crl_revoking(stranger, [], clock.now()))]
    )
    write_svid(
        tmp_path,
        svid,
        crl_pem=crls,
        crl_signers_pem=certificates_pem([stranger.signing_cert, *stranger.chain]),
    )
    version, files = read_files(tmp_path)
    with (
        caplog.at_level(logging.WARNING, logger="ca.enforce.material"),
        pytest.raises(ConfigError, match=r"crl\.pem cannot be used: .*not from a trusted CA"),
    ):
        check_material(files, version=version, trust_domain=TRUST_DOMAIN, now=clock.now())
    assert any("ignored a CA certificate of crl-signers.pem" in r.message for r in caplog.records)


def test_a_crl_signers_pem_that_does_not_parse_is_refused(tmp_path: Path) -> None:
    clock = FakeClock()
    cas = two_signing_cas(clock.now())
    svid = make_svid(clock, FakeCa(clock, authority=cas.first))
    crls = crls_pem([_crl(crl_revoking(cas.first, [], clock.now()))])
    write_svid(
        tmp_path,
        svid,
        crl_pem=crls,
        crl_signers_pem=b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    version, files = read_files(tmp_path)
    with pytest.raises(ConfigError, match=r"crl-signers\.pem does not hold PEM certificates"):
        check_material(files, version=version, trust_domain=TRUST_DOMAIN, now=clock.now())


def test_plain_files_are_versioned_with_crl_signers_pem(tmp_path: Path) -> None:
    svid = make_svid(FakeClock())
    for name, data in (
        ("cert-chain.pem", svid.chain_pem()),
        ("key.pem", svid.key_pem()),
        ("root-cert.pem", svid.roots_pem()),
    ):
        (tmp_path / name).write_bytes(data)
    before = version_of(tmp_path)
    (tmp_path / CRL_SIGNERS).write_bytes(b"")
    assert version_of(tmp_path) != before
