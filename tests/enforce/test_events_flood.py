"""`meshca enforce` under a flood of junk connections: every refusal is counted, the log stays
bounded, and its lines carry values (no Python reprs)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ca.agent.output import write_svid
from ca.common.log_limit import INTERVAL_S, PER_INTERVAL
from tests.support.agent import REPO, local_http_get, wait_until
from tests.support.clock import FakeClock
from tests.support.ports import inbound_ports, read_ports_file
from tests.support.svids import make_svid

pytestmark = pytest.mark.slow

JUNK_CONNECTIONS = 300
STRICT_POLICY = (
    "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
    "metadata: {name: default, namespace: shop}\nspec: {mtls: {mode: STRICT}}\n"
)


class Enforcer:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path, ports: dict[str, Any]) -> None:
        self.proc = proc
        self.log = log
        self.listen = inbound_ports(ports)[8080]
        self.metrics = int(ports["metrics"])

    def stop(self) -> list[dict[str, Any]]:
        """SIGTERM, then its log lines as JSON objects."""
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(10) == 0, self.log.read_text()
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def enforcer(tmp_path: Path) -> Iterator[Enforcer]:
    cert_dir, policies, ports_file = tmp_path / "certs", tmp_path / "policies", tmp_path / "ports"
    write_svid(cert_dir, make_svid(FakeClock()))
    policies.mkdir()
    (policies / "strict.yaml").write_text(STRICT_POLICY)
    args = {
        "--inbound": "0:8080",
        "--listen-host": "127.0.0.1",
        "--cert-dir": str(cert_dir),
        "--namespace": "shop",
        "--labels": "app=web,version=v1",
        "--policies": str(policies),
        "--metrics-listen": "127.0.0.1:0",
        "--ports-file": str(ports_file),
    }
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MESHCA_")}
    log = tmp_path / "enforce.log"
    with log.open("wb") as stderr:  # a file: a pipe nobody reads would stall a chatty process
        proc = subprocess.Popen(
            [sys.executable, "-m", "ca.cli", "enforce", *(item for pair in args.items() for item in pair)],
            env={**environ, "PYTHONPATH": str(REPO)},
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        running = Enforcer(proc, log, read_ports_file(ports_file, proc, log=log))
        wait_until(
            lambda: local_http_get(running.metrics, "/healthz/ready")[0] == 200, 20, "the enforcer ready"
        )
        yield running
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def send_junk(port: int, junk: bytes) -> None:
    """One connection that sends `junk` and waits for the enforcer to close it."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
        contextlib.suppress(BrokenPipeError, ConnectionResetError),
    ):
        sock.sendall(junk)
        while sock.recv(4096):
            pass


def refused_count(metrics_port: int, reason: str) -> float:
    status, body = local_http_get(metrics_port, "/metrics")
    assert status == 200
    wanted = ("meshca_enforcer_connections_total{", 'outcome="refused"', f'reason="{reason}"')
    lines = [line for line in body.splitlines() if all(part in line for part in wanted)]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


def test_a_junk_flood_is_counted_in_full_and_logged_in_a_few_lines(enforcer: Enforcer) -> None:
    rng = random.Random(20240501)
    started = time.monotonic()
    for _ in range(JUNK_CONNECTIONS):
        junk = rng.randbytes(rng.randint(1, 300))
        if junk[0] == 0x16:  # would be read as the start of a TLS handshake
            junk = b"\x00" + junk[1:]
        send_junk(enforcer.listen, junk)
    elapsed = time.monotonic() - started
    # Each refusal is counted before the connection is closed, and every client saw its close.
    assert refused_count(enforcer.metrics, "plaintext") == JUNK_CONNECTIONS

    lines = enforcer.stop()
    refusals = [line for line in lines if line["msg"] == "connection refused"]
    summaries = [line for line in lines if line["msg"] == "connection refused: more not logged"]
    intervals = int(elapsed // INTERVAL_S) + 1  # a slow host may span more than one
    assert PER_INTERVAL <= len(refusals) <= PER_INTERVAL * intervals
    assert {line["reason"] for line in refusals + summaries} == {"plaintext"}
    # The summaries (the last one written at shutdown) account for every line held back.
    assert len(refusals) + sum(line["suppressed"] for line in summaries) == JUNK_CONNECTIONS
    assert len(lines) < 30


def test_log_lines_carry_values_not_python_reprs(enforcer: Enforcer) -> None:
    send_junk(enforcer.listen, b"GET / HTTP/1.1\r\n\r\n")
    lines = enforcer.stop()
    (enforcing,) = [line for line in lines if line["msg"] == "enforcing"]
    assert (enforcing["namespace"], enforcing["labels"]) == ("shop", "app=web,version=v1")
    text = enforcer.log.read_text()
    assert not re.search(r"[{(\[]'", text), text  # "{'app': 'web'}" and the like
