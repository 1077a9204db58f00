"""Prometheus metrics, named as Istio's CA names them so existing dashboards work; what Istio's CA
has no metric for (the ledger, forced rotation) is named `meshca_*`.

deploy/observability holds the dashboard and alert rules that query these names; a test scrapes a
running CA and fails when one of their names is no longer exported.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ca.ledger.writer import FAILURE_REASONS
from ca.net.istio_metrics import IstioNamedCounters

LEDGER_COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class LedgerWriteMetrics:
    """The ledger writer's observer (ca.ledger.writer.WriteObserver): commit time, entries written,
    entries not written by reason."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.commit_duration = Histogram(
            "meshca_ledger_commit_duration_seconds",
            "Time from handing a batch of ledger entries to the writer until its transaction is "
            "confirmed (one observation per batch).",
            buckets=LEDGER_COMMIT_BUCKETS,
            registry=registry,
        )
        self.entries_written = Counter(
            "meshca_ledger_entries_written",
            "Ledger entries committed: certificates issued, requests refused, CA events.",
            registry=registry,
        )
        self.write_failures = Counter(
            "meshca_ledger_write_failures",
            "Ledger entries that could not be written, by reason (write_failed, backlog, writer_down, "
            "shut_down). A certificate whose issued record fails is not returned.",
            ["reason"],
            registry=registry,
        )
        for reason in FAILURE_REASONS:  # every series from the start, so increase() sees the first
            self.write_failures.labels(reason=reason)

    def committed(self, entries: int, seconds: float) -> None:
        self.commit_duration.observe(seconds)
        self.entries_written.inc(entries)

    def failed(self, entries: int, reason: str) -> None:
        self.write_failures.labels(reason=reason).inc(entries)


class CaMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        counters = CollectorRegistry(auto_describe=True)
        self.registry.register(IstioNamedCounters(counters))
        r = self.registry
        self.csr_count = Counter(
            "citadel_server_csr_count", "Certificate signing requests received.", registry=counters
        )
        self.success_count = Counter(
            "citadel_server_success_cert_issuance_count", "Certificates issued.", registry=counters
        )
        self.auth_failure_count = Counter(
            "citadel_server_authentication_failure_count",
            "Requests refused because the caller could not be authenticated.",
            ["reason"],
            registry=counters,
        )
        self.csr_parsing_err_count = Counter(
            "citadel_server_csr_parsing_err_count",
            "CSRs that could not be parsed.",
            registry=counters,
        )
        self.sign_err_count = Counter(
            "citadel_server_csr_sign_err_count",
            "Requests refused after authentication.",
            ["error"],
            registry=counters,
        )
        self.root_expiry = Gauge(
            "citadel_server_root_cert_expiry_timestamp",
            "Unix time when the root certificate expires.",
            registry=r,
        )
        self.root_expiry_seconds = Gauge(
            "citadel_server_root_cert_expiry_seconds",
            "Seconds until the root certificate expires.",
            registry=r,
        )
        self.chain_expiry = Gauge(
            "citadel_server_cert_chain_expiry_timestamp",
            "Unix time when the signing certificate chain expires.",
            registry=r,
        )
        self.chain_expiry_seconds = Gauge(
            "citadel_server_cert_chain_expiry_seconds",
            "Seconds until the signing certificate chain expires.",
            registry=r,
        )
        self.leader = Gauge(
            "meshca_leader",
            "1 while this replica leads (does the singleton work: bundle publishing, ledger "
            "checkpoints and compaction), else 0.",
            registry=r,
        )
        self.control_streams = Gauge(
            "meshca_control_streams",
            "Agents' control streams open on this CA (each a certificate it can push to).",
            registry=r,
        )
        self.rotation_orders_past_grace = Gauge(
            "meshca_rotation_orders_past_grace",
            "Rotation orders still pushing after their grace period ended, as this replica knows them. "
            "The CA completes such an order (revoking what is still outstanding) within a second or "
            "two; a count that stays above 0 means completing them fails.",
            registry=r,
        )
        self.ledger = LedgerWriteMetrics(r)
        self.issuance_latency = Histogram(
            "meshca_issuance_duration_seconds",
            "Time to authenticate and sign one certificate request.",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5),
            registry=r,
        )
