"""Forced rotation's orders, targets and revocations in the ledger's database (SQLAlchemy Core).

`SqlRotationStore` implements ca.ledger.rotation.RotationStore on SQLite and PostgreSQL.
Every write is one transaction that first takes the lock every append to the hash chain
holds (ca.ledger.store.lock_head; so rotation writes are serialised among themselves too, and
cannot deadlock over target rows), then writes its table rows and their ledger records
(ca.ledger.store.append_in) and grows the change marker; on PostgreSQL it also NOTIFYs
CHANGE_CHANNEL, which is delivered when it commits (ca.ledger.changes listens). So an order,
its ledger record and the signal to the other replicas exist together or not at all, and a
decision taken from what the transaction read (is this serial revoked yet? is this order
still pushing?) cannot race another replica's.

Live certificates are read from the ledger's issued entries: what the indexed columns can
select is asked of SQL (identity, namespace, service account, pod, serials, issue time,
expiry, not revoked), the node name and the agent flag come from each entry's content.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from datetime import datetime, timedelta
from typing import Any, Generic, NamedTuple, TypeVar

from sqlalchemy import (
    Connection,
    Row,
    case,
    cast,
    exists,
    func,
    literal,
    select,
)
from sqlalchemy.dialects.postgresql import JSON
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.elements import ColumnElement

from ca.errors import InvalidRequestError
from ca.ledger import appender, schema
from ca.ledger.entries import (
    ISSUED,
    MESHCA_AGENT,
    crl_published_content,
    revoked_content,
    rotation_order_content,
    timestamp,
)
from ca.ledger.rotation import (
    ORDER_REVOCATION_REASON,
    Order,
    OrderCounts,
    OrderState,
    PublishedCrl,
    Revocation,
    Selector,
    Target,
    TargetCertificate,
    TargetState,
    normalize_serial,
    revocation_reason,
    selector_from_json,
    selector_to_json,
)
from ca.ledger.store import (
    IN_LIST_CHUNK,
    LedgerStore,
    append_in,
    lock_head,
    open_migrated,
    sqlite_read_engine,
    storage_error,
)

CHANGE_CHANNEL = appender.CHANGE_CHANNEL
_MICROSECOND = timedelta(microseconds=1)


def _when(text: str) -> datetime:
    """A ledger timestamp as an aware datetime: entries.parse_timestamp's result, fifty times
    faster (strptime dominated reading a large order)."""
    return datetime.fromisoformat(text)


def _chunks(values: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(values), IN_LIST_CHUNK):
        yield values[start : start + IN_LIST_CHUNK]


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _us(value: timedelta) -> int:
    return value // _MICROSECOND


Item = TypeVar("Item")
Result = TypeVar("Result")


class _Replacement(NamedTuple):
    order_id: str
    old_serial: str
    new_serial: str
    at: datetime


class GroupCommit(Generic[Item, Result]):
    """Calls from several threads at once share one write: a caller who finds no write under way
    writes everything queued so far; those who arrive meanwhile wait, and when it is done one
    of them whose item is still unwritten writes the next batch. `write` answers each item of
    its batch in order. (During a large order thousands of agents report their replacements
    within seconds; one commit each, an fsync on SQLite, would queue them up.)"""

    def __init__(self, write: Callable[[Sequence[Item]], list[Result]]) -> None:
        self._write = write
        self._turn = threading.Condition()
        self._pending: list[tuple[Item, Future[Result]]] = []
        self._writing = False

    @property
    def queued(self) -> int:
        """Items waiting for the next write."""
        with self._turn:
            return len(self._pending)

    def submit(self, item: Item) -> Result:
        waiter: Future[Result] = Future()
        with self._turn:
            self._pending.append((item, waiter))
            while self._writing and not waiter.done():
                self._turn.wait()
            if waiter.done():
                return waiter.result()
            self._writing = True
            batch, self._pending = self._pending, []
        try:
            self._settle(batch)
        finally:
            with self._turn:
                self._writing = False
                self._turn.notify_all()
        return waiter.result()

    def _settle(self, batch: Sequence[tuple[Item, Future[Result]]]) -> None:
        try:
            results = self._write([item for item, _ in batch])
        except BaseException as err:
            for _, waiter in batch:
                waiter.set_exception(err)
            return
        for (_, waiter), result in zip(batch, results, strict=True):
            waiter.set_result(result)


class SqlRotationStore:
    """RotationStore over the ledger database of `store` (migrated to schema 4 or later)."""

    def __init__(self, store: LedgerStore, *, owns_store: bool = False) -> None:
        self._store = store
        self._owns_store = owns_store
        self._postgres = not store.is_sqlite
        self._reads = sqlite_read_engine(store.url) if store.is_sqlite else store.engine
        self._replacements = GroupCommit(self._mark_replaced)

    @classmethod
    def open(cls, url: str) -> SqlRotationStore:
        """The store of the ledger at `url`, its schema brought up to date (ConfigError if it
        cannot be opened); dispose() closes it."""
        store, _ = open_migrated(url)
        return cls(store, owns_store=True)

    @property
    def url(self) -> str:
        return self._store.url

    def dispose(self) -> None:
        if self._reads is not self._store.engine:
            self._reads.dispose()
        if self._owns_store:
            self._store.dispose()

    # ----------------------------------------------------------------------- transactions

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Connection]:
        try:
            with self._reads.connect() as conn:
                yield conn
        except SQLAlchemyError as err:
            raise storage_error("read", err) from err

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Connection]:
        try:
            with self._store.engine.begin() as conn:
                yield conn
        except SQLAlchemyError as err:
            raise storage_error("written", err) from err

    def _changed(self, conn: Connection) -> int:
        """Grow the change marker in this transaction; on PostgreSQL, notify the listeners (they
        hear it when the transaction commits)."""
        c = schema.rotation_changes.c
        conn.execute(schema.rotation_changes.update().where(c.id == 1).values(marker=c.marker + 1))
        marker = int(conn.execute(select(c.marker).where(c.id == 1)).scalar_one())
        if self._postgres:
            conn.execute(select(func.pg_notify(CHANGE_CHANNEL, str(marker))))
        return marker

    # ----------------------------------------------------------------------- live certificates

    def live_certificates(self, selector: Selector, now: datetime) -> list[TargetCertificate]:
        e = schema.entries.c
        where = [e.kind == ISSUED, e.not_after > timestamp(now), *_name_terms(selector)]
        if selector.issued_before is not None:
            where.append(e.time < timestamp(selector.issued_before))
        r = schema.revocations.c
        where.append(~exists(select(literal(1)).where(r.serial == e.serial)))
        dialect = self._reads.dialect.name
        query = select(e.seq, e.serial, e.spiffe_id, e.namespace, e.service_account, e.pod_name, e.time)
        query = query.add_columns(
            e.not_after,
            _json_text(e.content, "node_name", dialect).label("node_name"),
            _json_text(e.content, "agent", dialect).label("agent"),
        ).order_by(e.seq)
        rows: list[Any] = []
        with self._reading() as conn:
            if selector.serials:
                for chunk in _chunks(_unique(normalize_serial(s) for s in selector.serials)):
                    rows += conn.execute(query.where(*where, e.serial.in_(chunk))).all()
                rows.sort(key=lambda row: int(row.seq))
            else:
                rows = list(conn.execute(query.where(*where)).all())
        found: dict[str, TargetCertificate] = {}
        for row in rows:
            certificate = _certificate(row)
            if selector.matches(certificate):
                found[certificate.serial] = certificate  # a serial issued twice: the newest
        return list(found.values())

    def known_names(self, selector: Selector) -> list[str]:
        e = schema.entries.c
        checks: list[tuple[str, str, ColumnElement[bool]]] = [
            (label, value, term)
            for label, value, term in (
                ("identity", selector.spiffe_id, e.spiffe_id == selector.spiffe_id),
                ("namespace", selector.namespace, e.namespace == selector.namespace),
                ("service account", selector.service_account, e.service_account == selector.service_account),
                ("pod", selector.pod, e.pod_name == selector.pod),
                ("node", selector.node, _content_has(e.content, "node_name", selector.node)),
            )
            if value is not None
        ]
        warnings = []
        with self._reading() as conn:
            for label, value, term in checks:
                seen = conn.execute(select(literal(1)).where(e.kind == ISSUED, term).limit(1)).first()
                if seen is None:
                    warnings.append(
                        f"no certificate was ever issued to {label} {value!r}, so nothing matches it; "
                        "names match exactly: check the spelling"
                    )
            if selector.serials:
                serials = _unique(normalize_serial(s) for s in selector.serials)
                unknown = sorted(set(serials) - set(self._issued(conn, serials)))
                if unknown:
                    warnings.append(f"the ledger has no issued certificate with serial {', '.join(unknown)}")
        return warnings

    def _issued(self, conn: Connection, serials: Sequence[str]) -> dict[str, Any]:
        """The issued entries of these serials (the newest of each), by serial."""
        e = schema.entries.c
        found: dict[str, Any] = {}
        query = select(e.seq, e.kind, e.serial, e.spiffe_id, e.namespace, e.service_account, e.pod_name)
        query = query.add_columns(e.not_after).order_by(e.seq)
        for chunk in _chunks(serials):
            # By serial alone, so that SQLite (no statistics) takes the serial index rather than
            # walking every issuance through the kind index; a serial has few entries.
            for row in conn.execute(query.where(e.serial.in_(chunk))):
                if row.kind == ISSUED:
                    found[row.serial] = row
        return found

    # ----------------------------------------------------------------------- orders

    def create_order(self, order: Order, targets: Sequence[TargetCertificate]) -> None:
        if len(order.id) > schema.ORDER_ID_LENGTH:
            raise InvalidRequestError(
                f"order id {order.id!r} is over {schema.ORDER_ID_LENGTH} characters",
                reason="order_id_invalid",
            )
        unique = list({t.serial: t for t in targets}.values())
        o = schema.rotation_orders.c
        with self._writing() as conn:
            lock_head(conn)
            if conn.execute(select(o.id).where(o.id == order.id)).first() is not None:
                raise InvalidRequestError(
                    f"an order {order.id} exists already; make the new order again (it gets a new id)",
                    reason="order_exists",
                )
            (entry,) = append_in(conn, [_order_record(order, len(unique))])
            conn.execute(
                schema.rotation_orders.insert().values(
                    id=order.id,
                    time=timestamp(order.time),
                    ordered_by=order.ordered_by,
                    selector=selector_to_json(order.selector),
                    reason=order.reason,
                    grace_us=_us(order.grace),
                    spread_us=_us(order.spread),
                    grace_ends=timestamp(order.grace_ends),
                    state=OrderState.PUSHING.value,
                    matched=len(unique),
                    ledger_seq=entry.seq,
                )
            )
            if unique:
                conn.execute(
                    schema.rotation_targets.insert(),
                    [_target_row(order.id, index, t) for index, t in enumerate(unique)],
                )
            self._changed(conn)

    def order(self, order_id: str) -> Order | None:
        o = schema.rotation_orders.c
        with self._reading() as conn:
            row = conn.execute(select(schema.rotation_orders).where(o.id == order_id)).first()
        return _order(row) if row is not None else None

    def orders(self, *, limit: int = 100, state: OrderState | None = None) -> list[Order]:
        o = schema.rotation_orders.c
        query = select(schema.rotation_orders).order_by(o.time.desc(), o.id.desc()).limit(limit)
        if state is not None:
            query = query.where(o.state == state.value)
        with self._reading() as conn:
            return [_order(row) for row in conn.execute(query)]

    def targets(self, order_id: str, now: datetime) -> list[Target]:
        t = schema.rotation_targets.c
        query = select(schema.rotation_targets).where(t.order_id == order_id).order_by(t.target_index)
        with self._reading() as conn:
            return [_target(row, now) for row in conn.execute(query)]

    def target(self, order_id: str, serial: str, now: datetime) -> Target | None:
        t = schema.rotation_targets.c
        query = select(schema.rotation_targets).where(t.order_id == order_id, t.serial == serial)
        with self._reading() as conn:
            row = conn.execute(query).first()
        return _target(row, now) if row is not None else None

    def counts(self, order_id: str, now: datetime) -> OrderCounts:
        t = schema.rotation_targets.c
        live = case((t.not_after > timestamp(now), 1), else_=0)
        revoked = case((t.revoked_at.is_not(None), 1), else_=0)
        query = (
            select(t.state, live, revoked, func.count())
            .where(t.order_id == order_id)
            .group_by(t.state, live, revoked)
        )
        tally = {state: 0 for state in TargetState}
        revoked_count = 0
        with self._reading() as conn:
            for state, is_live, is_revoked, count in conn.execute(query):
                expired = state == TargetState.OUTSTANDING.value and not is_live
                tally[TargetState.EXPIRED if expired else TargetState(state)] += int(count)
                revoked_count += int(count) if is_revoked else 0
        return OrderCounts(
            matched=sum(tally.values()),
            replaced=tally[TargetState.REPLACED],
            outstanding=tally[TargetState.OUTSTANDING],
            revoked=revoked_count,
            expired=tally[TargetState.EXPIRED],
        )

    def outstanding_for(self, serial: str) -> list[Order]:
        o, t = schema.rotation_orders.c, schema.rotation_targets.c
        query = (
            select(schema.rotation_orders)
            .join(schema.rotation_targets, t.order_id == o.id)
            .where(
                t.serial == serial,
                t.state == TargetState.OUTSTANDING.value,
                o.state == OrderState.PUSHING.value,
            )
            .order_by(o.time, o.id)
        )
        with self._reading() as conn:
            return [_order(row) for row in conn.execute(query)]

    def mark_replaced(self, *, order_id: str, old_serial: str, new_serial: str, at: datetime) -> bool:
        """Calls from several threads at once share one transaction (see GroupCommit)."""
        return self._replacements.submit(_Replacement(order_id, old_serial, new_serial, at))

    def _mark_replaced(self, batch: Sequence[_Replacement]) -> list[bool]:
        t = schema.rotation_targets.c
        done = []
        with self._writing() as conn:
            # Every rotation write takes the head lock first, so none can hold a target row that
            # another is waiting for while waiting for one it holds (completing an order and a
            # revocation mark targets of several orders, in no fixed row order).
            lock_head(conn)
            for item in batch:
                updated = conn.execute(
                    schema.rotation_targets.update()
                    .where(
                        t.order_id == item.order_id,
                        t.serial == item.old_serial,
                        t.state == TargetState.OUTSTANDING.value,
                    )
                    .values(
                        state=TargetState.REPLACED.value,
                        replaced_by=item.new_serial,
                        replaced_at=timestamp(item.at),
                    )
                ).rowcount
                done.append(bool(updated))
            if any(done):
                self._changed(conn)
        return done

    def complete_due_orders(self, now: datetime) -> list[tuple[Order, list[Revocation]]]:
        """Each order completes in a transaction of its own, once across replicas: the one whose
        UPDATE ... WHERE state = 'pushing' changed the row does it; the revocations returned are
        those this call made (a target already revoked is marked so, not revoked again)."""
        o = schema.rotation_orders.c
        with self._reading() as conn:
            due = (
                conn.execute(
                    select(o.id)
                    .where(o.state == OrderState.PUSHING.value, o.grace_ends <= timestamp(now))
                    .order_by(o.grace_ends, o.id)
                )
                .scalars()
                .all()
            )
        completed = []
        for order_id in due:
            done = self._complete(str(order_id), now)
            if done is not None:
                completed.append(done)
        return completed

    def _complete(self, order_id: str, now: datetime) -> tuple[Order, list[Revocation]] | None:
        o, t = schema.rotation_orders.c, schema.rotation_targets.c
        with self._writing() as conn:
            lock_head(conn)
            won = conn.execute(
                schema.rotation_orders.update()
                .where(o.id == order_id, o.state == OrderState.PUSHING.value)
                .values(state=OrderState.COMPLETED.value, completed_at=timestamp(now))
            ).rowcount
            if not won:
                return None  # another replica completed it
            # The targets hold what a revocation records of each certificate: no need to look
            # up its issuance (by far the slowest part of revoking ten thousand at once). A
            # replaced target's old certificate is revoked too: its holder has a new one, and the
            # old key is what the order was made against.
            live = {
                row.serial: row
                for row in conn.execute(
                    select(t.serial, t.spiffe_id, t.namespace, t.service_account, t.pod_name, t.not_after)
                    .where(
                        t.order_id == order_id,
                        t.state.in_([TargetState.OUTSTANDING.value, TargetState.REPLACED.value]),
                        t.not_after > timestamp(now),
                    )
                    .order_by(t.target_index)
                )
            }
            _, made = self._revoke_in(
                conn, list(live), live, reason=ORDER_REVOCATION_REASON, at=now, order_id=order_id
            )
            self._changed(conn)
            row = conn.execute(select(schema.rotation_orders).where(o.id == order_id)).one()
        return _order(row), made

    # ----------------------------------------------------------------------- revocations

    def revoke(
        self,
        serials: Sequence[str],
        *,
        reason: str,
        at: datetime,
        order_id: str | None = None,
        note: str | None = None,
    ) -> list[Revocation]:
        wanted = _unique(normalize_serial(s) for s in serials)
        canonical_reason = revocation_reason(reason)
        if not wanted:
            return []
        with self._writing() as conn:
            lock_head(conn)
            issued = self._issued(conn, wanted)
            unknown = [s for s in wanted if s not in issued]
            if unknown:
                raise InvalidRequestError(
                    f"the ledger has no issued certificate with serial {', '.join(unknown)}; check "
                    "the number ('openssl x509 -noout -serial') (a certificate long expired may have "
                    "been compacted away, and needs no revocation)",
                    reason="serial_unknown",
                )
            every, made = self._revoke_in(
                conn, wanted, issued, reason=canonical_reason, at=at, order_id=order_id, note=note
            )
            if made:
                self._changed(conn)
        return every

    def _revoke_in(
        self,
        conn: Connection,
        serials: Sequence[str],
        issued: Mapping[str, Any],
        *,
        reason: str,
        at: datetime,
        order_id: str | None = None,
        note: str | None = None,
    ) -> tuple[list[Revocation], list[Revocation]]:
        """Revoke `serials` in this transaction (which holds the head lock): (every one of them
        as now revoked, in the order given; those newly revoked). `issued` has each serial's
        identity, namespace, service account, pod and expiry (rows with those columns). Targets
        of any order that cover them are marked revoked."""
        existing = self._revocations_of(conn, serials)
        new = [s for s in serials if s not in existing]
        made: list[Revocation] = []
        if new:
            contents = [
                revoked_content(
                    time=at,
                    serial=serial,
                    spiffe_id=issued[serial].spiffe_id,
                    namespace=issued[serial].namespace,
                    service_account=issued[serial].service_account,
                    pod_name=issued[serial].pod_name,
                    reason=reason,
                    not_after=_when(issued[serial].not_after),
                    order_id=order_id,
                    note=note,
                )
                for serial in new
            ]
            entries = append_in(conn, contents)
            rows = [
                _revocation_row(content, note, entry.seq)
                for content, entry in zip(contents, entries, strict=True)
            ]
            conn.execute(schema.revocations.insert(), rows)
            made = [_revocation(row) for row in rows]
        _mark_targets_revoked(conn, new, at)
        for revocation in existing.values():
            _mark_targets_revoked(conn, [revocation.serial], revocation.revoked_at)
        every = {**existing, **{r.serial: r for r in made}}
        return [every[s] for s in serials], made

    def _revocations_of(self, conn: Connection, serials: Sequence[str]) -> dict[str, Revocation]:
        r = schema.revocations.c
        found: dict[str, Revocation] = {}
        for chunk in _chunks(serials):
            for row in conn.execute(select(schema.revocations).where(r.serial.in_(chunk))):
                found[row.serial] = _revocation(row._mapping)
        return found

    def revocations(self, now: datetime) -> list[Revocation]:
        r = schema.revocations.c
        query = (
            select(schema.revocations).where(r.not_after > timestamp(now)).order_by(r.revoked_at, r.serial)
        )
        with self._reading() as conn:
            return [_revocation(row._mapping) for row in conn.execute(query)]

    def is_revoked(self, serial: str) -> bool:
        r = schema.revocations.c
        with self._reading() as conn:
            return conn.execute(select(literal(1)).where(r.serial == serial)).first() is not None

    def record_crl(self, crl: PublishedCrl, at: datetime) -> None:
        content = crl_published_content(
            time=at,
            crl_number=crl.number,
            this_update=crl.this_update,
            next_update=crl.next_update,
            entries=crl.entries,
            ca_key_id=crl.ca_key_id,
            crl_sha256=crl.sha256,
        )
        with self._writing() as conn:
            append_in(conn, [content])

    def change_marker(self) -> int:
        c = schema.rotation_changes.c
        with self._reading() as conn:
            return int(conn.execute(select(c.marker).where(c.id == 1)).scalar_one())


# --------------------------------------------------------------------------- rows


def _mark_targets_revoked(conn: Connection, serials: Sequence[str], at: datetime) -> None:
    """Every order's targets with these serials are now revoked (since `at`): outstanding ones
    become revoked; replaced ones stay replaced (their holders moved on) and note when their
    old certificate was revoked."""
    t = schema.rotation_targets.c
    for chunk in _chunks(serials):
        conn.execute(
            schema.rotation_targets.update()
            .where(t.serial.in_(chunk), t.state == TargetState.OUTSTANDING.value)
            .values(state=TargetState.REVOKED.value, revoked_at=timestamp(at))
        )
        conn.execute(
            schema.rotation_targets.update()
            .where(t.serial.in_(chunk), t.state == TargetState.REPLACED.value, t.revoked_at.is_(None))
            .values(revoked_at=timestamp(at))
        )


def _name_terms(selector: Selector) -> list[ColumnElement[bool]]:
    e = schema.entries.c
    return [
        column == value
        for column, value in (
            (e.spiffe_id, selector.spiffe_id),
            (e.namespace, selector.namespace),
            (e.service_account, selector.service_account),
            (e.pod_name, selector.pod),
        )
        if value is not None
    ]


def _content_has(content: ColumnElement[Any], name: str, value: str | None) -> ColumnElement[bool]:
    """The canonical content holds `"name":value` (the ledger's own encoding, so exact)."""
    pair = json.dumps({name: value}, ensure_ascii=False, separators=(",", ":"))[1:-1]
    escaped = pair.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return content.like(f"%{escaped}%", escape="\\")


def _json_text(content: ColumnElement[Any], key: str, dialect: str) -> ColumnElement[Any]:
    """One text field of an entry's content, extracted by the database (no JSON decoding here)."""
    if dialect == "postgresql":
        return func.json_extract_path_text(cast(content, JSON), key)
    return func.json_extract(content, f"$.{key}")


def _certificate(row: Row[Any]) -> TargetCertificate:
    return TargetCertificate(
        serial=row.serial,
        spiffe_id=row.spiffe_id,
        namespace=row.namespace,
        service_account=row.service_account,
        pod=row.pod_name,
        node=row.node_name,
        issued=_when(row.time),
        not_after=_when(row.not_after),
        from_meshca_agent=row.agent == MESHCA_AGENT,
    )


def _order_record(order: Order, matched: int) -> dict[str, Any]:
    return rotation_order_content(
        time=order.time,
        order_id=order.id,
        ordered_by=order.ordered_by,
        selector=order.selector.describe(),
        reason=order.reason,
        grace=order.grace,
        spread=order.spread,
        matched=matched,
    )


def _order(row: Row[Any]) -> Order:
    return Order(
        id=row.id,
        ordered_by=row.ordered_by,
        time=_when(row.time),
        selector=selector_from_json(row.selector),
        reason=row.reason,
        grace=timedelta(microseconds=int(row.grace_us)),
        spread=timedelta(microseconds=int(row.spread_us)),
        state=OrderState(row.state),
        matched=int(row.matched),
    )


def _target_row(order_id: str, index: int, target: TargetCertificate) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "serial": target.serial,
        "target_index": index,
        "spiffe_id": target.spiffe_id,
        "namespace": target.namespace,
        "service_account": target.service_account,
        "pod_name": target.pod,
        "node_name": target.node,
        "issued": timestamp(target.issued),
        "not_after": timestamp(target.not_after),
        "from_meshca_agent": int(target.from_meshca_agent),
        "state": TargetState.OUTSTANDING.value,
        "replaced_by": None,
        "replaced_at": None,
        "revoked_at": None,
    }


def _maybe_time(text: str | None) -> datetime | None:
    return _when(text) if text is not None else None


def _target(row: Row[Any], now: datetime) -> Target:
    certificate = TargetCertificate(
        serial=row.serial,
        spiffe_id=row.spiffe_id,
        namespace=row.namespace,
        service_account=row.service_account,
        pod=row.pod_name,
        node=row.node_name,
        issued=_when(row.issued),
        not_after=_when(row.not_after),
        from_meshca_agent=bool(row.from_meshca_agent),
    )
    state = TargetState(row.state)
    if state is TargetState.OUTSTANDING and certificate.not_after <= now:
        state = TargetState.EXPIRED
    return Target(
        order_id=row.order_id,
        certificate=certificate,
        index=int(row.target_index),
        state=state,
        replaced_by=row.replaced_by,
        replaced_at=_maybe_time(row.replaced_at),
        revoked_at=_maybe_time(row.revoked_at),
    )


def _revocation_row(content: dict[str, Any], note: str | None, seq: int) -> dict[str, Any]:
    return {
        "serial": content["serial"],
        "spiffe_id": content["spiffe_id"],
        "revoked_at": content["time"],
        "reason": content["reason"],
        "not_after": content["not_after"],
        "order_id": content.get("order_id"),
        "note": note,
        "ledger_seq": seq,
    }


def _revocation(row: Any) -> Revocation:
    return Revocation(
        serial=row["serial"],
        spiffe_id=row["spiffe_id"],
        revoked_at=_when(row["revoked_at"]),
        reason=row["reason"],
        not_after=_when(row["not_after"]),
        order_id=row["order_id"],
        note=row["note"],
    )
