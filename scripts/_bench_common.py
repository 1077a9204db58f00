"""Shared pieces of scripts/bench_ca.py: the request pool, `meshca serve` processes, load clients.

The client side runs in separate processes (multiprocessing, spawn start method): each
process opens a few TLS channels to the CA and keeps requests in flight on each with
grpc futures, either closed loop (a fixed number in flight per channel) or open loop
(sends on a fixed timetable, latency counted from the scheduled send time).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import itertools
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SERVICE_METHOD = "/istio.v1.auth.IstioCertificateService/CreateCertificate"
TRUST_DOMAIN = "cluster.local"
CLUSTER_ID = "Kubernetes"  # `meshca serve`'s default --cluster-id; Istio agents send it
TARGET_NAME = "localhost"
RPC_TIMEOUT_S = 30.0
MAX_RATE_PER_CHANNEL = 50_000.0  # hard bound on sends per second per channel (loop bound)
OPEN_LOOP_MAX_IN_FLIGHT = 2_000  # per channel; beyond this a sender waits (its lag is counted)


# --------------------------------------------------------------------------- pool


@dataclass(frozen=True)
class RequestPool:
    """Pre-generated work: element i pairs CSR i with token i (same identity)."""

    csr_pems: tuple[str, ...]
    tokens: tuple[str, ...]
    spiffe_ids: tuple[str, ...]
    requests: tuple[bytes, ...]  # serialized IstioCertificateRequest(csr=csr_pems[i])
    metadata: tuple[tuple[tuple[str, str], ...], ...]  # gRPC headers for element i

    def __len__(self) -> int:
        return len(self.requests)


def make_pool(state_dir: Path, size: int) -> RequestPool:
    """`size` EC P-256 keys + CSRs and as many dev tokens, minted by the state dir's signer.

    Tokens are Kubernetes-shaped (pod-bound, audience istio-ca) and spread over 16
    namespaces x 64 service accounts; every token is distinct (its own jti).
    """
    import uuid

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from ca._proto import istio_ca_pb2
    from ca.common.clock import SystemClock
    from ca.server.devtoken import DevTokenIssuer

    dev = DevTokenIssuer.load_or_create(state_dir, SystemClock())
    csrs: list[str] = []
    tokens: list[str] = []
    ids: list[str] = []
    for i in range(size):
        namespace, account = f"bench-{i % 16}", f"sa-{i % 64}"
        spiffe_id = f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{account}"
        tokens.append(
            dev.mint(
                namespace=namespace,
                service_account=account,
                pod_name=f"{account}-{i}",
                pod_uid=str(uuid.uuid4()),
            )
        )
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        csrs.append(csr.public_bytes(serialization.Encoding.PEM).decode())
        ids.append(spiffe_id)
    requests = tuple(istio_ca_pb2.IstioCertificateRequest(csr=c).SerializeToString() for c in csrs)
    metadata = tuple((("authorization", f"Bearer {t}"), ("clusterid", CLUSTER_ID)) for t in tokens)
    return RequestPool(tuple(csrs), tuple(tokens), tuple(ids), requests, metadata)


# --------------------------------------------------------------------------- statistics


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (q in 0..1); NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def sleep_until(deadline: float) -> None:
    while True:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            return
        time.sleep(remaining)


# --------------------------------------------------------------------------- servers


@contextlib.contextmanager
def reserved_port() -> Iterator[int]:
    """A loopback port bound here but not listening: connections to it are refused and no other
    process gets it (neither a bind to port 0 nor an outgoing connection), except a server told to
    listen on this very port that binds with SO_REUSEADDR, as meshca's servers and Envoy do. For a
    port nothing may listen on, and for a child started on a port known before it runs."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def read_ports_file(path: Path, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> dict[str, Any]:
    """What a meshca process started with `--ports-file` (and port 0) reports once it has bound its
    ports. The file is written atomically: once it exists it is whole."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(FileNotFoundError):
            ports: dict[str, Any] = json.loads(path.read_text())
            return ports
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before writing {path}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} not written within {timeout_s:.0f}s")
        time.sleep(0.02)


def envoy_listener_port(admin_address_path: Path, name: str, proc: subprocess.Popen[bytes]) -> int:
    """The port Envoy's listener `name` is bound to (configured as port 0), from its admin API; the
    admin's own address is what Envoy wrote to `--admin-address-path`."""
    import urllib.request

    deadline = time.monotonic() + 30.0
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"envoy exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError, ValueError):
            admin = admin_address_path.read_text().strip()
            with urllib.request.urlopen(f"http://{admin}/listeners?format=json", timeout=2) as answer:
                for item in json.loads(answer.read())["listener_statuses"]:
                    if item["name"] == name:
                        return int(item["local_address"]["socket_address"]["port_value"])
        if time.monotonic() > deadline:
            raise TimeoutError(f"envoy's listener {name} not active within 30s")
        time.sleep(0.02)


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) and of the processes it runs
    (meshca serve's ledger process), from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            after_comm = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    own = (int(after_comm[11]) + int(after_comm[12])) / _CLK_TCK
    return own + sum(process_cpu_seconds(child) for child in _children(pid))


def descendants(pid: int) -> list[int]:
    """Every process below `pid`: its children, theirs, and so on."""
    found: list[int] = []
    for child in _children(pid):
        found += [child, *descendants(child)]
    return found


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found.extend(int(child) for child in children.read_text().split())
    return found


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the benchmark dies without cleaning up."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _before_exec(cpus: tuple[int, ...] | None) -> None:
    _die_with_parent()
    if cpus is not None:
        os.sched_setaffinity(0, cpus)


def meshca_command() -> list[str]:
    beside = Path(sys.executable).with_name("meshca")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("meshca")
    return [found] if found else [sys.executable, "-m", "ca.cli"]


def _server_env(code: Path | None = None) -> dict[str, str]:
    # Flags win over MESHCA_* anyway, but drop them and any in-cluster hint so that the
    # server cannot pick up cluster access or other settings from this shell.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MESHCA_") and k not in ("KUBERNETES_SERVICE_HOST", "KUBECONFIG")
    }
    if code is not None:  # ahead of the installed package (an editable install's finder comes last)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code), env.get("PYTHONPATH")]))
    return env


@dataclass
class ServerFleet:
    """`meshca serve` subprocesses; `stop_all` (also run on exit of the with-block) kills them."""

    state_dir: Path
    log_dir: Path
    ca_key_type: str
    grpc_workers: int | None = None
    grpc_server: str | None = None
    pool_file: Path | None = None  # needed by the floor server
    # `meshca serve --ledger`: "off" (no issuance ledger), "auto" (SQLite in the state dir,
    # the server's default) or a sqlite:/// or postgresql:// URL.
    ledger: str = "off"
    # CPUs the server and every process it starts (the ledger writer) may run on, set
    # before exec so that they inherit it; None leaves the affinity alone.
    cpus: tuple[int, ...] | None = None
    # A source tree whose `ca` package the servers run instead of this checkout's (a baseline
    # to compare with: `git archive REV ca | tar -x -C DIR`).
    code: Path | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)  # logs[i] is the output of procs[i]
    started: int = 0

    def __enter__(self) -> ServerFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def start(
        self, *, token_cache_size: int, floor: bool = False, timeout_s: float = 30.0
    ) -> tuple[int, int]:
        """Start a server on a free port and wait until it has bound it: (its pid, its port).

        `floor` starts the transport-floor server (see floor_server_main) instead of meshca.
        """
        ports_file = self.log_dir / f"server-{self.started + 1}.ports"
        ports_file.unlink(missing_ok=True)  # another fleet's, in the same directory: not this server's
        pid = self._spawn(ports_file, token_cache_size, floor)
        self._wait(ports_file.exists, timeout_s, f"{ports_file} to be written")
        return pid, int(json.loads(ports_file.read_text())["grpc"])

    def _spawn(self, ports_file: Path, token_cache_size: int, floor: bool) -> int:
        if floor:
            if self.pool_file is None:
                raise ValueError("the floor server needs the pool file")
            args = [
                sys.executable,
                str(Path(__file__).resolve()),
                "floor-server",
                "--state-dir",
                str(self.state_dir),
                "--ports-file",
                str(ports_file),
                "--pool-file",
                str(self.pool_file),
            ]
        else:
            args = self._meshca_args(ports_file, token_cache_size)
        if self.grpc_workers is not None:
            args += ["--grpc-workers", str(self.grpc_workers)]
        if self.grpc_server is not None:
            args += ["--grpc-server", self.grpc_server]
        self.started += 1
        log_path = self.log_dir / f"server-{self.started}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_server_env(self.code),
                preexec_fn=functools.partial(_before_exec, self.cpus),
            )
        self.procs.append(proc)
        self.logs.append(log_path)
        return proc.pid

    def _meshca_args(self, ports_file: Path, token_cache_size: int) -> list[str]:
        return [
            *meshca_command(),
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
            "--ca-key-type",
            self.ca_key_type,
            "--token-cache-size",
            str(token_cache_size),
            "--ledger",
            self.ledger,
            "--log-level",
            "warning",
        ]

    def _wait(self, ready: Any, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            dead = [(p, log) for p, log in zip(self.procs, self.logs, strict=True) if p.poll() is not None]
            if dead:
                proc, log = dead[0]
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(
                    f"meshca serve exited with {proc.returncode} while waiting for {what}:\n{tail}"
                )
            if ready():
                return
            time.sleep(0.05)
        raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")

    def running_pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.poll() is None]

    def stop_all(self, grace_s: float = 3.0) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + grace_s
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self.procs.clear()
        self.logs.clear()


# --------------------------------------------------------------------------- ledger databases


def _libpq(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextlib.contextmanager
def fresh_postgres_database(admin_url: str, prefix: str = "meshca_bench") -> Iterator[str]:
    """A new database on the server of `admin_url` (for a PostgreSQL ledger), dropped afterwards.

    Raises psycopg.Error if the server cannot be reached or the database not made.
    """
    import uuid

    import psycopg
    from sqlalchemy.engine import make_url

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_libpq(admin_url), connect_timeout=5, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield (
            make_url(admin_url)
            .set(drivername="postgresql", database=name)
            .render_as_string(hide_password=False)
        )
    finally:
        with psycopg.connect(_libpq(admin_url), connect_timeout=5, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass(frozen=True)
class LedgerCheck:
    entries: int
    issued: int
    verified: bool
    summary: str


def check_ledger(url: str, state_dir: Path) -> LedgerCheck:
    """Count a ledger's records and verify its chain and checkpoints with the state dir's key.

    The head file is not used: ledgers on several databases share one state dir here.
    """
    from sqlalchemy import func, select

    from ca.ledger import schema
    from ca.ledger.ledger import KEY_FILE, load_or_create_ledger_key
    from ca.ledger.store import LedgerStore
    from ca.ledger.verify import verify_ledger

    store = LedgerStore(url)
    try:
        with store.engine.connect() as conn:
            issued = conn.execute(
                select(func.count()).select_from(schema.entries).where(schema.entries.c.kind == "issued")
            ).scalar_one()
        report = verify_ledger(store, load_or_create_ledger_key(state_dir / KEY_FILE).public_key())
        return LedgerCheck(store.count(), int(issued), report.ok, report.summary())
    finally:
        store.dispose()


# --------------------------------------------------------------------------- transport floor


def write_pool_file(path: Path, pool: RequestPool) -> None:
    document = {"tokens": pool.tokens, "csr_pems": pool.csr_pems, "spiffe_ids": pool.spiffe_ids}
    path.write_text(json.dumps(document))


def floor_server_main(argv: Sequence[str]) -> int:
    """A gRPC server built like `meshca serve` (same TLS identity, thread pool and options)
    whose handler only looks up a response issued in advance for the caller's token.

    What it serves per second is the most any handler could reach through grpcio's sync
    server, TLS and these Python clients on this machine: the transport floor.
    """
    import argparse
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    from ca._proto import istio_ca_pb2
    from ca.common.clock import SystemClock
    from ca.issuance.csr import parse_csr
    from ca.issuance.issuer import IssuancePolicy, Issuer
    from ca.issuance.keys import KeyAlgorithm
    from ca.issuance.selfsigned import RootFactory
    from ca.issuance.slots import RotationPolicy
    from ca.issuance.spiffe_id import SpiffeId
    from ca.net.listening import write_ports_file
    from ca.server.grpc_server import OPTIONS
    from ca.server.keyring_store import KeyringDirectory
    from ca.server.serving_cert import ServingIdentity
    from ca.server.settings import DEFAULT_DNS_NAMES

    parser = argparse.ArgumentParser(prog="_bench_common.py floor-server")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--ports-file", type=Path, required=True)  # it listens on a free port
    parser.add_argument("--pool-file", type=Path, required=True)
    parser.add_argument("--grpc-workers", type=int, default=16)  # meshca serve's default
    parser.add_argument("--grpc-server", choices=["threaded", "asyncio"], default="threaded")
    args = parser.parse_args(argv)

    clock = SystemClock()
    factory = RootFactory(trust_domain=TRUST_DOMAIN, key_algorithm=KeyAlgorithm.EC_P256, clock=clock)
    stored, _ = KeyringDirectory(args.state_dir).load_or_create(factory, RotationPolicy(), clock)
    authority = stored.keyring.signing_authority()  # the bench made it: loaded
    issuer = Issuer(authority=authority, policy=IssuancePolicy(), clock=clock)
    document = json.loads(args.pool_file.read_text())
    responses: dict[str, bytes] = {}
    for token, pem, uri in zip(document["tokens"], document["csr_pems"], document["spiffe_ids"], strict=True):
        issued = issuer.issue(
            spiffe_id=SpiffeId.parse(uri),
            csr=parse_csr(pem, issuer.policy.key_policy),
            requested_ttl_seconds=0,
        )
        response = istio_ca_pb2.IstioCertificateResponse(cert_chain=issued.chain)
        responses[f"Bearer {token}"] = response.SerializeToString()

    def create_certificate(request: bytes, context: grpc.ServicerContext) -> bytes:
        for key, value in context.invocation_metadata():
            if key == "authorization" and value in responses:
                return responses[value]
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "token not in the benchmark pool")
        raise AssertionError("unreachable")

    serving = ServingIdentity(
        authority=authority,
        hosts=[h for h in DEFAULT_DNS_NAMES.split(",") if h],
        spiffe_id=SpiffeId.for_workload(TRUST_DOMAIN, "istio-system", "meshca"),
        clock=clock,
    )
    if args.grpc_server == "asyncio":
        return _serve_floor_on_asyncio(args.ports_file, responses, serving)
    server = grpc.server(
        ThreadPoolExecutor(max_workers=args.grpc_workers, thread_name_prefix="grpc"),
        options=OPTIONS,
        maximum_concurrent_rpcs=args.grpc_workers * 64,
    )
    handler = grpc.unary_unary_rpc_method_handler(create_certificate)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE_METHOD.split("/")[1], {"CreateCertificate": handler}),)
    )
    port = server.add_secure_port("127.0.0.1:0", serving.server_credentials(require_client_cert=False))
    server.start()
    write_ports_file(args.ports_file, {"grpc": port})
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    server.stop(0.5).wait()
    return 0


def _serve_floor_on_asyncio(ports_file: Path, responses: dict[str, bytes], serving: Any) -> int:
    """The transport floor on grpc.aio, as `meshca serve` runs by default: the handler on the loop."""
    import asyncio

    import grpc

    from ca.net.listening import write_ports_file
    from ca.server.grpc_server import OPTIONS

    async def create_certificate(request: bytes, context: Any) -> bytes:
        for key, value in context.invocation_metadata():
            if key == "authorization" and value in responses:
                return responses[value]
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "token not in the benchmark pool")
        raise AssertionError("unreachable")

    async def serve() -> None:
        server = grpc.aio.server(options=OPTIONS, maximum_concurrent_rpcs=1024)
        handler = grpc.unary_unary_rpc_method_handler(create_certificate)
        service = SERVICE_METHOD.split("/")[1]
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, {"CreateCertificate": handler}),)
        )
        port = server.add_secure_port("127.0.0.1:0", serving.server_credentials(require_client_cert=False))
        await server.start()
        write_ports_file(ports_file, {"grpc": port})
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        await server.stop(0.5)

    asyncio.run(serve())
    return 0


# --------------------------------------------------------------------------- load clients


@dataclass(frozen=True)
class LoadSpec:
    """What one client process does. Closed loop if `total_rate` is None, else open loop."""

    port: int
    root_pem: bytes
    pool: RequestPool
    channels: int
    in_flight: tuple[int, ...]  # per channel of this process (closed loop)
    channel_base: int  # global index of this process's first channel
    total_channels: int
    total_rate: float | None  # requests/s over all processes (open loop)
    warmup_s: float
    duration_s: float
    drain_s: float
    # Striped: channel c of C sends pool elements c, c+C, c+2C, ..., so that no element
    # comes back before the whole pool has been sent once (a token cache smaller than the
    # pool then never hits). Otherwise channels walk the pool from scattered offsets.
    striped: bool = False
    cpus: tuple[int, ...] | None = None  # the client process's CPU affinity


@dataclass
class ClientResult:
    ok_in_window: int = 0  # successful responses that arrived inside the window
    sent_in_window: int = 0
    latencies_s: list[float] = field(default_factory=list)  # OK requests started in the window
    started_s: list[float] = field(default_factory=list)  # their start (perf_counter), in the same order
    errors: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    unfinished: int = 0  # sent but not answered by the end of the drain
    cpu_s: float = 0.0  # this process's CPU time inside the window
    max_send_lag_s: float = 0.0  # open loop: how late the sender was against its timetable


Record = tuple[float, float, Any, str]  # start, end, status code, details


class _Channel:
    """One TLS channel (its own TCP connection) and the records of its calls."""

    def __init__(self, grpc: Any, port: int, root_pem: bytes, global_index: int) -> None:
        credentials = grpc.ssl_channel_credentials(root_certificates=root_pem)
        self.channel = grpc.secure_channel(
            f"127.0.0.1:{port}",
            credentials,
            options=[
                ("grpc.ssl_target_name_override", TARGET_NAME),
                # A private subchannel pool: each channel gets its own connection.
                ("grpc.use_local_subchannel_pool", 1),
                ("grpc.max_receive_message_length", 4 * 1024 * 1024),
            ],
        )
        self.call = self.channel.unary_unary(
            SERVICE_METHOD, request_serializer=None, response_deserializer=None, _registered_method=True
        )
        self.index = global_index
        self.records: list[Record] = []
        self.sent = 0
        self.max_lag = 0.0


def _check_response(raw: bytes, expected_id: str) -> None:
    from cryptography import x509

    from ca._proto import istio_ca_pb2

    chain = list(istio_ca_pb2.IstioCertificateResponse.FromString(raw).cert_chain)
    if len(chain) < 2:
        raise RuntimeError(f"the CA answered with a chain of {len(chain)} element(s); expected >= 2")
    leaf = x509.load_pem_x509_certificate(chain[0].encode())
    uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = uris.get_values_for_type(x509.UniformResourceIdentifier)
    if names != [expected_id]:
        raise RuntimeError(f"the leaf names {names}, expected [{expected_id!r}]")


def _on_done(ch: _Channel, start: float, slots: threading.Semaphore, future: Any) -> None:
    try:
        end = time.perf_counter()
        code = future.code()
        details = "" if code is None or code.name == "OK" else (future.details() or "")
        ch.records.append((start, end, code, details))
    finally:
        slots.release()


def _walk(ch: _Channel, spec: LoadSpec) -> Iterator[int]:
    """The pool elements channel `ch` sends, in order (see LoadSpec.striped)."""
    n = len(spec.pool)
    if spec.striped:
        return (i % n for i in itertools.count(ch.index, spec.total_channels))
    return (i % n for i in itertools.count(ch.index * 7919))  # scattered offsets


def _closed_loop(ch: _Channel, spec: LoadSpec, in_flight: int, t_begin: float, t_end: float) -> None:
    slots = threading.Semaphore(in_flight)
    pool = spec.pool
    deadline = t_end + spec.drain_s
    max_sends = int((t_end - t_begin) * MAX_RATE_PER_CHANNEL) + in_flight
    walk = _walk(ch, spec)
    sleep_until(t_begin)
    while ch.sent < max_sends:
        if not slots.acquire(timeout=max(0.0, deadline - time.perf_counter())):
            break
        now = time.perf_counter()
        if now >= t_end:
            slots.release()
            break
        j = next(walk)
        future = ch.call.future(pool.requests[j], metadata=pool.metadata[j], timeout=RPC_TIMEOUT_S)
        ch.sent += 1
        future.add_done_callback(functools.partial(_on_done, ch, now, slots))
    for _ in range(in_flight):  # drain: wait for the calls still in flight
        if not slots.acquire(timeout=max(0.0, deadline - time.perf_counter())):
            break


def _open_loop(ch: _Channel, spec: LoadSpec, rate: float, t_first: float, t_end: float) -> None:
    slots = threading.Semaphore(OPEN_LOOP_MAX_IN_FLIGHT)
    pool = spec.pool
    deadline = t_end + spec.drain_s
    interval = 1.0 / rate
    count = min(int((t_end - t_first) * rate), int((t_end - t_first) * MAX_RATE_PER_CHANNEL))
    walk = _walk(ch, spec)
    for k in range(max(0, count)):
        scheduled = t_first + k * interval
        sleep_until(scheduled)
        if not slots.acquire(timeout=max(0.0, deadline - time.perf_counter())):
            break
        j = next(walk)
        future = ch.call.future(pool.requests[j], metadata=pool.metadata[j], timeout=RPC_TIMEOUT_S)
        ch.sent += 1
        ch.max_lag = max(ch.max_lag, time.perf_counter() - scheduled)
        # Latency is measured from the scheduled time, so sender lag and queueing count.
        future.add_done_callback(functools.partial(_on_done, ch, scheduled, slots))
    for _ in range(OPEN_LOOP_MAX_IN_FLIGHT):
        if not slots.acquire(timeout=max(0.0, deadline - time.perf_counter())):
            break


def _summarize(channels: Sequence[_Channel], window: tuple[float, float], cpu_s: float) -> ClientResult:
    start, end = window
    result = ClientResult(cpu_s=cpu_s)
    for ch in channels:
        result.unfinished += ch.sent - len(ch.records)
        result.max_send_lag_s = max(result.max_send_lag_s, ch.max_lag)
        for sent, done, code, details in list(ch.records):
            ok = code is not None and code.name == "OK"
            if ok and start <= done < end:
                result.ok_in_window += 1
            if not start <= sent < end:
                continue
            result.sent_in_window += 1
            if ok:
                result.latencies_s.append(done - sent)
                result.started_s.append(sent)
            else:
                name = code.name if code is not None else "NONE"
                result.errors[name] += 1
                if len(result.error_samples) < 3:
                    result.error_samples.append(f"{name}: {details[:200]}")
    return result


def client_process(spec: LoadSpec, index: int, queue: Any, go: Any, t0: Any) -> None:
    """Entry point of a client process: connect, report ready, wait for `go`, run, report."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent cleans up on Ctrl-C
    if spec.cpus is not None:
        os.sched_setaffinity(0, spec.cpus)
    import grpc

    channels: list[_Channel] = []
    try:
        for c in range(spec.channels):
            ch = _Channel(grpc, spec.port, spec.root_pem, spec.channel_base + c)
            grpc.channel_ready_future(ch.channel).result(timeout=20)
            j = ch.index % len(spec.pool)  # one checked call per channel: TLS up, token and chain OK
            raw = ch.call(spec.pool.requests[j], metadata=spec.pool.metadata[j], timeout=RPC_TIMEOUT_S)
            _check_response(raw, spec.pool.spiffe_ids[j])
            channels.append(ch)
        queue.put(("ready", index, None))
        if not go.wait(timeout=300):
            raise TimeoutError("never told to start")
        t_begin = t0.value
        w_start = t_begin + spec.warmup_s
        w_end = w_start + spec.duration_s
        threads = []
        for c, ch in enumerate(channels):
            if spec.total_rate is None:
                target: Any = _closed_loop
                extra: tuple[Any, ...] = (spec.in_flight[c], t_begin, w_end)
            else:
                # Each channel sends at an equal share of the rate; channels are staggered.
                rate = spec.total_rate / spec.total_channels
                target, extra = _open_loop, (rate, t_begin + ch.index / spec.total_rate, w_end)
            threads.append(threading.Thread(target=target, args=(ch, spec, *extra), daemon=True))
        for thread in threads:
            thread.start()
        sleep_until(w_start)
        cpu0 = time.process_time()
        sleep_until(w_end)
        cpu1 = time.process_time()
        for thread in threads:
            thread.join(timeout=max(0.1, w_end + spec.drain_s + 5 - time.perf_counter()))
        queue.put(("done", index, _summarize(channels, (w_start, w_end), cpu1 - cpu0)))
    except BaseException as err:  # report instead of dying silently
        queue.put(("error", index, f"{type(err).__name__}: {err}"))
    finally:
        for ch in channels:
            ch.channel.close()


def collect(results_queue: Any, kind: str, count: int, timeout_s: float) -> list[Any]:
    """The payloads of `count` client reports of `kind`; a client's error is raised here."""
    import queue as queue_module

    deadline = time.monotonic() + timeout_s
    got: list[Any] = []
    while len(got) < count:
        try:
            what, index, payload = results_queue.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue_module.Empty:
            raise TimeoutError(f"client processes did not report '{kind}' within {timeout_s:.0f}s") from None
        if what == "error":
            raise RuntimeError(f"client process {index} failed: {payload}")
        if what == kind:
            got.append(payload)
    return got


def split_evenly(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for ca, if not installed
    if sys.argv[1:2] != ["floor-server"]:
        sys.exit("usage: _bench_common.py floor-server --state-dir DIR --ports-file FILE --pool-file FILE")
    sys.exit(floor_server_main(sys.argv[2:]))
