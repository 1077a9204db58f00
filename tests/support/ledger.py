"""Shared pieces of the ledger tests: a fresh ledger on SQLite or on the real PostgreSQL server,
a ledger rig with a fake clock, raw-SQL tampering helpers, and `meshca serve` subprocesses.

PostgreSQL is the server on 127.0.0.1:5432 (trust auth); MESHCA_TEST_POSTGRES overrides the
admin URL. Each PostgreSQL ledger is a database of its own, created for one test and dropped
after it. Under CI (the CI variable set) an unreachable PostgreSQL fails the tests; elsewhere
they are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy import text
from sqlalchemy.engine import make_url

from ca.auth.base import Caller
from ca.issuance.issuer import IssuancePolicy, IssuedCertificate, Issuer
from ca.issuance.keys import KeyAlgorithm
from ca.issuance.selfsigned import RootFactory
from ca.issuance.spiffe_id import SpiffeId
from ca.ledger import checkpoint as cp
from ca.ledger.chain import GENESIS_HASH, Entry, chain_hash
from ca.ledger.entries import ISSUED
from ca.ledger.ledger import HEAD_FILE, KEY_FILE, HeadFile, Ledger, load_or_create_ledger_key
from ca.ledger.store import LedgerStore, sqlite_url
from ca.ledger.verify import VerifyReport, verify_ledger
from tests.support.clock import FakeClock
from tests.support.pki import ec_key, make_csr
from tests.support.ports import read_ports_file

POSTGRES_ADMIN_URL = os.environ.get("MESHCA_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ("sqlite", "postgresql")
TRUST_DOMAIN = "cluster.local"


# --------------------------------------------------------------------------- databases


def libpq_url(url: str) -> str:
    """The URL as psycopg takes it (no SQLAlchemy driver suffix)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@functools.cache
def postgres_problem() -> str | None:
    """Why the test PostgreSQL server cannot be used, or None if it can."""
    try:
        with psycopg.connect(libpq_url(POSTGRES_ADMIN_URL), connect_timeout=3, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as err:
        return str(err).strip().splitlines()[0]
    return None


def require_postgres() -> None:
    """Skip (locally) or fail (under CI) unless the test PostgreSQL server answers."""
    problem = postgres_problem()
    if problem is None:
        return
    where = make_url(POSTGRES_ADMIN_URL).render_as_string(hide_password=True)
    if os.environ.get("CI"):
        pytest.fail(
            f"PostgreSQL at {where} is not reachable ({problem}); CI runs the ledger tests on it, "
            "so start it (see .ci/run)",
            pytrace=False,
        )
    pytest.skip(
        f"PostgreSQL at {where} is not reachable ({problem}); start it (or set MESHCA_TEST_POSTGRES) "
        "to run the PostgreSQL ledger tests; under CI they fail instead of skipping"
    )


def postgres_url(database: str) -> str:
    return (
        make_url(POSTGRES_ADMIN_URL)
        .set(drivername="postgresql", database=database)
        .render_as_string(hide_password=False)
    )


@contextlib.contextmanager
def postgres_database(prefix: str = "meshca_test") -> Iterator[str]:
    """A fresh database on the test server, dropped (with any connection left to it) afterwards."""
    require_postgres()
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(libpq_url(POSTGRES_ADMIN_URL), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_url(name)
    finally:
        with psycopg.connect(libpq_url(POSTGRES_ADMIN_URL), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def fresh_ledger_url(backend: str, directory: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield sqlite_url(directory / f"ledger-{uuid.uuid4().hex[:8]}.db")
    elif backend == "postgresql":
        with postgres_database() as url:
            yield url
    else:
        raise ValueError(f"unknown ledger backend {backend!r}")


@pytest.fixture(params=BACKENDS)
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty ledger database: a SQLite file, or a fresh PostgreSQL database."""
    with fresh_ledger_url(request.param, tmp_path) as url:
        yield url


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def sqlite_path(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///"))


@contextlib.contextmanager
def ledger_locked(url: str) -> Iterator[None]:
    """Another client holds the lock every ledger write needs, as a stuck or hostile client would.

    SQLite: BEGIN EXCLUSIVE on another connection. PostgreSQL: LOCK TABLE ledger_head IN ACCESS
    EXCLUSIVE MODE in another transaction. The lock is released on leaving the block.
    """
    if is_sqlite(url):
        conn = sqlite3.connect(sqlite_path(url), timeout=10, isolation_level=None)
        try:
            conn.execute("BEGIN EXCLUSIVE")
            yield
            conn.execute("ROLLBACK")
        finally:
            conn.close()
    else:
        with psycopg.connect(libpq_url(url), autocommit=False) as conn:
            conn.execute("LOCK TABLE ledger_head IN ACCESS EXCLUSIVE MODE")
            yield
            conn.rollback()


# --------------------------------------------------------------------------- raw SQL


def sql(store: LedgerStore, statement: str, **params: Any) -> int:
    """Run one statement in its own transaction, as someone with database access would."""
    with store.engine.begin() as conn:
        return int(conn.execute(text(statement), params).rowcount)


def query(store: LedgerStore, statement: str, **params: Any) -> list[dict[str, Any]]:
    with store.engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(text(statement), params)]


def entry_hashes(store: LedgerStore) -> dict[int, str]:
    return {
        int(r["seq"]): str(r["entry_hash"])
        for r in query(store, "SELECT seq, entry_hash FROM ledger_entries")
    }


def rechain(store: LedgerStore, from_seq: int) -> None:
    """Recompute every link from `from_seq` on and the head row: what a careful forger does."""
    with store.engine.begin() as conn:
        before = conn.execute(
            text("SELECT entry_hash FROM ledger_entries WHERE seq = :s"), {"s": from_seq - 1}
        ).scalar()
        if before is None:
            before = conn.execute(text("SELECT anchor_hash FROM ledger_head WHERE id = 1")).scalar()
        previous = str(before or GENESIS_HASH)
        rows = conn.execute(
            text("SELECT seq, content FROM ledger_entries WHERE seq >= :s ORDER BY seq"), {"s": from_seq}
        ).all()
        last_seq = from_seq - 1
        for seq, content in rows:
            new_hash = chain_hash(previous, content)
            conn.execute(
                text("UPDATE ledger_entries SET prev_hash = :p, entry_hash = :h WHERE seq = :s"),
                {"p": previous, "h": new_hash, "s": seq},
            )
            previous, last_seq = new_hash, int(seq)
        conn.execute(
            text("UPDATE ledger_head SET seq = :s, hash = :h WHERE id = 1"), {"s": last_seq, "h": previous}
        )


@dataclass(frozen=True)
class Snapshot:
    """Every row of the ledger's tables: a backup to roll the whole database back to."""

    entries: list[dict[str, Any]]
    checkpoints: list[dict[str, Any]]
    head: list[dict[str, Any]]


def snapshot(store: LedgerStore) -> Snapshot:
    return Snapshot(
        entries=query(store, "SELECT * FROM ledger_entries ORDER BY seq"),
        checkpoints=query(store, "SELECT * FROM ledger_checkpoints ORDER BY head_seq"),
        head=query(store, "SELECT * FROM ledger_head"),
    )


def restore(store: LedgerStore, saved: Snapshot) -> None:
    with store.engine.begin() as conn:
        for table, rows in (
            ("ledger_entries", saved.entries),
            ("ledger_checkpoints", saved.checkpoints),
            ("ledger_head", saved.head),
        ):
            conn.execute(text(f"DELETE FROM {table}"))
            if rows:
                columns = list(rows[0])
                conn.execute(
                    text(
                        f"INSERT INTO {table} ({', '.join(columns)}) "
                        f"VALUES ({', '.join(':' + c for c in columns)})"
                    ),
                    rows,
                )


# --------------------------------------------------------------------------- reading a ledger


def verify_state(url: str, state_dir: Path, *, external: bool = True) -> VerifyReport:
    """verify_ledger as an auditor runs it: the state dir's key and head file, the given database."""
    store = LedgerStore(url)
    try:
        key = load_or_create_ledger_key(state_dir / KEY_FILE)
        head = HeadFile(state_dir / HEAD_FILE).read() if external else None
        return verify_ledger(store, key.public_key(), head)
    finally:
        store.dispose()


def all_entries(url: str) -> list[Entry]:
    store = LedgerStore(url)
    try:
        return list(store.entries())
    finally:
        store.dispose()


def issued_serials(entries: Sequence[Entry]) -> list[str]:
    return [e.content["serial"] for e in entries if e.content["kind"] == ISSUED]


# --------------------------------------------------------------------------- a ledger rig


@dataclass
class LedgerRig:
    """A Ledger on a real store, a real issuer and a fake clock; the head file in `directory`."""

    store: LedgerStore
    ledger: Ledger
    key: ed25519.Ed25519PrivateKey
    clock: FakeClock
    head_file: HeadFile
    issuer: Issuer
    saved: dict[str, Snapshot] = field(default_factory=dict)

    def issue(
        self,
        count: int = 1,
        *,
        ttl: timedelta = timedelta(hours=1),
        namespace: str = "shop",
        account: str = "cart",
    ) -> list[Entry]:
        caller = Caller(
            spiffe_id=SpiffeId.for_workload(TRUST_DOMAIN, namespace, account),
            namespace=namespace,
            service_account=account,
            method="jwt",
            pod_name=f"{account}-0",
            pod_uid=str(uuid.uuid4()),
            token_id=uuid.uuid4().hex,
        )
        written = []
        for _ in range(count):
            issued = self.issue_certificate(caller, ttl)
            future = self.ledger.record_issued(
                issued, caller, client_address="ipv4:127.0.0.1:40000", cluster_id="Kubernetes"
            )
            written.append(future.result(timeout=10))
        return written

    def issue_certificate(self, caller: Caller, ttl: timedelta) -> IssuedCertificate:
        from ca.issuance.csr import parse_csr

        csr = parse_csr(make_csr(ec_key()), self.issuer.policy.key_policy)
        return self.issuer.issue(
            spiffe_id=caller.spiffe_id, csr=csr, requested_ttl_seconds=int(ttl.total_seconds())
        )

    def refuse(self, reason: str = "token_expired") -> Entry:
        return self.ledger.record_refusal(
            reason=reason,
            status_code="UNAUTHENTICATED",
            message=f"refused: {reason}",
            client_address="ipv4:127.0.0.1:40001",
            caller=None,
        ).result(timeout=10)

    def event(self, event: str = "created") -> Entry:
        return self.ledger.record_ca_event(event, self.issuer.authority).result(timeout=10)

    def checkpoint(self) -> cp.Checkpoint:
        made = self.ledger.checkpoint()
        assert made is not None, "nothing new to checkpoint"
        return made

    def verify(self, *, external: bool = True) -> VerifyReport:
        return verify_ledger(self.store, self.key.public_key(), self.head_file.read() if external else None)

    def hashes(self) -> dict[int, str]:
        return entry_hashes(self.store)


@contextlib.contextmanager
def ledger_rig(url: str, directory: Path, clock: FakeClock | None = None) -> Iterator[LedgerRig]:
    clock = clock or FakeClock()
    directory.mkdir(parents=True, exist_ok=True)
    store = LedgerStore(url)
    store.migrate()
    key = load_or_create_ledger_key(directory / KEY_FILE)
    head_file = HeadFile(directory / HEAD_FILE)
    ledger = Ledger(store, key=key, clock=clock, publishers=[head_file.publish])
    authority = RootFactory(
        trust_domain=TRUST_DOMAIN, key_algorithm=KeyAlgorithm.EC_P256, clock=clock
    ).create(source=str(directory))
    issuer = Issuer(authority=authority, policy=IssuancePolicy(), clock=clock)
    try:
        yield LedgerRig(store, ledger, key, clock, head_file, issuer)
    finally:
        ledger.close()


# --------------------------------------------------------------------------- meshca serve processes

MESHCA = [sys.executable, "-m", "ca.cli"]


def _server_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MESHCA_") and k not in ("KUBERNETES_SERVICE_HOST", "KUBECONFIG")
    }


@dataclass
class CaProcesses:
    """`meshca serve` subprocesses sharing one state dir; each on its own port."""

    state_dir: Path
    log_dir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def start(self, count: int, *flags: str, timeout_s: float = 60.0) -> list[int]:
        """Start `count` servers at once (concurrent first starts), each on a free port, and wait
        until all have bound them; returns their ports."""
        started: list[tuple[subprocess.Popen[bytes], Path, Path]] = []
        for _ in range(count):
            name = f"meshca-{len(self.procs) + 1}"
            log, ports_file = self.log_dir / f"{name}.log", self.log_dir / f"{name}.ports"
            with open(log, "wb") as out:
                proc = subprocess.Popen(
                    [
                        *MESHCA,
                        "serve",
                        "--state-dir",
                        str(self.state_dir),
                        "--listen",
                        "127.0.0.1:0",
                        "--ports-file",
                        str(ports_file),
                        "--renew-listen",
                        "off",
                        "--metrics-listen",
                        "off",
                        "--log-level",
                        "warning",
                        *flags,
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=_server_env(),
                )
            self.procs.append(proc)
            self.logs.append(log)
            started.append((proc, log, ports_file))
        deadline = time.monotonic() + timeout_s
        ports = []
        for proc, log, ports_file in started:
            remaining = max(0.1, deadline - time.monotonic())
            ports.append(read_ports_file(ports_file, proc, timeout=remaining, log=log)["grpc"])
        self.ports.extend(ports)
        return ports

    def stop(self, timeout_s: float = 20.0) -> list[int]:
        """SIGTERM every server and wait; returns their exit codes."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        codes = []
        for proc in self.procs:
            try:
                codes.append(proc.wait(timeout=timeout_s))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait(timeout=10))
        return codes

    def output(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')}" for log in self.logs)


DAY = timedelta(days=1)


def leaf_serial(chain: list[str]) -> str:
    """The serial of the leaf of a PEM chain, as the ledger records it (lower-case hex)."""
    return format(x509.load_pem_x509_certificate(chain[0].encode()).serial_number, "x")
