"""The agent's Prometheus metrics (Istio agent names) and readiness, for `ca.net.status_http.StatusServer`."""

from __future__ import annotations

from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from ca.agent.bundle import HeldBundle
from ca.agent.svid import Svid
from ca.common.clock import Clock
from ca.net.istio_metrics import IstioNamedCounters

REQUEST_TYPE = "csr"


class AgentMetrics:
    """Counts the agent's CA calls; expiry and readiness are read off the held certificate
    at scrape time, so they stay true between calls."""

    def __init__(self, clock: Clock, bundle: HeldBundle | None = None) -> None:
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
        if bundle is not None:
            self.bundle_roots = Gauge(
                "meshca_agent_trust_bundle_roots",
                "Root certificates in the trust bundle the agent serves.",
                registry=self.registry,
            )
            self.bundle_roots.set_function(lambda: len(bundle.roots))
            self.bundle_sequence = Gauge(
                "meshca_agent_trust_bundle_sequence",
                "Sequence number of the last trust bundle the CA pushed (0: none since the agent started).",
                registry=self.registry,
            )
            self.bundle_sequence.set_function(lambda: bundle.sequence)

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

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
