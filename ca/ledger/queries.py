"""Audit queries over the ledger: list, show, export and report, in SQL (SQLAlchemy Core).

Filters compare the indexed columns, times as the ledger's sortable timestamp
text; content is decoded only for the entries returned. Lists are newest first
(highest seq first) and always limited; exports stream oldest first in
batches; reports aggregate with GROUP BY. No query loads the whole ledger.

SQLite plans without table statistics and often picks an index that makes it
sort every match (`--status issued` over a million entries took 3 s that way),
so on SQLite each query chooses its own access path: it counts, up to a cap,
the entries each usable index would visit and takes the smallest; when every
filter matches many entries it walks the table newest first instead, where the
matches are dense and the walk stops at the limit. PostgreSQL keeps statistics
and plans the same SQL itself.

No entry that fails the hash chain is presented as genuine: every entry returned
is first checked against the chain around it, and a report checks the chain over
the whole span of entries it counts (ca.ledger.chain_check); a failure raises
LedgerTamperedError, naming the entry, instead of an answer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import (
    TIMESTAMP,
    Connection,
    Engine,
    Select,
    and_,
    case,
    cast,
    column,
    extract,
    func,
    literal,
    or_,
    select,
)
from sqlalchemy.dialects.postgresql import JSON
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.expression import TableClause

from ca.common.durations import format_duration
from ca.common.progress import PROGRESS_EVERY, ProgressCallback, Ticker
from ca.errors import ConfigError, InvalidRequestError, LedgerTamperedError
from ca.issuance.issuer import IssuancePolicy
from ca.ledger import schema
from ca.ledger.audit_filter import DEFAULT_LIMIT as DEFAULT_LIMIT
from ca.ledger.audit_filter import MAX_LIMIT as MAX_LIMIT
from ca.ledger.audit_filter import AuditFilter as AuditFilter
from ca.ledger.audit_filter import check_limit
from ca.ledger.chain_check import check_span, checked_entries
from ca.ledger.entries import ISSUED, REFUSED, ROTATION_ORDER, parse_timestamp, timestamp
from ca.ledger.rotation import OrderState, TargetState, normalize_serial, selector_from_json
from ca.ledger.store import read_head

PROBE_CAP = 20_000
EXPORT_BATCH = 2_000
MAX_VIOLATIONS = 100
MAX_ORDERS = 100
# Seconds of slack when comparing lifetimes: the entry's time is taken just after signing.
LIFETIME_SLACK_S = 1

# Lifetime buckets of a report: (label, upper bound in seconds or None for the rest).
TTL_BUCKETS: tuple[tuple[str, int | None], ...] = (
    ("<=1h", 3600),
    ("<=24h", 86400),
    ("<=7d", 7 * 86400),
    ("<=90d", 90 * 86400),
    (">90d", None),
)


class Source(Protocol):
    """Anything with a ledger reader's engine, whose transactions are snapshots (ca.ledger.reader):
    the chain checks read an entry's neighbours and the head row in the query's own transaction."""

    @property
    def engine(self) -> Engine: ...


# --------------------------------------------------------------------------- access paths


class _Entries(TableClause):
    """The entries table with an SQLite index hint (INDEXED BY / NOT INDEXED) after its name."""

    inherit_cache = False

    def __init__(self, hint: str = "") -> None:
        super().__init__(schema.entries.name, *(column(c.name, c.type) for c in schema.entries.columns))
        self.hint = hint


def _table_sql(element: _Entries, compiler: SQLCompiler, **kw: Any) -> str:
    rendered: str = compiler.visit_table(element, **kw)  # type: ignore[no-untyped-call]
    return rendered


@compiles(_Entries)
def _entries_plain(element: _Entries, compiler: SQLCompiler, **kw: Any) -> str:
    return _table_sql(element, compiler, **kw)


@compiles(_Entries, "sqlite")
def _entries_hinted(element: _Entries, compiler: SQLCompiler, **kw: Any) -> str:
    rendered = _table_sql(element, compiler, **kw)
    return f"{rendered} {element.hint}" if element.hint else rendered


@dataclass(frozen=True)
class _Path:
    """How to reach the matching entries: through one index, or (index None) walking the table."""

    index: str | None
    probe: Sequence[tuple[str, str, str]] = ()  # (column, operator, value) the index narrows by
    in_seq_order: bool = True  # the index yields its matches in seq order (equality on all its columns)

    @property
    def table(self) -> _Entries:
        return _Entries(f"INDEXED BY {self.index}" if self.index else "NOT INDEXED")


_WALK = _Path(None)


def _compare(table: TableClause, name: str, operator: str, value: str) -> ColumnElement[bool]:
    col = table.c[name]
    match operator:
        case "=":
            return col == value
        case ">=":
            return col >= value
        case ">":
            return col > value
        case "<=":
            return col <= value
        case "<":
            return col < value
    raise AssertionError(operator)


def _time_terms(f: AuditFilter) -> list[tuple[str, str, str]]:
    terms = []
    if f.since is not None:
        terms.append(("time", ">=", timestamp(f.since)))
    if f.until is not None:
        terms.append(("time", "<", timestamp(f.until)))
    if f.valid_at is not None:
        terms.append(("time", "<=", timestamp(f.valid_at)))
    return terms


def _terms(f: AuditFilter) -> list[tuple[str, str, str]]:
    """The filter as (column, operator, value) terms over the indexed columns."""
    terms = [
        (name, "=", value)
        for name, value in (
            ("spiffe_id", f.spiffe_id),
            ("namespace", f.namespace),
            ("service_account", f.service_account),
            ("pod_name", f.pod),
            ("kind", f.kind),
        )
        if value is not None
    ]
    terms += _time_terms(f)
    if f.valid_at is not None:
        terms.append(("not_after", ">", timestamp(f.valid_at)))
    return terms


def conditions(f: AuditFilter, table: TableClause = schema.entries) -> list[ColumnElement[bool]]:
    return [_compare(table, *term) for term in _terms(f)]


def _candidates(f: AuditFilter) -> list[_Path]:
    paths = []
    if f.pod is not None:
        paths.append(_Path("ix_ledger_pod", [("pod_name", "=", f.pod)]))
    if f.spiffe_id is not None:
        paths.append(_Path("ix_ledger_spiffe_id", [("spiffe_id", "=", f.spiffe_id)]))
    if f.namespace is not None:
        if f.service_account is not None:
            both = [("namespace", "=", f.namespace), ("service_account", "=", f.service_account)]
            paths.append(_Path("ix_ledger_ns_sa", both))
        else:
            paths.append(_Path("ix_ledger_ns_sa", [("namespace", "=", f.namespace)], in_seq_order=False))
    if f.kind is not None:
        paths.append(_Path("ix_ledger_kind_time", [("kind", "=", f.kind), *_time_terms(f)], False))
    elif _time_terms(f):
        paths.append(_Path("ix_ledger_time", _time_terms(f), in_seq_order=False))
    if f.valid_at is not None:
        paths.append(_Path("ix_ledger_not_after", [("not_after", ">", timestamp(f.valid_at))], False))
    return paths


def _probe(conn: Connection, path: _Path, cap: int) -> int:
    table = path.table
    inner = (
        select(literal(1))
        .select_from(table)
        .where(*(_compare(table, *term) for term in path.probe))
        .limit(cap)
    )
    return int(conn.execute(select(func.count()).select_from(inner.subquery())).scalar_one())


def _choose(conn: Connection, f: AuditFilter, *, whole: bool) -> _Path:
    """The cheapest way to the entries `f` selects, on SQLite (PostgreSQL plans for itself).

    For a limited list (`whole` false) a walk in seq order stops at the limit, so an index
    is worth it only when it narrows the matches to fewer than the probe cap, or yields
    them in seq order too. A `whole` read (export, report) visits every match, and an
    index lookup costs about twice a step of the walk, so an index is worth it up to
    about a third of the ledger.
    """
    if conn.dialect.name != "sqlite":
        return _WALK
    cap = PROBE_CAP
    if whole:
        e = schema.entries.c
        # Two queries: SQLite finds a lone min() or max() of the rowid in one step, but scans
        # the whole table for both at once.
        low = conn.execute(select(func.min(e.seq))).scalar()
        high = conn.execute(select(func.max(e.seq))).scalar()
        cap = max(PROBE_CAP, (int(high or 0) - int(low or 0)) // 3)
    counted = [
        (_probe(conn, path, cap), not path.in_seq_order, order, path)
        for order, path in enumerate(_candidates(f))
    ]
    if not counted:
        return _WALK
    count, _, _, best = min(counted)
    if count < cap:
        return best
    in_order = [path for _, unordered, _, path in counted if not unordered]
    return in_order[0] if in_order and not whole else _WALK


def _seq_bounds(conn: Connection, f: AuditFilter) -> tuple[int, int] | None:
    """Seq bounds implied by the time filters (exactly: every match lies within them), for a walk;
    None when nothing can match."""
    low, high = 0, 2**62
    time_index = _Entries("INDEXED BY ix_ledger_time")
    upper = [t for t in _time_terms(f) if t[1] in ("<", "<=")]
    if upper:
        found = conn.execute(
            select(func.max(time_index.c.seq)).where(*(_compare(time_index, *t) for t in upper))
        ).scalar()
        if found is None:
            return None
        high = int(found)
    if f.since is not None:
        found = conn.execute(
            select(func.min(time_index.c.seq)).where(time_index.c.time >= timestamp(f.since))
        ).scalar()
        if found is None:
            return None
        low = int(found)
    if f.valid_at is not None:
        expiry_index = _Entries("INDEXED BY ix_ledger_not_after")
        found = conn.execute(
            select(func.min(expiry_index.c.seq)).where(expiry_index.c.not_after > timestamp(f.valid_at))
        ).scalar()
        if found is None:
            return None
        low = max(low, int(found))
    return low, high


@dataclass(frozen=True)
class _Plan:
    path: _Path
    table: _Entries
    where: list[ColumnElement[bool]]
    seq_bounds: tuple[int, int] = (0, 2**62)  # every match lies within them


def _plan(conn: Connection, f: AuditFilter, *, whole: bool = False) -> _Plan | None:
    """The access path, table and WHERE terms for `f`; None when nothing can match."""
    path = _choose(conn, f, whole=whole)
    table = path.table
    where = conditions(f, table)
    if path is _WALK and conn.dialect.name == "sqlite":
        bounds = _seq_bounds(conn, f)
        if bounds is None:
            return None
        where += [table.c.seq >= bounds[0], table.c.seq <= bounds[1]]
        return _Plan(path, table, where, bounds)
    return _Plan(path, table, where)


# --------------------------------------------------------------------------- entries


def _fetch(conn: Connection, seqs: Sequence[int]) -> list[dict[str, Any]]:
    """The entries with these seqs, in the order given, each as its content plus `seq`; each is
    checked against the hash chain around it first (LedgerTamperedError if one fails)."""
    return [{"seq": entry.seq, **entry.content} for entry in checked_entries(conn, seqs)]


def list_entries(source: Source, f: AuditFilter, limit: int = DEFAULT_LIMIT) -> list[dict[str, Any]]:
    """The newest `limit` entries that `f` selects, newest first, each as its content plus `seq`."""
    return _newest(source, f, check_limit(limit))


def list_page(
    source: Source, f: AuditFilter, limit: int = DEFAULT_LIMIT
) -> tuple[list[dict[str, Any]], bool]:
    """list_entries, and whether more entries match than the limit let through."""
    found = _newest(source, f, check_limit(limit) + 1)
    return found[:limit], len(found) > limit


def _newest(source: Source, f: AuditFilter, limit: int) -> list[dict[str, Any]]:
    with source.engine.connect() as conn:
        plan = _plan(conn, f)
        if plan is None:
            return []
        table = plan.table
        seqs = conn.execute(select(table.c.seq).where(*plan.where).order_by(table.c.seq.desc()).limit(limit))
        return _fetch(conn, [int(s) for s in seqs.scalars()])


def find_serial(source: Source, serial_hex: str) -> list[dict[str, Any]]:
    """Every entry that names this certificate serial, oldest first."""
    serial = normalize_serial(serial_hex)
    e = schema.entries.c
    with source.engine.connect() as conn:
        seqs = conn.execute(select(e.seq).where(e.serial == serial).order_by(e.seq)).scalars()
        return _fetch(conn, [int(s) for s in seqs])


def export(
    source: Source,
    f: AuditFilter,
    *,
    batch: int = EXPORT_BATCH,
    progress: ProgressCallback | None = None,
    progress_every: int = PROGRESS_EVERY,
) -> Iterator[dict[str, Any]]:
    """Every entry `f` selects, oldest first, read in batches of short transactions.

    `progress` hears how far the export is, every `progress_every` entries and at the end:
    entries read of those found, when the matches are found first; otherwise ledger
    positions passed of the span of seqs the matches lie in (with filters that match
    most entries, which is when the table is walked, about the entries scanned).
    """
    with source.engine.connect() as conn:
        plan = _plan(conn, f, whole=True)
        if plan is None:
            return
        seqs: list[int] | None = None
        if not plan.path.in_seq_order:
            # Found through an index not in seq order, and not too many: collect their seqs
            # once rather than sorting them all again for every batch.
            seqs = sorted(int(s) for s in conn.execute(select(plan.table.c.seq).where(*plan.where)).scalars())
        span = _seq_span(conn, *plan.seq_bounds) if seqs is None and progress is not None else None
    if seqs is not None:
        yield from _export_seqs(source, seqs, batch, Ticker(progress, len(seqs), progress_every))
        return
    first = span[0] if span is not None else 1
    ticker = Ticker(progress, span[1] - first + 1 if span is not None else 0, progress_every)
    table, last = plan.table, 0
    while True:
        with source.engine.connect() as conn:
            found = conn.execute(
                select(table.c.seq).where(*plan.where, table.c.seq > last).order_by(table.c.seq).limit(batch)
            ).scalars()
            entries = _fetch(conn, [int(s) for s in found])
        yield from entries
        if len(entries) < batch:
            ticker.finish(ticker.total)
            return
        last = int(entries[-1]["seq"])
        if last - first + 1 >= ticker.next_at:
            ticker.tick(last - first + 1)


def _export_seqs(source: Source, seqs: Sequence[int], batch: int, ticker: Ticker) -> Iterator[dict[str, Any]]:
    for start in range(0, len(seqs), batch):
        with source.engine.connect() as conn:
            yield from _fetch(conn, seqs[start : start + batch])
        done = min(start + batch, len(seqs))
        if done >= ticker.next_at:
            ticker.tick(done)
    ticker.finish(len(seqs))


def _seq_span(conn: Connection, low: int, high: int) -> tuple[int, int] | None:
    """The first and last seq the ledger holds from `low` to `high`, None if none: two lookups of
    the primary key (one query for both would scan the table on SQLite, see _choose)."""
    e = schema.entries.c
    first = conn.execute(select(func.min(e.seq)).where(e.seq >= low)).scalar()
    last = conn.execute(select(func.max(e.seq)).where(e.seq <= high)).scalar()
    if first is None or last is None or int(last) < int(first):
        return None
    return int(first), int(last)


# --------------------------------------------------------------------------- report


@dataclass(frozen=True, kw_only=True)
class IdentityStats:
    namespace: str | None
    spiffe_id: str | None
    issued: int = 0
    valid_now: int = 0
    ttl_buckets: tuple[int, ...] = (0,) * len(TTL_BUCKETS)
    refused: int = 0


@dataclass(frozen=True, kw_only=True)
class RefusalCount:
    namespace: str | None
    spiffe_id: str | None
    reason: str
    count: int


@dataclass(frozen=True, kw_only=True)
class Violation:
    seq: int
    serial: str
    spiffe_id: str
    namespace: str
    key_type: str
    lifetime_seconds: int
    not_after: str
    problems: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class OrderSummary:
    """A rotation order and what had become of its targets at the report's time: replaced by
    their holders, revoked (replaced ones included: an order revokes the old certificates when
    it completes), still outstanding (live, neither), and expired (neither, no longer live)."""

    order_id: str
    time: str
    ordered_by: str
    selector: str
    reason: str
    state: str  # as of the report's time
    grace_ends: str
    matched: int
    replaced: int
    revoked: int
    outstanding: int
    expired: int


@dataclass(frozen=True, kw_only=True)
class Report:
    """Issuance per namespace and identity, refusals by reason, and live certificates that break policy.

    A certificate's lifetime here is what was granted at issuance: not_after minus the
    time of issue (its NotBefore is backdated two minutes for clock skew).
    """

    at: str
    max_ttl_seconds: int
    identities: tuple[IdentityStats, ...]
    refusals: tuple[RefusalCount, ...]
    violations: tuple[Violation, ...]
    violations_total: int
    ttl_labels: tuple[str, ...] = field(default=tuple(label for label, _ in TTL_BUCKETS))
    orders: tuple[OrderSummary, ...] = ()  # newest first, at most MAX_ORDERS
    orders_total: int = 0


def _seconds_between(start: ColumnElement[Any], end: ColumnElement[Any], dialect: str) -> ColumnElement[Any]:
    if dialect == "sqlite":
        return (func.julianday(end) - func.julianday(start)) * 86400.0
    if dialect == "postgresql":
        stamp = TIMESTAMP(timezone=True)
        return extract("epoch", cast(end, stamp) - cast(start, stamp))
    raise ConfigError(f"audit reports are not supported on a {dialect} ledger; use SQLite or PostgreSQL")


def _json_text(content: ColumnElement[Any], key: str, dialect: str) -> ColumnElement[Any]:
    if dialect == "postgresql":
        return func.json_extract_path_text(cast(content, JSON), key)
    return func.json_extract(content, f"$.{key}")


def _lifetime_bucket(lifetime: ColumnElement[Any]) -> ColumnElement[Any]:
    bounded = [(label, bound) for label, bound in TTL_BUCKETS if bound is not None]
    return case(
        *((lifetime <= bound + LIFETIME_SLACK_S, index) for index, (_, bound) in enumerate(bounded)),
        else_=len(bounded),
    )


IdentityKey = tuple[str | None, str | None]


def _issued_stats(conn: Connection, f: AuditFilter, at: str) -> dict[IdentityKey, list[int]]:
    """(namespace, identity) -> [issued, valid now, bucket counts...]."""
    plan = _plan(conn, replace(f, status=ISSUED), whole=True)
    stats: dict[IdentityKey, list[int]] = {}
    if plan is None:
        return stats
    t = plan.table.c
    bucket = _lifetime_bucket(_seconds_between(t.time, t.not_after, conn.dialect.name)).label("bucket")
    valid = case((and_(t.time <= at, t.not_after > at), 1), else_=0)
    query: Select[Any] = (
        select(t.namespace, t.spiffe_id, bucket, func.count(), func.sum(valid))
        .where(*plan.where)
        .group_by(t.namespace, t.spiffe_id, bucket)
    )
    for namespace, spiffe_id, index, count, valid_count in conn.execute(query):
        row = stats.setdefault((namespace, spiffe_id), [0, 0] + [0] * len(TTL_BUCKETS))
        row[0] += int(count)
        row[1] += int(valid_count or 0)
        row[2 + int(index)] += int(count)
    return stats


def _refusals(conn: Connection, f: AuditFilter) -> list[RefusalCount]:
    plan = _plan(conn, replace(f, status=REFUSED), whole=True)
    if plan is None:
        return []
    t = plan.table.c
    query: Select[Any] = (
        select(t.namespace, t.spiffe_id, t.reason, func.count())
        .where(*plan.where)
        .group_by(t.namespace, t.spiffe_id, t.reason)
    )
    return [
        RefusalCount(namespace=namespace, spiffe_id=spiffe_id, reason=reason or "unknown", count=int(count))
        for namespace, spiffe_id, reason, count in conn.execute(query)
    ]


def _violations(
    conn: Connection, f: AuditFilter, now: datetime, policy: IssuancePolicy, limit: int
) -> tuple[list[Violation], int]:
    plan = _plan(conn, replace(f, valid_at=now), whole=True)
    if plan is None:
        return [], 0
    table, where, t = plan.table, plan.where, plan.table.c
    dialect = conn.dialect.name
    key_type = _json_text(t.content, "key_type", dialect)
    key_types = conn.execute(select(key_type).where(*where).distinct()).scalars().all()
    banned = sorted(k for k in key_types if k is not None and not policy.key_policy.allows_label(k))
    max_s = int(policy.max_ttl.total_seconds())
    too_long = _seconds_between(t.time, t.not_after, dialect) > max_s + LIFETIME_SLACK_S
    breaks = or_(too_long, key_type.in_(banned)) if banned else too_long
    total = int(conn.execute(select(func.count()).select_from(table).where(*where, breaks)).scalar_one())
    seqs = conn.execute(select(t.seq).where(*where, breaks).order_by(t.seq.desc()).limit(limit)).scalars()
    found = []
    for entry in _fetch(conn, [int(s) for s in seqs]):
        lifetime = int((parse_timestamp(entry["not_after"]) - parse_timestamp(entry["time"])).total_seconds())
        problems = []
        if lifetime > max_s + LIFETIME_SLACK_S:
            problems.append(f"lifetime {_span(lifetime)} is over the maximum {_span(max_s)}")
        if entry.get("key_type") in banned:
            problems.append(f"key type {entry['key_type']} is no longer allowed")
        found.append(
            Violation(
                seq=entry["seq"],
                serial=entry["serial"],
                spiffe_id=entry["spiffe_id"],
                namespace=entry["namespace"],
                key_type=entry.get("key_type") or "",
                lifetime_seconds=lifetime,
                not_after=entry["not_after"],
                problems=tuple(problems),
            )
        )
    return found, total


def _order_terms(f: AuditFilter, at: str) -> list[ColumnElement[bool]]:
    o = schema.rotation_orders.c
    terms = [o.time <= at]
    if f.since is not None:
        terms.append(o.time >= timestamp(f.since))
    if f.until is not None:
        terms.append(o.time < timestamp(f.until))
    return terms


def _target_terms(f: AuditFilter) -> list[ColumnElement[bool]]:
    t = schema.rotation_targets.c
    return [
        column == value
        for column, value in (
            (t.spiffe_id, f.spiffe_id),
            (t.namespace, f.namespace),
            (t.service_account, f.service_account),
            (t.pod_name, f.pod),
        )
        if value is not None
    ]


def _orders(conn: Connection, f: AuditFilter, at: str, limit: int) -> tuple[list[OrderSummary], int]:
    """The orders made by `at` (within the time filters), newest first, each with its targets
    counted as they stood at `at`; with identity filters, only the targets (and orders) they
    select. Each order's ledger record is checked against the chain and against its row."""
    o, t = schema.rotation_orders.c, schema.rotation_targets.c
    targets = _target_terms(f)
    replaced = and_(t.state == TargetState.REPLACED.value, t.replaced_at <= at)
    # A replaced target's old certificate is revoked too when its order completes.
    revoked = and_(t.revoked_at.is_not(None), t.revoked_at <= at)
    outstanding = and_(~replaced, ~revoked, t.not_after > at)
    expired = and_(~replaced, ~revoked, t.not_after <= at)

    def tally(condition: ColumnElement[bool]) -> ColumnElement[Any]:
        return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

    joined = schema.rotation_orders.outerjoin(schema.rotation_targets, and_(t.order_id == o.id, *targets))
    grouped = (
        select(o.id, func.count(t.serial).label("matched"))
        .select_from(joined)
        .where(*_order_terms(f, at))
        .group_by(o.id)
    )
    if targets:
        grouped = grouped.having(func.count(t.serial) > 0)
    total = int(conn.execute(select(func.count()).select_from(grouped.subquery())).scalar_one())
    query = (
        select(
            schema.rotation_orders,
            func.count(t.serial).label("targets"),
            tally(replaced).label("replaced"),
            tally(revoked).label("revoked"),
            tally(outstanding).label("outstanding"),
            tally(expired).label("expired"),
        )
        .select_from(joined)
        .where(*_order_terms(f, at))
        .group_by(*schema.rotation_orders.c)
        .order_by(o.time.desc(), o.id.desc())
        .limit(limit)
    )
    if targets:
        query = query.having(func.count(t.serial) > 0)
    rows = conn.execute(query).all()
    _check_order_records(conn, rows)
    return [_order_summary(row, at) for row in rows], total


def _check_order_records(conn: Connection, rows: Sequence[Any]) -> None:
    """Each order's row agrees with its ledger record, which holds its place in the chain (one
    compacted away, long after its order ended, is not there to compare)."""
    records = {entry["seq"]: entry for entry in _fetch(conn, [int(row.ledger_seq) for row in rows])}
    anchor_seq = read_head(conn)[2]
    for row in rows:
        record = records.get(int(row.ledger_seq))
        if record is None and int(row.ledger_seq) <= anchor_seq:
            continue
        agrees = (
            record is not None
            and record.get("kind") == ROTATION_ORDER
            and record.get("order_id") == row.id
            and record.get("matched") == int(row.matched)
            and record.get("time") == row.time
        )
        if not agrees:
            raise LedgerTamperedError(
                f"rotation order {row.id} differs from its ledger record (entry {row.ledger_seq}): the "
                "order table was edited; run 'meshca audit verify' and investigate the database",
                seq=int(row.ledger_seq),
            )


def _order_summary(row: Any, at: str) -> OrderSummary:
    completed = row.completed_at is not None and row.completed_at <= at
    return OrderSummary(
        order_id=row.id,
        time=row.time,
        ordered_by=row.ordered_by,
        selector=selector_from_json(row.selector).describe(),
        reason=row.reason,
        state=(OrderState.COMPLETED if completed else OrderState.PUSHING).value,
        grace_ends=row.grace_ends,
        matched=int(row.targets),
        replaced=int(row.replaced),
        revoked=int(row.revoked),
        outstanding=int(row.outstanding),
        expired=int(row.expired),
    )


def _check_counted(conn: Connection, f: AuditFilter) -> None:
    """Check the hash chain over every entry a report on `f` may count: the span of entries
    its time filters cover, else the whole ledger."""
    bounds = _seq_bounds(conn, f)
    if bounds is not None:
        check_span(conn, *bounds)


def _span(seconds: int) -> str:
    return format_duration(timedelta(seconds=seconds))


def report(
    source: Source,
    now: datetime,
    policy: IssuancePolicy,
    f: AuditFilter | None = None,
    *,
    max_violations: int = MAX_VIOLATIONS,
    max_orders: int = MAX_ORDERS,
) -> Report:
    """Per namespace and identity: issued, valid at `now`, lifetimes, refusals; policy breakers;
    and the rotation orders made by `now`, with what became of their targets."""
    f = f or AuditFilter()
    if f.status is not None or f.valid_at is not None:
        raise InvalidRequestError(
            "a report covers issued and refused entries and counts those valid now by itself; "
            "filter it by identity, namespace or time only",
            reason="filter_invalid",
        )
    at = timestamp(now)
    with source.engine.connect() as conn:
        _check_counted(conn, f)
        issued = _issued_stats(conn, f, at)
        refusals = _refusals(conn, f)
        violations, total = _violations(conn, f, now, policy, max_violations)
        orders, orders_total = _orders(conn, f, at, max_orders)
    refused_by_identity: dict[IdentityKey, int] = {}
    for refusal in refusals:
        key = (refusal.namespace, refusal.spiffe_id)
        refused_by_identity[key] = refused_by_identity.get(key, 0) + refusal.count
    identities = [
        IdentityStats(
            namespace=key[0],
            spiffe_id=key[1],
            issued=row[0] if row else 0,
            valid_now=row[1] if row else 0,
            ttl_buckets=tuple(row[2:]) if row else (0,) * len(TTL_BUCKETS),
            refused=refused_by_identity.get(key, 0),
        )
        for key in sorted(set(issued) | set(refused_by_identity), key=_identity_order)
        for row in [issued.get(key)]
    ]
    return Report(
        at=at,
        max_ttl_seconds=int(policy.max_ttl.total_seconds()),
        identities=tuple(identities),
        refusals=tuple(
            sorted(refusals, key=lambda r: (*_identity_order((r.namespace, r.spiffe_id)), -r.count, r.reason))
        ),
        violations=tuple(violations),
        violations_total=total,
        orders=tuple(orders),
        orders_total=orders_total,
    )


def _identity_order(key: IdentityKey) -> tuple[str, str]:
    # Entries with no identity (refused before authentication) sort last.
    return (key[0] or "\uffff", key[1] or "\uffff")
