"""CRLs of every signing CA reach the agent across a CA rotation: while two signing CAs are live,
the CA sends the CRL of each with the CA certificates that signed them, and an agent whose leaf
comes from one of them trusts the other's CRL when that CA chains to a root it holds. The CA
certificates so trusted are written beside crl.pem as crl-signers.pem for the enforcer."""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from ca.agent.broadcast import SvidBroadcast
from ca.agent.sinks import FileSink
from ca.enforce.material import check_material, read_files
from ca.issuance.cert_dir import CRL, CRL_SIGNERS, DATA_LINK
from ca.issuance.crl import CertificateRef, InvalidCrlError, RevocationLists, load_pem_crls
from ca.issuance.keys import PrivateKey
from ca.server.push import signer_ders
from tests.support.clock import FakeClock
from tests.support.crls import CRL_VALIDITY, crl_revoking
from tests.support.issuing import authority_from
from tests.support.pki import make_hierarchy, make_signing_ca
from tests.support.signing_cas import TwoSigningCas, authority_under, two_signing_cas
from tests.support.svids import FakeCa, make_svid


class RecordingCrlSink:
    def __init__(self) -> None:
        self.published: list[RevocationLists] = []

    def publish_crls(self, revocations: RevocationLists) -> None:
        self.published.append(revocations)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cas(clock: FakeClock) -> TwoSigningCas:
    return two_signing_cas(clock.now())


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize("own", ["first", "second"])
def test_an_agent_takes_the_crls_of_both_signing_cas_when_its_leaf_is_from_one(
    clock: FakeClock, cas: TwoSigningCas, own: str
) -> None:
    mine, other = (cas.first, cas.second) if own == "first" else (cas.second, cas.first)
    sink = RecordingCrlSink()
    broadcast = SvidBroadcast(crl_sinks=[sink], clock=clock)
    broadcast.publish(make_svid(clock, FakeCa(clock, authority=mine)))
    peer = make_svid(clock, FakeCa(clock, authority=other))
    crls = [
        crl_revoking(cas.first, [peer.leaf] if other is cas.first else [], clock.now()),
        crl_revoking(cas.second, [peer.leaf] if other is cas.second else [], clock.now()),
    ]
    # Without the CA certificates that signed them, the other signing CA's CRL is a stranger's.
    with pytest.raises(InvalidCrlError, match="not from a trusted CA"):
        broadcast.publish_crl(crls)

    assert broadcast.publish_crl(crls, signer_ders([cas.first, cas.second]))

    served = broadcast.snapshot().revocations
    assert len(served.crls) == 2
    assert served.extra_issuers == (other.signing_cert,)  # its own signing CA needs no vouching
    listing = served.find(CertificateRef.of(peer.leaf))
    assert listing is not None and listing.reason == "keyCompromise"
    assert sink.published == [served]


def test_a_supplied_issuer_that_does_not_chain_to_the_bundle_is_ignored_and_its_crl_refused(
    clock: FakeClock, cas: TwoSigningCas, caplog: pytest.LogCaptureFixture
) -> None:
    sink = RecordingCrlSink()
    broadcast = SvidBroadcast(crl_sinks=[sink], clock=clock)
    broadcast.publish(make_svid(clock, FakeCa(clock, authority=cas.first)))
    stranger = authority_from(make_hierarchy(clock.now()))  # another root, not in the bundle
    crls = [crl_revoking(cas.first, [], clock.now()), crl_revoking(stranger, [], clock.now())]

    with (
        caplog.at_level(logging.WARNING, logger="meshca.agent"),
        pytest.raises(InvalidCrlError, match="not from a trusted CA"),
    ):
        broadcast.publish_crl(crls, signer_ders([cas.first, stranger]))

    reasons = sorted(
        getattr(r, "reason", "") for r in caplog.records if "ignored a CA certificate" in r.message
    )
    assert (
        reasons == ["it does not chain to a root of the trust bundle this node holds"] * 2
    )  # CA and its chain
    assert not broadcast.snapshot().revocations
    assert sink.published == []


def _crl_signed_by(cert: x509.Certificate, key: PrivateKey, clock: FakeClock) -> bytes:
    now = clock.now()
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(cert.subject)
        .last_update(now - timedelta(minutes=1))
        .next_update(now + CRL_VALIDITY)
        .add_extension(x509.CRLNumber(1), critical=False)
        .sign(key, hashes.SHA256())
    )
    return crl.public_bytes(serialization.Encoding.DER)


def test_a_supplied_certificate_that_is_no_ca_is_ignored_even_under_the_root(
    clock: FakeClock, cas: TwoSigningCas, caplog: pytest.LogCaptureFixture
) -> None:
    broadcast = SvidBroadcast(clock=clock)
    broadcast.publish(make_svid(clock, FakeCa(clock, authority=cas.first)))
    key, not_ca = make_signing_ca(cas.root, cas.root_key, subject="not a CA", now=clock.now(), ca=False)

    with (
        caplog.at_level(logging.WARNING, logger="meshca.agent"),
        pytest.raises(InvalidCrlError, match="not from a trusted CA"),
    ):
        broadcast.publish_crl([_crl_signed_by(not_ca, key, clock)], [_der(not_ca)])
    assert [getattr(r, "reason", "") for r in caplog.records if "ignored a CA certificate" in r.message] == [
        "it is not a CA certificate (basicConstraints cA, keyCertSign)"
    ]


def test_certificates_not_needed_by_any_crl_are_ignored_and_the_lists_still_served(
    clock: FakeClock, cas: TwoSigningCas, caplog: pytest.LogCaptureFixture
) -> None:
    broadcast = SvidBroadcast(clock=clock)
    broadcast.publish(make_svid(clock, FakeCa(clock, authority=cas.first)))
    stranger = authority_from(make_hierarchy(clock.now()))
    crls = [crl_revoking(cas.first, [], clock.now()), crl_revoking(cas.second, [], clock.now())]

    with caplog.at_level(logging.WARNING, logger="meshca.agent"):
        assert broadcast.publish_crl(
            crls, [b"not a certificate", _der(stranger.signing_cert), _der(cas.second.signing_cert)]
        )

    assert broadcast.snapshot().revocations.extra_issuers == (cas.second.signing_cert,)
    assert len([r for r in caplog.records if "ignored a CA certificate" in r.message]) == 2


def test_a_signing_ca_below_an_intermediate_is_trusted_through_the_chain_sent_with_it(
    clock: FakeClock,
) -> None:
    hierarchy = make_hierarchy(clock.now())  # root -> intermediate -> signing CA
    deep = authority_from(hierarchy)
    mine = authority_under(hierarchy.root, hierarchy.root_key, subject="signing CA 2", now=clock.now())
    broadcast = SvidBroadcast(clock=clock)
    broadcast.publish(make_svid(clock, FakeCa(clock, authority=mine)))
    crls = [crl_revoking(deep, [], clock.now()), crl_revoking(mine, [], clock.now())]

    # The signing CA comes before the intermediate that vouches for it.
    assert signer_ders([deep]) == (_der(hierarchy.signing), _der(hierarchy.intermediate))
    assert broadcast.publish_crl(crls, signer_ders([deep, mine]))

    assert set(broadcast.snapshot().revocations.extra_issuers) == {hierarchy.signing, hierarchy.intermediate}


# ----------------------------------------------------------------- the output directory and the enforcer


def _version_dir(directory: Path) -> Path:
    return directory / os.readlink(directory / DATA_LINK)


def test_crl_signers_pem_is_written_with_crl_pem_and_the_enforcer_trusts_it(
    tmp_path: Path, clock: FakeClock, cas: TwoSigningCas
) -> None:
    files = FileSink(tmp_path)
    broadcast = SvidBroadcast(crl_sinks=[files], clock=clock)
    svid = make_svid(clock, FakeCa(clock, authority=cas.first))
    broadcast.publish(svid)
    files.publish(svid)
    peer = make_svid(clock, FakeCa(clock, authority=cas.second))
    crls = [crl_revoking(cas.first, [], clock.now()), crl_revoking(cas.second, [peer.leaf], clock.now())]

    assert broadcast.publish_crl(crls, signer_ders([cas.first, cas.second]))

    current = _version_dir(tmp_path)
    assert (tmp_path / CRL_SIGNERS).resolve() == current / CRL_SIGNERS  # switched with the set
    assert x509.load_pem_x509_certificates((tmp_path / CRL_SIGNERS).read_bytes()) == [cas.second.signing_cert]
    assert len(load_pem_crls((tmp_path / CRL).read_bytes(), CRL)) == 2
    version, read = read_files(tmp_path)
    material = check_material(read, version=version, trust_domain="cluster.local", now=clock.now())
    assert material.revocations.find(CertificateRef.of(peer.leaf)) is not None

    # Once the first signing CA retires, its CRL leaves the list; nothing needs vouching for.
    clock.advance(timedelta(seconds=1))
    assert broadcast.publish_crl([crl_revoking(cas.first, [], clock.now())], signer_ders([cas.first]))
    assert not (tmp_path / CRL_SIGNERS).exists() and not (tmp_path / CRL_SIGNERS).is_symlink()
    assert not (_version_dir(tmp_path) / CRL_SIGNERS).exists()
    version, read = read_files(tmp_path)
    assert CRL_SIGNERS not in read
    check_material(read, version=version, trust_domain="cluster.local", now=clock.now())
