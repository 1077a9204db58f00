"""The agent end to end: a real CA, real agents, real Envoys, py-spiffe, and faults.

Two workloads (shop/frontend and shop/backend) each get an agent and an Envoy that
takes its certificate and trust over SDS from that agent. Requests go
test -> frontend Envoy (plaintext) -> backend Envoy (mTLS, SPIFFE SAN checks) -> app.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca._proto import spiffe_workload_pb2 as workload_pb
from ca.common.clock import SystemClock
from ca.issuance.cert_dir import CERT_CHAIN, DATA_LINK, KEY, ROOT_CERT
from ca.issuance.keys import private_key_pem
from ca.server.devtoken import DevTokenIssuer
from tests.support.agent import (
    LiveClock,
    RunningAgent,
    agent_args,
    run_agent_cli,
    short_dir,
    start_agent,
    wait_until,
)
from tests.support.ca_server import RunningCa, start_ca
from tests.support.clock import FakeClock
from tests.support.envoy import RunningEnvoy, inbound_bootstrap, outbound_bootstrap, start_envoy
from tests.support.ports import reserved_port

pytestmark = pytest.mark.slow

TRUST_DOMAIN = "cluster.local"
FRONTEND = "spiffe://cluster.local/ns/shop/sa/frontend"
BACKEND = "spiffe://cluster.local/ns/shop/sa/backend"
NOT_BACKEND = "spiffe://cluster.local/ns/shop/sa/payments"
ROTATION_TTL = "20s"


# --------------------------------------------------------------------------- helpers


def write_token(path: Path, token: str) -> Path:
    path.write_text(token + "\n")
    return path


def leaf_of(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def uri_san(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(uri) for uri in san.get_values_for_type(x509.UniformResourceIdentifier)]


def read_files(directory: Path) -> dict[str, bytes]:
    """The three files of one issuance (read through the `..data` link once, so a rotation
    between two reads cannot pair a chain with another issuance's key)."""

    def one_version() -> dict[str, bytes]:
        version = (directory / DATA_LINK).resolve(strict=True)
        return {name: (version / name).read_bytes() for name in (CERT_CHAIN, KEY, ROOT_CERT)}

    return wait_until(one_version, 5, f"a complete set of files in {directory}")


def http_get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read().decode()
    finally:
        conn.close()


@dataclass
class TlsResult:
    peer_der: bytes | None
    response: bytes
    error: Exception | None

    @property
    def status_line(self) -> str:
        return self.response.split(b"\r\n", 1)[0].decode(errors="replace")


def tls_get(
    port: int,
    *,
    trust_pem: bytes,
    cert_pem: bytes | None = None,
    key_pem: bytes | None = None,
    workdir: Path,
    headers: str = "",
) -> TlsResult:
    """One HTTP/1.1 request over TLS straight to an Envoy listener, as a hand-made client."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # SVIDs carry a URI SAN, no DNS name
    context.load_verify_locations(cadata=trust_pem.decode())
    if cert_pem is not None and key_pem is not None:
        cert_file, key_file = workdir / "client-cert.pem", workdir / "client-key.pem"
        cert_file.write_bytes(cert_pem)
        key_file.write_bytes(key_pem)
        context.load_cert_chain(cert_file, key_file)
    peer: bytes | None = None
    data = b""
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="backend.shop.svc.cluster.local") as tls,
        ):
            peer = tls.getpeercert(binary_form=True)
            tls.sendall(
                f"GET /direct HTTP/1.1\r\nHost: backend\r\n{headers}Connection: close\r\n\r\n".encode()
            )
            while chunk := tls.recv(65536):
                data += chunk
    except (OSError, ssl.SSLError) as err:
        return TlsResult(peer, data, err)
    return TlsResult(peer, data, None)


class EchoApp:
    """The backend workload: answers with the request headers it got, as JSON."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                body = json.dumps(
                    {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}
                )
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def live_ca() -> Iterator[RunningCa]:
    """A CA on the wall clock (certificates must age with the agents' clock)."""
    with short_dir("mca-ca-") as base:
        ca = start_ca(base / "state", clock=LiveClock())
        try:
            yield ca
        finally:
            ca.stop()


@dataclass
class Mesh:
    ca: RunningCa
    base: Path
    frontend: RunningAgent
    backend: RunningAgent
    app: EchoApp
    frontend_envoy: RunningEnvoy
    backend_envoy: RunningEnvoy
    frontend_port: int
    backend_port: int

    def diagnostics(self) -> str:
        return (
            f"--- frontend envoy log\n{self.frontend_envoy.log_tail()}\n"
            f"--- backend envoy log\n{self.backend_envoy.log_tail()}"
        )


@pytest.fixture(scope="module")
def mesh(live_ca: RunningCa) -> Iterator[Mesh]:
    with contextlib.ExitStack() as stack, short_dir("mca-mesh-") as base:
        agents: dict[str, RunningAgent] = {}
        for name in ("frontend", "backend"):
            token = write_token(base / f"{name}.token", live_ca.token("shop", name))
            agent = start_agent(
                agent_args(
                    ca_port=live_ca.port,
                    ca_root=live_ca.state_dir / "root-cert.pem",
                    token_file=token,
                    output_dir=base / f"{name}-certs",
                    sds_socket=base / f"{name}.sds",
                    workload_api_socket=base / f"{name}.wl",
                    ttl=ROTATION_TTL,
                )
            )
            stack.callback(agent.stop)
            agent.wait_for_svid()
            agents[name] = agent
        app = EchoApp()
        stack.callback(app.stop)
        backend_envoy = start_envoy(
            "backend",
            inbound_bootstrap(node="backend", sds_socket=base / "backend.sds", app_port=app.port),
            base,
        )
        stack.callback(backend_envoy.stop)
        backend_port = backend_envoy.listener_port("inbound")
        frontend_envoy = start_envoy(
            "frontend",
            outbound_bootstrap(
                node="frontend",
                sds_socket=base / "frontend.sds",
                upstream_port=backend_port,
                upstream_sans={"/": BACKEND, "/wrong-san": NOT_BACKEND},
            ),
            base,
        )
        stack.callback(frontend_envoy.stop)
        frontend_port = frontend_envoy.listener_port("outbound")
        yield Mesh(
            ca=live_ca,
            base=base,
            frontend=agents["frontend"],
            backend=agents["backend"],
            app=app,
            frontend_envoy=frontend_envoy,
            backend_envoy=backend_envoy,
            frontend_port=frontend_port,
            backend_port=backend_port,
        )


# --------------------------------------------------------------------------- 1. two identities


def test_mtls_between_two_envoys_carries_both_spiffe_ids(mesh: Mesh) -> None:
    status, headers, body = http_get(
        mesh.frontend_port,
        "/hello",
        # A forged identity from the caller must not reach the backend app.
        headers={"x-forwarded-client-cert": "URI=spiffe://cluster.local/ns/evil/sa/mallory"},
    )
    assert status == 200, f"{status} {body}\n{mesh.diagnostics()}"
    seen = json.loads(body)
    assert seen["path"] == "/hello"
    xfcc = seen["headers"].get("x-forwarded-client-cert", "")
    assert f"URI={FRONTEND}" in xfcc, xfcc
    assert f"By={BACKEND}" in xfcc, xfcc
    assert "evil" not in xfcc, xfcc
    # The backend Envoy saw the frontend's SVID; the frontend Envoy saw the backend's.
    assert headers.get("x-inbound-peer") == FRONTEND, headers
    assert headers.get("x-outbound-peer") == BACKEND, headers

    # Each Envoy serves the certificate its own agent holds.
    for agent, envoy in ((mesh.frontend, mesh.frontend_envoy), (mesh.backend, mesh.backend_envoy)):
        wait_until(
            lambda a=agent, e=envoy: a.serial in e.served_serials(),  # type: ignore[misc]
            5,
            f"{envoy.name} to serve its SVID",
        )


def test_frontend_refuses_a_backend_with_another_spiffe_id(mesh: Mesh) -> None:
    before = mesh.frontend_envoy.stats("ssl.fail_verify_san")
    status, _, body = http_get(mesh.frontend_port, "/wrong-san")
    assert status == 503, body
    after = mesh.frontend_envoy.stats("ssl.fail_verify_san")
    assert sum(after.values()) > sum(before.values()), (before, after)


def test_backend_envoy_refuses_clients_without_a_mesh_certificate(mesh: Mesh, tmp_path: Path) -> None:
    trust = mesh.ca.bundle
    frontend_files = read_files(mesh.frontend.cfg.output_dir)

    # Control: the frontend's own SVID, used directly, is accepted.
    ok = tls_get(
        mesh.backend_port,
        trust_pem=trust,
        cert_pem=frontend_files[CERT_CHAIN],
        key_pem=frontend_files[KEY],
        workdir=tmp_path,
    )
    assert ok.error is None and ok.status_line.endswith("200 OK"), (ok, mesh.diagnostics())
    assert ok.peer_der is not None
    presented = x509.load_der_x509_certificate(ok.peer_der)
    assert uri_san(presented) == [BACKEND]

    # A certificate for the same SPIFFE ID from another CA.
    with short_dir("mca-other-") as other_dir:
        other = start_ca(other_dir / "state", clock=LiveClock())
        try:
            chain, key = other.request(token=other.token("shop", "frontend"))
        finally:
            other.stop()
    assert uri_san(leaf_of(chain[0].encode())) == [FRONTEND]
    foreign = tls_get(
        mesh.backend_port,
        trust_pem=trust,
        cert_pem="".join(chain[:-1]).encode(),
        key_pem=private_key_pem(key),
        workdir=tmp_path,
    )
    assert b"200 OK" not in foreign.response, foreign
    assert isinstance(foreign.error, ssl.SSLError | ConnectionResetError), foreign

    anonymous = tls_get(mesh.backend_port, trust_pem=trust, workdir=tmp_path)
    assert b"200 OK" not in anonymous.response, anonymous
    assert isinstance(anonymous.error, ssl.SSLError | ConnectionResetError), anonymous

    stats = mesh.backend_envoy.stats("ssl.fail_verify")
    assert any(k.endswith("ssl.fail_verify_error") and v >= 1 for k, v in stats.items()), stats
    assert any(k.endswith("ssl.fail_verify_no_cert") and v >= 1 for k, v in stats.items()), stats


# --------------------------------------------------------------------------- 2. rotation


def test_rotation_under_running_envoys_drops_no_request(mesh: Mesh, tmp_path: Path) -> None:
    """Both agents rotate while requests flow. Rotation is asked for once traffic runs, as an
    operator would; when it falls due by itself is tested on a fake clock (test_attempts.py)."""
    start_frontend, start_backend = mesh.frontend.serial, mesh.backend.serial
    deadline = time.monotonic() + 35
    sent = 0
    failures: list[str] = []
    client_serials_seen_by_backend: set[int] = set()
    rotated_at: int | None = None
    while time.monotonic() < deadline:
        try:
            status, headers, body = http_get(mesh.frontend_port, "/rotation")
        except OSError as err:
            failures.append(f"request {sent}: {err!r}")
        else:
            if status != 200 or headers.get("x-outbound-peer") != BACKEND:
                failures.append(f"request {sent}: {status} {headers} {body[:200]}")
            elif serial := headers.get("x-inbound-peer-serial"):
                client_serials_seen_by_backend.add(int(serial, 16))
        sent += 1
        if sent == 10:
            mesh.frontend.process.retry_now()
            mesh.backend.process.retry_now()
        if rotated_at is None:
            fe, be = mesh.frontend.serial, mesh.backend.serial
            if (
                fe != start_frontend
                and be != start_backend
                and mesh.frontend_envoy.served_serials() == {fe}
                and mesh.backend_envoy.served_serials() == {be}
            ):
                rotated_at = sent
        elif sent - rotated_at >= 25:
            break
        time.sleep(0.02)

    assert not failures, f"{len(failures)} of {sent} requests failed: {failures[:5]}\n{mesh.diagnostics()}"
    assert rotated_at is not None, (
        f"no rotation of both agents reached both Envoys within the loop: agents "
        f"{start_frontend:x}->{mesh.frontend.serial:x}, {start_backend:x}->{mesh.backend.serial:x}; "
        f"envoys {mesh.frontend_envoy.served_serials()}, {mesh.backend_envoy.served_serials()}"
    )
    # Each request was a fresh handshake: the backend saw the old and then the new client SVID.
    assert start_frontend in client_serials_seen_by_backend
    assert len(client_serials_seen_by_backend) >= 2, client_serials_seen_by_backend

    # The backend Envoy now presents the rotated certificate to a new caller.
    files = read_files(mesh.frontend.cfg.output_dir)
    direct = tls_get(
        mesh.backend_port,
        trust_pem=mesh.ca.bundle,
        cert_pem=files[CERT_CHAIN],
        key_pem=files[KEY],
        workdir=tmp_path,
    )
    assert direct.error is None and direct.peer_der is not None, direct
    presented = x509.load_der_x509_certificate(direct.peer_der)
    assert presented.serial_number != start_backend
    assert presented.serial_number in {mesh.backend.serial} | mesh.backend_envoy.served_serials()


def test_agent_metrics_have_sensible_values(mesh: Mesh) -> None:
    agent = mesh.frontend
    samples = agent.metrics()
    outgoing = samples.get('istio_agent_num_outgoing_requests{request_type="csr"}')
    failed = samples.get('istio_agent_num_failed_outgoing_requests{request_type="csr"}', 0.0)
    expiry = samples.get('istio_agent_cert_expiry_seconds{resource_name="default"}')
    assert outgoing is not None and outgoing >= 1, samples
    assert failed == 0, samples
    assert expiry is not None, samples
    svid = agent.current
    assert svid is not None
    assert svid.not_after > datetime.now(UTC)
    assert 0 < expiry <= 20, expiry
    status, body = agent.http_get("/healthz/ready")
    assert (status, body) == (200, "ready\n")


class ShiftedClock(SystemClock):
    """The system clock, moved forward by `shift` whenever the test says."""

    shift = timedelta(0)

    def now(self) -> datetime:
        return super().now() + self.shift


def test_cert_expiry_metric_is_current_at_scrape_time(live_ca: RunningCa) -> None:
    """The gauge says seconds until expiry *now*, not as of the last CA call."""
    clock = ShiftedClock()
    with short_dir("mca-metrics-") as base:
        agent = start_agent(
            agent_args(
                ca_port=live_ca.port,
                ca_root=live_ca.state_dir / "root-cert.pem",
                token_file=write_token(base / "token", live_ca.token("shop", "metrics")),
                output_dir=base / "certs",
                ttl="1h",
            ),
            clock,
        )
        try:
            svid = agent.wait_for_svid()
            clock.shift = timedelta(minutes=10)
            expiry = agent.metrics()['istio_agent_cert_expiry_seconds{resource_name="default"}']
            remaining = (svid.not_after - clock.now()).total_seconds()
            assert abs(expiry - remaining) < 1.5, f"gauge {expiry:.1f}s, actually {remaining:.1f}s left"
        finally:
            agent.stop()


# --------------------------------------------------------------------------- 3. py-spiffe


def test_py_spiffe_fetches_and_follows_rotation(live_ca: RunningCa) -> None:
    from spiffe import TrustDomain, WorkloadApiClient, X509Source

    with short_dir("mca-spiffe-") as base:
        socket_path = base / "wl.sock"
        agent = start_agent(
            agent_args(
                ca_port=live_ca.port,
                ca_root=live_ca.state_dir / "root-cert.pem",
                token_file=write_token(base / "token", live_ca.token("shop", "frontend")),
                output_dir=base / "certs",
                workload_api_socket=socket_path,
            )
        )
        try:
            held = agent.wait_for_svid()
            client = WorkloadApiClient(socket_path=f"unix://{socket_path}", default_timeout=5)
            try:
                svid = client.fetch_x509_svid()
                assert str(svid.spiffe_id) == FRONTEND
                assert svid.leaf.serial_number == held.leaf.serial_number
                spki = serialization.PublicFormat.SubjectPublicKeyInfo
                der = serialization.Encoding.DER
                assert svid.leaf.public_key().public_bytes(
                    der, spki
                ) == svid.private_key.public_key().public_bytes(der, spki)
                assert svid.leaf.public_key().public_bytes(der, spki) == held.key.public_key().public_bytes(
                    der, spki
                )

                bundles = client.fetch_x509_bundles()
                bundle = bundles.get_bundle_for_trust_domain(TrustDomain(TRUST_DOMAIN))
                assert bundle is not None
                expected_roots = set(x509.load_pem_x509_certificates(live_ca.bundle))
                assert set(bundle.x509_authorities) == expected_roots

                with X509Source(workload_api_client=client, timeout_in_seconds=5) as source:
                    first = source.get_x509_context().default_svid.leaf.serial_number
                    assert first == held.leaf.serial_number
                    updated = threading.Event()
                    source.subscribe_for_updates(updated.set)
                    agent.process.retry_now()
                    rotated = agent.wait_for_svid(not_serial=first)
                    assert updated.wait(10), "X509Source got no update after the agent rotated"
                    wait_until(
                        lambda: (
                            source.get_x509_context().default_svid.leaf.serial_number
                            == rotated.leaf.serial_number
                        ),
                        5,
                        "the X509Source to hold the rotated SVID",
                    )
                    assert str(source.get_x509_context().default_svid.spiffe_id) == FRONTEND
            finally:
                client.close()

            channel = grpc.insecure_channel(f"unix:{socket_path}")
            try:
                fetch = channel.unary_stream(
                    "/SpiffeWorkloadAPI/FetchX509SVID",
                    request_serializer=workload_pb.X509SVIDRequest.SerializeToString,
                    response_deserializer=workload_pb.X509SVIDResponse.FromString,
                )
                with pytest.raises(grpc.RpcError) as refused:
                    next(iter(fetch(workload_pb.X509SVIDRequest(), timeout=5)))
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                stream = fetch(
                    workload_pb.X509SVIDRequest(), timeout=5, metadata=(("workload.spiffe.io", "true"),)
                )
                try:
                    assert next(iter(stream)).svids[0].spiffe_id == FRONTEND
                finally:
                    stream.cancel()  # type: ignore[no-untyped-call]
            finally:
                channel.close()
        finally:
            agent.stop()


# --------------------------------------------------------------------------- 4. faults


@dataclass
class FaultRig:
    """A CA that tests stop and start again on one port, held for the rig while the CA is down."""

    base: Path
    state: Path
    port: int
    ca: RunningCa | None = None

    def start_ca(self) -> RunningCa:
        assert self.ca is None
        self.ca = start_ca(self.state, "--listen", f"127.0.0.1:{self.port}", clock=LiveClock())
        return self.ca

    def stop_ca(self) -> None:
        if self.ca is not None:
            self.ca.server.stop(grace_s=0)  # abrupt: in-flight calls are cancelled
            self.ca = None

    def token(self, service_account: str = "cart", clock: FakeClock | None = None, **kwargs: Any) -> str:
        issuer = DevTokenIssuer.load_or_create(self.state, clock or LiveClock())
        return issuer.mint(namespace="shop", service_account=service_account, **kwargs)

    def args(self, token_file: Path, *extra: str, ttl: str = "24h", health: bool = True) -> list[str]:
        return agent_args(
            ca_port=self.port,
            ca_root=self.state / "root-cert.pem",
            token_file=token_file,
            output_dir=self.base / "certs",
            health=health,
            ttl=ttl,
            extra=extra,
        )


@pytest.fixture
def rig() -> Iterator[FaultRig]:
    with short_dir("mca-fault-") as base, reserved_port() as port:
        rig = FaultRig(base=base, state=base / "state", port=port)
        # Create the CA's root and token signer, then leave no CA listening.
        rig.start_ca()
        rig.stop_ca()
        try:
            yield rig
        finally:
            rig.stop_ca()


def _failed(agent: RunningAgent) -> float:
    return agent.metrics().get('istio_agent_num_failed_outgoing_requests{request_type="csr"}', 0.0)


def _three_failed_attempts(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord] | None:
    failed = [r for r in caplog.records if r.getMessage() == "certificate request failed"]
    return failed[:3] if len(failed) >= 3 else None


def test_agent_started_before_the_ca_backs_off_then_gets_a_certificate(
    rig: FaultRig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="meshca.agent")
    agent = start_agent(rig.args(write_token(rig.base / "token", rig.token())))
    try:
        # Backing off, not a hot loop: each attempt comes no sooner than the one before said it
        # would retry, and those waits grow (the steps themselves: tests/agent/test_attempts.py).
        failures = wait_until(lambda: _three_failed_attempts(caplog), 10, "three failed attempts")
        waits = [float(r.__dict__["retry_in_s"]) for r in failures]
        gaps = [later.created - earlier.created for earlier, later in itertools.pairwise(failures)]
        assert all(gap >= wait - 0.01 for gap, wait in zip(gaps, waits, strict=False)), (gaps, waits)
        assert waits == sorted(waits) and waits[2] > waits[0], waits
        assert agent.current is None
        assert agent.http_get("/healthz/ready")[0] == 503
        assert not (rig.base / "certs" / CERT_CHAIN).exists()
        assert _failed(agent) >= 3

        rig.start_ca()
        started = time.monotonic()
        svid = agent.wait_for_svid(timeout=12)
        took = time.monotonic() - started
        assert uri_san(svid.leaf) == ["spiffe://cluster.local/ns/shop/sa/cart"]
        files = read_files(rig.base / "certs")
        assert leaf_of(files[CERT_CHAIN]).serial_number == svid.leaf.serial_number
        assert agent.http_get("/healthz/ready")[0] == 200
        assert took < 10, f"the agent took {took:.1f}s to notice the CA"
    finally:
        agent.stop()


def test_ca_outage_keeps_the_last_good_certificate_then_catches_up(rig: FaultRig) -> None:
    rig.start_ca()
    agent = start_agent(rig.args(write_token(rig.base / "token", rig.token()), ttl="1h"))
    try:
        svid = agent.wait_for_svid()
        before = read_files(rig.base / "certs")
        rig.stop_ca()

        agent.process.retry_now()
        wait_until(
            lambda: agent.process.agent.consecutive_failures >= 2, 8, "failed attempts with the CA down"
        )
        assert agent.current is svid
        assert read_files(rig.base / "certs") == before
        assert agent.http_get("/healthz/ready")[0] == 200
        assert _failed(agent) >= 2

        rig.start_ca()
        rotated = agent.wait_for_svid(timeout=15, not_serial=svid.leaf.serial_number)
        wait_until(
            lambda: (
                leaf_of(read_files(rig.base / "certs")[CERT_CHAIN]).serial_number
                == rotated.leaf.serial_number
            ),
            5,
            "the new certificate on disk",
        )
        assert agent.process.agent.consecutive_failures == 0
        assert agent.http_get("/healthz/ready")[0] == 200
    finally:
        agent.stop()


def test_readiness_turns_off_when_the_held_certificate_expires(rig: FaultRig) -> None:
    rig.start_ca()
    clock = ShiftedClock()
    agent = start_agent(rig.args(write_token(rig.base / "token", rig.token()), ttl="1h"), clock)
    try:
        svid = agent.wait_for_svid()
        rig.stop_ca()
        # The agent's clock ten seconds before the certificate expires: ready, although the CA is gone.
        clock.shift = svid.not_after - timedelta(seconds=10) - SystemClock().now()
        assert agent.http_get("/healthz/ready")[0] == 200
        # And a second after.
        clock.shift = svid.not_after + timedelta(seconds=1) - SystemClock().now()
        assert agent.http_get("/healthz/ready") == (503, "no valid certificate yet\n")
    finally:
        agent.stop()


def test_a_missing_token_file_is_waited_for(rig: FaultRig) -> None:
    rig.start_ca()
    token_file = rig.base / "late.token"
    agent = start_agent(rig.args(token_file))
    try:
        wait_until(lambda: agent.process.agent.consecutive_failures >= 1, 5, "a failed attempt")
        assert agent.current is None
        assert agent.process.agent.last_error is not None
        assert agent.process.agent.last_error.reason == "token_missing"
        write_token(token_file, rig.token("late"))
        svid = agent.wait_for_svid(timeout=8)
        assert uri_san(svid.leaf) == ["spiffe://cluster.local/ns/shop/sa/late"]
    finally:
        agent.stop()


def test_an_expired_token_is_refused_and_the_old_certificate_kept(
    rig: FaultRig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.start_ca()
    token_file = write_token(rig.base / "token", rig.token())
    agent = start_agent(rig.args(token_file))
    try:
        svid = agent.wait_for_svid()
        before = read_files(rig.base / "certs")
        failed_before = _failed(agent)
        long_ago = FakeClock(datetime.now(UTC) - timedelta(hours=3))
        write_token(token_file, rig.token(clock=long_ago, ttl=timedelta(hours=1)))
        caplog.set_level(logging.WARNING, logger="meshca.agent")
        agent.process.retry_now()
        wait_until(lambda: agent.process.agent.consecutive_failures >= 1, 5, "a refused attempt")
        error = agent.process.agent.last_error
        assert error is not None and error.reason == "unauthenticated", error
        assert agent.current is svid
        assert read_files(rig.base / "certs") == before
        assert agent.http_get("/healthz/ready")[0] == 200
        assert _failed(agent) > failed_before
        logged = [r for r in caplog.records if r.name == "meshca.agent" and r.levelno == logging.WARNING]
        assert any(getattr(r, "reason", None) == "unauthenticated" for r in logged), [
            r.getMessage() for r in logged
        ]

        write_token(token_file, rig.token())
        agent.process.retry_now()
        agent.wait_for_svid(timeout=8, not_serial=svid.leaf.serial_number)
    finally:
        agent.stop()


def test_once_writes_the_files_and_exits(rig: FaultRig) -> None:
    rig.start_ca()
    token = write_token(rig.base / "token", rig.token("init"))
    result = run_agent_cli([*rig.args(token, health=False), "--once", "on"], timeout=30)
    assert result.returncode == 0, result.stderr
    files = read_files(rig.base / "certs")
    leaf = leaf_of(files[CERT_CHAIN])
    assert uri_san(leaf) == ["spiffe://cluster.local/ns/shop/sa/init"]
    key = serialization.load_pem_private_key(files[KEY], password=None)
    assert key.public_key() == leaf.public_key()
    assert files[ROOT_CERT] == rig.state.joinpath("root-cert.pem").read_bytes()


def test_once_fails_with_one_error_line_when_the_ca_is_unreachable(rig: FaultRig) -> None:
    token = write_token(rig.base / "token", rig.token("init"))
    started = time.monotonic()
    args = [*rig.args(token, health=False), "--once", "on", "--once-timeout", "2s"]
    result = run_agent_cli(args, timeout=30)
    took = time.monotonic() - started
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr  # no log line before the error
    assert result.stderr.startswith("meshca: error: no certificate written after "), result.stderr
    assert f"in 2s (--once-timeout): cannot reach the CA at 127.0.0.1:{rig.port}" in result.stderr
    assert not (rig.base / "certs" / CERT_CHAIN).exists()
    assert took < 15, f"--once took {took:.1f}s to give up"
