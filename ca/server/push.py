"""The CA side of forced rotation: which agents are connected, what to push to them, the CRL.

Every control stream (`ca.server.control_api`) registers a `Session` here under the serial
of the certificate it was opened with. The coordinator keeps in memory what the ledger's
rotation tables say right now, as one `Snapshot`-fed state: the pushing orders with the
targets they cover, the revoked serials, and the current CRL. When the tables change (the
ledger's ChangeWatcher calls `notify_changed` from its thread, and so does this CA's own
admin service), the coordinator reloads them on a thread of its own, then, on the event
loop, pushes what is new to the sessions it concerns:

- a new order: a RotateOrder to each connected holder of one of its targets, with the delay
  `push_delay` gives the target's slot, so an order with --spread does not become a storm;
- a changed revocation list: a fresh CRL to every session, and a Reissue (then the end of
  the stream) to each session whose own certificate was just revoked;
- a new trust bundle (`publish_bundle`, from the CA's signing slots): a TrustBundle to every
  session at once, and to each new one right after its first revocation list. Before the first
  `publish_bundle` no TrustBundle is sent at all.

Nothing here waits per stream: a session costs one coroutine (its reader, in control_api)
and no timer. The only periodic work is `tick()`, once a second on the CA's scheduler:
orders whose grace period ended are completed (their live targets revoked) and the CRL is
rebuilt before its nextUpdate.

Other parts of the CA ask it:
- `is_revoked(serial)`: the renewal port's client-certificate check (refuses a revoked one);
- `verified_replacement(...)` / `replaced(...)`: the certificate API's check of a request's
  "meshca-replaces" claim before the issued record links it, and word that it was recorded;
- `connected_serials()`, `pushable_serials()`, `holders(targets)`: who a dry run can reach;
- `bundle_holders(root_sha256)`: how many open streams hold a root, by the agent's latest
  report (its Hello, or the BundleHeld it sends once it serves a pushed bundle), before the
  CA signs under that root.

A replacement is marked in the ledger by the issued record that carries the link, in the
same transaction (ca.ledger.store), not here: the coordinator only stops pushing that order
to that serial. So thousands of replacements in a few seconds cost the CA no write of its
own, and none can be lost to a busy database after its certificate was recorded. An agent's
Replaced report on its stream is only logged.

All public methods are safe to call from any thread unless they say "on the loop".
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca._proto import meshca_control_pb2 as pb
from ca.common.clock import Clock
from ca.errors import CaMaterialError
from ca.issuance.authority import SigningAuthority
from ca.issuance.crl import CRL_VALIDITY, build_crl, crl_der, crl_number
from ca.issuance.slots import Acknowledgement
from ca.ledger.rotation import (
    Holder,
    Order,
    OrderState,
    PublishedCrl,
    Revocation,
    RotationStore,
    Target,
    TargetCertificate,
    TargetState,
    push_delay,
)

log = logging.getLogger("meshca.push")

MAX_ACTIVE_ORDERS = 1000  # pushing orders loaded at once; more is an operator's mistake
ORDER_ID = re.compile(r"^ro-[0-9a-f]{12}$")
REISSUE_DETAILS = (
    "the certificate this stream was opened with is revoked; get a new one with the "
    "service-account token, then reconnect with it"
)


class Session(Protocol):
    """One agent's control stream, as the coordinator sees it."""

    serial: str
    """Hex serial of the certificate the stream was opened with, or of the one it was moved to
    (`PushCoordinator.rebind`)."""

    @property
    def spiffe_id(self) -> str: ...

    def send(self, message: bytes) -> None:
        """Queue a serialized ControlMessage; never blocks. On the loop."""
        ...

    def send_revocations(self, message: bytes) -> None:
        """Queue a serialized RevocationList message in place of one still queued (only the
        newest list matters, and with thousands revoked it is large); never blocks. On the loop."""
        ...

    def close(self, code: grpc.StatusCode, details: str) -> None:
        """End the stream with this status once what was queued has been sent. On the loop."""
        ...


BUNDLE_AFTER_CRL_S = 5.0


@dataclass(frozen=True, kw_only=True)
class CrlRelease:
    """A CRL as agents get it (one DER per issuing CA certificate, with the CA certificates that
    signed them) and as the ledger records it."""

    ders: tuple[bytes, ...]
    published: PublishedCrl
    # DER of each signing CA and the chain above it up to its root (without the root): an agent
    # whose own chain names another signing CA trusts these when they chain to its bundle.
    signers: tuple[bytes, ...] = ()

    def refresh_at(self) -> datetime:
        """Halfway to nextUpdate: a new one is in every agent's hands long before this expires."""
        p = self.published
        return p.this_update + (p.next_update - p.this_update) / 2


CrlMaker = Callable[[Sequence[Revocation], datetime], CrlRelease]
"""Builds and signs the CRL listing these revocations, as of this time."""


def crl_maker(
    signers: SigningAuthority | Callable[[], Sequence[SigningAuthority]], validity: timedelta = CRL_VALIDITY
) -> CrlMaker:
    """One CRL per CA whose leaves may be live (every signing slot not retired, asked anew each
    time), each listing every revocation: serials are random, so a CA's list naming another's
    serial harms nothing, and Envoy needs a CRL from the issuer of whatever leaf a peer shows.
    The release carries those CAs' certificates and chains, so that an agent holding a leaf of
    one signing CA can check the CRL of the other."""
    current = signers if callable(signers) else (lambda: (signers,))

    def make(revocations: Sequence[Revocation], now: datetime) -> CrlRelease:
        authorities = tuple(current())
        crls = [build_crl(a, revocations, now=now, validity=validity) for a in authorities]
        ders = tuple(crl_der(crl) for crl in crls)
        first = crls[0]
        assert first.next_update_utc is not None
        return CrlRelease(
            ders=ders,
            signers=signer_ders(authorities),
            published=PublishedCrl(
                number=crl_number(first),
                this_update=first.last_update_utc,
                next_update=first.next_update_utc,
                entries=len(first),
                ca_key_id=authorities[0].key_id,
                sha256=hashlib.sha256(b"".join(ders)).hexdigest(),
            ),
        )

    return make


def signer_ders(authorities: Iterable[SigningAuthority]) -> tuple[bytes, ...]:
    """The DER of each authority's signing certificate and the chain above it, up to but not
    including its root (nothing for a root that signs itself), each certificate once."""
    seen: dict[bytes, None] = {}
    for authority in authorities:
        for cert in authority.chain:
            seen.setdefault(cert.public_bytes(serialization.Encoding.DER))
    return tuple(seen)


@dataclass(frozen=True)
class OrderPlan:
    """A pushing order as the coordinator pushes it: each target's slot in the spread."""

    order: Order
    slots: dict[str, int]  # target serial -> its index, for push_delay
    spiffe_ids: dict[str, str]  # target serial -> the SPIFFE ID it was issued to
    outstanding: frozenset[str]  # targets neither replaced nor revoked when the plan was loaded

    @classmethod
    def of(cls, order: Order, targets: Sequence[Target]) -> OrderPlan:
        return cls(
            order=order,
            slots={t.certificate.serial: t.index for t in targets},
            spiffe_ids={t.certificate.serial: t.certificate.spiffe_id for t in targets},
            outstanding=frozenset(
                t.certificate.serial for t in targets if t.state is TargetState.OUTSTANDING
            ),
        )

    def delay(self, serial: str, now: datetime) -> timedelta:
        count = self.order.matched or len(self.slots)
        return push_delay(self.slots[serial], count, self.order.spread, now - self.order.time)


def past_grace(plans: Iterable[OrderPlan], now: datetime) -> int:
    """How many of these pushing orders' grace periods ended at or before `now`."""
    return sum(1 for plan in plans if plan.order.grace_ends <= now)


@dataclass(frozen=True)
class Snapshot:
    """What one reload read from the store."""

    active: frozenset[str]  # ids of the orders still pushing
    new_plans: dict[str, OrderPlan]  # the pushing orders not loaded before
    revoked: frozenset[str]
    crl: CrlRelease | None  # None: keep the current one


def rotate_message(plan: OrderPlan, serial: str, now: datetime) -> bytes:
    delay_ms = int(plan.delay(serial, now).total_seconds() * 1000)
    message = pb.ControlMessage(
        rotate=pb.RotateOrder(
            order_id=plan.order.id, serial=serial, delay_ms=delay_ms, reason=plan.order.reason
        )
    )
    return message.SerializeToString()


def revocation_message(crl: CrlRelease | None) -> bytes:
    if crl is None:
        return pb.ControlMessage(revocations=pb.RevocationList()).SerializeToString()
    message = pb.ControlMessage(
        revocations=pb.RevocationList(
            crl_der=list(crl.ders), number=crl.published.number, signer_der=list(crl.signers)
        )
    )
    return message.SerializeToString()


def reissue_message(serial: str, reason: str) -> bytes:
    return pb.ControlMessage(reissue=pb.Reissue(serial=serial, reason=reason)).SerializeToString()


def bundle_message(root_ders: Sequence[bytes], sequence: int) -> bytes:
    return pb.ControlMessage(
        bundle=pb.TrustBundle(root_der=list(root_ders), sequence=sequence)
    ).SerializeToString()


def next_bundle_sequence(previous: int, now: datetime) -> int:
    """The sequence number of the next bundle: the time in milliseconds, so that it grows across
    restarts and replicas too, or one more than `previous` when that is not larger."""
    return max(previous + 1, int(now.timestamp() * 1000))


MAX_REPORTED_ROOTS = 64  # roots taken from one report; a real bundle holds two or three
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def reported_roots(sha256s: Iterable[str]) -> frozenset[str]:
    """The roots an agent's report names: hex SHA-256 values (lower-cased), at most
    MAX_REPORTED_ROOTS of them; anything else is not a root and is left out."""
    roots: set[str] = set()
    for value in sha256s:
        value = value.lower()
        if _SHA256_HEX.match(value):
            roots.add(value)
            if len(roots) == MAX_REPORTED_ROOTS:
                break
    return frozenset(roots)


class BundleReports:
    """The roots each open session last reported holding, and how many sessions hold each root.

    Pure bookkeeping (the coordinator's lock guards it): a report replaces the session's previous
    one, and a session that ends takes its report with it."""

    def __init__(self) -> None:
        self._by_session: dict[object, frozenset[str]] = {}
        self._holding: collections.Counter[str] = collections.Counter()

    def report(self, session: object, roots: frozenset[str]) -> None:
        self.forget(session)
        if roots:  # a session that reports no root holds none: nothing to keep for it
            self._by_session[session] = roots
            self._holding.update(roots)

    def forget(self, session: object) -> None:
        roots = self._by_session.pop(session, None)
        if roots is None:
            return
        self._holding.subtract(roots)
        for root in roots:
            if self._holding[root] <= 0:
                del self._holding[root]

    def holding(self, root_sha256: str) -> int:
        return self._holding[root_sha256.lower()]


@dataclass
class _State:
    """What the coordinator knows; changed only under the coordinator's lock."""

    plans: dict[str, OrderPlan] = field(default_factory=dict)
    by_serial: dict[str, set[str]] = field(default_factory=dict)  # outstanding serial -> order ids
    replaced: set[tuple[str, str]] = field(default_factory=set)  # (order id, old serial) marked here
    revoked: frozenset[str] = frozenset()
    crl: CrlRelease | None = None
    crl_message: bytes = field(default_factory=lambda: revocation_message(None))
    # By serial; a tuple (nearly always of one), not a set: a set is 216 bytes of each stream.
    sessions: dict[str, tuple[Session, ...]] = field(default_factory=dict)
    session_count: int = 0
    reports: BundleReports = field(default_factory=BundleReports)  # the roots each session holds
    bundle_message: bytes | None = None  # the TrustBundle every session gets; None: none published
    bundle_sequence: int = 0

    def add_plan(self, plan: OrderPlan) -> None:
        self.plans[plan.order.id] = plan
        for serial in plan.outstanding:
            if (plan.order.id, serial) not in self.replaced:
                self.by_serial.setdefault(serial, set()).add(plan.order.id)

    def drop_plan(self, order_id: str) -> None:
        plan = self.plans.pop(order_id)
        for serial in plan.outstanding:
            self._forget(serial, order_id)
        self.replaced = {pair for pair in self.replaced if pair[0] != order_id}

    def mark_replaced(self, order_id: str, serial: str) -> None:
        self.replaced.add((order_id, serial))
        self._forget(serial, order_id)

    def add_session(self, session: Session) -> None:
        self.sessions[session.serial] = (*self.sessions.get(session.serial, ()), session)

    def remove_session(self, session: Session) -> bool:
        """False if `session` is not known by its serial."""
        held = self.sessions.get(session.serial, ())
        if session not in held:
            return False
        rest = tuple(s for s in held if s is not session)
        if rest:
            self.sessions[session.serial] = rest
        else:
            del self.sessions[session.serial]
        return True

    def _forget(self, serial: str, order_id: str) -> None:
        ids = self.by_serial.get(serial)
        if ids is not None:
            ids.discard(order_id)
            if not ids:
                del self.by_serial[serial]


class PushCoordinator:
    def __init__(
        self,
        *,
        store: RotationStore,
        clock: Clock,
        crl: CrlMaker | None = None,
        reader: Executor | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._make_crl = crl
        # Reloads never run on the event loop: one thread, one reload at a time.
        self._reader = reader or ThreadPoolExecutor(max_workers=1, thread_name_prefix="push-reload")
        self._lock = threading.Lock()
        self._state = _State()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Event | None = None
        self._loaded = threading.Event()
        self._dirty = False
        self._reloading = False
        self._crl_due = True
        self._bundle_after_crl: tuple[tuple[x509.Certificate, ...], float] | None = None
        self._closed = False
        self.reloads = 0  # reloads taken in (each one a snapshot of the rotation tables)
        self._last_recorded: frozenset[str] = frozenset()  # what the last CRL recorded listed

    # ------------------------------------------------------------------ life cycle

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serve sessions on `loop` (the asyncio gRPC server's); call before `start`."""
        self._loop = loop
        self._ready = asyncio.Event()

    def start(self) -> None:
        """The first load; sessions wait for it before they get anything."""
        self.notify_changed()

    def wait_loaded(self, timeout_s: float) -> bool:
        return self._loaded.wait(timeout_s)

    def close(self) -> None:
        self._closed = True
        self._reader.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ what others ask

    def is_revoked(self, serial: str) -> bool:
        """Whether the ledger lists this serial (lower-case hex) as revoked, as of the last
        reload: at most a second behind another replica's revocation on SQLite, at once on
        PostgreSQL and for revocations this CA made."""
        return serial in self._state.revoked

    def connected_serials(self) -> set[str]:
        """Serials of the certificates with an open control stream to this CA now."""
        with self._lock:
            return set(self._state.sessions)

    def pushable_serials(self) -> set[str]:
        """Serials a push from this CA reaches now: those connected, less the revoked ones
        (their streams are being closed with a Reissue)."""
        with self._lock:
            return set(self._state.sessions) - self._state.revoked

    def holders(self, targets: Iterable[TargetCertificate]) -> dict[str, Holder]:
        """Who holds each target, for a dry run: connected to this CA; a meshca agent not
        connected (to this CA, at least); or another client that cannot be pushed."""
        pushable = self.pushable_serials()
        return {
            t.serial: Holder.CONNECTED
            if t.serial in pushable
            else (Holder.NOT_CONNECTED if t.from_meshca_agent else Holder.NOT_PUSHABLE)
            for t in targets
        }

    def session_count(self) -> int:
        return self._state.session_count

    def orders_past_grace(self) -> int:
        """Orders still pushing whose grace period has ended by the CA's clock: `tick` completes
        them, so more than a moment above 0 means completing them fails (a metric and an alert)."""
        now = self._clock.now()
        with self._lock:
            return past_grace(self._state.plans.values(), now)

    def bundle_holders(self, root_sha256: str) -> Acknowledgement:
        """How many open control streams hold the root whose DER has this SHA-256 (hex), by their
        agent's latest report, of how many are open now."""
        with self._lock:
            return Acknowledgement(
                holding=self._state.reports.holding(root_sha256), connected=self._state.session_count
            )

    # ------------------------------------------------------------------ the trust bundle

    def publish_bundle(self, roots: Sequence[x509.Certificate]) -> None:
        """Make `roots` the trust bundle every agent serves: a TrustBundle goes to every open
        session at once (on the loop), and to each new session after its first revocation
        list. Any thread; CaMaterialError for an empty bundle, which would leave every workload
        trusting nothing."""
        ders = [root.public_bytes(serialization.Encoding.DER) for root in roots]
        if not ders:
            raise CaMaterialError(
                "a trust bundle needs at least one root certificate; publish the roots of every "
                "signing slot that is not retired",
                reason="bundle_empty",
            )
        with self._lock:
            state = self._state
            state.bundle_sequence = next_bundle_sequence(state.bundle_sequence, self._clock.now())
            message = state.bundle_message = bundle_message(ders, state.bundle_sequence)
            sequence, connected = state.bundle_sequence, state.session_count
        log.info(
            "publishing the trust bundle",
            extra={
                "sequence": sequence,
                "roots": [hashlib.sha256(der).hexdigest() for der in ders],
                "connected": connected,
            },
        )
        if self._loop is None:
            self._push_bundle(message)
        else:
            self._loop.call_soon_threadsafe(self._push_bundle, message)

    def _push_bundle(self, message: bytes) -> None:
        """Send this bundle to every open session, unless a newer one replaced it meanwhile (that
        one is on its way). On the loop when there is one."""
        with self._lock:
            if self._state.bundle_message is not message:
                return
            everyone = [s for held in self._state.sessions.values() for s in held]
        for session in everyone:
            session.send(message)

    def verified_replacement(self, *, order_id: str, replaces: str, spiffe_id: str) -> bool:
        """Whether `replaces` is a target of order `order_id` issued to `spiffe_id`: only then
        may a new certificate's issued record name the order and the serial it replaces.

        An order not loaded yet (made a moment ago through another replica) is asked of the
        store: one target, by key, on the caller's thread.
        """
        if not ORDER_ID.match(order_id):
            return False
        with self._lock:
            plan = self._state.plans.get(order_id)
        if plan is not None:
            return plan.spiffe_ids.get(replaces) == spiffe_id
        target = self._store.target(order_id, replaces, self._clock.now())
        return target is not None and target.certificate.spiffe_id == spiffe_id

    def replaced(self, *, order_id: str, old_serial: str, new_serial: str) -> None:
        """A certificate issued for an order, its link verified and recorded: its record marked
        the target replaced in the ledger as it was written (and the certificate API logged
        it); stop pushing the order to it."""
        with self._lock:
            if (order_id, old_serial) in self._state.replaced:
                return
            self._state.mark_replaced(order_id, old_serial)

    # ------------------------------------------------------------------ sessions (on the loop)

    async def wait_ready(self) -> None:
        assert self._ready is not None, "attach() the coordinator to the server's loop first"
        await self._ready.wait()

    def register(self, session: Session, held: Iterable[str] = ()) -> bool:
        """Start pushing to `session`, whose agent holds the roots `held` (SHA-256 hex, from its
        Hello): the revocation list first, then the trust bundle if one was published, then
        every order it is a target of (late holders go at once once their slot has passed). A
        session opened with a revoked certificate gets the list and a Reissue, its stream is
        closed, and it is not registered (False). On the loop."""
        now = self._clock.now()
        roots = reported_roots(held)
        with self._lock:
            state = self._state
            revoked = session.serial in state.revoked
            if not revoked:
                state.add_session(session)
                state.session_count += 1
                state.reports.report(session, roots)
            crl_message = state.crl_message
            bundle = state.bundle_message
            plans = [state.plans[i] for i in sorted(state.by_serial.get(session.serial, ()))]
        session.send_revocations(crl_message)
        if revoked:
            log.info("told an agent its certificate is revoked", extra={"serial": session.serial})
            session.send(reissue_message(session.serial, "revoked"))
            session.close(grpc.StatusCode.UNAUTHENTICATED, REISSUE_DETAILS)
            return False
        if bundle is not None:
            session.send(bundle)
        for plan in plans:
            session.send(rotate_message(plan, session.serial, now))
        if plans:
            log.info(
                "pushed rotation orders on connect",
                extra={"serial": session.serial, "orders": [p.order.id for p in plans]},
            )
        return True

    def unregister(self, session: Session) -> None:
        """On the loop."""
        with self._lock:
            if not self._state.remove_session(session):
                return
            self._state.session_count -= 1
            self._state.reports.forget(session)

    def rebind(self, session: Session, serial: str) -> bool:
        """The agent of `session` proved it holds certificate `serial` now: know the stream by
        it, and push the orders that cover it. False, with nothing changed, when `serial` is
        revoked or the session is not registered. On the loop."""
        now = self._clock.now()
        with self._lock:
            state = self._state
            if serial in state.revoked or not state.remove_session(session):
                return False
            session.serial = serial
            state.add_session(session)
            plans = [state.plans[i] for i in sorted(state.by_serial.get(serial, ()))]
        for plan in plans:
            session.send(rotate_message(plan, serial, now))
        return True

    def report_bundle(self, session: Session, held: Iterable[str], *, sequence: int = 0) -> None:
        """The agent of `session` now serves these roots (SHA-256 hex), after a pushed bundle
        (`sequence`, for the log). On the loop."""
        roots = reported_roots(held)
        with self._lock:
            if session not in self._state.sessions.get(session.serial, ()):
                return
            self._state.reports.report(session, roots)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "an agent holds the trust bundle",
                extra={"serial": session.serial, "sequence": sequence, "roots": sorted(roots)},
            )

    def report_replaced(self, session: Session, *, order_id: str, old_serial: str, new_serial: str) -> None:
        """An agent reports it followed an order: logged only. The target was marked by the new
        certificate's issued record, if the request named the order (the agent's always does);
        a report cannot mark it, as it proves nothing the ledger does not hold. On the loop."""
        if old_serial != session.serial:
            log.warning(
                "ignored a replacement report for another certificate",
                extra={"serial": session.serial, "reported_old_serial": old_serial, "order_id": order_id},
            )
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "an agent reports it replaced its certificate",
                extra={"order_id": order_id, "old_serial": old_serial, "new_serial": new_serial},
            )

    # ------------------------------------------------------------------ changes

    def notify_changed(self) -> None:
        """The rotation tables changed (or may have): reload them and push what is new.
        Any thread; reloads never overlap, and changes during one cause one more after it."""
        if self._closed:
            return
        if self._loop is None:
            self._reader.submit(self._reload_now)
        else:
            self._loop.call_soon_threadsafe(self._request_reload)

    def signers_changed(self, bundle: Sequence[x509.Certificate] | None = None) -> None:
        """The CA's signing slots changed: sign and push a new set of CRLs now, then `bundle`
        (when given). In that order: when a root leaves the bundle, an agent that took the new
        bundle first would hold CRLs from a signing CA that no longer chains to any root it
        trusts, and its enforcer would refuse them all until the next list. If the CRLs cannot
        be made, the bundle follows at the next tick after BUNDLE_AFTER_CRL_S anyway."""
        with self._lock:
            self._bundle_after_crl = (tuple(bundle), self._clock.monotonic()) if bundle is not None else None
        self._crl_due = True
        self.notify_changed()

    def _release_bundle(self, *, overdue_only: bool) -> None:
        with self._lock:
            pending = self._bundle_after_crl
            if pending is None or (
                overdue_only and self._clock.monotonic() - pending[1] < BUNDLE_AFTER_CRL_S
            ):
                return
            self._bundle_after_crl = None
        self.publish_bundle(pending[0])

    def tick(self) -> None:
        """Once a second (the CA's scheduler thread): complete the orders whose grace period
        ended, and rebuild the CRL when its refresh time has come."""
        now = self._clock.now()
        try:
            completed = self._store.complete_due_orders(now)
        except Exception as err:
            log.warning("could not complete due rotation orders; will retry", extra={"detail": str(err)})
            completed = []
        for order, revoked in completed:
            log.info(
                "rotation order completed: grace period over",
                extra={"order_id": order.id, "revoked": len(revoked)},
            )
        crl = self._state.crl
        if crl is not None and now >= crl.refresh_at():
            self._crl_due = True
        if completed or self._crl_due:
            self.notify_changed()
        self._release_bundle(overdue_only=True)

    def _request_reload(self) -> None:
        self._dirty = True
        if not self._reloading and self._loop is not None:
            self._reloading = True
            self._loop.create_task(self._reload_while_dirty())

    async def _reload_while_dirty(self) -> None:
        assert self._loop is not None
        try:
            while self._dirty and not self._closed:
                self._dirty = False
                try:
                    snapshot = await self._loop.run_in_executor(self._reader, self._load)
                except Exception as err:
                    log.warning(
                        "could not reload rotation orders and revocations", extra={"detail": str(err)}
                    )
                    continue
                self._apply(snapshot)
        finally:
            self._reloading = False

    def _reload_now(self) -> None:
        try:
            self._apply(self._load())
        except Exception as err:
            log.warning("could not reload rotation orders and revocations", extra={"detail": str(err)})

    def _load(self) -> Snapshot:
        """Read the tables (on the reload thread)."""
        now = self._clock.now()
        with self._lock:
            known = set(self._state.plans)
            previous_revoked = self._state.revoked
            have_crl = self._state.crl is not None
        orders = self._store.orders(limit=MAX_ACTIVE_ORDERS, state=OrderState.PUSHING)
        new_plans = {
            o.id: OrderPlan.of(o, self._store.targets(o.id, now)) for o in orders if o.id not in known
        }
        revocations = self._store.revocations(now)
        revoked = frozenset(r.serial for r in revocations)
        crl = None
        if self._make_crl is not None and (revoked != previous_revoked or self._crl_due or not have_crl):
            self._crl_due = False
            crl = self._make_crl(revocations, now)
            self._record_crl(crl, now, listed=revoked)
        return Snapshot(active=frozenset(o.id for o in orders), new_plans=new_plans, revoked=revoked, crl=crl)

    def _record_crl(self, crl: CrlRelease, now: datetime, *, listed: frozenset[str]) -> None:
        """A CRL listing something is a ledger record (crl_published), and so is the empty one
        that follows it; the empty CRL of a CA that has revoked nothing is not, so a ledger without
        revocations holds no CRL records, however often its CAs restart."""
        published = crl.published
        record = bool(listed) or bool(self._last_recorded)
        self._last_recorded = listed
        log.info(
            "published a CRL",
            extra={
                "crl_number": published.number,
                "entries": published.entries,
                "next_update": published.next_update.isoformat(),
            },
        )
        if not record:
            return
        try:
            self._store.record_crl(published, now)
        except Exception as err:
            log.warning("could not record the published CRL in the ledger", extra={"detail": str(err)})

    def _apply(self, snapshot: Snapshot) -> None:
        """Take in a reload and push what is new (on the loop when there is one)."""
        now = self._clock.now()
        with self._lock:
            state = self._state
            for gone in [i for i in state.plans if i not in snapshot.active]:
                state.drop_plan(gone)
            for plan in snapshot.new_plans.values():
                if plan.order.id not in state.plans:
                    state.add_plan(plan)
            newly_revoked = snapshot.revoked - state.revoked
            state.revoked = snapshot.revoked
            if snapshot.crl is not None:
                state.crl = snapshot.crl
                state.crl_message = revocation_message(snapshot.crl)
            pushes = [
                (session, plan)
                for plan in snapshot.new_plans.values()
                for serial in plan.outstanding
                for session in state.sessions.get(serial, ())
            ]
            everyone = [s for held in state.sessions.values() for s in held] if snapshot.crl else []
            reissues = [s for serial in newly_revoked for s in state.sessions.get(serial, ())]
            crl_message = state.crl_message
        for session in everyone:
            session.send_revocations(crl_message)
        if snapshot.crl is not None:
            self._release_bundle(overdue_only=False)
        for session, plan in pushes:
            session.send(rotate_message(plan, session.serial, now))
        for session in reissues:
            session.send(reissue_message(session.serial, "revoked"))
            session.close(grpc.StatusCode.UNAUTHENTICATED, REISSUE_DETAILS)
        for plan in snapshot.new_plans.values():
            log.info(
                "pushing rotation order",
                extra={
                    "order_id": plan.order.id,
                    "targets": len(plan.slots),
                    "connected": sum(1 for s, p in pushes if p is plan),
                },
            )
        self.reloads += 1
        if not self._loaded.is_set():
            self._loaded.set()
            if self._ready is not None:
                self._ready.set()
