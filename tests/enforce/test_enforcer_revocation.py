"""`meshca enforce` refuses revoked peers with real TLS, on each engine: crl.pem arrives in the
certificate directory (as the agent writes it), and from the next handshake on a client whose
certificate it lists is refused before a byte reaches the application, and so is an outbound
server; each refusal is counted with reason certificate_revoked. Other peers keep working."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509

from ca.agent.output import write_svid
from ca.agent.svid import Svid
from ca.cli.main import build_parser
from ca.enforce.enforcer import Enforcer, build_enforcer
from ca.enforce.settings import Timeouts, config_from_args
from ca.issuance.crl import crls_pem
from ca.policy.policy_set import PolicySet
from tests.support.agent import short_dir, wait_until
from tests.support.clock import FakeClock
from tests.support.crls import crl_revoking
from tests.support.ports import inbound_ports, outbound_ports
from tests.support.svids import FakeCa, make_svid

TIMEOUTS = Timeouts(first_byte_s=0.2, handshake_s=2.0, connect_s=2.0, certificate_wait_s=10.0)
REVOKED = "certificate_revoked"


@dataclass
class EchoApp:
    """A TCP application that echoes and remembers every byte it received."""

    sock: socket.socket = field(default_factory=lambda: socket.create_server(("127.0.0.1", 0)))
    received: bytearray = field(default_factory=bytearray)

    def __post_init__(self) -> None:
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            while data := conn.recv(4096):
                self.received += data
                conn.sendall(data)


class TlsEchoServer(EchoApp):
    """A mesh server (an outbound target) presenting `svid`."""

    def __init__(self, svid: Svid, workdir: Path, name: str) -> None:
        self.svid = svid
        self.context = _context(svid, workdir, name, server=True)
        super().__init__()

    def _echo(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), self.context.wrap_socket(conn, server_side=True) as tls:
            super()._echo(tls)


def _context(svid: Svid, workdir: Path, name: str, *, server: bool = False) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=svid.roots_pem().decode())
    (workdir / f"{name}.pem").write_bytes(svid.chain_pem())
    (workdir / f"{name}.key").write_bytes(svid.key_pem())
    context.load_cert_chain(workdir / f"{name}.pem", workdir / f"{name}.key")
    return context


@dataclass
class World:
    base: Path
    clock: FakeClock
    ca: FakeCa
    workload: Svid
    app: EchoApp

    @property
    def cert_dir(self) -> Path:
        return self.base / "certs"

    def revoke(self, *certs: x509.Certificate) -> None:
        """What the agent does with a CRL from the CA: a new set of files with crl.pem."""
        crl = x509.load_der_x509_crl(crl_revoking(self.ca.issuer.authority, certs, self.clock.now()))
        write_svid(self.cert_dir, self.workload, crl_pem=crls_pem([crl]))


@pytest.fixture
def world() -> Iterator[World]:
    clock = FakeClock()
    ca = FakeCa(clock)
    with short_dir("mca-revoke-") as base:
        world = World(base=base, clock=clock, ca=ca, workload=make_svid(clock, ca), app=EchoApp())
        write_svid(world.cert_dir, world.workload)
        yield world
        world.app.sock.close()


@contextlib.contextmanager
def enforcer(world: World, engine: str, *extra: str) -> Iterator[Enforcer]:
    args = build_parser({}).parse_args(
        [
            "enforce",
            "--inbound",
            f"0:{world.app.port}",
            "--listen-host",
            "127.0.0.1",
            "--cert-dir",
            str(world.cert_dir),
            "--namespace",
            "shop",
            "--policies",
            "unused",
            "--metrics-listen",
            "off",
            "--tls-engine",
            engine,
            *extra,
        ]
    )
    running = build_enforcer(
        dataclasses.replace(config_from_args(args), timeouts=TIMEOUTS), policy_set=PolicySet()
    )
    running.start()
    assert running.engine.name == engine
    try:
        yield running
    finally:
        running.stop()


def _echoed(port: int, context: ssl.SSLContext) -> bytes:
    """Connect with mutual TLS, send a line, and return what came back (b'' when closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            with context.wrap_socket(raw) as tls:
                tls.sendall(b"hello\n")
                return tls.recv(100)
        except (ssl.SSLError, ConnectionError):
            return b""


def _loaded_crl(running: Enforcer) -> None:
    running.certs.poll()
    wait_until(
        lambda: running.certs.current is not None and bool(running.certs.current.material.revocations),
        5,
        "crl.pem loaded",
    )


@pytest.mark.parametrize("engine", ["openssl", "stdlib"])
def test_a_revoked_client_is_refused_at_its_next_handshake_and_counted(world: World, engine: str) -> None:
    revoked, good = make_svid(world.clock, world.ca), make_svid(world.clock, world.ca)
    revoked_client = _context(revoked, world.base, "revoked")
    good_client = _context(good, world.base, "good")
    with enforcer(world, engine) as running:
        listen = inbound_ports(running.ports)[world.app.port]
        assert _echoed(listen, revoked_client) == b"hello\n"  # not revoked yet

        world.revoke(revoked.leaf)
        _loaded_crl(running)
        received = len(world.app.received)

        assert _echoed(listen, revoked_client) == b""
        assert len(world.app.received) == received  # not one byte reached the application
        assert _echoed(listen, good_client) == b"hello\n"
        labels = {"port": str(world.app.port), "mode": "PERMISSIVE", "outcome": "refused", "reason": REVOKED}
        assert running.metrics.registry.get_sample_value("meshca_enforcer_connections_total", labels) == 1
        assert running.metrics.registry.get_sample_value("meshca_enforcer_crl_revoked_certificates") == 1


def test_an_outbound_server_with_a_revoked_certificate_is_refused(world: World) -> None:
    revoked_server = TlsEchoServer(make_svid(world.clock, world.ca), world.base, "revoked-server")
    good_server = TlsEchoServer(make_svid(world.clock, world.ca), world.base, "good-server")
    targets = [f"127.0.0.1:{revoked_server.port}", f"127.0.0.1:{good_server.port}"]
    try:
        with enforcer(
            world, "openssl", "--outbound", f"0:{targets[0]}", "--outbound", f"0:{targets[1]}"
        ) as running:
            to_revoked, to_good = outbound_ports(running.ports)
            assert _plain_echo(to_revoked) == b"hello\n"  # not revoked yet
            world.revoke(revoked_server.svid.leaf)
            _loaded_crl(running)
            assert _plain_echo(to_revoked) == b""
            assert revoked_server.received == b"hello\n"  # only from before: not the second client's bytes
            assert _plain_echo(to_good) == b"hello\n"
            labels = {"port": str(to_revoked), "target": targets[0], "outcome": "refused", "reason": REVOKED}
            wait_until(
                lambda: (
                    running.metrics.registry.get_sample_value(
                        "meshca_enforcer_outbound_connections_total", labels
                    )
                    == 1
                ),
                5,
                "the refusal counted",
            )
    finally:
        revoked_server.sock.close()
        good_server.sock.close()


def _plain_echo(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"hello\n")
        try:
            return sock.recv(100)
        except ConnectionError:
            return b""
