"""The agent's /metrics: what the dashboard and the alerts read of its certificate, its failed
requests and its control stream, read back through Prometheus's own text parser."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from prometheus_client.parser import text_string_to_metric_families

from ca.agent.broadcast import SvidBroadcast
from ca.agent.telemetry import AgentMetrics
from ca.issuance.crl import CRL_BACKDATE
from tests.support.clock import FakeClock
from tests.support.crls import CRL_VALIDITY, crl_revoking
from tests.support.svids import FakeCa, make_svid

CRL_NEXT_UPDATE = "meshca_agent_crl_next_update_timestamp_seconds"


def scraped(metrics: AgentMetrics) -> dict[str, float]:
    """Samples by `name` or `name{label=value,...}` (labels sorted)."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found


def test_the_certificate_expiry_is_its_not_after_and_absent_before_the_first() -> None:
    clock = FakeClock()
    metrics = AgentMetrics(clock)
    assert "meshca_agent_certificate_expiry_timestamp_seconds" not in scraped(metrics)
    svid = make_svid(clock)
    metrics.holding(svid, clock.now())
    samples = scraped(metrics)
    assert samples["meshca_agent_certificate_expiry_timestamp_seconds"] == svid.not_after.timestamp()
    clock.advance(timedelta(minutes=10))  # read at scrape time: the timestamp stays, seconds left fall
    samples = scraped(metrics)
    assert samples["meshca_agent_certificate_expiry_timestamp_seconds"] == svid.not_after.timestamp()
    assert samples["istio_agent_cert_expiry_seconds{resource_name=default}"] == (
        (svid.not_after - clock.now()).total_seconds()
    )


def test_failed_requests_count_by_reason_beside_istios_counters() -> None:
    metrics = AgentMetrics(FakeClock())
    assert scraped(metrics)["istio_agent_num_failed_outgoing_requests{request_type=csr}"] == 0
    metrics.attempted(seconds=0.5, failure="unavailable")
    metrics.attempted(seconds=0.25, failure="unavailable")
    metrics.attempted(seconds=0.1, failure="token_missing")
    metrics.attempted(seconds=0.15)
    samples = scraped(metrics)
    assert samples["meshca_agent_renewal_failures_total{reason=unavailable}"] == 2
    assert samples["meshca_agent_renewal_failures_total{reason=token_missing}"] == 1
    assert samples["istio_agent_num_failed_outgoing_requests{request_type=csr}"] == 3
    assert samples["istio_agent_num_outgoing_requests{request_type=csr}"] == 4
    assert samples["istio_agent_outgoing_latency{request_type=csr}"] == 1000


@dataclass
class FakeStream:
    connected: bool = False
    connects: int = 0


def test_the_control_stream_state_is_read_at_scrape_time() -> None:
    metrics = AgentMetrics(FakeClock())
    assert "meshca_agent_control_stream_connected" not in scraped(metrics)  # no --ca-control-addr
    stream = FakeStream()
    metrics.follow_control_stream(stream)
    assert scraped(metrics)["meshca_agent_control_stream_connected"] == 0
    stream.connected, stream.connects = True, 3
    samples = scraped(metrics)
    assert samples["meshca_agent_control_stream_connected"] == 1
    assert samples["meshca_agent_control_stream_connects_total"] == 3


def test_the_crl_next_update_is_the_served_lists_and_absent_before_the_first() -> None:
    """What MeshcaAgentCrlExpiringSoon reads: past it Envoy refuses every peer."""
    clock = FakeClock()
    ca = FakeCa(clock)
    broadcast = SvidBroadcast(clock=clock)
    metrics = AgentMetrics(clock)
    metrics.follow_revocations(lambda: broadcast.snapshot().revocations.next_update)  # as the runner does
    broadcast.publish(make_svid(clock, ca))
    assert CRL_NEXT_UPDATE not in scraped(metrics)  # no lists yet: nothing to alert on
    assert broadcast.publish_crl([crl_revoking(ca.issuer.authority, [], clock.now())])
    first = clock.now() - CRL_BACKDATE + CRL_VALIDITY
    assert scraped(metrics)[CRL_NEXT_UPDATE] == first.timestamp()
    clock.advance(CRL_VALIDITY)  # the CA sent nothing newer: the value stays, past its time
    assert scraped(metrics)[CRL_NEXT_UPDATE] == first.timestamp()
    assert broadcast.publish_crl([crl_revoking(ca.issuer.authority, [], clock.now())])
    assert scraped(metrics)[CRL_NEXT_UPDATE] == (clock.now() - CRL_BACKDATE + CRL_VALIDITY).timestamp()
