"""Prometheus metrics, named as Istio's CA names them so existing dashboards work."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ca.net.istio_metrics import IstioNamedCounters


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
        self.issuance_latency = Histogram(
            "meshca_issuance_duration_seconds",
            "Time to authenticate and sign one certificate request.",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5),
            registry=r,
        )
