"""crl.pem stays usable by the enforcer when the agent's next SVID comes from another signing CA
(the CA rotated its signing slot): the CRL of the signing CA held when the lists came is then
vouched for in crl-signers.pem, until the next lists replace them."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from ca.agent.broadcast import SvidBroadcast
from ca.agent.sinks import FileSink
from ca.enforce.material import check_material, read_files
from ca.issuance.cert_dir import CRL_SIGNERS
from ca.issuance.crl import CertificateRef
from ca.server.push import signer_ders
from tests.support.clock import FakeClock
from tests.support.crls import crl_revoking
from tests.support.signing_cas import two_signing_cas
from tests.support.svids import FakeCa, make_svid


def test_the_crl_of_the_previous_signing_ca_is_vouched_for_once_the_svid_comes_from_the_next(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    cas = two_signing_cas(clock.now())
    files = FileSink(tmp_path)
    broadcast = SvidBroadcast(crl_sinks=[files], clock=clock)
    before = make_svid(clock, FakeCa(clock, authority=cas.first))
    broadcast.publish(before)
    files.publish(before)
    peer = make_svid(clock, FakeCa(clock, authority=cas.first))
    crls = [crl_revoking(cas.first, [peer.leaf], clock.now()), crl_revoking(cas.second, [], clock.now())]
    assert broadcast.publish_crl(crls, signer_ders([cas.first, cas.second]))

    after = make_svid(clock, FakeCa(clock, authority=cas.second))  # re-issued by the new signing CA
    broadcast.publish(after)
    files.publish(after)

    signers = x509.load_pem_x509_certificates((tmp_path / CRL_SIGNERS).read_bytes())
    assert signers == [cas.first.signing_cert]  # the new SVID's own signing CA needs no vouching
    version, read = read_files(tmp_path)
    material = check_material(read, version=version, trust_domain="cluster.local", now=clock.now())
    assert material.revocations.find(CertificateRef.of(peer.leaf)) is not None
