"""The CA's /metrics: the ledger's commits and failures, the CA's expiry dates from the moment it is
built, and the rotation orders past their grace, read back through Prometheus's text parser."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ca.cli.main import build_parser
from ca.ledger.writer import BACKLOG, FAILURE_REASONS, WRITE_FAILED
from ca.server.metrics import CaMetrics
from ca.server.settings import serve_config
from ca.server.wiring import build_server
from tests.support.ca_server import serve_args
from tests.support.clock import FakeClock


def scraped(metrics: CaMetrics) -> dict[str, float]:
    """Samples by `name` or `name{label=value,...}` (labels sorted)."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found


def test_ledger_commits_and_failures() -> None:
    metrics = CaMetrics()
    # Every reason is there from the start, at 0, so that increase() sees the first failure.
    assert {
        r: scraped(metrics)[f"meshca_ledger_write_failures_total{{reason={r}}}"] for r in FAILURE_REASONS
    } == {r: 0 for r in FAILURE_REASONS}
    metrics.ledger.committed(3, 0.004)
    metrics.ledger.committed(1, 0.2)
    metrics.ledger.failed(2, WRITE_FAILED)
    metrics.ledger.failed(1, BACKLOG)
    samples = scraped(metrics)
    assert samples["meshca_ledger_entries_written_total"] == 4
    assert samples["meshca_ledger_commit_duration_seconds_count"] == 2
    assert samples["meshca_ledger_commit_duration_seconds_sum"] == pytest.approx(0.204)
    assert samples["meshca_ledger_commit_duration_seconds_bucket{le=0.005}"] == 1
    assert samples["meshca_ledger_commit_duration_seconds_bucket{le=0.25}"] == 2
    assert samples["meshca_ledger_write_failures_total{reason=write_failed}"] == 2
    assert samples["meshca_ledger_write_failures_total{reason=backlog}"] == 1


def test_a_built_ca_reports_its_expiry_dates_its_orders_past_grace_and_its_ledgers_commits(
    tmp_path: Path,
) -> None:
    """Before its scheduler's first run (it is not even started): nothing reads 0 meanwhile."""
    clock = FakeClock()
    args = build_parser({}).parse_args(serve_args(tmp_path / "state"))
    server = build_server(serve_config(args, {}), clock=clock)
    try:
        samples = scraped(server.metrics)
        authority = server.authority
        assert samples["citadel_server_root_cert_expiry_timestamp"] == authority.root_expiry().timestamp()
        assert samples["citadel_server_cert_chain_expiry_timestamp"] == authority.expiry().timestamp()
        assert samples["citadel_server_cert_chain_expiry_seconds"] == (
            (authority.expiry() - clock.now()).total_seconds()
        )
        assert samples["meshca_rotation_orders_past_grace"] == 0  # the push coordinator's count
        # The ledger (SQLite in the state directory) recorded the CA's creation through the
        # metrics' observer.
        assert samples["meshca_ledger_entries_written_total"] >= 1
        assert samples["meshca_ledger_commit_duration_seconds_count"] >= 1
    finally:
        server.stop(grace_s=0)
