"""Leader election over a lease record: each decision a pure function of what was seen and when.

The replicas share one record: who holds it, for how long, when it was acquired and last
renewed, and how many times it changed hands. A replica takes the lease when it is free (no
holder) or expired, renews it while it leads, and gives leadership up once it has gone the
renew deadline without a successful renewal.

Expiry is judged on the local monotonic clock, from the moment this replica first saw the
record as it is now, never from the renew time written in it: the machines' wall clocks need
not agree, only their clocks' rates. For the same reason the renew deadline must be shorter
than the lease duration: a leader that stops renewing has given up before any other replica
can count the lease as expired.

`Elector` is what a replica asks (`ca.kube.leader.LeaseElector` runs it over a Lease);
`SoleElector`, without a cluster, is the one process leading, and needs no Kubernetes client.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Protocol

from ca.common.backoff import UniformRandom
from ca.errors import ConfigError

JITTER_FACTOR = 1.2
"""A replica that does not lead waits between one and 2.2 retry periods between tries, so that
replicas started together do not keep asking together."""

RELEASED_LEASE_DURATION_S = 1
"""The duration written into a released record (the API refuses 0)."""


@dataclass(frozen=True, kw_only=True)
class ElectionTimings:
    """How long a lease lasts, how long a leader keeps trying to renew it, and how often every
    replica tries.

    Defaults: a lease of 15 s, given up after 10 s without a renewal, tried every 2 s. A killed
    leader is replaced within about 15 s; an API server that answers slowly for a few seconds
    costs no leadership.
    """

    lease_duration_s: int = 15
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0

    def __post_init__(self) -> None:
        values = (self.lease_duration_s, self.renew_deadline_s, self.retry_period_s)
        if not all(math.isfinite(v) and v > 0 for v in values):
            raise ConfigError(f"leader election timings must be positive: {self}")
        if self.lease_duration_s <= self.renew_deadline_s:
            raise ConfigError(
                f"the lease duration ({self.lease_duration_s}s) must be longer than the renew deadline "
                f"({self.renew_deadline_s}s), or another replica could take the lease while the leader "
                "still acts; raise the lease duration or lower the renew deadline"
            )
        if self.renew_deadline_s <= JITTER_FACTOR * self.retry_period_s:
            raise ConfigError(
                f"the renew deadline ({self.renew_deadline_s}s) must be longer than {JITTER_FACTOR} "
                f"retry periods ({self.retry_period_s}s each), so that a leader tries to renew more "
                "than once before it gives up; lower the retry period"
            )


@dataclass(frozen=True, kw_only=True)
class LeaseRecord:
    """The lease as stored; `holder` empty when nobody holds it."""

    holder: str = ""
    lease_duration_s: int = 0
    acquire_time: datetime | None = None
    renew_time: datetime | None = None
    transitions: int = 0


@dataclass(frozen=True, kw_only=True)
class VersionedLease:
    """A record with the version of the object it was read from or written as: an update names
    that version, and fails if the object has changed since."""

    record: LeaseRecord
    resource_version: str


@dataclass(frozen=True)
class Sighting:
    """A record (None: there is no lease object) and the local monotonic time at which this
    replica first saw it as it is."""

    record: LeaseRecord | None
    since: float


def sight(previous: Sighting | None, record: LeaseRecord | None, now: float) -> Sighting:
    """What is known after reading `record` at `now`: the earlier sighting if nothing changed,
    so that an unchanged record keeps ageing."""
    if previous is not None and previous.record == record:
        return previous
    return Sighting(record, now)


class Move(Enum):
    CREATE = "create"  # there is no lease object: create it, held by this replica
    ACQUIRE = "acquire"  # free or expired: take it over
    RENEW = "renew"  # held by this replica: write a new renew time
    WAIT = "wait"  # held by another replica and not expired
    LOST = "lost"  # this replica led, and the record now names another holder (or none)


def expired(sighting: Sighting, now: float) -> bool:
    """Whether the holder's lease has run out, by its own duration, counted from when this
    replica first saw the record unchanged."""
    record = sighting.record
    return record is not None and now >= sighting.since + record.lease_duration_s


def decide(sighting: Sighting, *, identity: str, leading: bool, now: float) -> Move:
    record = sighting.record
    if record is None:
        return Move.CREATE
    if record.holder == identity:
        return Move.RENEW
    if leading:
        return Move.LOST
    if not record.holder or expired(sighting, now):
        return Move.ACQUIRE
    return Move.WAIT


def renewal_overdue(last_renewed: float, now: float, timings: ElectionTimings) -> bool:
    """Whether a leader whose last successful renewal began at `last_renewed` must give up."""
    return now - last_renewed >= timings.renew_deadline_s


def leader_wait_s(last_renewed: float, now: float, timings: ElectionTimings) -> float:
    """A leader's wait before its next try: a retry period, but not past its renew deadline."""
    return max(0.0, min(timings.retry_period_s, last_renewed + timings.renew_deadline_s - now))


def candidate_wait_s(timings: ElectionTimings, random: UniformRandom) -> float:
    """A replica that does not lead waits between 1 and 1 + JITTER_FACTOR retry periods."""
    return timings.retry_period_s * (1 + JITTER_FACTOR * random())


def claimed(
    previous: LeaseRecord | None, *, identity: str, now: datetime, timings: ElectionTimings
) -> LeaseRecord:
    """The record this replica writes to acquire or renew the lease. A renewal keeps the acquire
    time and the count of transitions; a takeover counts one more transition."""
    if previous is not None and previous.holder == identity:
        return replace(previous, lease_duration_s=timings.lease_duration_s, renew_time=now)
    return LeaseRecord(
        holder=identity,
        lease_duration_s=timings.lease_duration_s,
        acquire_time=now,
        renew_time=now,
        transitions=0 if previous is None else previous.transitions + 1,
    )


def released(previous: LeaseRecord, *, now: datetime) -> LeaseRecord:
    """The record a leader writes when it stops cleanly: no holder, so the others take over at
    their next try instead of waiting for the lease to expire."""
    return LeaseRecord(
        holder="",
        lease_duration_s=RELEASED_LEASE_DURATION_S,
        acquire_time=now,
        renew_time=now,
        transitions=previous.transitions,
    )


def holder_identity(pod_name: str, random: UniformRandom) -> str:
    """The pod's name and a random suffix: a restarted pod of the same name is another holder."""
    return f"{pod_name}_{math.floor(random() * 2**32):08x}"


def format_micro_time(when: datetime) -> str:
    """A lease time on the wire: RFC 3339 in UTC with exactly six fractional digits, which the
    API server requires even when they are all zero."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_micro_time(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def spec_json(record: LeaseRecord) -> dict[str, Any]:
    """The Lease object's `spec` for `record`."""
    spec: dict[str, Any] = {
        "holderIdentity": record.holder,
        "leaseDurationSeconds": record.lease_duration_s,
        "leaseTransitions": record.transitions,
    }
    if record.acquire_time is not None:
        spec["acquireTime"] = format_micro_time(record.acquire_time)
    if record.renew_time is not None:
        spec["renewTime"] = format_micro_time(record.renew_time)
    return spec


def record_from_spec(spec: Mapping[str, Any]) -> LeaseRecord:
    """The record in a Lease object's `spec`; absent fields read as a free lease's."""
    acquire, renew = spec.get("acquireTime"), spec.get("renewTime")
    return LeaseRecord(
        holder=str(spec.get("holderIdentity") or ""),
        lease_duration_s=int(spec.get("leaseDurationSeconds") or 0),
        acquire_time=parse_micro_time(acquire) if isinstance(acquire, str) else None,
        renew_time=parse_micro_time(renew) if isinstance(renew, str) else None,
        transitions=int(spec.get("leaseTransitions") or 0),
    )


class Elector(Protocol):
    @property
    def identity(self) -> str: ...

    @property
    def is_leader(self) -> bool:
        """Whether this replica may do the singleton work now."""
        ...

    def start(self) -> None: ...

    def stop(self, *, release: bool = True) -> None:
        """Ends the election; `release` gives the lease up at once (a clean stop), otherwise the
        others wait for it to expire (as after a crash)."""
        ...


def _nothing() -> None:
    return None


class SoleElector:
    """Leadership without a cluster: the one process leads from `start` to `stop`."""

    def __init__(
        self,
        identity: str,
        *,
        on_started_leading: Callable[[], None] = _nothing,
        on_stopped_leading: Callable[[], None] = _nothing,
    ) -> None:
        self._identity = identity
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._leading = False

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def is_leader(self) -> bool:
        return self._leading

    def start(self) -> None:
        if not self._leading:
            self._leading = True
            self._on_started()

    def stop(self, *, release: bool = True) -> None:
        if self._leading:
            self._leading = False
            self._on_stopped()
