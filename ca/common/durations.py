"""Durations as people write them: 250ms, 90s, 30m, 24h, 90d, or plain seconds."""

from __future__ import annotations

import re
from datetime import timedelta

from ca.errors import ConfigError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PATTERN = re.compile(r"(\d+)(ms|[smhd]?)")


def parse_duration(text: str) -> timedelta:
    match = _PATTERN.fullmatch(text.strip().lower())
    if match is None:
        raise ConfigError(f"{text!r} is not a duration; write it like 3600, 250ms, 90s, 30m, 24h or 90d")
    amount, unit = match.groups()
    try:
        if unit == "ms":
            return timedelta(milliseconds=int(amount))
        return timedelta(seconds=int(amount) * _UNITS[unit or "s"])
    except OverflowError:
        raise ConfigError(f"{text!r} is too long a duration; keep it under a million days") from None


def format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit in ("d", "h", "m"):
        if seconds and seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"
