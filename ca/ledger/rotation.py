"""Forced rotation and revocation as data: selectors, orders, their targets, revocations. Pure code.

An operator's order names live certificates with a selector; the certificates it
matched when it was made are its targets. Each target is replaced when its holder
reports (or requests) a new certificate for the order, and every target still
unexpired when the grace period ends is revoked. Orders, targets and revocations
live in the ledger's database (`ledger/rotation_store`), and each step is also a
ledger record.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from ca.errors import InvalidRequestError
from ca.issuance.crl import REVOCATION_REASONS

DEFAULT_GRACE = timedelta(minutes=5)
DEFAULT_SPREAD = timedelta(0)
MAX_REASON_LENGTH = 1024


class Holder(enum.StrEnum):
    """Who holds a target certificate, as far as pushing goes."""

    CONNECTED = "connected"  # a meshca agent with an open control stream
    NOT_CONNECTED = "not_connected"  # a meshca agent without a stream now
    NOT_PUSHABLE = "not_pushable"  # another client (Istio's own agent, a script)


class TargetState(enum.StrEnum):
    OUTSTANDING = "outstanding"
    REPLACED = "replaced"
    REVOKED = "revoked"
    EXPIRED = "expired"


class OrderState(enum.StrEnum):
    PUSHING = "pushing"  # until the grace period ends
    COMPLETED = "completed"  # the targets still live were revoked


# What an order's revocation at the end of its grace period says.
ORDER_REVOCATION_REASON = "superseded"


def revocation_reason(name: str) -> str:
    """The canonical RFC 5280 reason name for `name` ('' means unspecified)."""
    if not name:
        return "unspecified"
    for known in REVOCATION_REASONS:
        if known.lower() == name.lower():
            return known
    raise InvalidRequestError(
        f"unknown revocation reason {name!r}; use one of {', '.join(REVOCATION_REASONS)}",
        reason="revocation_reason_invalid",
    )


def normalize_serial(text: str) -> str:
    """Lower-case hex without separators (colons, spaces) or leading zeros, as the ledger stores
    serials: the one reading of an operator's serial, for audits, orders and revocations."""
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "").replace(" ", "")
    if not cleaned or len(cleaned) > 40 or any(c not in "0123456789abcdef" for c in cleaned):
        raise InvalidRequestError(
            f"{text!r} is not a certificate serial number; give it in hex, as "
            "`openssl x509 -noout -serial` prints it (colons and spaces allowed)",
            reason="serial_invalid",
        )
    return format(int(cleaned, 16), "x")


@dataclass(frozen=True, kw_only=True)
class Selector:
    """Which live certificates an order covers: every field given must match; names exactly."""

    spiffe_id: str | None = None
    namespace: str | None = None
    service_account: str | None = None
    pod: str | None = None
    node: str | None = None
    serials: tuple[str, ...] = ()
    issued_before: datetime | None = None
    all: bool = False

    def is_empty(self) -> bool:
        return not (
            self.spiffe_id
            or self.namespace
            or self.service_account
            or self.pod
            or self.node
            or self.serials
            or self.issued_before
        )

    def check(self) -> None:
        """Refuse a selector that would match everything by accident."""
        if self.is_empty() and not self.all:
            raise InvalidRequestError(
                "no selector given; name what to rotate (--namespace, --service-account, --spiffe-id, "
                "--pod, --node, --serial, --issued-before) or say --all",
                reason="selector_empty",
            )
        if self.all and not self.is_empty():
            raise InvalidRequestError(
                "--all cannot be combined with other selectors; drop --all or the selectors",
                reason="selector_invalid",
            )

    def matches(self, target: TargetCertificate) -> bool:
        return (
            _same(self.spiffe_id, target.spiffe_id)
            and _same(self.namespace, target.namespace)
            and _same(self.service_account, target.service_account)
            and _same(self.pod, target.pod)
            and _same(self.node, target.node)
            and (not self.serials or target.serial in self.serials)
            and (self.issued_before is None or target.issued < self.issued_before)
        )

    def describe(self) -> str:
        """The selector as an operator would type it, for records and tables: 'namespace=shop
        service_account=cart', 'serial=1a,2b', 'all'."""
        if self.all:
            return "all"
        terms = [f"{name}={value}" for name, value in _named_terms(self) if value is not None]
        if self.serials:
            terms.append(f"serial={','.join(self.serials)}")
        if self.issued_before is not None:
            terms.append(f"issued_before={self.issued_before.isoformat()}")
        return " ".join(terms) or "(empty)"


def _named_terms(selector: Selector) -> tuple[tuple[str, str | None], ...]:
    return (
        ("spiffe_id", selector.spiffe_id),
        ("namespace", selector.namespace),
        ("service_account", selector.service_account),
        ("pod", selector.pod),
        ("node", selector.node),
    )


def selector_to_json(selector: Selector) -> str:
    """The selector as a JSON object holding only the terms given, as the store keeps it."""
    fields: dict[str, Any] = {name: value for name, value in _named_terms(selector) if value is not None}
    if selector.serials:
        fields["serials"] = list(selector.serials)
    if selector.issued_before is not None:
        fields["issued_before"] = selector.issued_before.isoformat()
    if selector.all:
        fields["all"] = True
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def selector_from_json(text: str) -> Selector:
    fields: Mapping[str, Any] = json.loads(text)
    issued_before = fields.get("issued_before")
    return Selector(
        spiffe_id=fields.get("spiffe_id"),
        namespace=fields.get("namespace"),
        service_account=fields.get("service_account"),
        pod=fields.get("pod"),
        node=fields.get("node"),
        serials=tuple(fields.get("serials", ())),
        issued_before=datetime.fromisoformat(issued_before) if issued_before is not None else None,
        all=bool(fields.get("all", False)),
    )


def _same(wanted: str | None, actual: str | None) -> bool:
    return wanted is None or wanted == actual


@dataclass(frozen=True, kw_only=True)
class TargetCertificate:
    """A live issued certificate as the ledger recorded it."""

    serial: str
    spiffe_id: str
    namespace: str | None
    service_account: str | None
    pod: str | None
    node: str | None
    issued: datetime
    not_after: datetime
    # The issuing request came from a meshca agent (it sent "meshca-agent" metadata).
    from_meshca_agent: bool = False


@dataclass(frozen=True, kw_only=True)
class Target:
    """A certificate an order covers, and what has become of it."""

    order_id: str
    certificate: TargetCertificate
    # Its place among the order's targets (0 .. matched-1): push_delay's `index`.
    index: int = 0
    state: TargetState = TargetState.OUTSTANDING
    replaced_by: str | None = None
    replaced_at: datetime | None = None
    revoked_at: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class Order:
    id: str
    ordered_by: str
    time: datetime
    selector: Selector
    reason: str
    grace: timedelta = DEFAULT_GRACE
    spread: timedelta = DEFAULT_SPREAD
    state: OrderState = OrderState.PUSHING
    matched: int = 0  # how many targets it has: push_delay's `count`

    @property
    def grace_ends(self) -> datetime:
        return self.time + self.grace


@dataclass(frozen=True, kw_only=True)
class OrderCounts:
    """An order's targets by what became of them. `revoked` counts every target whose
    certificate was revoked, replaced ones included (an order that completes revokes the old
    certificates its holders replaced, and those still outstanding); `outstanding` are live and
    neither replaced nor revoked; `expired` expired that way."""

    matched: int = 0
    replaced: int = 0
    outstanding: int = 0
    revoked: int = 0
    expired: int = 0


@dataclass(frozen=True, kw_only=True)
class Revocation:
    serial: str
    spiffe_id: str | None
    revoked_at: datetime
    reason: str  # a REVOCATION_REASONS key
    not_after: datetime  # after this the certificate leaves the CRL
    order_id: str | None = None
    note: str | None = None


@dataclass(frozen=True, kw_only=True)
class PublishedCrl:
    """A CRL the CA published, as its ledger record ("crl_published") describes it."""

    number: int
    this_update: datetime
    next_update: datetime
    entries: int
    ca_key_id: str  # the issuing key that signed it
    sha256: str  # of its DER


def check_order_terms(*, reason: str, grace: timedelta, spread: timedelta) -> None:
    if not reason.strip():
        raise InvalidRequestError(
            "an order needs a reason; say why with --reason TEXT (it is kept in the ledger)",
            reason="reason_missing",
        )
    if len(reason) > MAX_REASON_LENGTH:
        raise InvalidRequestError(
            f"--reason is {len(reason)} characters; keep it under {MAX_REASON_LENGTH}",
            reason="reason_too_long",
        )
    if grace < timedelta(0):
        raise InvalidRequestError(
            f"--grace must not be negative (got {grace}); 0s revokes as soon as the order is made",
            reason="grace_invalid",
        )
    if spread < timedelta(0) or spread > grace:
        raise InvalidRequestError(
            f"--spread must be between 0s and the grace period ({grace}); got {spread}",
            reason="spread_invalid",
        )


def push_delay(index: int, count: int, spread: timedelta, elapsed: timedelta) -> timedelta:
    """How long the `index`-th of `count` holders waits before replacing, so that replacements
    spread evenly over `spread` from the order's time; `elapsed` is how long ago the order was
    made (a holder that connects late goes at once once its slot has passed)."""
    if count <= 1 or spread <= timedelta(0):
        return timedelta(0)
    slot = spread * (index / count)
    return max(timedelta(0), slot - elapsed)


@dataclass(frozen=True, kw_only=True)
class BlastRadius:
    """What a dry run shows: the matched certificates and who holds them."""

    targets: Sequence[TargetCertificate]
    holders: dict[str, Holder] = field(default_factory=dict)  # by serial
    warnings: tuple[str, ...] = ()

    def count(self, holder: Holder) -> int:
        return sum(1 for t in self.targets if self.holders.get(t.serial) is holder)


class RotationStore(Protocol):
    """Orders, targets and revocations in the ledger's database (implemented in
    `ledger/rotation_store`). Every change bumps a change counter that replicas watch."""

    def live_certificates(self, selector: Selector, now: datetime) -> list[TargetCertificate]:
        """Issued, unexpired, unrevoked certificates that match, from the ledger."""
        ...

    def known_names(self, selector: Selector) -> list[str]:
        """Warnings for selector names the ledger has never seen (a namespace with no
        certificate ever issued, say), so a typo is not mistaken for 'nothing to do'."""
        ...

    def create_order(self, order: Order, targets: Sequence[TargetCertificate]) -> None:
        """Record the order (a ledger record too) and its targets."""
        ...

    def order(self, order_id: str) -> Order | None: ...

    def orders(self, *, limit: int = 100, state: OrderState | None = None) -> list[Order]:
        """Newest first."""
        ...

    def targets(self, order_id: str, now: datetime) -> list[Target]:
        """Every target of the order with its state (EXPIRED for an outstanding one past not_after)."""
        ...

    def target(self, order_id: str, serial: str, now: datetime) -> Target | None:
        """One target of the order (its `index` places it for push_delay), or None."""
        ...

    def counts(self, order_id: str, now: datetime) -> OrderCounts: ...

    def outstanding_for(self, serial: str) -> list[Order]:
        """Pushing orders that cover this serial and have not seen it replaced."""
        ...

    def mark_replaced(self, *, order_id: str, old_serial: str, new_serial: str, at: datetime) -> bool:
        """True when this was an outstanding target of the order."""
        ...

    def revoke(
        self,
        serials: Sequence[str],
        *,
        reason: str,
        at: datetime,
        order_id: str | None = None,
        note: str | None = None,
    ) -> list[Revocation]:
        """Revoke issued certificates (a ledger record each); unknown serials raise
        InvalidRequestError naming them, already-revoked ones are returned as they were."""
        ...

    def complete_due_orders(self, now: datetime) -> list[tuple[Order, list[Revocation]]]:
        """Orders whose grace period has ended: revoke their targets that are still live and
        mark them completed. Safe to run on every replica at once (each order completes once)."""
        ...

    def revocations(self, now: datetime) -> list[Revocation]:
        """Revoked certificates not yet expired: what a CRL lists."""
        ...

    def is_revoked(self, serial: str) -> bool: ...

    def record_crl(self, crl: PublishedCrl, at: datetime) -> None:
        """Add a "crl_published" ledger record."""
        ...

    def change_marker(self) -> int:
        """Grows with every order, replacement and revocation."""
        ...
