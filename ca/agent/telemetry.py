"""The agent's health endpoint and Prometheus metrics (Istio agent names)."""

from __future__ import annotations

import threading
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from ca.agent.svid import Svid
from ca.clock import Clock
from ca.metrics import IstioNamedCounters

REQUEST_TYPE = "csr"


class AgentMetrics:
    """Counts the agent's CA calls; expiry and readiness are read off the held certificate
    at scrape time, so they stay true between calls."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._held: Svid | None = None
        self.registry = CollectorRegistry()
        counters = CollectorRegistry(auto_describe=True)
        self.registry.register(IstioNamedCounters(counters))
        self.outgoing = Counter(
            "istio_agent_num_outgoing_requests",
            "Requests sent to the CA.",
            ["request_type"],
            registry=counters,
        )
        self.failed = Counter(
            "istio_agent_num_failed_outgoing_requests",
            "Requests to the CA that failed.",
            ["request_type"],
            registry=counters,
        )
        self.latency = Counter(
            "istio_agent_outgoing_latency",
            "Total milliseconds spent in requests to the CA.",
            ["request_type"],
            registry=counters,
        )
        self.cert_expiry = Gauge(
            "istio_agent_cert_expiry_seconds",
            "Seconds until the held certificate expires.",
            ["resource_name"],
            registry=self.registry,
        )
        self.cert_expiry.labels(resource_name="default").set_function(self._seconds_left)

    def attempted(self, *, ok: bool, seconds: float) -> None:
        self.outgoing.labels(request_type=REQUEST_TYPE).inc()
        self.latency.labels(request_type=REQUEST_TYPE).inc(seconds * 1000)
        if not ok:
            self.failed.labels(request_type=REQUEST_TYPE).inc()

    def holding(self, svid: Svid | None, now: datetime) -> None:
        self._held = svid

    def _seconds_left(self) -> float:
        held = self._held
        return 0.0 if held is None else (held.not_after - self._clock.now()).total_seconds()

    @property
    def ready(self) -> bool:
        return self._seconds_left() > 0


class TelemetryServer:
    """HTTP: `/healthz/ready` (200 while a valid certificate is held) and `/metrics`."""

    def __init__(self, host: str, port: int, metrics: AgentMetrics) -> None:
        outer = metrics

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    self._send(200, generate_latest(outer.registry), CONTENT_TYPE_LATEST)
                elif self.path == "/healthz/ready":
                    ok = outer.ready
                    self._send(200 if ok else 503, b"ready\n" if ok else b"no valid certificate yet\n")
                else:
                    self._send(404, b"not found; try /healthz/ready or /metrics\n")

            def _send(self, code: int, body: bytes, content_type: str = "text/plain") -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self.port = self._server.server_port
        # A long poll keeps an idle agent asleep; stop() does not wait for it to end.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 30.0}, name="agent-http", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        threading.Thread(target=self._server.shutdown, name="agent-http-stop", daemon=True).start()
        self._server.server_close()
