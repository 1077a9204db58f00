"""When the agent renews, and how its renewal settings are checked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ca.agent.schedule import AGENT_BACKOFF, RenewalPolicy, attempt_due, seconds_until
from ca.errors import ConfigError

RECEIVED = datetime(2026, 12, 7, tzinfo=UTC)


def test_renewal_at_half_the_remaining_life_with_no_jitter_drawn() -> None:
    policy = RenewalPolicy(ratio=0.5, jitter=0.01)
    assert policy.renew_at(RECEIVED, RECEIVED + timedelta(hours=24), lambda: 0.5) == RECEIVED + timedelta(
        hours=12
    )


def test_jitter_moves_renewal_by_at_most_its_share_of_the_lifetime() -> None:
    policy = RenewalPolicy(ratio=0.5, jitter=0.1)
    life = timedelta(hours=10)
    assert policy.renew_at(RECEIVED, RECEIVED + life, lambda: 0.0) == RECEIVED + timedelta(hours=4)
    assert policy.renew_at(RECEIVED, RECEIVED + life, lambda: 0.999999) < RECEIVED + timedelta(hours=6)


@given(st.floats(min_value=0.0, max_value=0.999999), st.integers(min_value=0, max_value=90 * 86400))
def test_renewal_is_never_before_receipt_nor_at_or_after_expiry(draw: float, seconds: int) -> None:
    policy = RenewalPolicy(ratio=0.9, jitter=0.05)
    not_after = RECEIVED + timedelta(seconds=seconds)
    renew = policy.renew_at(RECEIVED, not_after, lambda: draw)
    assert RECEIVED <= renew <= not_after
    if seconds:
        assert renew < not_after


def test_an_expired_certificate_is_renewed_at_once() -> None:
    assert RenewalPolicy().renew_at(RECEIVED, RECEIVED - timedelta(hours=1), lambda: 0.5) == RECEIVED


@pytest.mark.parametrize(
    ("ratio", "jitter", "message"),
    [
        (0.01, 0.01, "--rotation-ratio"),
        (0.96, 0.01, "--rotation-ratio"),
        (0.5, 0.3, "--rotation-jitter"),
        (0.9, 0.1, "--rotation-jitter"),
        (0.5, -0.01, "--rotation-jitter"),
    ],
)
def test_settings_that_would_renew_too_late_or_too_wildly_are_refused(
    ratio: float, jitter: float, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        RenewalPolicy(ratio=ratio, jitter=jitter)


def test_the_agents_backoff_doubles_from_half_a_second_to_a_minute() -> None:
    assert [AGENT_BACKOFF.step_s(n) for n in range(9)] == [0.5, 1, 2, 4, 8, 16, 32, 60, 60]
    assert AGENT_BACKOFF.delay_s(0, lambda: 0.0) == 0.25


def test_an_attempt_is_due_from_its_time_on_and_not_a_microsecond_sooner() -> None:
    assert not attempt_due(RECEIVED, RECEIVED - timedelta(microseconds=1))
    assert attempt_due(RECEIVED, RECEIVED)
    assert attempt_due(RECEIVED, RECEIVED + timedelta(hours=1))


def test_the_wait_for_an_attempt_is_what_is_left_of_it_and_never_negative() -> None:
    assert seconds_until(RECEIVED + timedelta(seconds=1.5), RECEIVED) == 1.5
    assert seconds_until(RECEIVED, RECEIVED) == 0.0
    assert seconds_until(RECEIVED, RECEIVED + timedelta(hours=1)) == 0.0
