"""The agent's Prometheus metrics (Istio agent names, and `meshca_agent_*` for what Istio's agent
has none of) and readiness, for `ca.net.status_http.StatusServer`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from ca.agent.bundle import HeldBundle
from ca.agent.svid import Svid
from ca.common.clock import Clock
from ca.net.istio_metrics import IstioNamedCounters

REQUEST_TYPE = "csr"


class ControlState(Protocol):
    """What the metrics read off the control stream (ca.agent.control.ControlStream)."""

    @property
    def connected(self) -> bool: ...

    @property
    def connects(self) -> int: ...


class _HeldCertificate(Collector):
    """The held certificate's NotAfter; no sample before the agent holds one, so that an alert on
    an expired certificate does not fire for an agent still getting its first."""

    def __init__(self, metrics: AgentMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "meshca_agent_certificate_expiry_timestamp_seconds",
            "NotAfter of the certificate the agent holds and serves, as a Unix time (no sample before "
            "its first certificate).",
        )
        not_after = self._metrics.held_not_after()
        if not_after is not None:
            family.add_metric([], not_after.timestamp())
        yield family


class _HeldRevocations(Collector):
    """The earliest nextUpdate of the CA's revocation lists the agent serves; no sample before the
    first lists arrive. Past it Envoy refuses every peer, so an alert watches it."""

    def __init__(self, next_update: Callable[[], datetime | None]) -> None:
        self._next_update = next_update

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "meshca_agent_crl_next_update_timestamp_seconds",
            "The earliest nextUpdate of the CA's revocation lists the agent serves (crl.pem, the "
            "ROOTCA SDS secret), as a Unix time (no sample before the first lists); once it passes, "
            "Envoy refuses every peer until the CA sends newer ones.",
        )
        next_update = self._next_update()
        if next_update is not None:
            family.add_metric([], next_update.timestamp())
        yield family


class _ControlStream(Collector):
    def __init__(self, stream: ControlState) -> None:
        self._stream = stream

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "meshca_agent_control_stream_connected",
            "1 while the control stream to the CA is open and the CA has answered on it, else 0.",
            value=1 if self._stream.connected else 0,
        )
        yield CounterMetricFamily(
            "meshca_agent_control_stream_connects",
            "Control streams opened to the CA (one more for each reconnect and each new certificate).",
            value=self._stream.connects,
        )


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
        self.failed.labels(request_type=REQUEST_TYPE)  # 0 from the start: increase() sees the first
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
        self.registry.register(_HeldCertificate(self))
        self.renewal_failures = Counter(
            "meshca_agent_renewal_failures",
            "Certificate requests to the CA that failed (the first certificate or a renewal), by "
            "reason; the agent keeps serving the certificate it holds and retries with backoff.",
            ["reason"],
            registry=self.registry,
        )
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

    def follow_control_stream(self, stream: ControlState) -> None:
        """Export the control stream's state (an agent without --ca-control-addr has none)."""
        self.registry.register(_ControlStream(stream))

    def follow_revocations(self, next_update: Callable[[], datetime | None]) -> None:
        """Export when the revocation lists served now expire (`next_update`, read at scrape time;
        None while the agent serves none)."""
        self.registry.register(_HeldRevocations(next_update))

    def attempted(self, *, seconds: float, failure: str | None = None) -> None:
        self.outgoing.labels(request_type=REQUEST_TYPE).inc()
        self.latency.labels(request_type=REQUEST_TYPE).inc(seconds * 1000)
        if failure is not None:
            self.failed.labels(request_type=REQUEST_TYPE).inc()
            self.renewal_failures.labels(reason=failure).inc()

    def holding(self, svid: Svid | None, now: datetime) -> None:
        self._held = svid

    def held_not_after(self) -> datetime | None:
        held = self._held
        return None if held is None else held.not_after

    def _seconds_left(self) -> float:
        held = self._held
        return 0.0 if held is None else (held.not_after - self._clock.now()).total_seconds()

    @property
    def ready(self) -> bool:
        return self._seconds_left() > 0

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
