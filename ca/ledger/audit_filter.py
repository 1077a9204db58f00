"""Which ledger entries an audit selects. Pure code, kept apart from the SQL so that parsing
flags into one needs no database library."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ca.common.flags import whole_number
from ca.errors import InvalidRequestError
from ca.ledger.entries import ISSUED, KINDS, timestamp

DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequestError(
            f"limit {limit} is out of range; ask for 1 to {MAX_LIMIT} entries, or export for more",
            reason="limit_invalid",
        )
    return limit


def parse_limit(text: str, flag: str = "--limit") -> int:
    """A list's --limit: a whole number from 1 to MAX_LIMIT."""
    return whole_number(
        text, flag, minimum=1, maximum=MAX_LIMIT, hint=" (for more, use 'meshca audit export')"
    )


@dataclass(frozen=True, kw_only=True)
class AuditFilter:
    """Which entries a query selects; every field given must match. Times are aware datetimes."""

    spiffe_id: str | None = None
    namespace: str | None = None
    service_account: str | None = None
    pod: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    status: str | None = None
    valid_at: datetime | None = None

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in KINDS:
            raise InvalidRequestError(
                f"status {self.status!r} is not one of {', '.join(KINDS)}", reason="filter_invalid"
            )
        if self.valid_at is not None and self.status not in (None, ISSUED):
            raise InvalidRequestError(
                f"a valid-at time selects issued certificates, so it cannot go with status {self.status}; "
                "drop one of the two",
                reason="filter_invalid",
            )
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise InvalidRequestError(
                f"the time range is empty: since {timestamp(self.since)} is not before until "
                f"{timestamp(self.until)}; swap or widen them",
                reason="filter_invalid",
            )

    @property
    def kind(self) -> str | None:
        return ISSUED if self.valid_at is not None else self.status
