"""`meshca serve --processes N`: N workers on one port, one state dir and one ledger.

The settings of each worker and the supervisor's ports file are checked as values; SO_REUSEPORT
on a real gRPC server; then real processes: two workers both take connections on the one port
and the ledger they both extend verifies; killing the leading worker moves leadership to the
other and the supervisor starts it again; SIGTERM leaves no process; a worker that cannot start
the first time makes the supervisor exit with its code.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sqlite3
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from ca._proto import istio_ca_pb2, istio_ca_pb2_grpc
from ca.cli.main import build_parser
from ca.common.clock import SystemClock
from ca.errors import ConfigError
from ca.server.devtoken import DevTokenIssuer
from ca.server.grpc_server import server_options
from ca.server.processes import SharedPorts, ports_document, worker_config
from ca.server.settings import ServeConfig, serve_config
from tests.support.ledger import MESHCA, _server_env
from tests.support.pki import ec_key, make_csr
from tests.support.ports import read_ports_file

START_S = 120.0  # a worker imports and builds the whole server; the machine may be busy


def _serve(*flags: str) -> ServeConfig:
    return serve_config(build_parser({}).parse_args(["serve", *flags]), {})


# --------------------------------------------------------------------------- settings


def test_processes_defaults_to_one_and_takes_a_count() -> None:
    assert _serve().processes == 1
    assert _serve().shares_port is False
    assert _serve("--processes", "4").processes == 4


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (("--processes", "0"),  "--processes 0 is out of range"),
        (("--processes", "two"), "--processes must be a whole number"),
        (("--processes", "65"), "from 1 to 64"),
        (("--processes", "3", "--metrics-listen", ":65534"), "port 65534 + k"),
    ],
)  # fmt: skip
def test_processes_refuses_what_cannot_run(flags: tuple[str, ...], words: str) -> None:
    with pytest.raises(ConfigError, match=words.replace("+", r"\+")):
        _serve(*flags)


def test_worker_zero_starts_on_the_ports_as_given_and_alone_serves_bundle_and_webhook() -> None:
    cfg = _serve(
        "--processes", "3", "--listen", "127.0.0.1:0", "--renew-listen", "127.0.0.1:0",
        "--metrics-listen", "127.0.0.1:9000", "--bundle-listen", ":8443", "--webhook-listen", ":9443",
        "--ports-file", "/tmp/ports.json",
    )  # fmt: skip
    first = worker_config(cfg, 0, None)
    assert (first.listen, first.renew_listen) == ("127.0.0.1:0", "127.0.0.1:0")
    assert first.metrics_listen == "127.0.0.1:9000"
    assert (first.bundle_listen, first.webhook_listen) == ("0.0.0.0:8443", "0.0.0.0:9443")
    assert first.ports_file is None  # the supervisor writes the file
    assert (first.processes, first.shares_port, first.replica) == (1, True, "")

    third = worker_config(cfg, 2, SharedPorts(grpc=40001, renew=40002))
    assert (third.listen, third.renew_listen) == ("127.0.0.1:40001", "127.0.0.1:40002")
    assert third.metrics_listen == "127.0.0.1:9002"  # port + its number
    assert (third.bundle_listen, third.webhook_listen) == (None, None)
    assert third.state_dir == cfg.state_dir and third.ledger_url == cfg.ledger_url


def test_workers_get_free_metrics_ports_for_port_zero_and_none_when_off() -> None:
    shared = SharedPorts(grpc=40001)
    zero = _serve("--processes", "2", "--metrics-listen", "127.0.0.1:0", "--renew-listen", "off")
    assert worker_config(zero, 1, shared).metrics_listen == "127.0.0.1:0"
    assert worker_config(zero, 1, shared).renew_listen is None
    off = _serve("--processes", "2", "--metrics-listen", "off")
    assert worker_config(off, 1, shared).metrics_listen is None


def test_an_ipv6_listen_address_keeps_its_brackets() -> None:
    cfg = _serve("--processes", "2", "--listen", "[::1]:0")
    assert worker_config(cfg, 1, SharedPorts(grpc=40001)).listen == "[::1]:40001"


def test_the_ports_file_names_worker_zeros_ports_and_every_serving_worker() -> None:
    first = {"grpc": 1, "renew": 2, "metrics": 3}
    document = ports_document(first, [(1, 201, {"grpc": 1, "metrics": 4}), (0, 200, first)])
    assert document == {
        "grpc": 1,
        "renew": 2,
        "metrics": 3,
        "workers": [
            {"slot": 0, "pid": 200, "grpc": 1, "renew": 2, "metrics": 3},
            {"slot": 1, "pid": 201, "grpc": 1, "metrics": 4},
        ],
    }


# --------------------------------------------------------------------------- SO_REUSEPORT


def _bind(reuse_port: bool, port: int) -> tuple[grpc.Server, int]:
    server = grpc.server(ThreadPoolExecutor(max_workers=1), options=server_options(reuse_port=reuse_port))
    try:
        bound = server.add_insecure_port(f"127.0.0.1:{port}")
    except RuntimeError:
        bound = 0
    return server, bound


def test_only_the_processes_mode_shares_a_port() -> None:
    single, port = _bind(False, 0)
    shared, other = _bind(True, 0)
    try:
        assert _bind(True, port)[1] == 0  # a CA's own port: nobody joins it
        joined, again = _bind(True, other)
        assert again == other  # a worker's port: the next worker binds it too
        joined.stop(0)
    finally:
        single.stop(0)
        shared.stop(0)


# --------------------------------------------------------------------------- real processes


def eventually(check: Callable[[], bool], what: str, timeout_s: float, output: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s}s: {what}\n{output()[-6000:]}")
        time.sleep(0.05)


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            for child in (int(c) for c in children.read_text().split()):
                found += [child, *descendants(child)]
    return found


def running(pid: int) -> bool:
    """Whether `pid` is a process that has not exited (a zombie waiting for its parent has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
    raise AssertionError(f"no {name} on port {port}")


@dataclass
class Supervised:
    proc: subprocess.Popen[bytes]
    state_dir: Path
    ports_file: Path
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def ports(self) -> dict[str, Any]:
        return read_ports_file(self.ports_file, self.proc, timeout=START_S, log=self.log)

    def workers(self) -> list[dict[str, Any]]:
        with contextlib.suppress(FileNotFoundError, ValueError):
            return list(json.loads(self.ports_file.read_text())["workers"])
        return []

    def leaders(self) -> list[dict[str, Any]]:
        found = []
        for worker in self.workers():
            with contextlib.suppress(OSError):
                if metric(worker["metrics"], "meshca_leader") == 1.0:
                    found.append(worker)
        return found

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


@contextlib.contextmanager
def supervised(tmp_path: Path, *flags: str) -> Iterator[Supervised]:
    state_dir, ports_file, log = tmp_path / "state", tmp_path / "ports.json", tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                *MESHCA, "serve", "--processes", "2", "--state-dir", str(state_dir),
                "--listen", "127.0.0.1:0", "--renew-listen", "127.0.0.1:0",
                "--metrics-listen", "127.0.0.1:0", "--ports-file", str(ports_file),
                "--ledger-checkpoint-interval", "1s", *flags,
            ],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=_server_env(),
        )  # fmt: skip
    try:
        yield Supervised(proc, state_dir, ports_file, log)
    finally:
        if proc.poll() is None:
            for pid in descendants(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.wait(timeout=10)


def issue_on_a_new_connection(ca: Supervised, grpc_port: int, token: str) -> None:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(ca.state_dir / "root-cert.pem").read_bytes()
    )
    with grpc.secure_channel(
        f"127.0.0.1:{grpc_port}",
        credentials,
        # A connection of its own: channels in one process otherwise share one.
        options=[("grpc.ssl_target_name_override", "localhost"), ("grpc.use_local_subchannel_pool", 1)],
    ) as channel:
        request = istio_ca_pb2.IstioCertificateRequest(csr=make_csr(ec_key()))
        stub = istio_ca_pb2_grpc.IstioCertificateServiceStub(channel)  # type: ignore[no-untyped-call]
        response = stub.CreateCertificate(
            request, metadata=[("authorization", f"Bearer {token}")], timeout=30
        )
    assert len(response.cert_chain) >= 2


def issued_per_worker(ca: Supervised) -> list[float]:
    return [metric(w["metrics"], "citadel_server_success_cert_issuance_count") for w in ca.workers()]


@pytest.mark.slow
def test_two_workers_take_connections_on_one_port_and_extend_one_ledger(tmp_path: Path) -> None:
    with supervised(tmp_path) as ca:
        ports = ca.ports()
        workers = ca.workers()
        assert len(workers) == 2
        assert {w["grpc"] for w in workers} == {ports["grpc"]}
        assert len({w["metrics"] for w in workers}) == 2 and len({w["pid"] for w in workers}) == 2
        assert len(ca.leaders()) == 1
        token = DevTokenIssuer.load_or_create(ca.state_dir, SystemClock()).mint(
            namespace="default", service_account="web"
        )
        issued = 0
        lock = threading.Lock()

        def issue_in_turn() -> None:
            nonlocal issued
            for _ in range(5):
                issue_on_a_new_connection(ca, ports["grpc"], token)
                with lock:
                    issued += 1

        deadline = time.monotonic() + START_S
        while min(issued_per_worker(ca)) == 0:  # each new connection goes to either worker
            assert time.monotonic() < deadline, f"one worker took every connection: {issued_per_worker(ca)}"
            with ThreadPoolExecutor(max_workers=4) as pool:  # concurrent appends from both workers
                list(pool.map(lambda _: issue_in_turn(), range(4)))
        assert sum(issued_per_worker(ca)) == issued
        pids = [ca.proc.pid, *descendants(ca.proc.pid)]
        assert len(pids) >= 5  # the supervisor, two workers and their ledger processes
        assert ca.stop() == 0
        eventually(lambda: not any(running(pid) for pid in pids), "every process gone", 30, ca.output)
        assert not ca.ports_file.exists()
    with contextlib.closing(sqlite3.connect(ca.state_dir / "ledger.db")) as db:
        assert db.execute("SELECT count(*) FROM ledger_entries WHERE kind = 'issued'").fetchone()[0] == issued
    verify = subprocess.run(
        [*MESHCA, "audit", "verify", "--state-dir", str(ca.state_dir), "--quiet"],
        capture_output=True,
        text=True,
        env=_server_env(),
        timeout=120,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.mark.slow
def test_killing_the_leading_worker_moves_leadership_and_the_worker_comes_back(tmp_path: Path) -> None:
    with supervised(tmp_path) as ca:
        ca.ports()
        eventually(lambda: len(ca.leaders()) == 1, "one worker leads", 30, ca.output)
        (leader,) = ca.leaders()
        (other,) = [w for w in ca.workers() if w["pid"] != leader["pid"]]
        os.kill(leader["pid"], signal.SIGKILL)
        eventually(
            lambda: metric(other["metrics"], "meshca_leader") == 1.0,
            "the other worker leads",
            30,
            ca.output,
        )

        def restarted() -> bool:
            pids = {w["slot"]: w["pid"] for w in ca.workers()}
            return len(pids) == 2 and pids[leader["slot"]] not in (leader["pid"], other["pid"])

        eventually(restarted, "the killed worker's slot serves again", START_S, ca.output)
        assert [w["pid"] for w in ca.leaders()] == [other["pid"]]  # leadership stays where it went
        token = DevTokenIssuer.load_or_create(ca.state_dir, SystemClock()).mint(
            namespace="default", service_account="web"
        )
        issue_on_a_new_connection(ca, ca.ports()["grpc"], token)
        pids = [ca.proc.pid, *descendants(ca.proc.pid)]
        assert ca.stop() == 0
        eventually(lambda: not any(running(pid) for pid in pids), "every process gone", 30, ca.output)
        assert not running(leader["pid"])


@pytest.mark.slow
def test_a_worker_that_cannot_start_stops_the_supervisor_with_its_code(tmp_path: Path) -> None:
    cacerts = tmp_path / "cacerts"
    cacerts.mkdir()  # holds no CA: the worker's start fails with a configuration error
    with supervised(tmp_path, "--cacerts", str(cacerts)) as ca:
        assert ca.proc.wait(timeout=START_S) == 2
        errors = [line for line in ca.output().splitlines() if line.startswith("meshca: error:")]
        assert len(errors) == 1 and "holds no CA" in errors[0]
        assert not ca.ports_file.exists()


def test_a_worker_tunes_malloc_before_it_builds_its_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ca.server import processes
    from tests.support.startup_order import MALLOC_THEN_SERVER, record_malloc_and_build

    steps = record_malloc_and_build(monkeypatch)
    cfg = _serve("--state-dir", str(tmp_path / "state"), "--listen", "127.0.0.1:0")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        assert processes._serve(cfg, ready=None) == 2  # type: ignore[arg-type]
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert steps == MALLOC_THEN_SERVER
