"""A real Envoy fed by the agent's SDS server enforces the CA's CRL: once the agent publishes it,
the ROOTCA push makes Envoy refuse a client whose certificate it lists, while a good client keeps
getting through. Envoy takes the CRL with `only_verify_leaf_cert_crl`, which needs a CRL only for
the leaf's issuer (an empty CRL still counts)."""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509

from ca.agent.broadcast import SvidBroadcast
from ca.agent.runner import unix_server
from ca.agent.sds import SdsService
from ca.agent.svid import Svid
from ca.issuance.cert_dir import CRL
from ca.issuance.crl import build_crl, crl_der, load_pem_crls
from ca.issuance.csr import parse_csr
from ca.issuance.key_policy import KeyPolicy
from ca.issuance.keys import private_key_pem
from ca.issuance.spiffe_id import SpiffeId
from ca.ledger.rotation import Revocation
from ca.server.push import CrlRelease, crl_maker
from tests.support.agent import LiveClock, agent_args, short_dir, start_agent, wait_until
from tests.support.ca_server import RunningCa, start_ca
from tests.support.clock import FakeClock
from tests.support.crls import CRL_VALIDITY, crl_revoking
from tests.support.crls import revoked as revoked_entry
from tests.support.envoy import RunningEnvoy, inbound_bootstrap, outbound_bootstrap, start_envoy
from tests.support.issuing import authority_from
from tests.support.pki import ec_key, make_csr, make_hierarchy
from tests.support.signing_cas import two_signing_cas
from tests.support.svids import FakeCa, make_svid

pytestmark = pytest.mark.slow

ROOTCA_UPDATES = "sds.ROOTCA.update_success"
VERIFY_FAILED = "ssl.fail_verify_error"  # under listener.<address>.
REFUSED = "refused"


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class Mesh:
    base: Path
    clock: FakeClock
    ca: FakeCa
    broadcast: SvidBroadcast
    envoy: RunningEnvoy
    listen: int

    def client(self, name: str) -> tuple[Svid, ssl.SSLContext]:
        svid = make_svid(self.clock, self.ca)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.load_verify_locations(cadata=svid.roots_pem().decode())
        (self.base / f"{name}.pem").write_bytes(svid.chain_pem())
        (self.base / f"{name}.key").write_bytes(svid.key_pem())
        context.load_cert_chain(self.base / f"{name}.pem", self.base / f"{name}.key")
        return svid, context

    def rootca_updates(self) -> int:
        return self.envoy.stats(ROOTCA_UPDATES).get(ROOTCA_UPDATES, 0)

    def verify_failures(self) -> int:
        return sum(v for k, v in self.envoy.stats(VERIFY_FAILED).items() if k.endswith(VERIFY_FAILED))

    def publish_crl(self, revoked: list[Svid]) -> None:
        """The control stream's call, then wait until Envoy has applied the new ROOTCA."""
        before = self.rootca_updates()
        crl = crl_revoking(self.ca.issuer.authority, [s.leaf for s in revoked], self.clock.now())
        assert self.broadcast.publish_crl([crl])
        wait_until(lambda: self.rootca_updates() > before or None, 10, "Envoy applying the new ROOTCA")


@pytest.fixture
def mesh() -> Iterator[Mesh]:
    clock = FakeClock()
    # Leaves signed by an intermediate (root -> intermediate -> signing CA), as with plugged-in
    # cacerts: the CRL is the signing CA's, and nothing revokes the CAs above it.
    ca = FakeCa(clock, authority=authority_from(make_hierarchy(clock.now())))
    broadcast = SvidBroadcast()
    broadcast.publish(make_svid(clock, ca))
    app = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    with short_dir("mca-crl-envoy-") as base, contextlib.ExitStack() as stack:
        sds = unix_server(base / "sds.sock", [SdsService(broadcast)])
        sds.start()
        stack.callback(sds.stop, 0)
        stack.callback(app.shutdown)
        bootstrap = inbound_bootstrap(
            node="crl", sds_socket=base / "sds.sock", app_port=app.server_address[1]
        )
        envoy = start_envoy("crl", bootstrap, base / "envoy")
        stack.callback(envoy.stop)
        yield Mesh(
            base=base,
            clock=clock,
            ca=ca,
            broadcast=broadcast,
            envoy=envoy,
            listen=envoy.listener_port("inbound"),
        )


def _get(port: int, context: ssl.SSLContext) -> str:
    """The status line Envoy answered with, or REFUSED."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            with context.wrap_socket(raw) as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n")
                answer = tls.recv(4096)
        except (ssl.SSLError, ConnectionError):
            return REFUSED  # Envoy closes after the handshake (TLS 1.3: the client has finished its part)
    return answer.split(b"\r\n", 1)[0].decode() if answer else REFUSED


def test_envoy_refuses_a_client_the_agents_crl_revokes_and_accepts_a_good_one(mesh: Mesh) -> None:
    revoked, revoked_client = mesh.client("revoked")
    _, good_client = mesh.client("good")
    assert _get(mesh.listen, revoked_client) == "HTTP/1.1 200 OK"  # before the CRL

    mesh.publish_crl([revoked])

    assert _get(mesh.listen, revoked_client) == REFUSED
    assert mesh.verify_failures() == 1  # refused by certificate verification, with the CRL in it
    assert _get(mesh.listen, good_client) == "HTTP/1.1 200 OK"  # so the CRL for their issuer was there
    assert mesh.verify_failures() == 1


def test_envoy_accepts_clients_with_an_empty_crl_for_their_issuer(mesh: Mesh) -> None:
    _, client = mesh.client("client")
    mesh.publish_crl([])
    assert _get(mesh.listen, client) == "HTTP/1.1 200 OK"


def _client_of(ca: RunningCa, base: Path, name: str) -> tuple[x509.Certificate, ssl.SSLContext]:
    """A mesh client certificate straight from the CA's issuer, and a TLS client presenting it."""
    key = ec_key()
    issued = ca.server.issuer.issue(
        spiffe_id=SpiffeId.for_workload("cluster.local", "shop", name),
        csr=parse_csr(make_csr(key), KeyPolicy()),
        requested_ttl_seconds=0,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cadata=ca.bundle.decode())
    (base / f"{name}.pem").write_text("".join(issued.chain[:-1]))
    (base / f"{name}.key").write_bytes(private_key_pem(key))
    context.load_cert_chain(base / f"{name}.pem", base / f"{name}.key")
    return issued.certificate, context


def test_a_real_agent_delivers_the_crl_to_its_files_and_to_envoy() -> None:
    with short_dir("mca-crl-agent-") as base, contextlib.ExitStack() as stack:
        ca = start_ca(base / "state", "--ledger", "off", clock=LiveClock())
        stack.callback(ca.stop)
        token = base / "token"
        token.write_text(ca.token("shop", "web") + "\n")
        agent = start_agent(
            agent_args(
                ca_port=ca.port,
                ca_root=ca.state_dir / "root-cert.pem",
                token_file=token,
                output_dir=base / "certs",
                sds_socket=base / "sds.sock",
                health=False,
            )
        )
        stack.callback(agent.stop)
        agent.wait_for_svid()
        app = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
        threading.Thread(target=app.serve_forever, daemon=True).start()
        stack.callback(app.shutdown)
        envoy = start_envoy(
            "agent-crl",
            inbound_bootstrap(node="agent-crl", sds_socket=base / "sds.sock", app_port=app.server_address[1]),
            base / "envoy",
        )
        stack.callback(envoy.stop)
        listen = envoy.listener_port("inbound")
        revoked, revoked_client = _client_of(ca, base, "revoked")
        _, good_client = _client_of(ca, base, "good")
        assert _get(listen, revoked_client) == "HTTP/1.1 200 OK"

        crl = build_crl(
            ca.server.authority,
            [revoked_entry(revoked, ca.clock.now())],
            now=ca.clock.now(),
            validity=CRL_VALIDITY,
        )
        assert agent.process.broadcast.publish_crl([crl_der(crl)])  # what the control stream calls

        assert load_pem_crls((base / "certs" / CRL).read_bytes(), CRL) == [crl]
        wait_until(
            lambda: _get(listen, revoked_client) == REFUSED or None, 10, "Envoy refusing the revoked client"
        )
        assert _get(listen, good_client) == "HTTP/1.1 200 OK"


# ----------------------------------------------------------------- two signing CAs (a CA rotation)


def _revocation(svid: Svid, at: datetime) -> Revocation:
    leaf = svid.leaf
    return Revocation(
        serial=format(leaf.serial_number, "x"),
        spiffe_id=str(svid.spiffe_id),
        revoked_at=at,
        reason="keyCompromise",
        not_after=leaf.not_valid_after_utc,
    )


def _through(port: int) -> tuple[int, str | None]:
    """A plaintext request through the outbound Envoy: its status and the upstream's URI SAN."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/", headers={"host": "backend"})
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("x-outbound-peer")
    finally:
        connection.close()


def _wait_rootca(envoy: RunningEnvoy, updates_before: int) -> None:
    wait_until(
        lambda: envoy.stats(ROOTCA_UPDATES).get(ROOTCA_UPDATES, 0) > updates_before or None,
        10,
        f"envoy {envoy.name} applying the new ROOTCA",
    )


def test_envoys_with_leaves_of_two_signing_cas_hold_both_crls_and_handshake() -> None:
    """While the CA rotates its signing CA, the server's leaf comes from one signing CA and the
    client's from the other, under one root. Each agent takes the CRLs of both (the CA sends the
    signing CAs with them), so each Envoy holds a CRL for the issuer of the peer's leaf, which
    `only_verify_leaf_cert_crl` requires: the handshake succeeds, and a CRL of the other signing
    CA still revokes."""
    clock = FakeClock()
    cas = two_signing_cas(clock.now())
    make_crls = crl_maker(lambda: (cas.first, cas.second), CRL_VALIDITY)  # the CA's, as wiring calls it
    server = SvidBroadcast(clock=clock)
    server_svid = make_svid(clock, FakeCa(clock, authority=cas.first))  # the retiring signing CA's
    server.publish(server_svid)
    client = SvidBroadcast(clock=clock)
    client_svid = make_svid(clock, FakeCa(clock, authority=cas.second))  # the active one's
    client.publish(client_svid)
    app = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    with short_dir("mca-crl-two-") as base, contextlib.ExitStack() as stack:
        stack.callback(app.shutdown)
        for name, broadcast in (("server", server), ("client", client)):
            sds = unix_server(base / f"{name}.sock", [SdsService(broadcast)])
            sds.start()
            stack.callback(sds.stop, 0)
        inbound = start_envoy(
            "server",
            inbound_bootstrap(node="server", sds_socket=base / "server.sock", app_port=app.server_address[1]),
            base / "envoy",
        )
        stack.callback(inbound.stop)
        outbound = start_envoy(
            "client",
            outbound_bootstrap(
                node="client",
                sds_socket=base / "client.sock",
                upstream_port=inbound.listener_port("inbound"),
                upstream_sans={"/": str(server_svid.spiffe_id)},
            ),
            base / "envoy",
        )
        stack.callback(outbound.stop)
        port = outbound.listener_port("outbound")
        assert _through(port) == (200, str(server_svid.spiffe_id))  # no CRLs yet

        def deliver(release: CrlRelease) -> None:
            """What each agent's control stream does with the CA's RevocationList; then wait until
            both Envoys have applied the new ROOTCA."""
            before = [envoy.stats(ROOTCA_UPDATES).get(ROOTCA_UPDATES, 0) for envoy in (inbound, outbound)]
            for broadcast in (server, client):
                assert broadcast.publish_crl(release.ders, release.signers)
            for envoy, count in zip((inbound, outbound), before, strict=True):
                _wait_rootca(envoy, count)

        deliver(make_crls([], clock.now()))
        for broadcast in (server, client):
            assert len(broadcast.snapshot().revocations.crls) == 2
        assert _through(port) == (200, str(server_svid.spiffe_id))
        assert _through(port) == (200, str(server_svid.spiffe_id))

        # The server's Envoy checks the client's leaf against the other signing CA's CRL.
        clock.advance(timedelta(seconds=1))
        deliver(make_crls([_revocation(client_svid, clock.now())], clock.now()))
        failures = "ssl.fail_verify_error"
        wait_until(
            lambda: _through(port)[0] == 503 or None, 10, "the server's Envoy refusing the revoked client"
        )
        assert any(k.endswith(failures) and v >= 1 for k, v in inbound.stats(failures).items())
