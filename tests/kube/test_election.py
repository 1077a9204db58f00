"""The election's decisions as pure functions: when a lease may be taken, what is written, and
the record's wire form."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ca.errors import ConfigError
from ca.kube.election import (
    JITTER_FACTOR,
    ElectionTimings,
    LeaseRecord,
    Move,
    Sighting,
    candidate_wait_s,
    claimed,
    decide,
    format_micro_time,
    holder_identity,
    leader_wait_s,
    parse_micro_time,
    record_from_spec,
    released,
    renewal_overdue,
    sight,
    spec_json,
)

ME = "meshca-0_0000002a"
OTHER = "meshca-1_deadbeef"
T0 = datetime(2030, 5, 1, 12, 0, 0, tzinfo=UTC)
TIMINGS = ElectionTimings()


def _held(holder: str = OTHER, duration_s: int = 15, transitions: int = 3) -> LeaseRecord:
    return LeaseRecord(
        holder=holder, lease_duration_s=duration_s, acquire_time=T0, renew_time=T0, transitions=transitions
    )


def test_the_defaults_are_fifteen_ten_and_two_seconds() -> None:
    assert (TIMINGS.lease_duration_s, TIMINGS.renew_deadline_s, TIMINGS.retry_period_s) == (15, 10.0, 2.0)


@pytest.mark.parametrize(
    ("lease", "renew", "retry", "says"),
    [
        (10, 10.0, 2.0, "must be longer than the renew deadline"),
        (15, 2.4, 2.0, "retry periods"),
        (15, 10.0, 0.0, "must be positive"),
        (15, float("nan"), 2.0, "must be positive"),
    ],
)
def test_timings_that_allow_two_leaders_or_no_renewal_are_refused(
    lease: int, renew: float, retry: float, says: str
) -> None:
    with pytest.raises(ConfigError, match=says):
        ElectionTimings(lease_duration_s=lease, renew_deadline_s=renew, retry_period_s=retry)


def test_the_short_timings_of_the_real_api_server_tests_are_accepted() -> None:
    ElectionTimings(lease_duration_s=3, renew_deadline_s=2.0, retry_period_s=0.5)


def test_no_lease_object_is_created() -> None:
    assert decide(Sighting(None, 0.0), identity=ME, leading=False, now=0.0) is Move.CREATE


def test_a_lease_this_replica_holds_is_renewed() -> None:
    assert decide(Sighting(_held(ME), 0.0), identity=ME, leading=True, now=100.0) is Move.RENEW


def test_a_free_lease_is_acquired_at_once() -> None:
    assert decide(Sighting(_held(""), 5.0), identity=ME, leading=False, now=5.0) is Move.ACQUIRE


def test_another_holders_lease_is_waited_for_until_it_has_been_seen_unchanged_for_its_duration() -> None:
    sighting = Sighting(_held(duration_s=15), 100.0)
    assert decide(sighting, identity=ME, leading=False, now=114.999999) is Move.WAIT
    assert decide(sighting, identity=ME, leading=False, now=115.0) is Move.ACQUIRE


def test_expiry_uses_the_holders_duration_not_this_replicas() -> None:
    sighting = Sighting(_held(duration_s=40), 0.0)
    assert decide(sighting, identity=ME, leading=False, now=39.0) is Move.WAIT
    assert decide(sighting, identity=ME, leading=False, now=40.0) is Move.ACQUIRE


def test_a_leader_that_finds_another_holder_has_lost() -> None:
    assert decide(Sighting(_held(OTHER), 0.0), identity=ME, leading=True, now=0.0) is Move.LOST
    assert decide(Sighting(_held(""), 0.0), identity=ME, leading=True, now=0.0) is Move.LOST


def test_an_unchanged_record_keeps_its_first_sighting_and_a_changed_one_starts_over() -> None:
    first = sight(None, _held(), 10.0)
    assert sight(first, _held(), 14.0) is first
    renewed = sight(first, _held(transitions=4), 14.0)
    assert renewed.since == 14.0


def test_the_renew_deadline_is_counted_from_the_start_of_the_last_successful_renewal() -> None:
    assert not renewal_overdue(100.0, 109.999999, TIMINGS)
    assert renewal_overdue(100.0, 110.0, TIMINGS)


def test_a_leader_waits_a_retry_period_but_not_past_its_deadline() -> None:
    assert leader_wait_s(100.0, 100.0, TIMINGS) == 2.0
    assert leader_wait_s(100.0, 109.0, TIMINGS) == pytest.approx(1.0)
    assert leader_wait_s(100.0, 112.0, TIMINGS) == 0.0


def test_a_candidate_waits_between_one_and_two_point_two_retry_periods() -> None:
    assert candidate_wait_s(TIMINGS, lambda: 0.0) == 2.0
    assert candidate_wait_s(TIMINGS, lambda: 0.5) == pytest.approx(2.0 * (1 + JITTER_FACTOR / 2))


def test_creating_the_lease_starts_the_count_of_transitions_at_zero() -> None:
    record = claimed(None, identity=ME, now=T0, timings=TIMINGS)
    assert record == LeaseRecord(
        holder=ME, lease_duration_s=15, acquire_time=T0, renew_time=T0, transitions=0
    )


def test_releasing_leaves_no_holder_a_one_second_duration_and_the_count_of_transitions() -> None:
    later = T0 + timedelta(minutes=1)
    assert released(_held(ME, transitions=7), now=later) == LeaseRecord(
        holder="", lease_duration_s=1, acquire_time=later, renew_time=later, transitions=7
    )


def test_the_holder_identity_is_the_pod_name_and_a_random_suffix() -> None:
    assert holder_identity("meshca-0", lambda: 0.0) == "meshca-0_00000000"
    assert holder_identity("meshca-0", lambda: 0.5) == "meshca-0_80000000"
    assert holder_identity("meshca-0", lambda: 0.999999999999) == "meshca-0_ffffffff"


names = st.sampled_from(["", ME, OTHER, "meshca-2_00000001"])
moments = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC))
records = st.builds(
    LeaseRecord,
    holder=names,
    lease_duration_s=st.integers(1, 3600),
    acquire_time=st.none() | moments,
    renew_time=st.none() | moments,
    transitions=st.integers(0, 2**31 - 1),
)


@given(record=records, since=st.floats(0, 1e6), age=st.floats(0, 1e4), leading=st.booleans())
def test_no_replica_writes_over_another_holders_unexpired_lease(
    record: LeaseRecord, since: float, age: float, leading: bool
) -> None:
    move = decide(Sighting(record, since), identity=ME, leading=leading, now=since + age)
    held_by_another = record.holder not in ("", ME)
    if held_by_another and age < record.lease_duration_s:
        assert move in (Move.WAIT, Move.LOST)
    if move in (Move.ACQUIRE, Move.RENEW, Move.CREATE):
        assert not leading or record.holder == ME


@given(previous=st.none() | records, now=moments)
def test_a_claim_names_this_replica_and_counts_a_transition_only_when_the_holder_changes(
    previous: LeaseRecord | None, now: datetime
) -> None:
    record = claimed(previous, identity=ME, now=now, timings=TIMINGS)
    assert (record.holder, record.renew_time, record.lease_duration_s) == (ME, now, 15)
    if previous is None:
        assert (record.transitions, record.acquire_time) == (0, now)
    elif previous.holder == ME:
        assert (record.transitions, record.acquire_time) == (previous.transitions, previous.acquire_time)
    else:
        assert (record.transitions, record.acquire_time) == (previous.transitions + 1, now)


@given(record=records)
def test_the_record_survives_its_wire_form(record: LeaseRecord) -> None:
    assert record_from_spec(spec_json(record)) == record


@given(moment=moments)
def test_times_on_the_wire_have_six_fractional_digits_even_when_zero(moment: datetime) -> None:
    text = format_micro_time(moment)
    assert text.endswith("Z") and len(text.split(".")[1]) == 7
    assert parse_micro_time(text) == moment


def test_an_empty_spec_reads_as_a_free_lease() -> None:
    assert record_from_spec({}) == LeaseRecord()
