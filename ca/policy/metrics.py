"""Prometheus metrics of the policy sources (default registry, `meshca_policy_` prefix)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

POLICIES_LOADED = Gauge(
    "meshca_policy_policies_loaded",
    "PeerAuthentication policies currently in effect, by source (yaml or kube).",
    ["source"],
)
INVALID_POLICIES = Counter(
    "meshca_policy_invalid_policies",
    "PeerAuthentication manifests or objects refused as invalid, by source (yaml or kube).",
    ["source"],
)
WATCH_RESTARTS = Counter(
    "meshca_policy_watch_restarts",
    "Kubernetes PeerAuthentication watches restarted, by API version and cause.",
    ["version", "cause"],
)
