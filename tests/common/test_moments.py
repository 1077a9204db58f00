"""Points in time as a command line spells them: RFC 3339, a date, now, or an age."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ca.common.moments import parse_moment
from ca.errors import ConfigError

NOW = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", NOW),
        (" NOW ", NOW),
        ("90m", NOW - timedelta(minutes=90)),
        ("24H", NOW - timedelta(hours=24)),
        ("7d", NOW - timedelta(days=7)),
        ("2026-11-21T08:00:00Z", NOW),
        ("2026-11-21T10:00:00+02:00", NOW),
        ("2026-11-21T08:00:00", NOW),  # no offset means UTC
        ("2026-11-21", datetime(2026, 11, 21, tzinfo=UTC)),
    ],
)
def test_moments_people_write(text: str, expected: datetime) -> None:
    moment = parse_moment(text, NOW)
    assert moment == expected
    assert moment.tzinfo is UTC


def test_a_moment_with_an_offset_is_given_back_in_utc() -> None:
    assert parse_moment("2026-11-21T10:00:00+02:00", NOW).hour == 8


@pytest.mark.parametrize("text", ["yesterday", "7w", "-1d", "2026-13-01", ""])
def test_what_is_not_a_time_is_a_config_error_naming_the_flag(text: str) -> None:
    with pytest.raises(ConfigError, match=r"--since .* is not a time; write it as 2026-11-21T08:00:00Z"):
        parse_moment(text, NOW, flag="--since")


def test_an_age_reaching_before_the_year_1_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="reaches back before the year 1"):
        parse_moment("999999d", NOW, flag="--since")
