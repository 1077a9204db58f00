"""Data planes that enforce PeerAuthentication, an application behind them, and clients in front.

- `AppServer`: the workload's application on one port. It speaks HTTP/1.1 in
  plaintext, or TLS with a certificate of its own (so a TLS connection that a
  data plane passed through untouched is recognisable), after an optional
  PROXY protocol v2 header. It answers every request with what it saw: TLS or
  not, the x-forwarded-client-cert header, the PROXY header.
- `LocalServer`: the accept loop the applications share (one thread per connection).
- `read_http_request` / `read_response`: HTTP/1.1 messages with Content-Length bodies
  off a socket (plain or TLS), `recv_until` / `header_fields` the pieces for more.
- `exchange`: one client connection (plaintext, or TLS with or without a client
  certificate) carrying one or more HTTP/1.1 requests, and what came back;
  `connected`, `client_context`, `lookalike_cert` and `issued_cert` for clients of other kinds.
- `start_envoy_plane` / `start_python_plane`: `meshca policy envoy-config --watch`
  + a real Envoy, or `meshca enforce`, in front of the application ports. Both listen on
  free ports (listen port 0) and tell which: Envoy through its admin API, `meshca enforce`
  through its ports file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca.issuance.keys import private_key_pem
from ca.policy.envoy_config import listener_name
from ca.policy.ports import PROTOCOLS, InboundPort
from tests.support.agent import REPO, wait_until
from tests.support.ca_server import RunningCa
from tests.support.envoy import RunningEnvoy, start_envoy_file
from tests.support.pki import Hierarchy, ec_key, pem
from tests.support.ports import inbound_ports, read_ports_file

PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
APP_COMMON_NAME = "meshca-test-app"
LOOKALIKE_ID = "spiffe://cluster.local.evil/ns/shop/sa/client"


# --------------------------------------------------------------------------- PROXY v2, the app's certificate


@dataclass(frozen=True)
class ProxyHeader:
    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    tlvs: dict[int, bytes]


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def _peek(sock: socket.socket, size: int) -> bytes:
    """Up to `size` bytes without consuming them (fewer if the peer sends fewer and waits)."""
    deadline = time.monotonic() + 2.0
    data = sock.recv(size, socket.MSG_PEEK)
    while 0 < len(data) < size and PROXY_V2_SIGNATURE.startswith(data) and time.monotonic() < deadline:
        time.sleep(0.005)
        data = sock.recv(size, socket.MSG_PEEK)
    return data


def parse_tlvs(data: bytes) -> dict[int, bytes]:
    tlvs: dict[int, bytes] = {}
    offset = 0
    while offset + 3 <= len(data):
        kind, length = data[offset], struct.unpack("!H", data[offset + 1 : offset + 3])[0]
        tlvs[kind] = data[offset + 3 : offset + 3 + length]
        offset += 3 + length
    return tlvs


def read_proxy_v2(sock: socket.socket) -> ProxyHeader | None:
    """Consume a PROXY protocol v2 header if the connection starts with one."""
    if _peek(sock, len(PROXY_V2_SIGNATURE)) != PROXY_V2_SIGNATURE:
        return None
    head = _recv_exactly(sock, 16)
    family, length = head[13], struct.unpack("!H", head[14:16])[0]
    body = _recv_exactly(sock, length)
    if family == 0x11:  # TCP over IPv4
        src, dst = socket.inet_ntoa(body[0:4]), socket.inet_ntoa(body[4:8])
        sport, dport = struct.unpack("!HH", body[8:12])
        return ProxyHeader((src, sport), (dst, dport), parse_tlvs(body[12:]))
    if family == 0x21:  # TCP over IPv6
        src, dst = (
            socket.inet_ntop(socket.AF_INET6, body[0:16]),
            socket.inet_ntop(socket.AF_INET6, body[16:32]),
        )
        sport, dport = struct.unpack("!HH", body[32:36])
        return ProxyHeader((src, sport), (dst, dport), parse_tlvs(body[36:]))
    return ProxyHeader(None, None, {})  # LOCAL or unspecified family


def self_signed_server(workdir: Path, common_name: str = APP_COMMON_NAME) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = workdir / f"{common_name}.pem", workdir / f"{common_name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context


# --------------------------------------------------------------------------- HTTP/1.1 on a socket


def recv_until(stream: Any, buffer: bytearray, marker: bytes) -> bool:
    """Receive into `buffer` until it holds `marker`; False if the peer closed first."""
    while marker not in buffer:
        chunk = stream.recv(65536)
        if not chunk:
            return False
        buffer += chunk
    return True


def recv_at_least(stream: Any, buffer: bytearray, size: int) -> bool:
    """Receive into `buffer` until it holds `size` bytes; False if the peer closed first."""
    while len(buffer) < size:
        chunk = stream.recv(65536)
        if not chunk:
            return False
        buffer += chunk
    return True


def take(buffer: bytearray, size: int) -> bytes:
    """The first `size` bytes of `buffer`, removed from it."""
    data = bytes(buffer[:size])
    del buffer[:size]
    return data


def header_fields(block: bytes) -> list[tuple[str, str]]:
    """CRLF-separated `Name: value` lines as (lower-case name, value) pairs, in order."""
    pairs = (line.decode("latin-1").partition(":") for line in block.split(b"\r\n") if line)
    return [(name.strip().lower(), value.strip()) for name, _, value in pairs]


@dataclass(frozen=True)
class HttpMessage:
    start_line: str
    headers: dict[str, list[str]]  # lower-case names, every value in order
    body: bytes


def read_http_message(stream: Any, buffer: bytearray) -> HttpMessage | None:
    """One head and its Content-Length body (none without one) from `stream`; what follows stays in
    `buffer` for the next call. None if the peer closes first."""
    if not recv_until(stream, buffer, b"\r\n\r\n"):
        return None
    head = take(buffer, buffer.index(b"\r\n\r\n") + 4)[:-4]
    start_line, _, fields = head.partition(b"\r\n")
    headers: dict[str, list[str]] = {}
    for name, value in header_fields(fields):
        headers.setdefault(name, []).append(value)
    length = int(headers.get("content-length", ["0"])[0])
    if not recv_at_least(stream, buffer, length):
        return None
    return HttpMessage(start_line.decode("latin-1"), headers, take(buffer, length))


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str
    headers: dict[str, list[str]]  # lower-case names, every value in order


def read_http_request(stream: Any, buffer: bytearray) -> HttpRequest | None:
    """One request head (and its Content-Length body) from `stream`; None at a clean EOF."""
    message = read_http_message(stream, buffer)
    if message is None:
        return None
    method, path, _version = message.start_line.split(" ", 2)
    return HttpRequest(method, path, message.headers)


def read_response(stream: Any, buffer: bytearray) -> tuple[int, bytes] | None:
    """One response's status and Content-Length body; None if the peer closes first."""
    message = read_http_message(stream, buffer)
    if message is None:
        return None
    return int(message.start_line.split(" ")[1]), message.body


# --------------------------------------------------------------------------- the applications


class LocalServer:
    """A listening socket on 127.0.0.1 (a free port); `serve` runs for each connection on a thread of
    its own. Subclasses set their own attributes before calling `__init__`: serving starts in it."""

    def __init__(self, name: str) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.connections = 0  # accepted so far
        self._stopping = False
        threading.Thread(target=self._accept_loop, daemon=True, name=f"{name}-{self.port}").start()

    def _accept_loop(self) -> None:
        while not self._stopping:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self.serve, args=(conn, peer), daemon=True).start()

    def serve(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class AppServer(LocalServer):
    """One application port: HTTP/1.1 over plaintext or TLS (own certificate), keep-alive, echoing."""

    def __init__(self, tls_context: ssl.SSLContext) -> None:
        self._tls = tls_context
        super().__init__("app")

    def serve(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        conn.settimeout(10)
        stream: socket.socket = conn
        try:
            proxy = read_proxy_v2(conn)
            tls = _peek(conn, 1) == b"\x16"
            if tls:
                stream = self._tls.wrap_socket(conn, server_side=True)
            buffer = bytearray()
            while (request := read_http_request(stream, buffer)) is not None:
                body = json.dumps(self._describe(request, tls=tls, proxy=proxy, peer=peer)).encode()
                close = "close" in request.headers.get("connection", [""])[0].lower()
                stream.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n".encode()
                    + (b"Connection: close\r\n" if close else b"")
                    + b"\r\n"
                    + body
                )
                if close:
                    break
        except (OSError, ValueError, ConnectionError):
            pass
        finally:
            with contextlib.suppress(OSError):
                stream.close()

    @staticmethod
    def _describe(
        request: HttpRequest, *, tls: bool, proxy: ProxyHeader | None, peer: tuple[str, int]
    ) -> dict[str, Any]:
        return {
            "path": request.path,
            "tls": tls,
            "xfcc": request.headers.get("x-forwarded-client-cert"),
            "peer": list(peer),
            "proxy": None
            if proxy is None
            else {
                "source": list(proxy.source) if proxy.source else None,
                "tlvs": {str(kind): value.decode("utf-8", "replace") for kind, value in proxy.tlvs.items()},
            },
        }


# --------------------------------------------------------------------------- clients


@dataclass(frozen=True)
class ClientCert:
    chain_pem: bytes
    key_pem: bytes


@dataclass
class Exchange:
    """What one client connection got back."""

    server_cert: x509.Certificate | None = None
    responses: list[dict[str, Any]] = field(default_factory=list)  # the app's JSON per answered request
    statuses: list[int] = field(default_factory=list)
    local_port: int | None = None
    error: str | None = None


CLIENT_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def lookalike_cert(hierarchy: Hierarchy, spiffe_id: str = LOOKALIKE_ID) -> ClientCert:
    """The mesh CA's chain and a proper client leaf (the mesh's own extensions), but for a SPIFFE ID
    of another trust domain."""
    key, now = ec_key(), dt.datetime.now(dt.UTC)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(hierarchy.signing.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=True
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(CLIENT_KEY_USAGE, critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(hierarchy.signing_key.public_key()),
            critical=False,
        )
        .sign(hierarchy.signing_key, hashes.SHA256())
    )
    chain = pem(leaf) + pem(hierarchy.signing) + pem(hierarchy.intermediate)
    return ClientCert(chain, private_key_pem(key))


def issued_cert(ca: RunningCa, namespace: str, service_account: str) -> ClientCert:
    """A certificate `ca` issues for the service account (its chain without the root)."""
    chain, key = ca.request(token=ca.token(namespace, service_account))
    return ClientCert("".join(chain[:-1]).encode(), private_key_pem(key))


def uri_sans(cert: x509.Certificate | None) -> list[str]:
    """The URI SANs of `cert` ([] without a certificate or SAN extension)."""
    if cert is None:
        return []
    with contextlib.suppress(x509.ExtensionNotFound):
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return [str(uri) for uri in san.get_values_for_type(x509.UniformResourceIdentifier)]
    return []


def client_context(cert: ClientCert | None, workdir: Path, name: str) -> ssl.SSLContext:
    """A TLS client (with `cert` as its client certificate, if given) that accepts any server
    certificate: the tests look at the certificate presented to tell who answered."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if cert is not None:
        cert_file = workdir / f"client-{name}.pem"
        key_file = cert_file.with_suffix(".key")
        cert_file.write_bytes(cert.chain_pem)
        key_file.write_bytes(cert.key_pem)
        key_file.chmod(0o600)
        context.load_cert_chain(cert_file, key_file)
    return context


def client_contexts(
    *, mesh: ClientCert, foreign: ClientCert, hierarchy: Hierarchy, workdir: Path
) -> dict[str, ssl.SSLContext | None]:
    """The clients an enforcer is tried with, by name: a mesh certificate, a foreign CA's, a look-alike
    (the mesh CA's chain, another trust domain), TLS without a certificate, and plaintext (None)."""
    return {
        "mesh": client_context(mesh, workdir, "mesh"),
        "foreign": client_context(foreign, workdir, "foreign"),
        "lookalike": client_context(lookalike_cert(hierarchy), workdir, "lookalike"),
        "nocert": client_context(None, workdir, "nocert"),
        "plaintext": None,
    }


@contextlib.contextmanager
def connected(
    port: int, tls: ssl.SSLContext | None, *, timeout: float = 5.0, server_hostname: str | None = None
) -> Iterator[Any]:
    """A connection to 127.0.0.1:`port`: the socket, or with `tls` the TLS stream after the handshake."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        if tls is None:
            yield raw
            return
        with tls.wrap_socket(raw, server_hostname=server_hostname) as stream:
            yield stream


def server_certificate(stream: Any) -> x509.Certificate | None:
    """The certificate the server presented on a TLS stream (None on a plain socket)."""
    der = stream.getpeercert(binary_form=True) if isinstance(stream, ssl.SSLSocket) else None
    return x509.load_der_x509_certificate(der) if der else None


def exchange(
    port: int,
    *,
    tls: ssl.SSLContext | None,
    requests: Sequence[dict[str, str]] = ({},),
    timeout: float = 5.0,
) -> Exchange:
    """Connect, (TLS handshake), send each request (extra headers given) and read each answer."""
    result = Exchange()
    try:
        with connected(port, tls, timeout=timeout, server_hostname="web.shop.svc.cluster.local") as stream:
            result.local_port = stream.getsockname()[1]
            result.server_cert = server_certificate(stream)
            buffer = bytearray()
            for index, extra in enumerate(requests):
                last = index == len(requests) - 1
                head = f"GET /request-{index} HTTP/1.1\r\nHost: web.shop\r\n"
                head += "".join(f"{key}: {value}\r\n" for key, value in extra.items())
                head += "Connection: close\r\n" if last else ""
                stream.sendall((head + "\r\n").encode())
                answer = read_response(stream, buffer)
                if answer is None:
                    result.error = "connection closed without a response"
                    break
                status, body = answer
                result.statuses.append(status)
                with contextlib.suppress(ValueError):
                    result.responses.append(json.loads(body))
    except (OSError, ssl.SSLError) as err:
        result.error = f"{type(err).__name__}: {err}"
    return result


# --------------------------------------------------------------------------- data planes


@dataclass
class DataPlane:
    name: str
    listen_ports: dict[int, int]  # application port -> the data plane's listen port
    processes: list[subprocess.Popen[bytes]]
    logs: list[Path]
    envoy: RunningEnvoy | None = None
    stop_hooks: list[Callable[[], None]] = field(default_factory=list)

    def alive(self) -> bool:
        return all(proc.poll() is None for proc in self.processes) and (
            self.envoy is None or self.envoy.proc.poll() is None
        )

    def pids(self) -> tuple[int, ...]:
        pids = [proc.pid for proc in self.processes]
        if self.envoy is not None:
            pids.append(self.envoy.proc.pid)
        return tuple(pids)

    def log_tail(self, lines: int = 30) -> str:
        parts = []
        for path in self.logs:
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path.name}\n" + "\n".join(text))
        if self.envoy is not None:
            parts.append(f"--- envoy\n{self.envoy.log_tail(lines)}")
        return "\n".join(parts)

    def stop(self) -> None:
        if self.envoy is not None:
            self.envoy.stop()
        for proc in self.processes:
            stop_process(proc)
        for hook in self.stop_hooks:
            hook()


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def meshca_process(args: Sequence[str], log_path: Path) -> subprocess.Popen[bytes]:
    """`python -m ca.cli.main ARGS` in the background, its output in `log_path`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHCA_")}
    env["PYTHONPATH"] = str(REPO)
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "ca.cli", *args], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO
        )


@dataclass(frozen=True, kw_only=True)
class PlaneSpec:
    """The workload both data planes stand in front of."""

    namespace: str
    labels: str
    app_ports: dict[int, str]  # application port -> "http" | "tcp"
    proxy_protocol: tuple[int, ...]
    policies: Path
    trust_domain: str = "cluster.local"

    def inbound(self) -> list[InboundPort]:
        """One listener on a free port (listen port 0) in front of each application port."""
        return [InboundPort(0, app, PROTOCOLS[proto]) for app, proto in sorted(self.app_ports.items())]

    def common_args(self) -> list[str]:
        args = [
            "--namespace",
            self.namespace,
            "--labels",
            self.labels,
            "--inbound",
            ",".join(f"{p.listen_port}:{p.app_port}/{p.protocol}" for p in self.inbound()),
            "--listen-host",
            "127.0.0.1",
            "--app-host",
            "127.0.0.1",
            "--policies",
            str(self.policies),
            "--trust-domain",
            self.trust_domain,
        ]
        if self.proxy_protocol:
            args += ["--proxy-protocol", ",".join(str(p) for p in self.proxy_protocol)]
        return args


def _accepting(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


@contextlib.contextmanager
def _stopped_if_it_fails(plane: DataPlane) -> Iterator[None]:
    """Stops `plane` when starting it fails; a failed wait also tells what the plane logged."""
    try:
        yield
    except AssertionError as err:
        plane.stop()
        raise AssertionError(f"{err}\n{plane.log_tail()}") from err
    except BaseException:
        plane.stop()
        raise


def start_envoy_plane(spec: PlaneSpec, *, sds_socket: Path, workdir: Path) -> DataPlane:
    """`meshca policy envoy-config --lds-file --watch` keeps the listener file current; Envoy runs on it."""
    workdir.mkdir(parents=True, exist_ok=True)
    bootstrap, lds = workdir / "bootstrap.yaml", workdir / "listeners.yaml"
    log = workdir / "envoy-config.log"
    watcher = meshca_process(
        [
            "policy",
            "envoy-config",
            *spec.common_args(),
            "--sds-socket",
            str(sds_socket),
            "--admin-port",
            "0",
            "--lds-file",
            str(lds),
            "--bootstrap",
            str(bootstrap),
            "--watch",
        ],
        log,
    )
    plane = DataPlane("envoy", {}, [watcher], [log])
    with _stopped_if_it_fails(plane):
        wait_until(
            lambda: watcher.poll() is None and bootstrap.exists() and lds.exists(),
            15,
            f"envoy-config to write {bootstrap} and {lds}",
        )
        envoy = plane.envoy = start_envoy_file("enforcer", bootstrap, workdir)
        for port in spec.inbound():
            plane.listen_ports[port.app_port] = listen = envoy.listener_port(listener_name(port))
            wait_until(partial(_accepting, listen), 10, f"envoy listening on {listen}")
    return plane


def start_python_plane(spec: PlaneSpec, *, cert_dir: Path, workdir: Path) -> DataPlane:
    """`meshca enforce` with the agent's files."""
    workdir.mkdir(parents=True, exist_ok=True)
    log, ports_file = workdir / "enforce.log", workdir / "enforce.ports"
    proc = meshca_process(
        [
            "enforce",
            *spec.common_args(),
            "--cert-dir",
            str(cert_dir),
            "--metrics-listen",
            "127.0.0.1:0",
            "--ports-file",
            str(ports_file),
        ],
        log,
    )
    plane = DataPlane("python", {}, [proc], [log])
    with _stopped_if_it_fails(plane):
        plane.listen_ports.update(inbound_ports(read_ports_file(ports_file, proc, timeout=30)))
    return plane


@contextlib.contextmanager
def running(plane: DataPlane) -> Iterator[DataPlane]:
    try:
        yield plane
    finally:
        plane.stop()
