"""The TLS engine `meshca enforce` runs on with this install's dependencies: the fast one, and working.

`--tls-engine auto` falls back to Python's ssl (about half the handshake rate, see
scripts/bench_tls_engines.py) when cryptography's binding lacks a function the openssl
engine calls. A cryptography upgrade that drops one must fail here, not slow the
enforcer down in production.
"""

from __future__ import annotations

import hashlib
import socket

from cryptography.hazmat.primitives import serialization

from ca.agent.svid import Svid, accept_response
from ca.cli.main import build_parser
from ca.enforce import tls_openssl
from ca.enforce.enforcer import build_enforcer
from ca.enforce.material import check_material
from ca.enforce.settings import config_from_args
from ca.enforce.tls import HANDSHAKE_DONE, WANT_READ, WANT_WRITE, TlsConnection
from tests.support.clock import FakeClock
from tests.support.pki import ec_key, make_csr
from tests.support.svids import CART, FakeCa


def test_enforce_runs_on_the_bundled_openssl_engine() -> None:
    args = build_parser({}).parse_args(
        ["enforce", "--outbound", "15001:127.0.0.1:8080", "--metrics-listen", "off"]
    )
    enforcer = build_enforcer(config_from_args(args))
    try:
        assert enforcer.engine.name == "openssl", (
            f"meshca enforce fell back to {enforcer.engine.name}; the cryptography binding lacks "
            f"{tls_openssl.missing()}"
        )
    finally:
        enforcer.stop()


def _handshake(server: TlsConnection, client: TlsConnection) -> None:
    done = {"server": False, "client": False}
    for _ in range(50):  # a TLS 1.3 handshake takes a few steps on each side
        for side, conn in (("client", client), ("server", server)):
            if not done[side]:
                result = conn.handshake()
                assert result in (HANDSHAKE_DONE, WANT_READ, WANT_WRITE)
                done[side] = result == HANDSHAKE_DONE
        if all(done.values()):
            return
    raise AssertionError(f"the handshake did not finish: {done}")


def _svid(ca: FakeCa, clock: FakeClock) -> Svid:
    key = ec_key()
    chain = ca.create_certificate(make_csr(key), 3600)
    return accept_response(chain, key, trust_domain="cluster.local", expected=CART, now=clock.now())


def test_the_openssl_engine_does_mutual_tls() -> None:
    clock = FakeClock()
    ca = FakeCa(clock)
    server_svid, client_svid = _svid(ca, clock), _svid(ca, clock)
    contexts = []
    for svid in (server_svid, client_svid):
        files = {
            "cert-chain.pem": svid.chain_pem(),
            "key.pem": svid.key_pem(),
            "root-cert.pem": svid.roots_pem(),
        }
        material = check_material(files, version="v1", trust_domain="cluster.local", now=clock.now())
        contexts.append(tls_openssl.OpensslEngine().contexts(material))
    server_sock, client_sock = socket.socketpair()
    server_sock.setblocking(False)
    client_sock.setblocking(False)
    server = contexts[0].accept(server_sock)
    client = contexts[1].connect(client_sock, None)
    try:
        _handshake(server, client)
        assert client.write(b"ping") == 4
        buffer = memoryview(bytearray(64))
        assert server.read_into(buffer) == 4 and bytes(buffer[:4]) == b"ping"
        client_der = client_svid.leaf.public_bytes(serialization.Encoding.DER)
        assert server.peer_fingerprint() == hashlib.sha256(client_der).digest()
        assert client.peer_der() == server_svid.leaf.public_bytes(serialization.Encoding.DER)
        assert server.version() == "TLSv1.3"
    finally:
        server.close()
        client.close()
