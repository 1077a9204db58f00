#!/usr/bin/env python3
"""Compare the enforcer's TLS engines on one core: handshakes and bytes relayed per CPU-second.

Run from the project root with the project's virtualenv (needs 2 CPUs):

    .venv/bin/python scripts/bench_tls_engines.py             # 5 rounds, about 3 minutes
    .venv/bin/python scripts/bench_tls_engines.py --quick     # 2 short rounds

Engines: `openssl` (cryptography's cffi binding, ca.enforce.tls_openssl, the product's),
`pyopenssl` (pyOpenSSL's public API, scripts/_tls_pyopenssl.py: pyOpenSSL is a test
dependency only) and `stdlib` (Python's ssl on the system OpenSSL, ca.enforce.tls_stdlib).

For each engine a server process runs the enforcer's inbound data path on its event
loop: accept, the mutual-TLS handshake through the engine, the peer's identity
(fingerprint, PeerCache, SPIFFE check), a non-blocking connection to the application
and the enforcer's Relay between the two. What `meshca enforce` adds around that
(policy lookup, metrics, refusal logging) is the same for every engine and left out.
Each server process is pinned to CPU 0 (sched_setaffinity before exec); this script,
its load threads and the application (echo/sink/source threads) run on CPU 1.

Certificates: an EC P-256 CA and two SVIDs (server and client) made here. The load
client speaks TLS 1.3 through the openssl engine for every server, so the client side
costs the same whichever engine serves.

Measured in rounds, the engines in a rotated order each round:

  handshakes  new connection, full mutual-TLS handshake, 3-byte echo through the relay,
              close, from 8 client threads for a fixed time: completed handshakes per
              CPU-second of the server process (and the rate achieved).
  upload      one connection carrying --bulk-mb MB to the application (the server
              decrypts and relays): MB per CPU-second of the server.
  download    the same from the application (the server relays and encrypts).

Printed per engine: the median over the rounds, the lowest and highest round, and the
ratio of medians to the openssl engine; then one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for _tls_pyopenssl, _bench_tls_common
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # for ca

from _bench_tls_common import (
    TlsClient,
    bulk,
    handshakes,
    load_average,
    process_cpu_s,
    progress,
    serve_app,
    workspace,
)

REPO = Path(__file__).resolve().parent.parent
TRUST_DOMAIN = "cluster.local"
SERVER_ID = f"spiffe://{TRUST_DOMAIN}/ns/bench/sa/server"
CLIENT_ID = f"spiffe://{TRUST_DOMAIN}/ns/bench/sa/client"
ENGINES = ("openssl", "pyopenssl", "stdlib")
SERVER_CPU = 0
LOAD_CPU = 1
START_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 10.0


# --------------------------------------------------------------------------- certificates


def make_certificates(root: Path) -> tuple[Path, Path]:
    """A CA and two SVIDs, written as the agent writes them: (server dir, client dir)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    from ca.issuance.cert_dir import CERT_CHAIN, KEY, ROOT_CERT

    usage = dict.fromkeys(("content_commitment", "data_encipherment", "key_agreement"), False)
    usage |= dict.fromkeys(("encipher_only", "decipher_only"), False)
    ca_usage = x509.KeyUsage(
        digital_signature=False, key_encipherment=False, key_cert_sign=True, crl_sign=True, **usage
    )
    leaf_usage = x509.KeyUsage(
        digital_signature=True, key_encipherment=True, key_cert_sign=False, crl_sign=False, **usage
    )
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bench")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(ca_usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    roots = ca_cert.public_bytes(serialization.Encoding.PEM)
    dirs = []
    for name, spiffe_id in (("server", SERVER_ID), ("client", CLIENT_ID)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=12))
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=True
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(leaf_usage, critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        directory = root / name
        directory.mkdir()
        (directory / CERT_CHAIN).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        (directory / KEY).write_bytes(key_pem)
        (directory / ROOT_CERT).write_bytes(roots)
        dirs.append(directory)
    return dirs[0], dirs[1]


def load_material(directory: Path) -> Any:
    from ca.enforce.material import check_material, read_files

    version, files = read_files(directory)
    now = datetime.datetime.now(datetime.UTC)
    return check_material(files, version=version, trust_domain=TRUST_DOMAIN, now=now)


def engine_named(name: str) -> Any:
    if name == "openssl":
        from ca.enforce.tls_openssl import OpensslEngine

        return OpensslEngine()
    if name == "pyopenssl":
        from _tls_pyopenssl import PyopensslEngine

        return PyopensslEngine()
    from ca.enforce.tls_stdlib import StdlibEngine

    return StdlibEngine()


# --------------------------------------------------------------------------- the server process


class ServedConnection:
    """One caller through the enforcer's inbound steps: handshake, identity, app connection, Relay."""

    def __init__(self, server: Server, sock: socket.socket) -> None:
        self.server = server
        self.tls = server.contexts.accept(sock)
        self.fd = self.tls.fileno()  # the stdlib engine's SSLSocket takes the socket's descriptor over
        self.app: socket.socket | None = None

    def step_handshake(self, fd: int = 0, events: int = 0) -> None:
        from ca.enforce.loop import READ, WRITE
        from ca.enforce.peer import check
        from ca.enforce.tls import HANDSHAKE_DONE, WANT_READ

        result = self.tls.handshake()
        if result != HANDSHAKE_DONE:
            self.server.loop.watch(self.fd, READ if result == WANT_READ else WRITE, self.step_handshake)
            return
        fingerprint = self.tls.peer_fingerprint()
        if fingerprint is None:
            raise RuntimeError("the client sent no certificate")
        identity = self.server.peers.identify(fingerprint, self.tls.peer_der)
        check(identity, trust_domain=TRUST_DOMAIN, now=datetime.datetime.now(datetime.UTC))
        self.connect_app()

    def connect_app(self) -> None:
        from ca.enforce.connect import Connecting

        server = self.server
        connecting = Connecting(server.loop, server.connect_deadline, self, to="the application")
        if connecting.start(socket.AF_INET, ("127.0.0.1", server.app_port)):
            server.loop.watch(self.fd, 0, self.step_handshake)

    def next_hop_connected(self, sock: socket.socket) -> None:
        self.app = sock
        self.relay()

    def next_hop_failed(self, detail: str) -> None:
        print(f"connection dropped: {detail}", file=sys.stderr, flush=True)
        self.abort()

    def relay(self) -> None:
        from ca.enforce.relay import PlainEndpoint, Relay

        assert self.app is not None
        Relay(self.server.loop, self.tls, PlainEndpoint(self.app), on_close=lambda _: None).start()

    def abort(self) -> None:
        """Called by the loop when a handler raised: the connection is dropped."""
        self.server.loop.forget(self.fd)
        self.tls.close()
        if self.app is not None:
            self.server.loop.forget(self.app.fileno())
            self.app.close()


class Server:
    def __init__(self, engine: str, cert_dir: Path, app_port: int) -> None:
        from ca.enforce.loop import READ, EventLoop
        from ca.enforce.peer import PeerCache

        self.contexts = engine_named(engine).contexts(load_material(cert_dir))
        self.app_port = app_port
        self.loop = EventLoop()
        self.connect_deadline = self.loop.deadline_queue(CONNECT_TIMEOUT_S)
        self.peers = PeerCache()
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
        self.listener.setblocking(False)
        self.loop.watch(self.listener.fileno(), READ, self.on_accept)

    @property
    def port(self) -> int:
        port: int = self.listener.getsockname()[1]
        return port

    def on_accept(self, fd: int, events: int) -> None:
        for _ in range(64):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = ServedConnection(self, sock)
            try:
                connection.step_handshake()
            except Exception as err:
                print(f"connection dropped: {err!r}", file=sys.stderr, flush=True)
                connection.abort()

    def abort(self) -> None:  # the loop's contract for a raising handler; the listener never raises
        pass


def serve_main(engine: str, cert_dir: str, app_port: str) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    server = Server(engine, Path(cert_dir), int(app_port))
    print(server.port, flush=True)
    server.loop.run()
    return 0


def _pin_to_server_cpu() -> None:
    """In the server's child process before exec: CPU 0 only, and SIGTERM if the benchmark dies."""
    import ctypes

    os.sched_setaffinity(0, {SERVER_CPU})
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class ServerProcess:
    name: str  # the engine's
    proc: subprocess.Popen[bytes]
    port: int

    def cpu_s(self) -> float:
        return process_cpu_s(self.proc.pid)


def start_server(engine: str, cert_dir: Path, app_port: int, log: Path) -> ServerProcess:
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "serve", engine, str(cert_dir), str(app_port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log_file,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            preexec_fn=_pin_to_server_cpu,
        )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the port; empty if the server died first
    if not line.strip():
        proc.wait(timeout=START_TIMEOUT_S)
        raise RuntimeError(f"the {engine} server did not start: {log.read_text(errors='replace')[-2000:]}")
    return ServerProcess(engine, proc, int(line))


# --------------------------------------------------------------------------- the application


def start_app() -> socket.socket:
    server = socket.create_server(("127.0.0.1", 0), backlog=4096)
    threading.Thread(target=serve_app, args=(server,), daemon=True).start()
    return server


# --------------------------------------------------------------------------- the load client


def load_client(cert_dir: Path) -> TlsClient:
    """The load client with the client SVID, through the openssl engine."""
    return TlsClient(engine_named("openssl").contexts(load_material(cert_dir)))


def tls_facts(client: TlsClient, port: int) -> dict[str, str]:
    conn = client.connect(port)
    try:
        TlsClient.send_all(conn, b"Eok")
        TlsClient.recv_exactly(conn, 2)
        return {"version": conn.version(), "cipher": conn.cipher()}
    finally:
        conn.close()


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class Settings:
    rounds: int
    handshake_s: float
    bulk_bytes: int


Rows = dict[str, dict[str, list[dict[str, float]]]]  # engine -> test -> one row per round
Summary = dict[str, dict[str, dict[str, float]]]  # engine -> figure -> statistic


def run_rounds(client: TlsClient, servers: list[ServerProcess], settings: Settings) -> Rows:
    rows: Rows = {s.name: {"handshakes": [], "upload": [], "download": []} for s in servers}
    for number in range(settings.rounds):
        order = servers[number % len(servers) :] + servers[: number % len(servers)]
        for server in order:
            progress(f"round {number + 1}/{settings.rounds}: {server.name}")
            rows[server.name]["handshakes"].append(handshakes(client, server, settings.handshake_s))
            rows[server.name]["upload"].append(bulk(client, server, settings.bulk_bytes, upload=True))
            rows[server.name]["download"].append(bulk(client, server, settings.bulk_bytes, upload=False))
    return rows


FIGURES = (  # label, test, key
    ("handshakes per CPU-second", "handshakes", "per_cpu_s"),
    ("  achieved handshakes/s", "handshakes", "rate"),
    ("upload MB relayed per CPU-second", "upload", "mb_per_cpu_s"),
    ("download MB relayed per CPU-second", "download", "mb_per_cpu_s"),
)


def summarise(rows: Rows) -> Summary:
    """engine -> label -> median, low, high over the rounds; ratio: the ratio of medians to the openssl
    engine; round_ratio(_low, _high): the median (lowest, highest) of the per-round ratios to openssl,
    which pairs measurements taken a few seconds apart and so cancels most of the machine's drift."""
    summary: Summary = {}
    for engine, tests in rows.items():
        summary[engine] = {}
        for label, test, key in FIGURES:
            values = [row[key] for row in tests[test]]
            base = [row[key] for row in rows["openssl"][test]]
            ratios = [value / reference for value, reference in zip(values, base, strict=True)]
            summary[engine][label] = {
                "median": statistics.median(values),
                "low": min(values),
                "high": max(values),
                "ratio": statistics.median(values) / statistics.median(base),
                "round_ratio": statistics.median(ratios),
                "round_ratio_low": min(ratios),
                "round_ratio_high": max(ratios),
            }
    return summary


def report(
    summary: dict[str, dict[str, dict[str, float]]], facts: dict[str, Any], settings: Settings
) -> None:
    print()
    for engine, fact in facts.items():
        print(f"{engine:10} negotiated {fact['version']} {fact['cipher']}")
    print(
        f"{settings.rounds} rounds; each server on CPU {SERVER_CPU}, load and application on CPU {LOAD_CPU}; "
        "median [lowest .. highest round]; ratio of medians to openssl; "
        "per-round ratio to openssl: median [lowest .. highest]"
    )
    print()
    for label, *_ in FIGURES:
        print(label)
        for engine, figures in summary.items():
            cell = figures[label]
            print(
                f"  {engine:10} {cell['median']:7.0f}  [{cell['low']:5.0f} .. {cell['high']:5.0f}]"
                f"  {cell['ratio']:5.2f}"
                f"  {cell['round_ratio']:5.2f}"
                f" [{cell['round_ratio_low']:.2f} .. {cell['round_ratio_high']:.2f}]"
            )


def stop(servers: list[ServerProcess]) -> None:
    for server in servers:
        if server.proc.poll() is None:
            server.proc.terminate()
    for server in servers:
        try:
            server.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(timeout=5)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 short rounds")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--handshake-seconds", type=float, default=None)
    parser.add_argument("--bulk-mb", type=int, default=None)
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma list; openssl is the baseline")
    args = parser.parse_args(argv)
    if (os.cpu_count() or 1) < 2:
        print("this benchmark needs 2 CPUs: one for the server, one for the load", file=sys.stderr)
        return 2
    engines = [name for name in args.engines.split(",") if name]
    if "openssl" not in engines or not set(engines) <= set(ENGINES):
        parser.error(f"--engines: a comma list of {', '.join(ENGINES)} that includes openssl")
    settings = Settings(
        rounds=args.rounds or (2 if args.quick else 5),
        handshake_s=args.handshake_seconds or (2.0 if args.quick else 6.0),
        bulk_bytes=(args.bulk_mb or (100 if args.quick else 300)) * 1_000_000,
    )
    os.sched_setaffinity(0, {LOAD_CPU})
    load_before = load_average()
    servers: list[ServerProcess] = []
    with workspace("meshca-bench-tls-") as root:
        try:
            server_certs, client_certs = make_certificates(root)
            app = start_app()
            for engine in engines:
                servers.append(
                    start_server(engine, server_certs, app.getsockname()[1], root / f"{engine}.log")
                )
            client = load_client(client_certs)
            facts = {server.name: tls_facts(client, server.port) for server in servers}
            rows = run_rounds(client, servers, settings)
        finally:
            stop(servers)
    from ca.enforce.tls_openssl import library_version

    print(f"bundled OpenSSL: {library_version()}; load average before {load_before}, after {load_average()}")
    summary = summarise(rows)
    report(summary, facts, settings)
    print(json.dumps({"bench": "tls_engines", "summary": summary, "rounds": rows, "tls": facts}))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        sys.exit(serve_main(*sys.argv[2:5]))
    sys.exit(main(sys.argv[1:]))
