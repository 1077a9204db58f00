"""The enforcer's Prometheus metrics, served on /metrics by `ca.net.status_http.StatusServer`.

Per-connection updates go through cached label children (one dict lookup and
one locked add), so counting costs well under a microsecond. Active
connections are read from the enforcer's own per-port counts at scrape time.
/metrics also carries the default registry, where the policy sources count
loaded and invalid policies (`meshca_policy_*`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from ca.issuance.crl import RevocationLists

OUTCOMES = ("accepted_mtls", "accepted_plaintext", "passthrough", "refused")


class _ActiveConnections(Collector):
    def __init__(self, counts: Callable[[], Mapping[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "meshca_enforcer_active_connections",
            "Connections open now (inbound by application port, outbound by listen port).",
            labels=["port"],
        )
        for port, count in sorted(self._counts().items()):
            family.add_metric([port], count)
        yield family


class EnforcerMetrics:
    def __init__(self, active: Callable[[], Mapping[str, int]]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections = Counter(
            "meshca_enforcer_connections",
            "Inbound connections by application port, mode, outcome (accepted_mtls, accepted_plaintext, "
            "passthrough, refused) and reason.",
            ["port", "mode", "outcome", "reason"],
            registry=r,
        )
        self.peers = Counter(
            "meshca_enforcer_peer_identities",
            "Accepted mutual-TLS connections by application port and the peer's SPIFFE ID.",
            ["port", "peer"],
            registry=r,
        )
        self.bytes = Counter(
            "meshca_enforcer_bytes",
            "Bytes relayed, counted when a connection ends: received from the caller or sent to it.",
            ["port", "direction"],
            registry=r,
        )
        self.http_requests = Counter(
            "meshca_enforcer_http_requests",
            "HTTP requests forwarded on HTTP ports (counted when the connection ends).",
            ["port"],
            registry=r,
        )
        self.http_refused = Counter(
            "meshca_enforcer_http_refused",
            "HTTP requests refused (400, 431, 505, HTTP/2) by application port and reason.",
            ["port", "reason"],
            registry=r,
        )
        self.outbound = Counter(
            "meshca_enforcer_outbound_connections",
            "Outbound connections by listen port, target, outcome (accepted_mtls, refused) and reason.",
            ["port", "target", "outcome", "reason"],
            registry=r,
        )
        self.accept_errors = Counter(
            "meshca_enforcer_accept_errors",
            "accept() failures (for example out of file descriptors) by listen port.",
            ["port"],
            registry=r,
        )
        self.certificate_reloads = Counter(
            "meshca_enforcer_certificate_reloads",
            "Workload certificate file sets loaded or refused.",
            ["outcome"],
            registry=r,
        )
        self.certificate_expiry = Gauge(
            "meshca_enforcer_certificate_expiry_timestamp_seconds",
            "NotAfter of the workload certificate in use, as a Unix time.",
            registry=r,
        )
        self.crl_next_update = Gauge(
            "meshca_enforcer_crl_next_update_timestamp_seconds",
            "The earliest nextUpdate of the CA's revocation lists in use (crl.pem), as a Unix time; "
            "0 without crl.pem. Refusals of revoked peers count as reason certificate_revoked.",
            registry=r,
        )
        self.crl_entries = Gauge(
            "meshca_enforcer_crl_revoked_certificates",
            "Certificates the revocation lists in use list as revoked.",
            registry=r,
        )
        r.register(_ActiveConnections(active))
        self._children: dict[tuple[str, ...], Any] = {}

    def _child(self, metric: Counter, *labels: str) -> Any:
        key = (metric._name, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def connection(self, port: str, mode: str, outcome: str, reason: str) -> None:
        self._child(self.connections, port, mode, outcome, reason).inc()

    def peer(self, port: str, spiffe_id: str) -> None:
        self._child(self.peers, port, spiffe_id).inc()

    def relayed(self, port: str, received: int, sent: int) -> None:
        if received:
            self._child(self.bytes, port, "received").inc(received)
        if sent:
            self._child(self.bytes, port, "sent").inc(sent)

    def http(self, port: str, requests: int, refused: str | None) -> None:
        if requests:
            self._child(self.http_requests, port).inc(requests)
        if refused is not None:
            self._child(self.http_refused, port, refused).inc()

    def outbound_connection(self, port: str, target: str, outcome: str, reason: str) -> None:
        self._child(self.outbound, port, target, outcome, reason).inc()

    def revocations_loaded(self, revocations: RevocationLists) -> None:
        next_update = revocations.next_update
        self.crl_next_update.set(next_update.timestamp() if next_update is not None else 0)
        self.crl_entries.set(revocations.entry_count)

    def exposition(self) -> bytes:
        return generate_latest(self.registry) + generate_latest(REGISTRY)
