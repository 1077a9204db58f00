from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ca.sandbox.plan import DEFAULT_POLICIES, Layout, Plan
from ca.sandbox.poll import Endpoints, Poller, read_certificate
from ca.sandbox.view_model import Calls, EnforcerCounts, PolicyMode
from tests.support.clock import FakeClock
from tests.support.svids import make_svid

METRICS = """\
# HELP meshca_enforcer_connections_total Inbound connections.
# TYPE meshca_enforcer_connections_total counter
meshca_enforcer_connections_total{mode="STRICT",outcome="refused",port="8080",reason="plaintext"} 3.0
meshca_enforcer_connections_total{mode="PERMISSIVE",outcome="accepted_plaintext",port="8080",reason="ok"} 5.0
# HELP meshca_enforcer_outbound_connections_total Outbound connections.
# TYPE meshca_enforcer_outbound_connections_total counter
meshca_enforcer_outbound_connections_total{outcome="accepted_mtls",port="1",reason="ok",target="t"} 9.0
"""
STATUS = {"workload": "web", "calls": {"api": {"ok": 2, "failed": 0, "last_ok": True, "seen_as": "x"}}}


class Canned:
    """An HTTP server answering /status and /metrics with what the test puts in `pages`."""

    def __init__(self) -> None:
        self.pages: dict[str, bytes] = {"/status": json.dumps(STATUS).encode(), "/metrics": METRICS.encode()}
        pages = self.pages

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = pages.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("content-length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def canned() -> Iterator[Canned]:
    server = Canned()
    yield server
    server.close()


def sandbox(tmp_path: Path) -> Plan:
    layout = Layout(tmp_path)
    layout.policies.mkdir(parents=True)
    layout.policy_file.write_text(DEFAULT_POLICIES)
    return Plan(
        layout=layout, meshca=("m",), python="p", cert_ttl=timedelta(minutes=4), call_interval=timedelta(1)
    )


def test_the_certificate_is_read_from_the_agents_files(tmp_path: Path) -> None:
    clock = FakeClock()
    svid = make_svid(clock)
    assert read_certificate(tmp_path) is None
    (tmp_path / "cert-chain.pem").write_bytes(svid.chain_pem())
    cert = read_certificate(tmp_path)
    assert cert is not None
    assert cert.spiffe_id == "spiffe://cluster.local/ns/shop/sa/cart"
    assert cert.serial == format(svid.leaf.serial_number, "x")
    assert cert.not_after == svid.not_after


def test_a_snapshot_reads_apps_enforcers_and_policies(tmp_path: Path, canned: Canned) -> None:
    plan = sandbox(tmp_path)
    endpoints = Endpoints(apps={"web": canned.port}, enforcer_metrics={"web": canned.port})
    snapshot = Poller(plan, endpoints, FakeClock()).snapshot()
    web = next(s for s in snapshot.workloads if s.name == "web")
    assert web.calls == {"api": Calls(ok=2, failed=0, last_ok=True, seen_as="x")}
    assert web.enforcer == EnforcerCounts(
        inbound={"accepted_plaintext": 5}, refused={"plaintext": 3}, outbound_refused={}
    )
    assert web.policy == PolicyMode(mode="PERMISSIVE", decided_by="demo/web")
    assert web.certificate is None  # no agent wrote one
    db = next(s for s in snapshot.workloads if s.name == "db")
    assert db.policy == PolicyMode(mode="STRICT", decided_by="demo/db")
    assert db.calls == {} and db.enforcer is None  # nothing to ask
    legacy = next(s for s in snapshot.workloads if s.name == "legacy")
    assert legacy.policy is None and not legacy.meshed


def test_a_process_that_stops_answering_leaves_what_it_said_last(tmp_path: Path, canned: Canned) -> None:
    poller = Poller(sandbox(tmp_path), Endpoints(apps={"web": canned.port}, enforcer_metrics={}), FakeClock())
    first = poller.snapshot()
    del canned.pages["/status"]
    assert poller.snapshot().workloads == first.workloads


def test_an_invalid_policy_file_keeps_the_last_modes_and_says_why(tmp_path: Path) -> None:
    plan = sandbox(tmp_path)
    poller = Poller(plan, Endpoints(apps={}, enforcer_metrics={}), FakeClock())
    assert poller.snapshot().policy_problem is None
    plan.layout.policy_file.write_text(DEFAULT_POLICIES.replace("mode: PERMISSIVE", "mode: SOMETIMES"))
    snapshot = poller.snapshot()
    assert snapshot.policy_problem is not None and "demo.yaml" in snapshot.policy_problem
    web = next(s for s in snapshot.workloads if s.name == "web")
    assert web.policy == PolicyMode(mode="PERMISSIVE", decided_by="demo/web")
    plan.layout.policy_file.write_text(DEFAULT_POLICIES.replace("mode: PERMISSIVE", "mode: STRICT"))
    web = next(s for s in poller.snapshot().workloads if s.name == "web")
    assert web.policy == PolicyMode(mode="STRICT", decided_by="demo/web")
