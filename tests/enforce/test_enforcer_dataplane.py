"""`meshca enforce` on real sockets: modes, identities to the application, rotation, metrics, hostile input.

A real CA (plugged-in test hierarchy) issues the workload's certificate through a real
agent; the enforcer runs in-process on each TLS engine (the bundled OpenSSL and
Python's ssl) with a PolicySet the tests change while it runs. Clients: a mesh
certificate (same CA), a foreign CA's certificate (another real meshca CA), a
look-alike (the mesh CA's chain, another trust domain), no certificate, plaintext.
Behind the enforcer: an HTTP/1.1 application that reports every request it got
(headers, decoded body, trailers), and a TCP application that records the PROXY v2
header and the first bytes and then echoes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import shutil
import socket
import ssl
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.cli.main import build_parser
from ca.enforce import proxy_v2
from ca.enforce.enforcer import Enforcer, build_enforcer
from ca.enforce.settings import Timeouts, config_from_args
from ca.issuance.cert_dir import CERT_CHAIN, DATA_LINK, KEY
from ca.issuance.keys import private_key_pem
from ca.policy.model import MtlsMode, PeerAuthentication, PolicyRef
from ca.policy.policy_set import PolicySet
from tests.support.agent import LiveClock, RunningAgent, agent_args, start_agent, wait_until
from tests.support.ca_server import RunningCa, start_ca
from tests.support.dataplanes import (
    ClientCert,
    LocalServer,
    client_contexts,
    connected,
    header_fields,
    issued_cert,
    read_proxy_v2,
    read_response,
    recv_at_least,
    recv_until,
    server_certificate,
    take,
    uri_sans,
)
from tests.support.pki import ec_key, make_hierarchy
from tests.support.ports import inbound_ports, outbound_ports, reserved_port

pytestmark = pytest.mark.slow

NAMESPACE = "shop"
WORKLOAD_ID = "spiffe://cluster.local/ns/shop/sa/web"
CLIENT_ID = "spiffe://cluster.local/ns/shop/sa/client"
FORGED = "By=spiffe://cluster.local/ns/x/sa/x;URI=spiffe://cluster.local/ns/x/sa/admin"
CREATED = datetime(2026, 1, 1, tzinfo=UTC)
TIMEOUTS = Timeouts(first_byte_s=0.2, handshake_s=1.5, connect_s=2.0, certificate_wait_s=10.0)
ROLES = {  # role -> (protocol, port-level mode or None to follow the namespace policy)
    "http-strict": ("http", MtlsMode.STRICT),
    "http-permissive": ("http", MtlsMode.PERMISSIVE),
    "http-disable": ("http", MtlsMode.DISABLE),
    "tcp-strict": ("tcp", MtlsMode.STRICT),
    "tcp-permissive": ("tcp", MtlsMode.PERMISSIVE),
    "tcp-disable": ("tcp", MtlsMode.DISABLE),
    "tcp-change": ("tcp", None),
}
PROXY_ROLES = ("tcp-permissive", "tcp-disable")


# --------------------------------------------------------------------------- applications


def _recv_n(sock: socket.socket, buffer: bytearray, size: int) -> bytes:
    if not recv_at_least(sock, buffer, size):
        raise ConnectionError("closed inside a body")
    return take(buffer, size)


class HttpApp(LocalServer):
    """HTTP/1.1, keep-alive, Content-Length and chunked bodies; answers with what it received."""

    def __init__(self) -> None:
        super().__init__("http-app")

    def serve(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        buffer = bytearray()
        with contextlib.suppress(OSError, ConnectionError), conn:
            conn.settimeout(10)
            while recv_until(conn, buffer, b"\r\n\r\n"):
                head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
                buffer[:] = rest
                lines = head.split(b"\r\n")
                headers = header_fields(b"\r\n".join(lines[1:]))
                names = {n: v for n, v in headers}
                body, trailers = b"", []
                if names.get("transfer-encoding", "").lower() == "chunked":
                    while True:
                        recv_until(conn, buffer, b"\r\n")
                        line, _, rest = bytes(buffer).partition(b"\r\n")
                        buffer[:] = rest
                        size = int(line.split(b";")[0], 16)
                        if size == 0:
                            break
                        body += _recv_n(conn, buffer, size)
                        _recv_n(conn, buffer, 2)
                    while len(buffer) < 2 and (chunk := conn.recv(65536)):
                        buffer += chunk
                    if not buffer.startswith(b"\r\n"):
                        recv_until(conn, buffer, b"\r\n\r\n")
                        block, _, rest = bytes(buffer).partition(b"\r\n\r\n")
                        buffer[:] = rest
                        trailers = header_fields(block)
                    else:
                        del buffer[:2]
                elif "content-length" in names:
                    body = _recv_n(conn, buffer, int(names["content-length"]))
                answer = json.dumps(
                    {
                        "line": lines[0].decode(),
                        "headers": headers,
                        "body": body.decode("latin-1"),
                        "trailers": trailers,
                    }
                ).encode()
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(answer)}\r\n\r\n".encode()
                    + answer
                )


@dataclass
class Seen:
    proxy: Any
    first: bytes


class TcpApp(LocalServer):
    """Records each connection's PROXY v2 header (if any) and first bytes, then echoes."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.greeting: bytes | None = None  # set: speak first, as a server-speaks-first protocol
        super().__init__("tcp-app")

    def serve(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        with contextlib.suppress(OSError, ConnectionError), conn:
            conn.settimeout(10)
            proxy = read_proxy_v2(conn)
            if self.greeting is not None:
                conn.sendall(self.greeting)
            first = conn.recv(65536)
            self.seen.append(Seen(proxy, first))
            while first:
                conn.sendall(first)
                first = conn.recv(65536)


# --------------------------------------------------------------------------- certificates


def ca_client_cert(ca: RunningCa, service_account: str) -> ClientCert:
    return issued_cert(ca, NAMESPACE, service_account)


# --------------------------------------------------------------------------- the world


@dataclass
class World:
    base: Path
    ca: RunningCa
    foreign_ca: RunningCa
    agent: RunningAgent
    http_apps: dict[str, HttpApp]
    tcp_apps: dict[str, TcpApp]
    clients: dict[str, ssl.SSLContext | None]
    client_hash: str
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def app_port(self, role: str) -> int:
        return (self.http_apps.get(role) or self.tcp_apps[role]).port


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = Path(tmp_path_factory.mktemp("enforce"))
    with contextlib.ExitStack() as stack:
        hierarchy = make_hierarchy()
        ca = start_ca(
            base / "state", "--cacerts", str(hierarchy.write_cacerts(base / "cacerts")), clock=LiveClock()
        )
        stack.callback(ca.stop)
        foreign = start_ca(base / "foreign", clock=LiveClock())
        stack.callback(foreign.stop)
        token = base / "web.token"
        token.write_text(ca.token(NAMESPACE, "web") + "\n")
        agent = start_agent(
            agent_args(
                ca_port=ca.port,
                ca_root=ca.state_dir / "root-cert.pem",
                token_file=token,
                output_dir=base / "web-certs",
                health=False,
            )
        )
        stack.callback(agent.stop)
        agent.wait_for_svid()
        http_apps = {role: HttpApp() for role, (proto, _) in ROLES.items() if proto == "http"}
        tcp_apps = {role: TcpApp() for role, (proto, _) in ROLES.items() if proto == "tcp"}
        for app in [*http_apps.values(), *tcp_apps.values()]:
            stack.callback(app.stop)
        mesh = ca_client_cert(ca, "client")
        leaf = x509.load_pem_x509_certificate(mesh.chain_pem)
        clients = client_contexts(
            mesh=mesh, foreign=ca_client_cert(foreign, "client"), hierarchy=hierarchy, workdir=base
        )
        yield World(
            base=base,
            ca=ca,
            foreign_ca=foreign,
            agent=agent,
            http_apps=http_apps,
            tcp_apps=tcp_apps,
            clients=clients,
            client_hash=hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest(),
        )


def policies(world: World, namespace_mode: MtlsMode) -> list[PeerAuthentication]:
    port_modes = {world.app_port(role): mode for role, (_, mode) in ROLES.items() if mode is not None}
    return [
        PeerAuthentication(
            ref=PolicyRef(NAMESPACE, "default"), created=CREATED, selector=None, mode=namespace_mode
        ),
        PeerAuthentication(
            ref=PolicyRef(NAMESPACE, "web"),
            created=CREATED,
            selector={"app": "web"},
            mode=MtlsMode.UNSET,
            port_modes=port_modes,
        ),
    ]


@dataclass
class Running:
    enforcer: Enforcer
    policy_set: PolicySet
    listen: dict[str, int]  # role -> listen port
    world: World

    def sample(self, name: str, **labels: str) -> float:
        return self.enforcer.metrics.registry.get_sample_value(name, labels) or 0.0


def enforce_args(world: World, engine: str, *extra: str) -> list[str]:
    """Every role's port, each behind a listener on a free port."""
    inbound = ",".join(f"0:{world.app_port(role)}/{proto}" for role, (proto, _) in ROLES.items())
    proxy = ",".join(str(world.app_port(role)) for role in PROXY_ROLES)
    return [
        "enforce",
        "--inbound",
        inbound,
        "--listen-host",
        "127.0.0.1",
        "--cert-dir",
        str(world.agent.cfg.output_dir),
        "--namespace",
        NAMESPACE,
        "--labels",
        "app=web",
        "--policies",
        "unused",
        "--proxy-protocol",
        proxy,
        "--metrics-listen",
        "off",
        "--tls-engine",
        engine,
        *extra,
    ]


@pytest.fixture(scope="module", params=["openssl", "stdlib"])
def running(request: pytest.FixtureRequest, world: World) -> Iterator[Running]:
    args = build_parser({}).parse_args(enforce_args(world, request.param))
    cfg = dataclasses.replace(config_from_args(args), timeouts=TIMEOUTS)
    policy_set = PolicySet(policies(world, MtlsMode.PERMISSIVE))
    enforcer = build_enforcer(cfg, policy_set=policy_set)
    enforcer.start()
    assert enforcer.engine.name == request.param
    try:
        listen = {role: listen_port(enforcer, world.app_port(role)) for role in ROLES}
        yield Running(enforcer, policy_set, listen, world)
    finally:
        enforcer.stop()


def listen_port(enforcer: Enforcer, app_port: int) -> int:
    """The port the enforcer got for the listener in front of `app_port` (given as port 0)."""
    return inbound_ports(enforcer.ports)[app_port]


# --------------------------------------------------------------------------- clients


@dataclass
class Result:
    server_cert: x509.Certificate | None = None
    responses: list[dict[str, Any]] = field(default_factory=list)
    raw: bytes = b""
    error: str | None = None


def http(port: int, tls: ssl.SSLContext | None, payload: bytes, expect: int) -> Result:
    """Send `payload` (one or more requests) and read up to `expect` responses."""
    result = Result()
    try:
        with connected(port, tls) as stream:
            result.server_cert = server_certificate(stream)
            stream.sendall(payload)
            buffer = bytearray()
            for _ in range(expect):
                answer = read_response(stream, buffer)
                if answer is None:
                    result.error = "closed"
                    break
                status, body = answer
                result.responses.append(
                    {"status": status, **(json.loads(body) if status == 200 else {"body": body})}
                )
    except (OSError, ssl.SSLError) as err:
        result.error = f"{type(err).__name__}: {err}"
    return result


def tcp(port: int, tls: ssl.SSLContext | None, payload: bytes = b"ping") -> Result:
    result = Result()
    try:
        with connected(port, tls) as stream:
            result.server_cert = server_certificate(stream)
            stream.sendall(payload)
            while len(result.raw) < len(payload):
                chunk = stream.recv(65536)
                if not chunk:
                    break
                result.raw += chunk
    except (OSError, ssl.SSLError) as err:
        result.error = f"{type(err).__name__}: {err}"
    return result


def request(
    path: str = "/",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    chunks: list[bytes] | None = None,
    trailers: str = "",
) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: web\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in (headers or {}).items()
    )
    if chunks is not None:
        encoded = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks)
        return (
            (head + "Transfer-Encoding: chunked\r\n\r\n").encode()
            + encoded
            + b"0\r\n"
            + trailers.encode()
            + b"\r\n"
        )
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def xfcc(response: dict[str, Any]) -> list[str]:
    return [v for n, v in response["headers"] if n == "x-forwarded-client-cert"]


def closed_by_peer(sock: socket.socket) -> bool:
    """The enforcer closed the connection: EOF, or a reset (closing with unread input sends RST)."""
    try:
        return sock.recv(10) == b""
    except ConnectionResetError:
        return True


# --------------------------------------------------------------------------- the mode matrix

EXPECTED = {
    MtlsMode.STRICT: {
        "mesh": "mtls",
        "foreign": "refused",
        "lookalike": "refused",
        "nocert": "refused",
        "plaintext": "refused",
    },
    MtlsMode.PERMISSIVE: {
        "mesh": "mtls",
        "foreign": "refused",
        "lookalike": "refused",
        "nocert": "refused",
        "plaintext": "plaintext",
    },
    MtlsMode.DISABLE: {
        "mesh": "passthrough",
        "foreign": "passthrough",
        "lookalike": "passthrough",
        "nocert": "passthrough",
        "plaintext": "plaintext",
    },
}
REFUSAL_REASONS = {
    "foreign": "untrusted_client_cert",
    "lookalike": "foreign_trust_domain",
    "nocert": "no_client_cert",
    "plaintext": "plaintext",
}


def outcome_tcp(running: Running, role: str, client: str) -> str:
    app = running.world.tcp_apps[role]
    seen_before = len(app.seen)
    tls = running.world.clients[client]
    if running.world.clients[client] is not None and ROLES[role][1] is MtlsMode.DISABLE:
        # Passed through: the application (plain TCP) sees the ClientHello; the handshake cannot finish.
        with contextlib.suppress(OSError, ssl.SSLError), connected(running.listen[role], tls, timeout=1.0):
            pass
        seen = wait_until(lambda: app.seen[seen_before:], 5, "the app to see the connection")
        return "passthrough" if seen[0].first[:2] == b"\x16\x03" else f"unexpected: {seen[0].first[:8]!r}"
    result = tcp(running.listen[role], tls)
    if result.raw != b"ping":
        return "refused"
    if tls is None:
        return "plaintext"
    return "mtls" if uri_sans(result.server_cert) == [WORKLOAD_ID] else "unexpected server"


@pytest.mark.parametrize("client", [*REFUSAL_REASONS, "mesh"])
@pytest.mark.parametrize("role", ["tcp-strict", "tcp-permissive", "tcp-disable"])
def test_each_mode_treats_each_client_as_istio_does(running: Running, role: str, client: str) -> None:
    mode = ROLES[role][1]
    assert mode is not None
    port = str(running.world.app_port(role))
    before = running.sample(
        "meshca_enforcer_connections_total",
        port=port,
        mode=mode.value,
        outcome="refused",
        reason=REFUSAL_REASONS.get(client, ""),
    )
    outcome = outcome_tcp(running, role, client)
    assert outcome == EXPECTED[mode][client]
    if outcome == "refused":
        wait_until(
            lambda: (
                running.sample(
                    "meshca_enforcer_connections_total",
                    port=port,
                    mode=mode.value,
                    outcome="refused",
                    reason=REFUSAL_REASONS[client],
                )
                == before + 1
            ),
            5,
            f"the refusal counted with reason {REFUSAL_REASONS[client]}",
        )


def test_accepted_connections_and_peers_are_counted(running: Running) -> None:
    port = str(running.world.app_port("tcp-strict"))
    labels = {"port": port, "mode": "STRICT", "outcome": "accepted_mtls", "reason": "ok"}
    before = running.sample("meshca_enforcer_connections_total", **labels)
    peers_before = running.sample("meshca_enforcer_peer_identities_total", port=port, peer=CLIENT_ID)
    bytes_before = running.sample("meshca_enforcer_bytes_total", port=port, direction="received")
    for _ in range(3):
        assert tcp(running.listen["tcp-strict"], running.world.clients["mesh"]).raw == b"ping"
    wait_until(
        lambda: (
            running.sample("meshca_enforcer_bytes_total", port=port, direction="received")
            >= bytes_before + 12
        ),
        5,
        "bytes counted",
    )
    assert running.sample("meshca_enforcer_connections_total", **labels) == before + 3
    assert (
        running.sample("meshca_enforcer_peer_identities_total", port=port, peer=CLIENT_ID) == peers_before + 3
    )
    with connected(running.listen["tcp-strict"], running.world.clients["mesh"]) as stream:
        stream.sendall(b"x")
        assert stream.recv(1) == b"x"
        assert running.sample("meshca_enforcer_active_connections", port=port) == 1
    wait_until(
        lambda: running.sample("meshca_enforcer_active_connections", port=port) == 0, 5, "the gauge back at 0"
    )


def test_a_returning_client_resumes_its_session_and_is_still_identified(running: Running) -> None:
    """Session tickets (as Envoy sends them): a resumed connection skips the certificate exchange,
    and the identity still comes from the certificate the session was made with."""
    tls = running.world.clients["mesh"]
    assert tls is not None
    port = running.listen["http-strict"]
    with connected(port, tls) as first:
        first.sendall(request("/first"))
        assert read_response(first, bytearray()) is not None
        session = first.session
    assert session is not None and session.has_ticket
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        tls.wrap_socket(raw, session=session) as again,
    ):
        assert again.session_reused
        again.sendall(request("/again"))
        answer = read_response(again, bytearray())
    assert answer is not None and answer[0] == 200
    assert xfcc(json.loads(answer[1])) == [
        f"By={WORKLOAD_ID};Hash={running.world.client_hash};URI={CLIENT_ID}"
    ]


@pytest.mark.parametrize(
    ("role", "client", "outcome"),
    [("tcp-permissive", "plaintext", "accepted_plaintext"), ("tcp-disable", "mesh", "passthrough")],
)
def test_plaintext_and_passthrough_outcomes_are_counted(
    running: Running, role: str, client: str, outcome: str
) -> None:
    mode = ROLES[role][1]
    assert mode is not None
    labels = {
        "port": str(running.world.app_port(role)),
        "mode": mode.value,
        "outcome": outcome,
        "reason": "ok",
    }
    before = running.sample("meshca_enforcer_connections_total", **labels)
    outcome_tcp(running, role, client)
    wait_until(
        lambda: running.sample("meshca_enforcer_connections_total", **labels) == before + 1,
        5,
        f"{outcome} counted",
    )


# --------------------------------------------------------------------------- identities to the application


def test_http_mtls_keep_alive_every_request_gets_our_xfcc(running: Running) -> None:
    world = running.world
    expected = f"By={WORKLOAD_ID};Hash={world.client_hash};URI={CLIENT_ID}"
    payload = (
        request("/1", {"X-Forwarded-Client-Cert": FORGED}, b"hello")
        + request(
            "/2",
            {"x-forwarded-client-cert": FORGED},
            chunks=[b"chunk one ", b"two"],
            trailers=f"x-forwarded-client-cert: {FORGED}\r\nchecksum: abc\r\n",
        )
        + request("/3", {"X-FORWARDED-CLIENT-CERT": FORGED, "x-forwarded-client-cert": "second"})
    )
    result = http(running.listen["http-permissive"], world.clients["mesh"], payload, expect=3)
    assert result.error is None, result
    assert [r["line"] for r in result.responses] == [
        "POST /1 HTTP/1.1",
        "POST /2 HTTP/1.1",
        "POST /3 HTTP/1.1",
    ]
    assert [xfcc(r) for r in result.responses] == [[expected]] * 3
    assert [r["body"] for r in result.responses] == ["hello", "chunk one two", ""]
    assert result.responses[1]["trailers"] == [["checksum", "abc"]]


@pytest.mark.parametrize("role", ["http-permissive", "http-disable"])
def test_http_plaintext_never_passes_the_callers_xfcc(running: Running, role: str) -> None:
    payload = request("/a", {"X-Forwarded-Client-Cert": FORGED}) + request(
        "/b",
        {"x-forwarded-client-cert": FORGED},
        chunks=[b"x"],
        trailers=f"X-Forwarded-Client-Cert: {FORGED}\r\n",
    )
    result = http(running.listen[role], None, payload, expect=2)
    assert result.error is None, result
    assert [xfcc(r) for r in result.responses] == [[], []]
    assert [r["trailers"] for r in result.responses] == [[], []]


def test_pipelined_requests_in_one_write_are_each_rewritten(running: Running) -> None:
    payload = b"".join(request(f"/{i}", {"x-forwarded-client-cert": FORGED}, b"b" * i) for i in range(5))
    result = http(running.listen["http-strict"], running.world.clients["mesh"], payload, expect=5)
    assert [r["line"] for r in result.responses] == [f"POST /{i} HTTP/1.1" for i in range(5)]
    assert all(
        xfcc(r) == [f"By={WORKLOAD_ID};Hash={running.world.client_hash};URI={CLIENT_ID}"]
        for r in result.responses
    )


def test_expect_100_continue_passes_through(running: Running) -> None:
    with connected(running.listen["http-permissive"], None) as stream:
        stream.sendall(b"POST /e HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        time.sleep(0.05)
        stream.sendall(b"body")
        answer = read_response(stream, bytearray())
    assert answer is not None and json.loads(answer[1])["body"] == "body"


@pytest.mark.parametrize(
    ("payload", "status", "reason"),
    [
        (b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "bad_request"),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", 431, "headers_too_large"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", None, "http2_unsupported"),
    ],
)
def test_malformed_and_http2_requests_are_refused_and_counted(
    running: Running, payload: bytes, status: int | None, reason: str
) -> None:
    port = str(running.world.app_port("http-permissive"))
    before = running.sample("meshca_enforcer_http_refused_total", port=port, reason=reason)
    result = http(running.listen["http-permissive"], None, payload, expect=1)
    assert [r["status"] for r in result.responses] == ([status] if status else [])
    # An answered refusal is read whole (then the connection closes); HTTP/2 is closed unanswered.
    assert result.error == ("closed" if status is None else None), result
    wait_until(
        lambda: running.sample("meshca_enforcer_http_refused_total", port=port, reason=reason) == before + 1,
        5,
        f"the refusal counted as {reason}",
    )


def test_proxy_protocol_v2_carries_the_peer_over_mtls(running: Running) -> None:
    app = running.world.tcp_apps["tcp-permissive"]
    before = len(app.seen)
    with connected(running.listen["tcp-permissive"], running.world.clients["mesh"]) as stream:
        local = stream.getsockname()
        stream.sendall(b"hello")
        assert stream.recv(5) == b"hello"
    seen = app.seen[before]
    assert seen.first == b"hello"
    assert seen.proxy.source == ("127.0.0.1", local[1])
    assert seen.proxy.destination == ("127.0.0.1", running.listen["tcp-permissive"])
    tlvs = seen.proxy.tlvs
    assert tlvs[0xE0] == CLIENT_ID.encode()
    ssl_tlv = tlvs[proxy_v2.PP2_TYPE_SSL]
    client_flags, verify = struct.unpack("!BI", ssl_tlv[:5])
    assert client_flags == proxy_v2.PP2_CLIENT_SSL | proxy_v2.PP2_CLIENT_CERT_CONN and verify == 0
    sub = {}
    offset = 5
    while offset < len(ssl_tlv):
        kind, length = struct.unpack("!BH", ssl_tlv[offset : offset + 3])
        sub[kind] = ssl_tlv[offset + 3 : offset + 3 + length]
        offset += 3 + length
    assert sub[proxy_v2.PP2_SUBTYPE_SSL_VERSION] == b"TLSv1.3"
    assert sub[proxy_v2.PP2_SUBTYPE_SSL_CIPHER].startswith(b"TLS_")


@pytest.mark.parametrize("role", ["tcp-permissive", "tcp-disable"])
def test_proxy_protocol_v2_for_plaintext_has_no_identity(running: Running, role: str) -> None:
    app = running.world.tcp_apps[role]
    before = len(app.seen)
    with connected(running.listen[role], None) as stream:
        local = stream.getsockname()
        stream.sendall(b"plain")
        assert stream.recv(5) == b"plain"
    seen = app.seen[before]
    assert seen.proxy.source == ("127.0.0.1", local[1]) and seen.proxy.tlvs == {}


# --------------------------------------------------------------------------- policy and certificate changes


def test_a_mode_change_applies_to_the_next_connection_and_keeps_open_ones(running: Running) -> None:
    world, port = running.world, running.listen["tcp-change"]
    assert tcp(port, None).raw == b"ping"  # PERMISSIVE from the namespace policy
    with connected(port, None) as kept:
        kept.sendall(b"a")
        assert kept.recv(1) == b"a"
        running.policy_set.replace(policies(world, MtlsMode.STRICT))
        try:
            wait_until(lambda: tcp(port, None).raw == b"", 2, "plaintext refused after the change to STRICT")
            assert tcp(port, world.clients["mesh"]).raw == b"ping"
            kept.sendall(b"b")
            assert kept.recv(1) == b"b"  # an open connection is not cut by a policy change
        finally:
            running.policy_set.replace(policies(world, MtlsMode.PERMISSIVE))
    wait_until(lambda: tcp(port, None).raw == b"ping", 2, "plaintext accepted again")


def served_serial(running: Running) -> int:
    result = tcp(running.listen["tcp-strict"], running.world.clients["mesh"])
    assert result.server_cert is not None, result
    return int(result.server_cert.serial_number)


def test_a_rotated_certificate_is_served_without_restart(running: Running) -> None:
    agent = running.world.agent
    old = served_serial(running)
    reloads = running.sample("meshca_enforcer_certificate_reloads_total", outcome="loaded")
    agent.process.retry_now()
    new = agent.wait_for_svid(not_serial=old).leaf.serial_number
    wait_until(lambda: served_serial(running) == new, 5, "the new certificate served")
    assert running.sample("meshca_enforcer_certificate_reloads_total", outcome="loaded") >= reloads + 1
    expiry = running.sample("meshca_enforcer_certificate_expiry_timestamp_seconds")
    assert expiry > time.time()


def test_a_broken_file_set_keeps_the_previous_certificate(running: Running) -> None:
    cert_dir = running.world.agent.cfg.output_dir
    serial = served_serial(running)
    refused = running.sample("meshca_enforcer_certificate_reloads_total", outcome="refused")
    current = (cert_dir / DATA_LINK).resolve()
    broken = Path(tempfile.mkdtemp(prefix="..broken", dir=cert_dir))
    (broken / CERT_CHAIN).write_bytes((current / CERT_CHAIN).read_bytes())
    (broken / KEY).write_bytes(private_key_pem(ec_key()))  # a key for another certificate
    (broken / "root-cert.pem").write_bytes((current / "root-cert.pem").read_bytes())
    link = cert_dir / DATA_LINK
    tmp = cert_dir / "..data.tmp"
    tmp.symlink_to(broken.name)
    tmp.replace(link)
    try:
        wait_until(
            lambda: running.sample("meshca_enforcer_certificate_reloads_total", outcome="refused") > refused,
            5,
            "the broken set refused",
        )
        assert served_serial(running) == serial
    finally:
        tmp.symlink_to(current.name)
        tmp.replace(link)
        shutil.rmtree(broken)
    wait_until(lambda: served_serial(running) == serial, 5, "the good set served")


# --------------------------------------------------------------------------- outbound


def test_outbound_originates_mtls_to_a_strict_peer(running: Running) -> None:
    """Plaintext in on the outbound port, mTLS with the workload certificate to the STRICT HTTP port."""
    target = f"127.0.0.1:{running.listen['http-strict']}={WORKLOAD_ID}"
    enforcer, port = _outbound_enforcer(running.world, target, running.enforcer.engine.name)
    try:
        result = http(port, None, request("/out", {"x-forwarded-client-cert": FORGED}), expect=1)
    finally:
        enforcer.stop()
    assert result.error is None, result
    served = running.world.agent.current
    assert served is not None
    server_hash = hashlib.sha256(served.leaf.public_bytes(serialization.Encoding.DER)).hexdigest()
    assert xfcc(result.responses[0]) == [f"By={WORKLOAD_ID};Hash={server_hash};URI={WORKLOAD_ID}"]


def _outbound_enforcer(world: World, target: str, engine: str = "openssl") -> tuple[Enforcer, int]:
    """An enforcer with one --outbound to `target` on a free port, and that port."""
    args = build_parser({}).parse_args(
        [
            "enforce",
            "--outbound",
            f"0:{target}",
            "--cert-dir",
            str(world.agent.cfg.output_dir),
            "--metrics-listen",
            "off",
            "--tls-engine",
            engine,
        ]
    )
    cfg = dataclasses.replace(config_from_args(args), timeouts=TIMEOUTS)
    enforcer = build_enforcer(cfg, policy_set=PolicySet())
    enforcer.start()
    (port,) = outbound_ports(enforcer.ports)
    return enforcer, port


class ForeignServer:
    """A TLS server with a certificate from another CA (the foreign meshca CA)."""

    def __init__(self, world: World) -> None:
        cert = ca_client_cert(world.foreign_ca, "backend")
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        (world.base / "foreign-server.pem").write_bytes(cert.chain_pem)
        (world.base / "foreign-server.key").write_bytes(cert.key_pem)
        self.context.load_cert_chain(world.base / "foreign-server.pem", world.base / "foreign-server.key")
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.got_data = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with (
                contextlib.suppress(OSError, ssl.SSLError),
                self.context.wrap_socket(conn, server_side=True) as tls,
            ):
                tls.settimeout(2)
                if tls.recv(100):
                    self.got_data = True


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("foreign", "untrusted_server_cert"),
        ("wrong-id", "unexpected_identity"),
        ("closed-port", "upstream_unreachable"),
        ("no-such-host.invalid:80", "unresolvable"),
    ],
)
def test_outbound_refuses_servers_it_cannot_trust(running: Running, target: str, reason: str) -> None:
    world = running.world
    server = None
    with contextlib.ExitStack() as stack:
        if target == "foreign":
            server = ForeignServer(world)
            spec = f"127.0.0.1:{server.port}"
        elif target == "wrong-id":
            spec = f"127.0.0.1:{running.listen['tcp-strict']}=spiffe://cluster.local/ns/shop/sa/not-web"
        elif target == "closed-port":
            spec = f"127.0.0.1:{stack.enter_context(reserved_port())}"
        else:
            spec = target
        _refused_by_outbound(world, spec, reason, server)


def _refused_by_outbound(world: World, spec: str, reason: str, server: ForeignServer | None) -> None:
    enforcer, port = _outbound_enforcer(world, spec)
    try:
        result = tcp(port, None, b"secret")
        assert result.raw == b""  # closed, nothing echoed
        labels = {"port": str(port), "target": spec.split("=")[0], "outcome": "refused", "reason": reason}
        wait_until(
            lambda: (
                enforcer.metrics.registry.get_sample_value(
                    "meshca_enforcer_outbound_connections_total", labels
                )
                == 1
            ),
            5,
            f"refusal {reason} counted",
        )
        if server is not None:
            assert not server.got_data  # the untrusted server never saw the client's bytes
    finally:
        enforcer.stop()
        if server is not None:
            server.sock.close()


# --------------------------------------------------------------------------- hostile input


def test_garbage_and_truncated_handshakes_do_not_hurt_the_enforcer(running: Running) -> None:
    strict = running.listen["tcp-strict"]
    client_hello_start = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 20
    for payload in [
        b"\x00" * 1000,
        bytes(range(256)) * 4,
        client_hello_start,
        b"\x16\x03\x01\xff\xff" + b"A" * 500,
    ]:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", strict), timeout=3) as sock:
            sock.sendall(payload)
            with contextlib.suppress(TimeoutError):
                assert sock.recv(100) in (b"",) or True
    assert tcp(strict, running.world.clients["mesh"]).raw == b"ping"
    assert http(running.listen["http-permissive"], None, request("/alive"), expect=1).responses


def test_a_slow_first_byte_counts_as_plaintext_after_the_timeout(running: Running) -> None:
    port = str(running.world.app_port("tcp-strict"))
    labels = {"port": port, "mode": "STRICT", "outcome": "refused", "reason": "plaintext"}
    before = running.sample("meshca_enforcer_connections_total", **labels)
    with socket.create_connection(("127.0.0.1", running.listen["tcp-strict"]), timeout=5) as sock:
        sock.sendall(b"\x16")  # could be TLS: the enforcer waits for one more byte, then gives up
        assert closed_by_peer(sock)
    assert running.sample("meshca_enforcer_connections_total", **labels) == before + 1


def test_a_server_speaks_first_protocol_works_in_permissive(running: Running) -> None:
    app = running.world.tcp_apps["tcp-permissive"]
    app.greeting = b"220 hello\r\n"
    try:
        with socket.create_connection(("127.0.0.1", running.listen["tcp-permissive"]), timeout=5) as sock:
            assert sock.recv(100) == b"220 hello\r\n"  # nothing sent first: forwarded after the timeout
    finally:
        app.greeting = None


def test_a_stalled_handshake_is_closed_after_the_timeout(running: Running) -> None:
    port = str(running.world.app_port("tcp-strict"))
    labels = {"port": port, "mode": "STRICT", "outcome": "refused", "reason": "handshake_timeout"}
    before = running.sample("meshca_enforcer_connections_total", **labels)
    with socket.create_connection(("127.0.0.1", running.listen["tcp-strict"]), timeout=5) as sock:
        sock.sendall(b"\x16\x03\x01\x00\x50")  # a record header promising more that never comes
        started = time.monotonic()
        assert closed_by_peer(sock)
        assert time.monotonic() - started < TIMEOUTS.handshake_s + 1.5
    assert running.sample("meshca_enforcer_connections_total", **labels) == before + 1


@contextlib.contextmanager
def lone_enforcer(world: World, inbound: str, timeouts: Timeouts = TIMEOUTS) -> Iterator[Enforcer]:
    """An enforcer of its own (PERMISSIVE: no policy) for tests that need special settings."""
    flags = {
        "--inbound": inbound,
        "--listen-host": "127.0.0.1",
        "--cert-dir": str(world.agent.cfg.output_dir),
        "--namespace": NAMESPACE,
        "--policies": "unused",
        "--metrics-listen": "off",
    }
    args = build_parser({}).parse_args(["enforce", *(item for pair in flags.items() for item in pair)])
    enforcer = build_enforcer(
        dataclasses.replace(config_from_args(args), timeouts=timeouts), policy_set=PolicySet()
    )
    enforcer.start()
    try:
        yield enforcer
    finally:
        enforcer.stop()


def test_an_application_that_is_down_is_counted_as_unreachable(world: World) -> None:
    with reserved_port() as down, lone_enforcer(world, f"0:{down}") as enforcer:
        listen = listen_port(enforcer, down)
        for client in ("plaintext", "mesh"):
            assert tcp(listen, world.clients[client]).raw == b""
        labels = {"port": str(down), "mode": "PERMISSIVE", "outcome": "refused", "reason": "app_unreachable"}
        assert enforcer.metrics.registry.get_sample_value("meshca_enforcer_connections_total", labels) == 2


def test_an_idle_connection_is_closed_after_the_idle_timeout(world: World) -> None:
    app = world.tcp_apps["tcp-permissive"].port
    timeouts = dataclasses.replace(TIMEOUTS, idle_s=0.6)
    with (
        lone_enforcer(world, f"0:{app}", timeouts) as enforcer,
        connected(listen_port(enforcer, app), world.clients["mesh"]) as stream,
    ):
        stream.sendall(b"x")
        assert stream.recv(1) == b"x"
        started = time.monotonic()
        assert stream.recv(1) == b""  # closed by the enforcer, not by the client or the app
        assert 0.5 < time.monotonic() - started < 3.0


def test_many_hostile_connections_at_once(running: Running) -> None:
    port = running.listen["http-permissive"]

    def hostile(i: int) -> None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
            sock.sendall(
                [b"GET / HTTP/1.1\r\nX: " + b"y" * 5000, b"\x16\x03\x01", b"\xff" * 64, b"GET /"][i % 4]
            )
            if i % 2:
                sock.close()
            else:
                time.sleep(0.3)

    threads = [threading.Thread(target=hostile, args=(i,)) for i in range(80)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result = http(port, running.world.clients["mesh"], request("/after"), expect=1)
    assert [r["line"] for r in result.responses] == ["POST /after HTTP/1.1"]
    wait_until(lambda: len(running.enforcer.connections) == 0, 10, "every hostile connection closed")
