"""Retry waits: exponential, jittered and capped, with the randomness passed in.

Every retry loop in meshca (the agent's CA calls, the pod cache's watch, the
Kubernetes Secret reads, the policy watch, the ledger process's restarts) waits
by one of these, so tests can sit exactly on a step by giving a fixed `random`.
"""

from __future__ import annotations

import math
import random as _random
from collections.abc import Callable
from dataclasses import dataclass, field

UniformRandom = Callable[[], float]
"""Returns a float in [0, 1)."""


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """Steps from `initial_s`, multiplied by `factor` after each failure, up to `maximum_s`.

    Each wait is drawn from the upper `jitter` share of its step, so that many clients
    failing together do not retry together: with jitter 0.5, between half and all of it.
    """

    initial_s: float
    maximum_s: float
    factor: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        usable = (
            math.isfinite(self.maximum_s)
            and 0 < self.initial_s <= self.maximum_s
            and math.isfinite(self.factor)
            and self.factor >= 1
            and 0 <= self.jitter <= 1
        )
        if not usable:
            raise ValueError(f"not a usable backoff: {self}")

    def step_s(self, attempt: int) -> float:
        """The un-jittered wait after failure number `attempt` (0 for the first failure)."""
        exponent = min(max(attempt, 0), self._steps_to_maximum())
        return float(min(self.initial_s * self.factor**exponent, self.maximum_s))

    def delay_s(self, attempt: int, random: UniformRandom) -> float:
        """The wait after failure number `attempt`: `random()` 0 gives the least, 1 the whole step."""
        return self.step_s(attempt) * ((1 - self.jitter) + self.jitter * random())

    def _steps_to_maximum(self) -> int:
        # Bounds the exponent so that a large attempt count cannot overflow the power.
        if self.factor == 1:
            return 0
        return math.ceil(math.log(self.maximum_s / self.initial_s, self.factor)) + 1


@dataclass
class Retrying:
    """The failure count of one retry loop: `next_delay_s()` after each failure, `reset()` after
    a success."""

    backoff: Backoff
    random: UniformRandom = field(default=_random.random)
    attempt: int = 0

    def next_delay_s(self) -> float:
        delay = self.backoff.delay_s(self.attempt, self.random)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
