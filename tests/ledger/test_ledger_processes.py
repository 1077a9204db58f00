"""Several `meshca serve` processes sharing one state dir and one ledger, issuing at once.

On SQLite (one file) and on the real PostgreSQL server: every certificate returned to a
client has exactly one `issued` record, the records form one contiguous chain, and the
ledger verifies against the checkpoints and the head file signed with the shared key.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from itertools import cycle
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca._proto import istio_ca_pb2, istio_ca_pb2_grpc
from ca.common.clock import SystemClock
from ca.ledger import checkpoint as cp
from ca.ledger.entries import CA_EVENT, ISSUED
from ca.ledger.ledger import KEY_FILE, load_or_create_ledger_key
from ca.ledger.store import LedgerStore
from ca.server.devtoken import DevTokenIssuer
from tests.support import ledger as ledger_support
from tests.support.ledger import CaProcesses, all_entries, verify_state
from tests.support.pki import ec_key, make_csr

ledger_url = ledger_support.ledger_url  # the fixture: SQLite and PostgreSQL

PROCESSES = 3
CERTIFICATES = 300
CLIENT_THREADS = 16
Work = tuple[str, str, str]  # token, the SPIFFE ID it proves, CSR
Stub = istio_ca_pb2_grpc.IstioCertificateServiceStub


def _leaf(chain: list[str]) -> x509.Certificate:
    return x509.load_pem_x509_certificate(chain[0].encode())


@pytest.mark.slow
def test_concurrent_issuance_from_several_processes(ledger_url: str, tmp_path: Path) -> None:
    state, logs = tmp_path / "state", tmp_path / "logs"
    logs.mkdir()
    tokens_signer = DevTokenIssuer.load_or_create(state, SystemClock())  # the servers trust it
    work = [
        (
            tokens_signer.mint(namespace=f"ns-{i % 5}", service_account=f"sa-{i % 7}"),
            f"spiffe://cluster.local/ns/ns-{i % 5}/sa/sa-{i % 7}",
            make_csr(ec_key()),
        )
        for i in range(CERTIFICATES)
    ]
    fleet = CaProcesses(state, logs)
    try:
        # All at once: concurrent first starts agree on one root, one ledger key, one schema.
        ports = fleet.start(PROCESSES, "--ledger", ledger_url, "--ledger-checkpoint-interval", "1s")
        bundle = (state / "root-cert.pem").read_bytes()
        channels = [
            grpc.secure_channel(
                f"127.0.0.1:{port}",
                grpc.ssl_channel_credentials(bundle),
                options=[("grpc.ssl_target_name_override", "localhost")],
            )
            for port in ports
        ]
        stubs = [istio_ca_pb2_grpc.IstioCertificateServiceStub(c) for c in channels]

        def issue(
            job: tuple[tuple[str, str, str], istio_ca_pb2_grpc.IstioCertificateServiceStub],
        ) -> list[str]:
            (token, _, csr), stub = job
            response = stub.CreateCertificate(
                istio_ca_pb2.IstioCertificateRequest(csr=csr),
                metadata=[("authorization", f"Bearer {token}")],
                timeout=30,
            )
            return list(response.cert_chain)

        with ThreadPoolExecutor(CLIENT_THREADS) as pool:
            chains = list(pool.map(issue, zip(work, cycle(stubs), strict=False)))
        for channel in channels:
            channel.close()
    finally:
        codes = fleet.stop()
    assert codes == [0] * PROCESSES, fleet.output()

    returned = {}
    for (_, spiffe_id, _), chain in zip(work, chains, strict=True):
        leaf = _leaf(chain)
        returned[format(leaf.serial_number, "x")] = (
            spiffe_id,
            hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest(),
        )
    assert len(returned) == CERTIFICATES  # distinct serials

    entries = all_entries(ledger_url)
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1)), "the seqs are not contiguous"
    issued = [e.content for e in entries if e.content["kind"] == ISSUED]
    per_serial = Counter(c["serial"] for c in issued)
    assert set(per_serial) == set(returned), "issued records and returned certificates differ"
    assert set(per_serial.values()) == {1}, [s for s, n in per_serial.items() if n > 1]
    for content in issued:
        assert (content["spiffe_id"], content["certificate_sha256"]) == returned[content["serial"]]
    events = [e.content["reason"] for e in entries if e.content["kind"] == CA_EVENT]
    assert sorted(events) == ["created"] + ["loaded"] * (PROCESSES - 1)
    assert len(entries) == CERTIFICATES + PROCESSES

    report = verify_state(ledger_url, state)
    assert report.ok, report.summary()
    assert report.entries_checked == len(entries) and report.checkpoints_checked >= 1
    store = LedgerStore(ledger_url)
    try:
        key_id = cp.key_id(load_or_create_ledger_key(state / KEY_FILE).public_key())
        assert {c.key_id for c in store.checkpoints()} == {key_id}
        assert store.head()[0] == len(entries)
    finally:
        store.dispose()
