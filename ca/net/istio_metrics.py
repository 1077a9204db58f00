"""Prometheus counters under the exact names Istio's dashboards query (CA and agent alike)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector


class IstioNamedCounters(Collector):
    """Re-exports counters without the `_total` and `_created` series prometheus-client adds.

    Istio exposes `citadel_server_csr_count`, not `citadel_server_csr_count_total`;
    dashboards and alerts written for Istio query the exact name. The text format
    names a counter family `<name>_total`, so these are exported untyped; PromQL's
    rate() and increase() work on them all the same.
    """

    def __init__(self, source: CollectorRegistry) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        for family in self._source.collect():
            renamed = Metric(family.name, family.documentation, "unknown")
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                renamed.add_sample(family.name, sample.labels, sample.value)
            yield renamed
