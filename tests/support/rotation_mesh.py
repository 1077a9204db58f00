"""Real meshca processes for the forced-rotation end-to-end tests (tests/rotate/test_rotation_e2e.py).

- `CaServer`: `meshca serve` with a renewal port, which can be stopped and started again on the
  same ports (hold them with `reserved_port`) and state directory.
- `AgentRun`: a `meshca agent` process; the test reads what it holds from its output directory
  (the Istio layout it writes, crl.pem included), and can pause it (SIGSTOP) and let it go on, or
  kill it (SIGKILL) and start it again on the same directory and token (`restart_agent`).
- `meshca_json`: a meshca command run as an operator runs it, its JSON output.
- `Traffic`: requests one after another through a client Envoy, each counted as answered or failed,
  with the client certificate serial the server Envoy saw.
- `tls_status` / `renewal_status`: what a client presenting a given certificate gets from a TLS
  server (an Envoy, the enforcer) and from the CA's renewal port.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509

from ca._proto import istio_ca_pb2, istio_ca_pb2_grpc
from ca.common.clock import SystemClock
from ca.issuance.cert_dir import CERT_CHAIN, CRL, DATA_LINK, KEY
from ca.issuance.crl import load_pem_crls
from ca.issuance.keys import private_key_pem
from ca.server.devtoken import DevTokenIssuer
from tests.support.agent import REPO, agent_args, wait_until
from tests.support.dataplanes import ClientCert, client_context, meshca_process, stop_process
from tests.support.pki import ec_key, make_csr
from tests.support.ports import read_ports_file

MESHCA = [sys.executable, "-m", "ca.cli"]
REFUSED = "refused"
OK = "HTTP/1.1 200 OK"


def serial_hex(serial: int) -> str:
    """A serial as the ledger and `meshca rotate` write it."""
    return format(serial, "x")


# --------------------------------------------------------------------------- the CA


@dataclass
class CaServer:
    """`meshca serve` on `state_dir`, its logs and ports files in `workdir` (one per start)."""

    name: str
    workdir: Path
    state_dir: Path
    listen: str = "127.0.0.1:0"
    renew_listen: str = "127.0.0.1:0"
    extra: Sequence[str] = ()
    process: subprocess.Popen[bytes] | None = None
    ports: dict[str, int] = field(default_factory=dict)
    logs: list[Path] = field(default_factory=list)

    def launch(self) -> tuple[subprocess.Popen[bytes], Path, Path]:
        """Start the process; `started` then waits for its ports (so replicas start together)."""
        start = len(self.logs) + 1
        log = self.workdir / f"{self.name}-{start}.log"
        ports_file = self.workdir / f"{self.name}-{start}.ports"
        self.logs.append(log)
        self.process = meshca_process(
            [
                "serve",
                "--state-dir",
                str(self.state_dir),
                "--listen",
                self.listen,
                "--renew-listen",
                self.renew_listen,
                "--metrics-listen",
                "off",
                "--ports-file",
                str(ports_file),
                *self.extra,
            ],
            log,
        )
        return self.process, ports_file, log

    def start(self) -> CaServer:
        self.started(*self.launch())
        return self

    def started(self, process: subprocess.Popen[bytes], ports_file: Path, log: Path) -> None:
        self.ports = {k: int(v) for k, v in read_ports_file(ports_file, process, log=log).items()}

    @property
    def grpc_port(self) -> int:
        return self.ports["grpc"]

    @property
    def renew_port(self) -> int:
        return self.ports["renew"]

    @property
    def root_file(self) -> Path:
        return self.state_dir / "root-cert.pem"

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)

    def log_text(self) -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')}" for log in self.logs if log.exists()
        )

    def token(self, namespace: str, service_account: str, pod: str) -> str:
        """A dev token bound to `pod` (the ledger records the pod of each certificate)."""
        issuer = DevTokenIssuer.load_or_create(self.state_dir, SystemClock())
        return issuer.mint(
            namespace=namespace, service_account=service_account, pod_name=pod, pod_uid=str(uuid.uuid4())
        )


# --------------------------------------------------------------------------- agents


@dataclass(frozen=True)
class Workload:
    pod: str
    namespace: str
    service_account: str

    @property
    def spiffe_id(self) -> str:
        return f"spiffe://cluster.local/ns/{self.namespace}/sa/{self.service_account}"


@dataclass
class AgentRun:
    """One `meshca agent` process and its directory (output files, SDS socket, log)."""

    workload: Workload
    directory: Path
    process: subprocess.Popen[bytes]
    start: int = 1  # which start of an agent on this directory this process is

    @property
    def output_dir(self) -> Path:
        return self.directory / "certs"

    @property
    def sds_socket(self) -> Path:
        return self.directory / "sds.sock"

    @property
    def log(self) -> Path:
        return agent_log(self.directory, self.start)

    def credentials(self) -> ClientCert | None:
        """The chain and key it serves now, from one version of its files (None before the first)."""
        try:
            version = (self.output_dir / DATA_LINK).resolve(strict=True)
            return ClientCert((version / CERT_CHAIN).read_bytes(), (version / KEY).read_bytes())
        except FileNotFoundError:  # none yet, or a version removed as it was read
            return None

    def serial(self) -> int | None:
        held = self.credentials()
        return x509.load_pem_x509_certificate(held.chain_pem).serial_number if held else None

    def crl_serials(self) -> set[int] | None:
        """The serials its crl.pem lists (None until the CA's first list reached it)."""
        try:
            data = (self.output_dir / CRL).read_bytes()
        except FileNotFoundError:
            return None
        return {entry.serial_number for crl in load_pem_crls(data, CRL) for entry in crl}

    def wait_connected(self, timeout: float = 20.0) -> int:
        """Its serial, once it holds a certificate and the CA's list came over its control stream."""
        wait_until(
            lambda: self.serial() is not None and self.crl_serials() is not None,
            timeout,
            f"agent {self.workload.pod}: a certificate and a CRL{self.log_tail()}",
        )
        serial = self.serial()
        assert serial is not None
        return serial

    def terminate(self) -> None:
        """Ask it to stop (see `stop_agents`), paused or not."""
        if self.process.poll() is None:
            self.process.terminate()
            self.resume()  # a paused process acts on SIGTERM only once it goes on

    def pause(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def kill(self) -> None:
        """SIGKILL: it ends at once, its files left as they were and nothing said to the CA."""
        self.process.kill()
        self.process.wait(timeout=5)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        self.terminate()
        stop_process(self.process)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n" + "\n".join(text)


def stop_agents(agents: Iterable[AgentRun]) -> None:
    """Stop them all at once: each is asked first, then each is waited for."""
    stopping = list(agents)
    for agent in stopping:
        agent.terminate()
    for agent in stopping:
        stop_process(agent.process)


def start_agent(
    ca: CaServer, workload: Workload, base: Path, *, sds: bool = False, control_port: int | None = None
) -> AgentRun:
    """`meshca agent` for `workload`, asking `ca` by token and holding its control stream there
    (through `control_port` instead of the CA's renewal port when given: a relay)."""
    directory = base / workload.pod
    directory.mkdir(parents=True)
    token = directory / "token"
    token.write_text(ca.token(workload.namespace, workload.service_account, workload.pod) + "\n")
    process = _agent_process(ca, directory, agent_log(directory, 1), sds=sds, control_port=control_port)
    return AgentRun(workload, directory, process)


def restart_agent(ca: CaServer, stopped: AgentRun) -> AgentRun:
    """`meshca agent` started again for a stopped agent's workload, on its directory and token
    (what it wrote before is still there), logging to a file of its own."""
    assert stopped.process.poll() is not None, "stop the agent first"
    start, directory = stopped.start + 1, stopped.directory
    process = _agent_process(ca, directory, agent_log(directory, start), sds=False, control_port=None)
    return AgentRun(stopped.workload, directory, process, start=start)


def agent_log(directory: Path, start: int) -> Path:
    """The log of the `start`th agent process on `directory`."""
    return directory / ("agent.log" if start == 1 else f"agent-{start}.log")


def _agent_process(
    ca: CaServer, directory: Path, log: Path, *, sds: bool, control_port: int | None
) -> subprocess.Popen[bytes]:
    args = agent_args(
        ca_port=ca.grpc_port,
        ca_root=ca.root_file,
        token_file=directory / "token",
        output_dir=directory / "certs",
        sds_socket=directory / "sds.sock" if sds else None,
        health=False,
        extra=["--ca-control-addr", f"127.0.0.1:{control_port or ca.renew_port}"],
    )
    return meshca_process(["agent", *args], log)


# --------------------------------------------------------------------------- the operator


def meshca_json(*args: str | Path, timeout: float = 30.0) -> dict[str, Any]:
    """`meshca ARGS -o json` as a separate process; its JSON output (it must succeed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHCA_")}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [*MESHCA, *map(str, args), "-o", "json"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, f"meshca {' '.join(map(str, args))}: {done.returncode}\n{done.stderr}"
    result: dict[str, Any] = json.loads(done.stdout)
    return result


# --------------------------------------------------------------------------- applications and traffic


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def ok_app() -> Iterator[int]:
    """An HTTP application answering 200 to everything; its port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Traffic:
    """Requests one after another (each on a new connection, so a new mTLS handshake upstream)
    through a client Envoy's outbound port, about every `pace_s`, until stopped."""

    port: int
    pace_s: float = 0.02
    answered: int = 0
    failures: list[str] = field(default_factory=list)
    peer_serials: Counter[int] = field(default_factory=Counter)  # the client certificates the server saw
    _stopping: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Traffic:
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stopping.is_set():
            started = time.monotonic()
            self._one()
            self._stopping.wait(max(0.0, self.pace_s - (time.monotonic() - started)))

    def _one(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", "/traffic", headers={"connection": "close"})
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                self.failures.append(f"{time.strftime('%X')} {response.status} {body[:200]!r}")
                return
            self.answered += 1
            peer = response.getheader("x-inbound-peer-serial")
            if peer:
                self.peer_serials[int(peer.replace(":", ""), 16)] += 1
        except (OSError, http.client.HTTPException) as err:
            self.failures.append(f"{time.strftime('%X')} {err!r}")
        finally:
            conn.close()


class Relay:
    """A TCP relay on loopback to `target_port`, whose connections can be cut (both ends reset),
    as a network partition would: a client goes through it to reach the CA."""

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._server = socket.create_server(("127.0.0.1", 0))
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self.port = int(self._server.getsockname()[1])
        threading.Thread(target=self._accept, name="relay", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self._target), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        """Reset every connection through the relay (new ones still go through)."""
        with self._lock:
            cut, self._open = self._open, []
        for sock in cut:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                # Wakes the pump blocked reading it: a close alone would wait for that read.
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._server.close()
        self.cut()


# --------------------------------------------------------------------------- probes


def tls_status(port: int, cert: ClientCert, workdir: Path, name: str) -> str:
    """The status line a TLS server at `port` answers a GET with, the client presenting `cert`;
    REFUSED when the server ends the connection instead (TLS 1.3: after the client's handshake)."""
    context = client_context(cert, workdir, name)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            with context.wrap_socket(raw) as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n")
                answer = tls.recv(4096)
        except (ssl.SSLError, ConnectionError):
            return REFUSED
    return answer.split(b"\r\n", 1)[0].decode() if answer else REFUSED


def issue_by_token(ca: CaServer, workload: Workload) -> ClientCert:
    """A certificate for `workload` from the CA's token port, as a client other than an agent gets one."""
    key = ec_key()
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.root_file.read_bytes())
    with grpc.secure_channel(
        f"127.0.0.1:{ca.grpc_port}", credentials, options=[("grpc.ssl_target_name_override", "localhost")]
    ) as channel:
        stub = istio_ca_pb2_grpc.IstioCertificateServiceStub(channel)  # type: ignore[no-untyped-call]
        token = ca.token(workload.namespace, workload.service_account, workload.pod)
        response = stub.CreateCertificate(
            istio_ca_pb2.IstioCertificateRequest(csr=make_csr(key)),
            metadata=[("authorization", f"Bearer {token}")],
            timeout=10,
        )
    return ClientCert("".join(response.cert_chain[:-1]).encode(), private_key_pem(key))


def renewal_status(ca: CaServer, cert: ClientCert) -> grpc.StatusCode:
    """What the CA's renewal port answers a certificate request authenticated by `cert`."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.root_file.read_bytes(),
        private_key=cert.key_pem,
        certificate_chain=cert.chain_pem,
    )
    with grpc.secure_channel(
        f"127.0.0.1:{ca.renew_port}", credentials, options=[("grpc.ssl_target_name_override", "localhost")]
    ) as channel:
        stub = istio_ca_pb2_grpc.IstioCertificateServiceStub(channel)  # type: ignore[no-untyped-call]
        try:
            stub.CreateCertificate(istio_ca_pb2.IstioCertificateRequest(csr=make_csr(ec_key())), timeout=10)
        except grpc.RpcError as err:
            code: grpc.StatusCode = err.code()
            return code
    return grpc.StatusCode.OK
