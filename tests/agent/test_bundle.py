"""The trust bundle the agent holds: the check of a pushed bundle, the holder, the roots it trusts
the CA with, and its delivery to every stream (SDS ROOTCA, Workload API) and to root-cert.pem,
which switches with the other files."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.agent.broadcast import SvidBroadcast
from ca.agent.bundle import (
    BadBundleError,
    BundleNotServedError,
    HeldBundle,
    check_bundle,
    root_sha256,
    trust_pem,
)
from ca.agent.sds import ROOT_SECRET, secret_for
from ca.agent.sinks import FileSink
from ca.agent.svid import chains_to
from ca.agent.telemetry import AgentMetrics
from ca.agent.workload_api import x509_bundles_response, x509_svid_response
from ca.issuance.cert_dir import CERT_CHAIN, DATA_LINK, KEY, ROOT_CERT
from tests.support.clock import FakeClock
from tests.support.svids import FakeCa, make_svid


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ca(clock: FakeClock) -> FakeCa:
    return FakeCa(clock)


def _root(ca: FakeCa) -> x509.Certificate:
    return ca.issuer.authority.roots[0]


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


# --------------------------------------------------------------------------- the check


def test_a_bundle_of_ca_certificates_is_taken_in_order(clock: FakeClock, ca: FakeCa) -> None:
    other = _root(FakeCa(clock))
    assert check_bundle([_der(_root(ca)), _der(other)]) == (_root(ca), other)


@pytest.mark.parametrize(
    ("contents", "reason", "words"),
    [
        ("none", "bundle_empty", "holds no root certificate"),
        ("garbage", "bundle_unparsable", "root 2 does not parse as a DER certificate"),
        ("leaf", "bundle_not_ca", "root 2 ("),
    ],
)
def test_a_bad_bundle_says_what_is_wrong(
    clock: FakeClock, ca: FakeCa, contents: str, reason: str, words: str
) -> None:
    ders = {
        "none": [],
        "garbage": [_der(_root(ca)), b"\x30\x03\x02\x01\x01"],
        "leaf": [_der(_root(ca)), _der(make_svid(clock, ca).leaf)],
    }[contents]
    with pytest.raises(BadBundleError) as caught:
        check_bundle(ders)
    assert caught.value.reason == reason
    assert words in caught.value.message
    assert "keeps serving the roots it holds" in caught.value.message


# --------------------------------------------------------------------------- the holder


def test_the_held_bundle_takes_newer_pushes_and_each_certificates_roots(clock: FakeClock, ca: FakeCa) -> None:
    held = HeldBundle()
    old, new = _root(ca), _root(FakeCa(clock))
    assert not held.roots and held.sequence == 0
    held.publish(make_svid(clock, ca))
    assert list(held.roots) == [old]
    assert held.newer(1) and held.take(1, [old, new])
    assert not held.newer(1) and not held.take(1, [new]) and not held.take(0, [new])
    assert list(held.roots) == [old, new] and held.sha256() == [root_sha256(old), root_sha256(new)]
    assert root_sha256(old) == hashlib.sha256(_der(old)).hexdigest()
    held.publish(make_svid(clock, ca))  # an issuance's roots replace the pushed ones
    assert list(held.roots) == [old] and held.sequence == 1  # and the same push is not taken again


def test_the_ca_is_trusted_with_the_ca_root_file_and_the_held_roots(clock: FakeClock, ca: FakeCa) -> None:
    old, new = _root(ca), _root(FakeCa(clock))
    assert trust_pem(_pem(old), [old]) == _pem(old)  # nothing twice
    assert trust_pem(_pem(old), [old, new]) == _pem(old, new)
    assert trust_pem(_pem(old).rstrip(b"\n"), [new]) == _pem(old).rstrip(b"\n") + b"\n" + _pem(new)
    assert trust_pem(b"", [new]) == _pem(new)
    assert trust_pem(b"not pem", [new]) == b"not pem\n" + _pem(new)  # gRPC will say what is wrong
    held = HeldBundle()
    held.take(5, [new])
    assert held.trust_pem(_pem(old)) == _pem(old, new)


def test_a_leaf_chains_to_its_own_root_and_not_to_another(clock: FakeClock, ca: FakeCa) -> None:
    svid = make_svid(clock, ca)
    other = _root(FakeCa(clock))
    assert chains_to(svid, [other, _root(ca)], clock.now())
    assert not chains_to(svid, [other], clock.now())
    assert not chains_to(svid, [], clock.now())


# --------------------------------------------------------------------------- delivery


def test_a_pushed_bundle_reaches_every_stream_and_root_cert_pem(
    tmp_path: Path, clock: FakeClock, ca: FakeCa
) -> None:
    files = FileSink(tmp_path)
    broadcast = SvidBroadcast(bundle_sinks=[files])
    svid = make_svid(clock, ca)
    files.publish(svid)
    broadcast.publish(svid)
    events = broadcast.listen()
    before_dir = tmp_path / os.readlink(tmp_path / DATA_LINK)
    old, new = _root(ca), _root(FakeCa(clock))
    before = broadcast.snapshot()

    broadcast.publish_bundle([old, new])

    after = broadcast.snapshot()
    assert after.version == before.version + 1 and events.get_nowait() == ("bundle", after.version)
    assert after.svid is not None and after.svid.roots == (old, new)
    assert after.svid.chain == svid.chain and after.svid.key is svid.key
    rootca = secret_for(ROOT_SECRET, after.svid)
    assert rootca is not None and rootca.validation_context.trusted_ca.inline_bytes == _pem(old, new)
    assert x509_bundles_response(after).bundles == {"cluster.local": _der(old) + _der(new)}
    assert x509_svid_response(after).svids[0].bundle == _der(old) + _der(new)
    # root-cert.pem is part of a new set, switched with the others in one rename
    version = tmp_path / os.readlink(tmp_path / DATA_LINK)
    assert version != before_dir and not before_dir.exists()
    assert (tmp_path / ROOT_CERT).read_bytes() == _pem(old, new)
    assert (tmp_path / CERT_CHAIN).read_bytes() == svid.chain_pem()
    assert (tmp_path / KEY).read_bytes() == svid.key_pem()

    fresh = make_svid(clock, ca)  # the next certificate's roots replace the pushed ones
    files.publish(fresh)
    broadcast.publish(fresh)
    assert (tmp_path / ROOT_CERT).read_bytes() == _pem(old)
    snapshot = broadcast.snapshot()
    assert snapshot.svid is fresh


def test_a_bundle_before_any_certificate_is_not_served(clock: FakeClock, ca: FakeCa) -> None:
    broadcast = SvidBroadcast()
    with pytest.raises(BundleNotServedError) as caught:
        broadcast.publish_bundle([_root(ca)])
    assert caught.value.reason == "bundle_before_svid"
    assert broadcast.snapshot().svid is None


def test_a_root_cert_pem_that_cannot_be_written_is_reported(
    tmp_path: Path, clock: FakeClock, ca: FakeCa
) -> None:
    files = FileSink(tmp_path / "certs")
    files.publish(make_svid(clock, ca))
    shutil.rmtree(tmp_path / "certs")
    (tmp_path / "certs").write_text("a file where the output directory was")
    with pytest.raises(BundleNotServedError) as caught:
        files.publish_bundle([_root(ca), _root(FakeCa(clock))])
    assert caught.value.reason == "bundle_write_failed" and "root-cert.pem" in caught.value.message


def test_the_agents_metrics_show_the_bundle_held(clock: FakeClock, ca: FakeCa) -> None:
    held = HeldBundle()
    metrics = AgentMetrics(clock, bundle=held)
    assert b"meshca_agent_trust_bundle_roots 0.0" in metrics.exposition()
    held.publish(make_svid(clock, ca))
    held.take(1_700_000_000_123, [_root(ca), _root(FakeCa(clock))])
    text = metrics.exposition().decode()
    assert "meshca_agent_trust_bundle_roots 2.0" in text
    assert "meshca_agent_trust_bundle_sequence 1.700000000123e+12" in text
