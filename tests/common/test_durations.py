"""Durations as flags spell them: parsed, refused, formatted back."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ca.common.durations import format_duration, parse_duration
from ca.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", timedelta(0)),
        ("3600", timedelta(hours=1)),
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("24h", timedelta(hours=24)),
        ("90d", timedelta(days=90)),
        (" 24H ", timedelta(hours=24)),
        ("007m", timedelta(minutes=7)),
        ("250ms", timedelta(milliseconds=250)),
        ("0ms", timedelta(0)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text", ["", " ", "h", "1.5h", "-1h", "+1h", "1w", "1y", "24 h", "1h30m", "forever", "0x10"]
)
def test_bad_durations(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_duration(text)
    assert repr(text) in caught.value.message
    assert "90d" in caught.value.message


@pytest.mark.parametrize("text", ["9999999999d", "99999999999999999999s", "1" * 30 + "h", "9" * 30 + "ms"])
def test_absurdly_long_durations_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(0), "0s"),
        (timedelta(seconds=90), "90s"),
        (timedelta(minutes=30), "30m"),
        (timedelta(hours=1), "1h"),
        (timedelta(hours=25), "25h"),
        (timedelta(days=90), "90d"),
        (timedelta(seconds=86401), "86401s"),
    ],
)
def test_format_duration(value: timedelta, text: str) -> None:
    assert format_duration(value) == text


@given(seconds=st.integers(min_value=0, max_value=10**9))
def test_format_then_parse_round_trips(seconds: int) -> None:
    value = timedelta(seconds=seconds)
    assert parse_duration(format_duration(value)) == value
