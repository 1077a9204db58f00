#!/usr/bin/env python3
"""CPU per record of the ledger process's work with certificate fingerprints sliced from DER
(ca.issuance.x509_der) against the same fingerprints from `cryptography` (decode the certificate,
re-encode its public key).

Run from the project root with the project's virtualenv:

    .venv/bin/python scripts/bench_ledger_fingerprints.py [ROUNDS [BATCH]]   # 7 rounds, 64

In-process, on a SQLite ledger in a temporary directory, it does per batch what the
ledger process (ca.ledger.process_writer) does: unpickle the batch of IssuedRecords,
`LedgerStore.append` it (fingerprint, encode, chain, INSERT, COMMIT) and pickle the
written entries. Both ways alternate every 512 records, so the host's drift hits
both alike. Prints CPU per record both ways, the fingerprint functions alone, and the
saving per record as a share of the ledger process's work and of 1.07 ms, the CA's
CPU per certificate end to end measured on the 2-core development host.
"""

from __future__ import annotations

import hashlib
import pickle
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for ca

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca.issuance import x509_der
from ca.ledger import entries
from ca.ledger.entries import IssuedRecord
from ca.ledger.store import LedgerStore, sqlite_url

CA_CPU_PER_CERTIFICATE_S = 1.07e-3
DISTINCT = 256
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 7
BATCH = int(sys.argv[2]) if len(sys.argv) > 2 else 64
RECORDS_PER_ROUND = 4096

Fingerprints = Callable[[str], tuple[str, str]]
sliced: Fingerprints = x509_der.certificate_fingerprints


def use(fingerprints: Fingerprints) -> None:
    """Make the ledger's encoding call `fingerprints` (ca.ledger.entries imported the function by name)."""
    vars(entries)["certificate_fingerprints"] = fingerprints


def decoded(certificate_pem: str) -> tuple[str, str]:
    cert = x509.load_pem_x509_certificate(certificate_pem.encode())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest(), cert.fingerprint(hashes.SHA256()).hex()


def certificates() -> list[str]:
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cluster.local")])
    pems = []
    for i in range(DISTINCT):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(hours=24))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(f"spiffe://cluster.local/ns/bench-{i % 16}/sa/sa-{i}")]
                ),
                critical=True,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                False,
            )
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(ca_key, hashes.SHA256())
        )
        pems.append(cert.public_bytes(serialization.Encoding.PEM).decode())
    return pems


def records(pems: list[str]) -> list[IssuedRecord]:
    now = datetime.now(UTC)
    return [
        IssuedRecord(
            time=now,
            serial=x509.random_serial_number(),
            spiffe_id=f"spiffe://cluster.local/ns/bench-{i % 16}/sa/sa-{i % 64}",
            namespace=f"bench-{i % 16}",
            service_account=f"sa-{i % 64}",
            service_account_uid="7c2b6a1e-0f7d-4a55-9d0e-3f1b2c4d5e6f",
            pod_name=f"pod-{i}",
            pod_uid="1a2b3c4d-0f7d-4a55-9d0e-3f1b2c4d5e6f",
            node_name="node-1",
            token_id=f"jti-{i}",
            auth_method="kubernetes",
            cluster_id="Kubernetes",
            client_address="ipv4:10.0.0.7:51234",
            key_type="ec-p256",
            certificate_pem=pems[i % len(pems)],
            not_before=now,
            not_after=now + timedelta(hours=24),
            ca_key_id="ab" * 20,
            ca_fingerprint="cd" * 32,
        )
        for i in range(RECORDS_PER_ROUND)
    ]


def ledger_cpu_per_record(store: LedgerStore, work: list[IssuedRecord]) -> float:
    """What the ledger process does per batch: unpickle it, append it, pickle the reply."""
    batches = [pickle.dumps(work[i : i + BATCH]) for i in range(0, len(work), BATCH)]
    start = time.process_time()
    for payload in batches:
        batch = pickle.loads(payload)
        written = store.append(batch)
        pickle.dumps(("written", written))
    return (time.process_time() - start) / len(work)


def fingerprint_cost(function: Fingerprints, pems: list[str], count: int = 20000) -> float:
    start = time.process_time()
    for i in range(count):
        function(pems[i % len(pems)])
    return (time.process_time() - start) / count


def main() -> None:
    pems = certificates()
    assert all(sliced(p) == decoded(p) for p in pems)
    work = records(pems)
    directory = Path(tempfile.mkdtemp(prefix="meshca-bench-ledger-"))
    try:
        measure(work, pems, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def measure(work: list[IssuedRecord], pems: list[str], directory: Path) -> None:
    store = LedgerStore(sqlite_url(directory / "ledger.db"))
    store.migrate()
    ledger_cpu_per_record(store, work[:512])  # warm up
    per_record: dict[str, list[float]] = {"x509_der": [], "cryptography": []}
    per_call: dict[str, list[float]] = {"x509_der": [], "cryptography": []}
    variants: dict[str, Fingerprints] = {"x509_der": sliced, "cryptography": decoded}
    chunk = 512
    for number in range(ROUNDS):
        spent = dict.fromkeys(variants, 0.0)
        for at in range(0, len(work), chunk):  # the two ways alternate chunk by chunk
            names = list(variants) if (at // chunk + number) % 2 == 0 else list(reversed(variants))
            for name in names:
                use(variants[name])
                spent[name] += ledger_cpu_per_record(store, work[at : at + chunk]) * chunk
        for name in variants:
            per_record[name].append(spent[name] / len(work))
            per_call[name].append(fingerprint_cost(variants[name], pems))
    use(sliced)
    print(f"{ROUNDS} rounds of {RECORDS_PER_ROUND} records in batches of {BATCH} (SQLite file ledger)")
    for label, table in (
        ("ledger process CPU per record", per_record),
        ("fingerprints alone per call", per_call),
    ):
        print(label)
        for name, values in table.items():
            print(
                f"  {name:13} median {statistics.median(values) * 1e6:6.1f} us"
                f"  [{min(values) * 1e6:6.1f} .. {max(values) * 1e6:6.1f}]"
            )
    saved = [c - s for c, s in zip(per_record["cryptography"], per_record["x509_der"], strict=True)]
    median_saved = statistics.median(saved)
    low, high = min(saved) * 1e6, max(saved) * 1e6
    print(
        f"saved per record: median {median_saved * 1e6:.1f} us [{low:.1f} .. {high:.1f}]"
        f" = {median_saved / statistics.median(per_record['cryptography']):.1%} of the ledger process's work"
        f" = {median_saved / CA_CPU_PER_CERTIFICATE_S:.2%} of the CA's CPU per certificate"
    )


if __name__ == "__main__":
    main()
