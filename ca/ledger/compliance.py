"""The aggregates a compliance document adds to `queries.report`: per day, per lifetime, per key
type, refusing callers, CA records, revocations, and the newest signed checkpoint.

Same rules as ca.ledger.queries: GROUP BY in SQL over the period's entries (chosen by the same
access paths), content decoded only for the few entries listed, every listed entry checked
against the hash chain first. The report these go with (`queries.report`) has already checked
the chain over the whole span they count.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Connection, Select, func, select

from ca.ledger.audit_filter import AuditFilter
from ca.ledger.checkpoint import Checkpoint
from ca.ledger.entries import CA_EVENT, CA_SLOT, ISSUED, REFUSED, REVOKED
from ca.ledger.queries import Source
from ca.ledger.queries import _fetch as fetch_checked
from ca.ledger.queries import _json_text as json_text
from ca.ledger.queries import _plan as plan_for
from ca.ledger.queries import _seconds_between as seconds_between
from ca.ledger.store import read_checkpoints, read_head

MAX_LISTED = 100  # CA records and revocations listed in full; the rest are counted
TOP_CALLERS = 10
TOP_CALLERS_PER_REASON = 3
# A refused caller that proved no identity is its client address without the port: gRPC writes
# `ipv4:10.0.0.7:51234` or `ipv6:[::1]:51234`, so the port is the digits after the last ':'.
_PORT_DIGITS = "0123456789"


@dataclass(frozen=True, kw_only=True)
class DayCount:
    day: str  # YYYY-MM-DD, UTC
    issued: int = 0
    refused: int = 0


@dataclass(frozen=True, kw_only=True)
class Counted:
    """A value and how many entries have it."""

    value: str
    count: int


@dataclass(frozen=True, kw_only=True)
class CallerRefusals:
    reason: str
    caller: str  # a SPIFFE ID, or the client address of a caller that proved none
    count: int


@dataclass(frozen=True, kw_only=True)
class Listed:
    """The newest entries of some kinds, at most MAX_LISTED, and how many there are."""

    entries: tuple[dict[str, Any], ...]
    total: int


@dataclass(frozen=True, kw_only=True)
class PeriodSpan:
    """Which entries the period holds: the lowest and highest seq and how many of each kind."""

    first_seq: int | None
    last_seq: int | None
    kinds: tuple[Counted, ...]


def _period_only(f: AuditFilter) -> AuditFilter:
    """The time filters alone: CA records name no workload, so identity filters would drop them."""
    return AuditFilter(since=f.since, until=f.until)


def daily_counts(source: Source, f: AuditFilter) -> tuple[DayCount, ...]:
    """Certificates issued and requests refused per UTC day of the period, oldest day first;
    days with neither are left out."""
    days: dict[str, dict[str, int]] = {}
    with source.engine.connect() as conn:
        for kind in (ISSUED, REFUSED):
            plan = plan_for(conn, replace(f, status=kind), whole=True)
            if plan is None:
                continue
            day = func.substr(plan.table.c.time, 1, 10)
            query: Select[Any] = select(day, func.count()).where(*plan.where).group_by(day)
            for value, count in conn.execute(query):
                days.setdefault(str(value), {})[kind] = int(count)
    return tuple(
        DayCount(day=day, issued=counts.get(ISSUED, 0), refused=counts.get(REFUSED, 0))
        for day, counts in sorted(days.items())
    )


def lifetimes(source: Source, f: AuditFilter) -> tuple[tuple[int, int], ...]:
    """(lifetime in whole minutes, certificates) for the certificates issued in the period, shortest
    first; a lifetime is what was granted at issuance (not_after minus the time of issue)."""
    with source.engine.connect() as conn:
        plan = plan_for(conn, replace(f, status=ISSUED), whole=True)
        if plan is None:
            return ()
        t = plan.table.c
        minutes = func.round(seconds_between(t.time, t.not_after, conn.dialect.name) / 60).label("minutes")
        query: Select[Any] = select(minutes, func.count()).where(*plan.where).group_by(minutes)
        found: dict[int, int] = {}
        for value, count in conn.execute(query):
            found[int(value)] = found.get(int(value), 0) + int(count)
    return tuple(sorted(found.items()))


def key_types(source: Source, f: AuditFilter) -> tuple[Counted, ...]:
    """Certificates issued in the period per key type (`ec-p256`, `rsa-2048`...), most first."""
    with source.engine.connect() as conn:
        plan = plan_for(conn, replace(f, status=ISSUED), whole=True)
        if plan is None:
            return ()
        key_type = json_text(plan.table.c.content, "key_type", conn.dialect.name).label("key_type")
        query: Select[Any] = select(key_type, func.count()).where(*plan.where).group_by(key_type)
        rows = [(str(value or "unknown"), int(count)) for value, count in conn.execute(query)]
    return tuple(Counted(value=v, count=c) for v, c in sorted(rows, key=lambda r: (-r[1], r[0])))


def _caller(conn: Connection, t: Any) -> Any:
    address = json_text(t.content, "client_address", conn.dialect.name)
    host = func.rtrim(func.rtrim(address, _PORT_DIGITS), ":")
    return func.coalesce(t.spiffe_id, host, "unknown").label("caller")


def top_callers(source: Source, f: AuditFilter, limit: int = TOP_CALLERS) -> tuple[Counted, ...]:
    """The callers refused most often in the period, most first."""
    with source.engine.connect() as conn:
        plan = plan_for(conn, replace(f, status=REFUSED), whole=True)
        if plan is None:
            return ()
        caller = _caller(conn, plan.table.c)
        query: Select[Any] = (
            select(caller, func.count().label("n"))
            .where(*plan.where)
            .group_by(caller)
            .order_by(func.count().desc(), caller)
            .limit(limit)
        )
        return tuple(Counted(value=str(value), count=int(count)) for value, count in conn.execute(query))


def callers_by_reason(
    source: Source, f: AuditFilter, per_reason: int = TOP_CALLERS_PER_REASON
) -> tuple[CallerRefusals, ...]:
    """For each refusal reason of the period, its `per_reason` most refused callers."""
    found: list[CallerRefusals] = []
    with source.engine.connect() as conn:
        plan = plan_for(conn, replace(f, status=REFUSED), whole=True)
        if plan is None:
            return ()
        t = plan.table.c
        reasons = conn.execute(select(t.reason).where(*plan.where).distinct()).scalars().all()
        caller = _caller(conn, t)
        for reason in sorted(r or "unknown" for r in reasons):
            matches = t.reason.is_(None) if reason == "unknown" else t.reason == reason
            query: Select[Any] = (
                select(caller, func.count())
                .where(*plan.where, matches)
                .group_by(caller)
                .order_by(func.count().desc(), caller)
                .limit(per_reason)
            )
            found += [
                CallerRefusals(reason=reason, caller=str(value), count=int(count))
                for value, count in conn.execute(query)
            ]
    return tuple(found)


def _listed(source: Source, f: AuditFilter, kinds: tuple[str, ...], limit: int) -> Listed:
    entries: list[dict[str, Any]] = []
    total = 0
    with source.engine.connect() as conn:
        for kind in kinds:
            plan = plan_for(conn, replace(f, status=kind), whole=True)
            if plan is None:
                continue
            t = plan.table.c
            total += int(
                conn.execute(select(func.count()).select_from(plan.table).where(*plan.where)).scalar_one()
            )
            seqs = conn.execute(select(t.seq).where(*plan.where).order_by(t.seq.desc()).limit(limit))
            entries += fetch_checked(conn, [int(s) for s in seqs.scalars()])
    newest = sorted(entries, key=lambda e: -int(e["seq"]))[:limit]
    return Listed(entries=tuple(newest), total=total)


def ca_records(source: Source, f: AuditFilter, limit: int = MAX_LISTED) -> Listed:
    """The CA's own records of the period (slot transitions, CA events), newest first."""
    return _listed(source, _period_only(f), (CA_SLOT, CA_EVENT), limit)


def revocations(source: Source, f: AuditFilter, limit: int = MAX_LISTED) -> Listed:
    """The revocations of the period, newest first."""
    return _listed(source, f, (REVOKED,), limit)


def period_span(source: Source, f: AuditFilter) -> PeriodSpan:
    """The entries the period holds, every kind, identity filters aside."""
    period = _period_only(f)
    with source.engine.connect() as conn:
        plan = plan_for(conn, period, whole=True)
        if plan is None:
            return PeriodSpan(first_seq=None, last_seq=None, kinds=())
        t = plan.table.c
        low, high = conn.execute(select(func.min(t.seq), func.max(t.seq)).where(*plan.where)).one()
        rows = conn.execute(select(t.kind, func.count()).where(*plan.where).group_by(t.kind)).all()
    return PeriodSpan(
        first_seq=None if low is None else int(low),
        last_seq=None if high is None else int(high),
        kinds=tuple(Counted(value=str(kind), count=int(count)) for kind, count in sorted(rows)),
    )


def newest_checkpoint(source: Source) -> tuple[Checkpoint | None, int]:
    """The newest checkpoint the database holds (not yet checked: verification does that) and the
    seq of the ledger's head, read together."""
    with source.engine.connect() as conn:
        checkpoints = read_checkpoints(conn)
        head_seq = read_head(conn)[0]
    return (checkpoints[-1] if checkpoints else None), head_seq
