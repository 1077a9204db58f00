"""An in-memory RotationStore for unit tests, behaving as ca.ledger.rotation_store.SqlRotationStore
does (tests/ledger/test_rotation_store.py runs one contract against both).

Certificates the ledger would hold are added with `add_issued`; the ledger records the real
store would append are kept, as the same content, in `records`.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from ca.errors import InvalidRequestError
from ca.ledger.entries import crl_published_content, revoked_content, rotation_order_content
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
)


class MemoryRotationStore:
    def __init__(self) -> None:
        self.issued: dict[str, TargetCertificate] = {}  # by serial, in issue order
        self.records: list[dict[str, Any]] = []
        self._orders: dict[str, Order] = {}
        self._targets: dict[str, list[Target]] = {}  # by order id, in index order
        self._revocations: dict[str, Revocation] = {}
        self._marker = 0
        self._lock = threading.RLock()

    def add_issued(self, *certificates: TargetCertificate) -> None:
        """Certificates the ledger has issued (the CA's part, not the store's)."""
        with self._lock:
            for certificate in certificates:
                self.issued.pop(certificate.serial, None)
                self.issued[certificate.serial] = certificate

    def _changed(self) -> None:
        self._marker += 1

    # ----------------------------------------------------------------------- the protocol

    def live_certificates(self, selector: Selector, now: datetime) -> list[TargetCertificate]:
        with self._lock:
            return [
                c
                for c in self.issued.values()
                if c.not_after > now and c.serial not in self._revocations and selector.matches(c)
            ]

    def known_names(self, selector: Selector) -> list[str]:
        with self._lock:
            issued = list(self.issued.values())
        warnings = []
        for label, value, attribute in (
            ("identity", selector.spiffe_id, "spiffe_id"),
            ("namespace", selector.namespace, "namespace"),
            ("service account", selector.service_account, "service_account"),
            ("pod", selector.pod, "pod"),
            ("node", selector.node, "node"),
        ):
            if value is not None and not any(getattr(c, attribute) == value for c in issued):
                warnings.append(
                    f"no certificate was ever issued to {label} {value!r}, so nothing matches it; "
                    "names match exactly: check the spelling"
                )
        unknown = sorted({normalize_serial(s) for s in selector.serials} - {c.serial for c in issued})
        if unknown:
            warnings.append(f"the ledger has no issued certificate with serial {', '.join(unknown)}")
        return warnings

    def create_order(self, order: Order, targets: Sequence[TargetCertificate]) -> None:
        unique = list({t.serial: t for t in targets}.values())
        with self._lock:
            if order.id in self._orders:
                raise InvalidRequestError(
                    f"an order {order.id} exists already; make the new order again (it gets a new id)",
                    reason="order_exists",
                )
            stored = dataclasses.replace(order, state=OrderState.PUSHING, matched=len(unique))
            self._orders[order.id] = stored
            self._targets[order.id] = [
                Target(order_id=order.id, certificate=c, index=i) for i, c in enumerate(unique)
            ]
            self.records.append(
                rotation_order_content(
                    time=order.time,
                    order_id=order.id,
                    ordered_by=order.ordered_by,
                    selector=order.selector.describe(),
                    reason=order.reason,
                    grace=order.grace,
                    spread=order.spread,
                    matched=len(unique),
                )
            )
            self._changed()

    def order(self, order_id: str) -> Order | None:
        with self._lock:
            return self._orders.get(order_id)

    def orders(self, *, limit: int = 100, state: OrderState | None = None) -> list[Order]:
        with self._lock:
            chosen = [o for o in self._orders.values() if state is None or o.state is state]
        return sorted(chosen, key=lambda o: (o.time, o.id), reverse=True)[:limit]

    def targets(self, order_id: str, now: datetime) -> list[Target]:
        with self._lock:
            return [_as_of(t, now) for t in self._targets.get(order_id, [])]

    def target(self, order_id: str, serial: str, now: datetime) -> Target | None:
        with self._lock:
            for t in self._targets.get(order_id, []):
                if t.certificate.serial == serial:
                    return _as_of(t, now)
        return None

    def counts(self, order_id: str, now: datetime) -> OrderCounts:
        targets = self.targets(order_id, now)
        states = [t.state for t in targets]
        return OrderCounts(
            matched=len(states),
            replaced=states.count(TargetState.REPLACED),
            outstanding=states.count(TargetState.OUTSTANDING),
            revoked=sum(1 for t in targets if t.revoked_at is not None),
            expired=states.count(TargetState.EXPIRED),
        )

    def outstanding_for(self, serial: str) -> list[Order]:
        with self._lock:
            found = [
                self._orders[order_id]
                for order_id, targets in self._targets.items()
                if self._orders[order_id].state is OrderState.PUSHING
                and any(
                    t.certificate.serial == serial and t.state is TargetState.OUTSTANDING for t in targets
                )
            ]
        return sorted(found, key=lambda o: (o.time, o.id))

    def mark_replaced(self, *, order_id: str, old_serial: str, new_serial: str, at: datetime) -> bool:
        with self._lock:
            targets = self._targets.get(order_id, [])
            for i, t in enumerate(targets):
                if t.certificate.serial == old_serial and t.state is TargetState.OUTSTANDING:
                    targets[i] = dataclasses.replace(
                        t, state=TargetState.REPLACED, replaced_by=new_serial, replaced_at=at
                    )
                    self._changed()
                    return True
        return False

    def revoke(
        self,
        serials: Sequence[str],
        *,
        reason: str,
        at: datetime,
        order_id: str | None = None,
        note: str | None = None,
    ) -> list[Revocation]:
        wanted = list(dict.fromkeys(normalize_serial(s) for s in serials))
        canonical = revocation_reason(reason)
        if not wanted:
            return []
        with self._lock:
            every, made = self._revoke(wanted, reason=canonical, at=at, order_id=order_id, note=note)
            if made:
                self._changed()
        return every

    def _revoke(
        self, serials: Sequence[str], *, reason: str, at: datetime, order_id: str | None, note: str | None
    ) -> tuple[list[Revocation], list[Revocation]]:
        unknown = [s for s in serials if s not in self.issued]
        if unknown:
            raise InvalidRequestError(
                f"the ledger has no issued certificate with serial {', '.join(unknown)}",
                reason="serial_unknown",
            )
        made = []
        for serial in serials:
            if serial in self._revocations:
                continue
            certificate = self.issued[serial]
            revocation = Revocation(
                serial=serial,
                spiffe_id=certificate.spiffe_id,
                revoked_at=at,
                reason=reason,
                not_after=certificate.not_after,
                order_id=order_id,
                note=note,
            )
            self._revocations[serial] = revocation
            made.append(revocation)
            self.records.append(
                revoked_content(
                    time=at,
                    serial=serial,
                    spiffe_id=certificate.spiffe_id,
                    namespace=certificate.namespace,
                    service_account=certificate.service_account,
                    pod_name=certificate.pod,
                    reason=reason,
                    not_after=certificate.not_after,
                    order_id=order_id,
                    note=note,
                )
            )
        for targets in self._targets.values():
            for i, t in enumerate(targets):
                serial = t.certificate.serial
                if serial not in serials:
                    continue
                revoked_at = self._revocations[serial].revoked_at
                if t.state is TargetState.OUTSTANDING:
                    targets[i] = dataclasses.replace(t, state=TargetState.REVOKED, revoked_at=revoked_at)
                elif t.state is TargetState.REPLACED and t.revoked_at is None:
                    targets[i] = dataclasses.replace(t, revoked_at=revoked_at)
        return [self._revocations[s] for s in serials], made

    def complete_due_orders(self, now: datetime) -> list[tuple[Order, list[Revocation]]]:
        completed = []
        with self._lock:
            due = sorted(
                (o for o in self._orders.values() if o.state is OrderState.PUSHING and o.grace_ends <= now),
                key=lambda o: (o.grace_ends, o.id),
            )
            for order in due:
                live = [
                    t.certificate.serial
                    for t in self._targets[order.id]
                    if t.state in (TargetState.OUTSTANDING, TargetState.REPLACED)
                    and t.certificate.not_after > now
                ]
                _, made = self._revoke(
                    live, reason=ORDER_REVOCATION_REASON, at=now, order_id=order.id, note=None
                )
                done = dataclasses.replace(order, state=OrderState.COMPLETED)
                self._orders[order.id] = done
                self._changed()
                completed.append((done, made))
        return completed

    def revocations(self, now: datetime) -> list[Revocation]:
        with self._lock:
            live = [r for r in self._revocations.values() if r.not_after > now]
        return sorted(live, key=lambda r: (r.revoked_at, r.serial))

    def is_revoked(self, serial: str) -> bool:
        with self._lock:
            return serial in self._revocations

    def record_crl(self, crl: PublishedCrl, at: datetime) -> None:
        with self._lock:
            self.records.append(
                crl_published_content(
                    time=at,
                    crl_number=crl.number,
                    this_update=crl.this_update,
                    next_update=crl.next_update,
                    entries=crl.entries,
                    ca_key_id=crl.ca_key_id,
                    crl_sha256=crl.sha256,
                )
            )

    def change_marker(self) -> int:
        with self._lock:
            return self._marker


def _as_of(target: Target, now: datetime) -> Target:
    if target.state is TargetState.OUTSTANDING and target.certificate.not_after <= now:
        return dataclasses.replace(target, state=TargetState.EXPIRED)
    return target


def certificate(
    serial: str,
    *,
    namespace: str = "shop",
    service_account: str = "cart",
    pod: str | None = "cart-0",
    node: str | None = "node-1",
    issued: datetime,
    lifetime: timedelta = timedelta(hours=1),
    from_meshca_agent: bool = True,
    trust_domain: str = "cluster.local",
) -> TargetCertificate:
    """A certificate as the ledger would record it for a workload of `namespace`/`service_account`."""
    return TargetCertificate(
        serial=serial,
        spiffe_id=f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}",
        namespace=namespace,
        service_account=service_account,
        pod=pod,
        node=node,
        issued=issued,
        not_after=issued + lifetime,
        from_meshca_agent=from_meshca_agent,
    )
