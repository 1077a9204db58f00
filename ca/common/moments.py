"""Points in time as people write them on a command line. Pure code.

`2026-11-21T08:00:00Z` (RFC 3339, any offset; no offset means UTC), `2026-11-21`
(midnight UTC), `now`, or an age such as `90m`, `24h` or `7d`: that long before now.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from ca.common.durations import parse_duration
from ca.errors import ConfigError

_AGE = re.compile(r"\d+[smhd]", re.IGNORECASE)


def parse_moment(text: str, now: datetime, *, flag: str = "time") -> datetime:
    cleaned = text.strip()
    if cleaned.lower() == "now":
        return now
    if _AGE.fullmatch(cleaned):
        try:
            return now - parse_duration(cleaned)
        except OverflowError:
            raise ConfigError(f"{flag} {text!r} reaches back before the year 1; give a shorter age") from None
    try:
        moment = datetime.fromisoformat(cleaned)
    except ValueError:
        raise ConfigError(
            f"{flag} {text!r} is not a time; write it as 2026-11-21T08:00:00Z, 2026-11-21, now, "
            "or an age such as 24h or 7d (that long ago)"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
