"""When to renew and how long to wait after a failure: pure functions of time and chance.

The random source is passed in so that tests sit exactly on the thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from ca.common.backoff import Backoff, UniformRandom
from ca.errors import ConfigError

AGENT_BACKOFF = Backoff(initial_s=0.5, maximum_s=60.0, jitter=0.5)
"""After a failed certificate request: 0.5 s doubling to a minute, each wait between half and
all of its step."""


@dataclass(frozen=True, kw_only=True)
class RenewalPolicy:
    """When a certificate is renewed: at `ratio` of its remaining lifetime, moved by up to +-`jitter`
    of it (--rotation-ratio, --rotation-jitter)."""

    ratio: float = 0.5
    jitter: float = 0.01

    def __post_init__(self) -> None:
        if not 0.05 <= self.ratio <= 0.95:
            raise ConfigError(f"--rotation-ratio {self.ratio} is outside 0.05-0.95; 0.5 renews at half-life")
        if not 0 <= self.jitter <= 0.2 or self.ratio + self.jitter >= 1:
            raise ConfigError(f"--rotation-jitter {self.jitter} must be 0-0.2 and keep renewal before expiry")

    def renew_at(self, received_at: datetime, not_after: datetime, random: UniformRandom) -> datetime:
        """At `ratio` of the remaining lifetime, moved by up to +-`jitter` of it.

        Measured from when the certificate arrived, not from its NotBefore: the CA
        backdates NotBefore for clock skew, which for short TTLs would put the
        renewal in the past.
        """
        lifetime = max(not_after - received_at, timedelta(0))
        offset = self.ratio + self.jitter * (2 * random() - 1)
        return received_at + lifetime * offset


def attempt_due(due_at: datetime, now: datetime) -> bool:
    """Whether the attempt due at `due_at` runs at `now`, by the agent's clock."""
    return now >= due_at


def seconds_until(due_at: datetime, now: datetime) -> float:
    """How long from `now` until `due_at`; 0 once it has come."""
    return max((due_at - now).total_seconds(), 0.0)
