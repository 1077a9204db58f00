"""The agent's delivery of the CA's CRLs: checked against its trust bundle, newer only, to every
stream and to the output directory, where crl.pem switches with the certificate files."""

from __future__ import annotations

import os
import stat
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509

from ca.agent.broadcast import SvidBroadcast
from ca.agent.output import write_svid
from ca.agent.sinks import FileSink
from ca.issuance.cert_dir import CERT_CHAIN, CRL, DATA_LINK, KEY, ROOT_CERT
from ca.issuance.crl import InvalidCrlError, RevocationLists, load_pem_crls
from tests.support.clock import FakeClock
from tests.support.crls import CRL_VALIDITY, crl_revoking
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
def ca(clock: FakeClock) -> FakeCa:
    return FakeCa(clock)


def _serials(revocations: RevocationLists) -> list[int]:
    return sorted(serial for _, serial in revocations.by_key)


def test_a_crl_from_the_ca_reaches_every_stream_and_sink(clock: FakeClock, ca: FakeCa) -> None:
    sink = RecordingCrlSink()
    broadcast = SvidBroadcast(crl_sinks=[sink])
    svid, revoked = make_svid(clock, ca), make_svid(clock, ca)
    broadcast.publish(svid)
    events = broadcast.listen()
    before = broadcast.snapshot()
    assert not before.revocations

    assert broadcast.publish_crl([crl_revoking(ca.issuer.authority, [revoked.leaf], clock.now())])

    after = broadcast.snapshot()
    assert after.version == before.version + 1
    assert after.svid is svid
    assert _serials(after.revocations) == [revoked.leaf.serial_number]
    assert events.get_nowait() == ("crl", after.version)
    assert sink.published == [after.revocations]


def test_an_empty_crl_is_delivered(clock: FakeClock, ca: FakeCa) -> None:
    broadcast = SvidBroadcast()
    broadcast.publish(make_svid(clock, ca))
    assert broadcast.publish_crl([crl_revoking(ca.issuer.authority, [], clock.now())])
    revocations = broadcast.snapshot().revocations
    assert revocations and revocations.entry_count == 0


def test_a_list_no_newer_than_the_one_served_is_ignored(clock: FakeClock, ca: FakeCa) -> None:
    sink = RecordingCrlSink()
    broadcast = SvidBroadcast(crl_sinks=[sink])
    svid, revoked = make_svid(clock, ca), make_svid(clock, ca)
    broadcast.publish(svid)
    older = crl_revoking(ca.issuer.authority, [], clock.now())
    newer = crl_revoking(ca.issuer.authority, [revoked.leaf], clock.now() + timedelta(seconds=1))
    assert broadcast.publish_crl([newer])
    version = broadcast.snapshot().version
    assert not broadcast.publish_crl([newer])  # the same list again, as after a reconnect
    assert not broadcast.publish_crl([older])
    assert not broadcast.publish_crl([])
    assert broadcast.snapshot().version == version
    assert _serials(broadcast.snapshot().revocations) == [revoked.leaf.serial_number]
    assert len(sink.published) == 1


def test_a_crl_not_from_the_agents_ca_is_refused_and_nothing_changes(clock: FakeClock, ca: FakeCa) -> None:
    sink = RecordingCrlSink()
    broadcast = SvidBroadcast(crl_sinks=[sink])
    broadcast.publish(make_svid(clock, ca))
    stranger = FakeCa(clock)
    with pytest.raises(InvalidCrlError, match="not from a trusted CA"):
        broadcast.publish_crl([crl_revoking(stranger.issuer.authority, [], clock.now())])
    with pytest.raises(InvalidCrlError, match="not a DER CRL"):
        broadcast.publish_crl([b"not a crl"])
    assert not broadcast.snapshot().revocations
    assert sink.published == []


def test_a_crl_before_any_certificate_cannot_be_checked(clock: FakeClock, ca: FakeCa) -> None:
    broadcast = SvidBroadcast()
    with pytest.raises(InvalidCrlError, match="before the agent holds a certificate"):
        broadcast.publish_crl([crl_revoking(ca.issuer.authority, [], clock.now())])


# ----------------------------------------------------------------- the output directory


def _version_dir(directory: Path) -> Path:
    return directory / os.readlink(directory / DATA_LINK)


def test_crl_pem_is_written_with_the_certificate_files_and_switches_with_them(
    tmp_path: Path, clock: FakeClock, ca: FakeCa
) -> None:
    files = FileSink(tmp_path)
    broadcast = SvidBroadcast(crl_sinks=[files])
    first, revoked = make_svid(clock, ca), make_svid(clock, ca)
    files.publish(first)
    broadcast.publish(first)
    assert not (tmp_path / CRL).exists()
    without_crl = _version_dir(tmp_path)

    broadcast.publish_crl([crl_revoking(ca.issuer.authority, [revoked.leaf], clock.now())])

    version = _version_dir(tmp_path)
    assert version != without_crl and not without_crl.exists()
    assert sorted(p.name for p in version.iterdir()) == sorted([CERT_CHAIN, CRL, KEY, ROOT_CERT])
    assert os.readlink(tmp_path / CRL) == f"{DATA_LINK}/{CRL}"
    crls = load_pem_crls((tmp_path / CRL).read_bytes(), CRL)
    assert [r.serial_number for r in crls[0]] == [revoked.leaf.serial_number]
    assert (tmp_path / CERT_CHAIN).read_bytes() == first.chain_pem()
    assert stat.S_IMODE((tmp_path / KEY).stat().st_mode) == 0o600

    second = make_svid(clock, ca)
    files.publish(second)  # the next certificate keeps the CRL beside it
    assert (tmp_path / CERT_CHAIN).read_bytes() == second.chain_pem()
    assert (_version_dir(tmp_path) / CRL).read_bytes() == (tmp_path / CRL).read_bytes()
    assert load_pem_crls((tmp_path / CRL).read_bytes(), CRL)[0] == crls[0]


def test_a_set_without_a_crl_leaves_no_dangling_crl_link(tmp_path: Path, clock: FakeClock) -> None:
    svid = make_svid(clock)
    write_svid(tmp_path, svid, crl_pem=b"")
    assert (tmp_path / CRL).is_symlink()
    write_svid(tmp_path, svid)  # a restarted agent, before the CA has sent its lists
    assert not (tmp_path / CRL).is_symlink()


def test_crls_before_the_first_certificate_wait_for_it(tmp_path: Path, clock: FakeClock, ca: FakeCa) -> None:
    files = FileSink(tmp_path)
    svid = make_svid(clock, ca)
    lists = RevocationLists.checked(
        [x509.load_der_x509_crl(crl_revoking(ca.issuer.authority, [], clock.now()))],
        [ca.issuer.authority.signing_cert],
    )
    files.publish_crls(lists)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())
    files.publish(svid)
    assert (tmp_path / CRL).read_bytes() == lists.pem()


def test_a_crl_envoy_would_reject_at_this_time_is_refused(clock: FakeClock, ca: FakeCa) -> None:
    broadcast = SvidBroadcast(clock=clock)
    broadcast.publish(make_svid(clock, ca))
    stale = crl_revoking(ca.issuer.authority, [], clock.now() - CRL_VALIDITY - timedelta(minutes=3))
    with pytest.raises(InvalidCrlError, match="expired at"):
        broadcast.publish_crl([stale])
    ahead = crl_revoking(ca.issuer.authority, [], clock.now() + timedelta(minutes=3))  # beyond the backdate
    with pytest.raises(InvalidCrlError, match="after this node's clock"):
        broadcast.publish_crl([ahead])
    assert not broadcast.snapshot().revocations
    clock.advance(timedelta(minutes=1, seconds=1))  # the CA's clock was only a minute ahead
    assert broadcast.publish_crl([ahead])
