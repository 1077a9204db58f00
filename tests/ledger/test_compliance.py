"""The compliance document's aggregates over a week of a small mesh's ledger (tests/support/
compliance_mesh), on SQLite and PostgreSQL: every count is known from how the week was written."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from ca.ledger import compliance
from ca.ledger.audit_filter import AuditFilter
from ca.ledger.compliance import CallerRefusals, Counted, DayCount
from ca.ledger.reader import LedgerReader, open_reader
from tests.support.compliance_mesh import DAY, T0, ComplianceMesh, write_mesh
from tests.support.ledger import BACKENDS, fresh_ledger_url

ALL = AuditFilter()


@pytest.fixture(scope="module", params=BACKENDS)
def mesh(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ComplianceMesh]:
    directory = tmp_path_factory.mktemp(f"mesh-{request.param}")
    with fresh_ledger_url(request.param, directory) as url:
        yield write_mesh(url, directory / "state", directory / "policies")


@pytest.fixture
def reader(mesh: ComplianceMesh) -> Iterator[LedgerReader]:
    opened = open_reader(mesh.url)
    yield opened
    opened.dispose()


def test_certificates_issued_and_refused_per_day(reader: LedgerReader) -> None:
    days = compliance.daily_counts(reader, ALL)
    assert [d.day for d in days] == [f"2026-11-{14 + n}" for n in range(7)]
    assert [d.issued for d in days] == [18] * 6 + [20]  # the last day: the order's and a revoked one
    assert [d.refused for d in days] == [2, 4, 10, 9, 4, 5, 2]


def test_a_period_keeps_only_its_days(reader: LedgerReader) -> None:
    days = compliance.daily_counts(reader, AuditFilter(since=T0 + 2 * DAY, until=T0 + 4 * DAY))
    assert days == (
        DayCount(day="2026-11-16", issued=18, refused=10),
        DayCount(day="2026-11-17", issued=18, refused=9),
    )


def test_lifetimes_in_whole_minutes_with_their_counts(reader: LedgerReader) -> None:
    assert compliance.lifetimes(reader, ALL) == ((60, 28), (24 * 60, 86), (48 * 60, 7), (7 * 24 * 60, 7))
    assert compliance.lifetimes(reader, AuditFilter(namespace="monitoring")) == ((48 * 60, 7),)


def test_key_types_most_first(reader: LedgerReader) -> None:
    assert compliance.key_types(reader, ALL) == (
        Counted(value="ec-p256", count=121),
        Counted(value="rsa-2048", count=7),
    )
    assert compliance.key_types(reader, AuditFilter(namespace="shop")) == (
        Counted(value="ec-p256", count=63),
    )


def test_a_caller_without_an_identity_is_its_address_without_the_port(reader: LedgerReader) -> None:
    assert compliance.top_callers(reader, ALL, limit=3) == (
        Counted(value="ipv4:203.0.113.9", count=12),
        Counted(value="ipv4:10.8.3.7", count=11),
        Counted(value="ipv4:10.8.3.8", count=9),
    )


def test_each_reasons_top_callers(reader: LedgerReader) -> None:
    found = compliance.callers_by_reason(reader, ALL, per_reason=1)
    assert found == (
        CallerRefusals(
            reason="key_type_not_allowed", caller="spiffe://cluster.local/ns/legacy/sa/batch", count=1
        ),
        CallerRefusals(reason="token_expired", caller="ipv4:10.8.3.7", count=11),
        CallerRefusals(reason="token_invalid", caller="ipv4:203.0.113.9", count=12),
        CallerRefusals(
            reason="ttl_too_long", caller="spiffe://cluster.local/ns/monitoring/sa/prometheus", count=3
        ),
    )


def test_ca_records_newest_first_whatever_the_identity_filters(reader: LedgerReader) -> None:
    records = compliance.ca_records(reader, AuditFilter(namespace="shop"))
    assert records.total == 5
    assert [(e["kind"], e.get("slot"), e["reason"]) for e in records.entries] == [
        ("ca_slot", "1", "retiring"),
        ("ca_slot", "2", "active"),
        ("ca_slot", "2", "prepared"),
        ("ca_slot", "1", "active"),
        ("ca_event", None, "created"),
    ][: len(records.entries)]
    assert [e["seq"] for e in records.entries] == sorted((e["seq"] for e in records.entries), reverse=True)
    limited = compliance.ca_records(reader, ALL, limit=2)
    assert (len(limited.entries), limited.total) == (2, 5)
    assert compliance.ca_records(reader, AuditFilter(since=T0 + 5 * DAY)).total == 0


def test_revocations_of_the_period(reader: LedgerReader, mesh: ComplianceMesh) -> None:
    found = compliance.revocations(reader, ALL)
    assert found.total == 1
    assert found.entries[0]["serial"] == mesh.revoked
    assert found.entries[0]["note"] == "key copied to a laptop"
    assert compliance.revocations(reader, AuditFilter(namespace="shop")).total == 0


def test_the_periods_span_counts_every_kind(reader: LedgerReader) -> None:
    span = compliance.period_span(reader, ALL)
    assert span.first_seq == 1
    kinds = {k.value: k.count for k in span.kinds}
    assert kinds == {
        "ca_event": 1,
        "ca_slot": 4,
        "issued": 128,
        "refused": 36,
        "revoked": 1,
        "rotation_order": 1,
    }
    assert span.last_seq == sum(kinds.values())
    late = compliance.period_span(reader, AuditFilter(since=T0 + 6 * DAY))
    assert late.first_seq is not None and late.first_seq > 1
    empty = compliance.period_span(reader, AuditFilter(since=T0 - 3 * DAY, until=T0 - timedelta(days=2)))
    assert (empty.first_seq, empty.last_seq, empty.kinds) == (None, None, ())


def test_the_newest_checkpoint_and_the_head(reader: LedgerReader) -> None:
    checkpoint, head_seq = compliance.newest_checkpoint(reader)
    assert checkpoint is not None
    assert checkpoint.head_seq == head_seq == 171


def test_an_empty_ledger_has_no_aggregates(tmp_path: Path) -> None:
    from tests.support.ledger import ledger_rig

    with fresh_ledger_url("sqlite", tmp_path) as url:
        with ledger_rig(url, tmp_path / "state"):
            pass
        empty = open_reader(url)
        try:
            assert compliance.daily_counts(empty, ALL) == ()
            assert compliance.lifetimes(empty, ALL) == ()
            assert compliance.top_callers(empty, ALL) == ()
            assert compliance.ca_records(empty, ALL).total == 0
            assert compliance.newest_checkpoint(empty) == (None, 0)
        finally:
            empty.dispose()
