"""The ledger on SQLite and on the real PostgreSQL server (every test runs on both): compaction and
the head file; then the CA itself: every certificate it returns is recorded first, and storage it
cannot write makes it refuse with UNAVAILABLE and recover by itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import grpc
import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from ca._proto import istio_ca_pb2
from ca.ledger import checkpoint as cp
from ca.ledger.entries import ISSUED, REFUSED
from ca.ledger.ledger import HEAD_FILE, HeadFile
from tests.support.ca_server import RunningCa, start_ca
from tests.support.clock import FakeClock
from tests.support.ledger import (
    DAY,
    MESHCA,
    POSTGRES_ADMIN_URL,
    all_entries,
    issued_serials,
    leaf_serial,
    ledger_locked,
    ledger_rig,
    libpq_url,
    postgres_database,
    postgres_url,
    require_postgres,
    verify_state,
)
from tests.support.pki import ec_key, make_csr


def test_compaction_keeps_the_ledger_verifiable(ledger_url: str, tmp_path: Path) -> None:
    clock = FakeClock()
    with ledger_rig(ledger_url, tmp_path / "state", clock) as r:
        r.event("created")  # 1
        r.issue(3, ttl=timedelta(hours=1))  # 2-4
        r.checkpoint()  # 4
        r.refuse()  # 5
        clock.advance(2 * DAY)
        r.issue(3, ttl=timedelta(hours=24))  # 6-8
        r.refuse()  # 9
        r.checkpoint()  # 9, the head file
        hashes = r.hashes()

        assert r.ledger.compact(clock.now() - 3 * DAY) == 0  # nothing that old
        assert r.ledger.compact(clock.now() - DAY) == 5  # 1-5 ended more than a day ago
        assert r.store.head() == (9, hashes[9], 5, hashes[5])
        assert [e.seq for e in r.store.entries()] == [6, 7, 8, 9]
        assert sorted(c.head_seq for c in r.store.checkpoints()) == [5, 9]
        report = r.verify()
        assert report.ok, report.summary()
        assert (report.entries_checked, report.checkpoints_checked) == (4, 2)

        r.issue(2, ttl=timedelta(hours=24))  # 10-11
        assert r.verify().ok
        hash_11 = r.hashes()[11]
        clock.advance(3 * DAY)
        assert r.ledger.compact(clock.now() - DAY) == 6  # everything has expired
        assert r.store.count() == 0 and r.store.head()[2] == 11
        report = r.verify()  # the head file (9) is now behind the anchor
        assert report.ok and report.entries_checked == 0, report.summary()

        r.issue(1)  # 12 links to the anchor
        r.checkpoint()
        report = r.verify()
        assert report.ok and report.entries_checked == 1, report.summary()
        assert r.store.head()[2:] == (11, hash_11)
        assert next(r.store.entries()).prev_hash == hash_11


def test_compaction_never_moves_the_anchor_back(ledger_url: str, tmp_path: Path) -> None:
    """Two CA processes compacting at once: the one that finishes second with an older cut
    must not move the anchor back over records the other already removed."""
    clock = FakeClock()
    with ledger_rig(ledger_url, tmp_path / "state", clock) as r:
        r.issue(4, ttl=timedelta(hours=1))  # 1-4
        clock.advance(2 * DAY)
        r.issue(1, ttl=timedelta(days=30))  # 5
        r.checkpoint()
        hashes = r.hashes()
        assert r.ledger.compact(clock.now() - DAY) == 4
        assert r.store.compact_through(2, hashes[2]) == 0  # an older cut arriving late
        assert r.store.head()[2:] == (4, hashes[4])
        report = r.verify()
        assert report.ok, report.summary()


def test_the_head_file_only_moves_forward(tmp_path: Path) -> None:
    """Processes sharing a ledger each publish their checkpoint; an older one written last
    must not replace a newer head."""
    key = ed25519.Ed25519PrivateKey.generate()

    def signed(seq: int) -> cp.Checkpoint:
        unsigned = cp.Checkpoint(
            head_seq=seq,
            head_hash=f"{seq:064x}",
            count=seq,
            time="2026-11-21T00:00:00.000000Z",
            key_id=cp.key_id(key.public_key()),
            purpose=cp.HEAD,
        )
        return cp.sign(unsigned, key)

    head = HeadFile(tmp_path / HEAD_FILE)
    head.publish(signed(7))
    head.publish(signed(5))
    current = head.read()
    assert current is not None and current.head_seq == 7
    head.publish(signed(9))
    current = head.read()
    assert current is not None and current.head_seq == 9
    head.path.write_text("{not json")
    head.publish(signed(3))  # a damaged file is replaced by a good head
    current = head.read()
    assert current is not None and current.head_seq == 3


def test_compaction_stops_at_the_first_live_record(ledger_url: str, tmp_path: Path) -> None:
    clock = FakeClock()
    with ledger_rig(ledger_url, tmp_path / "state", clock) as r:
        r.refuse()  # 1
        r.issue(1, ttl=timedelta(days=30))  # 2: still valid after the compaction below
        r.issue(2, ttl=timedelta(hours=1))  # 3-4: expired, but after a live record
        r.checkpoint()
        clock.advance(2 * DAY)
        assert r.ledger.compact(clock.now() - DAY) == 1
        assert [e.seq for e in r.store.entries()] == [2, 3, 4]
        assert r.verify().ok


def _der_sha256(chain: list[str]) -> str:
    leaf = x509.load_pem_x509_certificate(chain[0].encode())
    return hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest()


def _failed(ca: RunningCa, token: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        ca.request(token=token)
    return caught.value


def test_the_ca_records_each_issuance_and_refusal(ledger_url: str, tmp_path: Path) -> None:
    state = tmp_path / "state"
    ca = start_ca(state, "--ledger", ledger_url)
    try:
        chains = [ca.request(token=ca.token("shop", f"sa-{i}"))[0] for i in range(3)]
        refused = _failed(ca, "not-a-token")
        assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        ca.stop()
    entries = all_entries(ledger_url)
    kinds = [e.content["kind"] for e in entries]
    assert kinds[0] == "ca_event" and entries[0].content["reason"] == "created"
    assert kinds.count(ISSUED) == 3 and kinds.count(REFUSED) == 1
    by_serial = {e.content["serial"]: e.content for e in entries if e.content["kind"] == ISSUED}
    for i, chain in enumerate(chains):
        record = by_serial[leaf_serial(chain)]
        assert record["spiffe_id"] == f"spiffe://cluster.local/ns/shop/sa/sa-{i}"
        assert record["certificate_sha256"] == _der_sha256(chain)
    refusal = next(e.content for e in entries if e.content["kind"] == REFUSED)
    assert refusal["status_code"] == "UNAUTHENTICATED" and "not-a-token" not in json.dumps(refusal)
    report = verify_state(ledger_url, state)
    assert report.ok, report.summary()
    head = HeadFile(state / HEAD_FILE).read()
    assert head is not None and head.head_seq == len(entries)  # the final checkpoint on stop


@pytest.mark.parametrize(("flags", "leeway"), [((), 30), (("--token-leeway", "0"), 0)], ids=["30s", "0"])
def test_a_token_the_leeway_decides_on_is_recorded_with_it(
    ledger_url: str, tmp_path: Path, flags: tuple[str, ...], leeway: int
) -> None:
    """A token 10 s past its expiry by the CA's (injected) clock: accepted within the default
    30 s leeway, refused with none; either record says which leeway decided, and by how much."""
    ca = start_ca(tmp_path / "state", "--ledger", ledger_url, *flags)
    try:
        token = ca.token("shop", "cart", ttl=timedelta(minutes=10))
        in_time, _ = ca.request(token=token)
        ca.clock.advance(timedelta(minutes=10, seconds=10))
        if leeway:
            late, _ = ca.request(token=token)
        else:
            assert _failed(ca, token).code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        ca.stop()
    entries = [e.content for e in all_entries(ledger_url)]
    on_time = next(e for e in entries if e.get("serial") == leaf_serial(in_time))
    assert not any(name.startswith("token_leeway") for name in on_time)
    recorded = entries[-1]
    if leeway:
        assert recorded["kind"] == ISSUED and recorded["serial"] == leaf_serial(late)
    else:
        assert recorded["kind"] == REFUSED and recorded["reason"] == "token_expired"
        assert "beyond the 0s leeway" in recorded["message"]
    assert (
        recorded["token_leeway_seconds"],
        recorded["token_leeway_claim"],
        recorded["token_leeway_needed_seconds"],
    ) == (leeway, "exp", 10)


@pytest.mark.parametrize("server", ["asyncio", "threaded"])
def test_storage_failure_refuses_with_unavailable_and_recovers(
    ledger_url: str,
    tmp_path: Path,
    server: str,
) -> None:
    state = tmp_path / "state"
    ca = start_ca(
        state, "--ledger", ledger_url, "--grpc-server", server, "--ledger-checkpoint-interval", "1s"
    )
    try:
        returned = [leaf_serial(ca.request(token=ca.token())[0])]
        tokens = [ca.token("shop", f"blocked-{i}") for i in range(4)]
        with ledger_locked(ledger_url):
            started = time.monotonic()
            with ThreadPoolExecutor(4) as pool:
                errors = list(pool.map(lambda t: _failed(ca, t), tokens))
            waited = time.monotonic() - started
        for err in errors:
            assert err.code() == grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
            details = err.details() or ""
            assert "issuance ledger could not be written" in details and "no certificate" in details, details
        assert waited < 10, f"the refusals took {waited:.1f}s"

        # Storage is back: the same CA issues again without a restart, and catches up its head.
        returned += [leaf_serial(ca.request(token=t)[0]) for t in tokens[:2]]

        def head_caught_up() -> bool:
            head = HeadFile(state / HEAD_FILE).read()
            return head is not None and head.head_seq == all_entries(ledger_url)[-1].seq

        _wait_for(head_caught_up, 15, "the CA to publish a checkpoint of its head after recovering")
    finally:
        ca.stop()
    entries = all_entries(ledger_url)
    assert sorted(issued_serials(entries)) == sorted(returned)  # the refused four left no record
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    report = verify_state(ledger_url, state)
    assert report.ok, report.summary()


def test_a_postgresql_outage_refuses_with_unavailable_and_the_ca_reconnects(tmp_path: Path) -> None:
    """The database stops taking connections (and drops the CA's) for a while, then comes back."""
    state = tmp_path / "state"
    with postgres_database() as url:
        name = url.rsplit("/", 1)[1]
        ca = start_ca(state, "--ledger", url)
        try:
            returned = [leaf_serial(ca.request(token=ca.token())[0])]
            with psycopg.connect(libpq_url(POSTGRES_ADMIN_URL), autocommit=True) as admin:
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
                )
                try:
                    for i in range(3):
                        err = _failed(ca, ca.token("shop", f"down-{i}"))
                        assert err.code() == grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
                        assert "issuance ledger could not be written" in (err.details() or "")
                finally:
                    admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            returned += [leaf_serial(ca.request(token=ca.token("shop", f"up-{i}"))[0]) for i in range(3)]
        finally:
            ca.stop()
        assert sorted(issued_serials(all_entries(url))) == sorted(returned)
        report = verify_state(url, state)
        assert report.ok, report.summary()


@pytest.mark.parametrize("server", ["asyncio", "threaded"])
def test_a_client_giving_up_while_its_record_waits_does_not_stop_the_ledger(
    ledger_url: str,
    tmp_path: Path,
    server: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client whose deadline passes while the ledger is slow must not break later issuance."""
    caplog.set_level(logging.ERROR, logger="meshca.ledger")
    state = tmp_path / "state"
    ca = start_ca(state, "--ledger", ledger_url, "--grpc-server", server)
    try:
        ca.request(token=ca.token())
        with ledger_locked(ledger_url):
            request = istio_ca_pb2.IstioCertificateRequest(csr=make_csr(ec_key()))
            with pytest.raises(grpc.RpcError) as caught:
                ca.stub().CreateCertificate(
                    request, metadata=[("authorization", f"Bearer {ca.token()}")], timeout=0.5
                )
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            _wait_for(
                lambda: any(r.getMessage() == "ledger write failed" for r in caplog.records),
                15,
                "the CA's write of that record to fail on the lock",
            )
        # Storage is back; the CA must issue again by itself.
        key = ec_key()
        started = time.monotonic()
        try:
            response = ca.stub().CreateCertificate(
                istio_ca_pb2.IstioCertificateRequest(csr=make_csr(key)),
                metadata=[("authorization", f"Bearer {ca.token('shop', 'after')}")],
                timeout=20,
            )
        except grpc.RpcError as err:
            raise AssertionError(
                f"after the ledger came back the CA still refuses, {time.monotonic() - started:.1f}s later: "
                f"{err.code()}: {err.details()}"
            ) from None
        serial = leaf_serial(list(response.cert_chain))
    finally:
        ca.stop()
    assert serial in issued_serials(all_entries(ledger_url))
    report = verify_state(ledger_url, state)
    assert report.ok, report.summary()


def _wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Polls the running CA (or its ledger) until `check()` holds."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


def _serve_once(tmp_path: Path, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *MESHCA,
            "serve",
            "--state-dir",
            str(tmp_path / "state"),
            "--listen",
            "127.0.0.1:0",
            "--renew-listen",
            "off",
            "--metrics-listen",
            "off",
            "--ledger",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("sqlite:///{tmp}/no/such/dir/ledger.db", "cannot open the issuance ledger"),
        ("postgresql://meshca:s3cret@127.0.0.1:1/ledger", "cannot open the issuance ledger"),
        ("mysql://meshca@127.0.0.1/ledger", "is not auto, off"),
        ("postgresql://postgres@127.0.0.1:5432/meshca_no_such_database", "does not exist"),
    ],
    ids=["sqlite-missing-dir", "postgresql-refused", "unknown-scheme", "postgresql-no-database"],
)
def test_a_ledger_that_cannot_be_opened_is_a_config_error(tmp_path: Path, url: str, words: str) -> None:
    if "5432" in url:
        require_postgres()
        url = postgres_url("meshca_no_such_database")
    result = _serve_once(tmp_path, url.format(tmp=tmp_path))
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("meshca: error:") and words in last, result.stderr
    assert "Traceback" not in result.stderr and "s3cret" not in result.stderr


def test_a_bad_ledger_on_first_start_creates_no_root_so_the_created_event_is_not_lost(
    tmp_path: Path,
) -> None:
    """The ledger opens before the CA material: a first start that fails on --ledger leaves
    no root behind, and the next good start records the root as created."""
    result = _serve_once(tmp_path, f"sqlite:///{tmp_path}/no/such/dir/ledger.db")
    assert result.returncode == 2, result.stderr
    state = tmp_path / "state"
    assert not (state / "root-cert.pem").exists()
    ca = start_ca(state)
    ca.stop()
    first = all_entries(f"sqlite:///{state / 'ledger.db'}")[0].content
    assert (first["kind"], first["reason"]) == ("ca_event", "created")
