"""The push coordinator with the in-memory rotation store and fake sessions: what each connected
agent is sent, in what order, with what delay, and what the rest of the CA is told."""

from __future__ import annotations

import asyncio
import hashlib
import tracemalloc
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca._proto import meshca_control_pb2 as pb
from ca.errors import CaMaterialError
from ca.issuance.slots import Acknowledgement
from ca.ledger.rotation import Holder, Order, Selector, TargetState
from ca.server.push import (
    BUNDLE_AFTER_CRL_S,
    CRL_VALIDITY,
    MAX_REPORTED_ROOTS,
    BundleReports,
    OrderPlan,
    PushCoordinator,
    crl_maker,
    next_bundle_sequence,
    past_grace,
    reported_roots,
    revocation_message,
)
from tests.support.clock import FakeClock
from tests.support.issuing import authority_from, make_root
from tests.support.pki import make_hierarchy
from tests.support.rotation import MemoryRotationStore, certificate
from tests.support.signing_cas import two_signing_cas

T0 = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
CART = "spiffe://cluster.local/ns/shop/sa/cart"
WEB = "spiffe://cluster.local/ns/shop/sa/web"


class FakeSession:
    def __init__(self, serial: str, spiffe_id: str = CART) -> None:
        self.serial = serial
        self.spiffe_id = spiffe_id
        self.messages: list[pb.ControlMessage] = []
        self.closed: tuple[grpc.StatusCode, str] | None = None

    def send(self, message: bytes) -> None:
        self.messages.append(pb.ControlMessage.FromString(message))

    def send_revocations(self, message: bytes) -> None:
        self.send(message)

    def close(self, code: grpc.StatusCode, details: str) -> None:
        self.closed = (code, details)

    def kinds(self) -> list[str]:
        return [str(m.WhichOneof("kind")) for m in self.messages]

    def orders(self) -> list[pb.RotateOrder]:
        return [m.rotate for m in self.messages if m.WhichOneof("kind") == "rotate"]

    def crl_numbers(self) -> list[int]:
        return [m.revocations.number for m in self.messages if m.WhichOneof("kind") == "revocations"]


class Rig:
    def __init__(self) -> None:
        self.clock = FakeClock(T0)
        self.store = MemoryRotationStore()
        self.authority = make_root(self.clock)
        self.coordinator = PushCoordinator(store=self.store, clock=self.clock, crl=crl_maker(self.authority))

    def issue(self, serial: str, **fields: Any) -> None:
        self.store.add_issued(
            certificate(serial, issued=fields.pop("issued", T0 - timedelta(minutes=5)), **fields)
        )

    def order(
        self, order_id: str, selector: Selector, *, spread: timedelta = timedelta(0), **terms: Any
    ) -> Order:
        order = Order(
            id=order_id,
            ordered_by="spiffe://cluster.local/ns/istio-system/sa/admin",
            time=self.clock.now(),
            selector=selector,
            reason="key leaked",
            spread=spread,
            **terms,
        )
        self.store.create_order(order, self.store.live_certificates(selector, self.clock.now()))
        return order

    async def start(self) -> None:
        self.coordinator.attach(asyncio.get_running_loop())
        self.coordinator.start()
        await asyncio.wait_for(self.coordinator.wait_ready(), 5)

    async def changed(self) -> None:
        """Tell the coordinator the tables changed, and wait for it to take them in."""
        before = self.coordinator.reloads
        self.coordinator.notify_changed()
        await until(lambda: self.coordinator.reloads > before, "a reload")

    def connect(self, serial: str, spiffe_id: str = CART) -> FakeSession:
        session = FakeSession(serial, spiffe_id)
        self.coordinator.register(session)
        return session


async def until(check: Callable[[], object], what: str, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def run(body: Callable[[Rig], Coroutine[Any, Any, None]]) -> None:
    rig = Rig()
    try:
        asyncio.run(body(rig))
    finally:
        rig.coordinator.close()


def test_a_session_gets_the_crl_first_then_the_orders_that_cover_its_certificate() -> None:
    async def body(rig: Rig) -> None:
        rig.issue("a1")
        rig.issue("b2", namespace="shop-canary")
        rig.order("ro-000000000001", Selector(namespace="shop"))
        await rig.start()
        covered, other = rig.connect("a1"), rig.connect("b2", "spiffe://cluster.local/ns/shop-canary/sa/cart")
        assert covered.kinds() == ["revocations", "rotate"]
        assert other.kinds() == ["revocations"]
        crl = x509.load_der_x509_crl(covered.messages[0].revocations.crl_der[0])
        assert crl.issuer == rig.authority.signing_cert.subject and len(crl) == 0
        assert covered.orders()[0] == pb.RotateOrder(
            order_id="ro-000000000001", serial="a1", delay_ms=0, reason="key leaked"
        )
        assert rig.coordinator.connected_serials() == {"a1", "b2"}

    run(body)


def test_a_new_order_is_pushed_to_the_connected_holders_it_covers_and_no_one_else() -> None:
    async def body(rig: Rig) -> None:
        for serial in ("a1", "a2"):
            rig.issue(serial)
        rig.issue("c3", namespace="shop-canary")
        await rig.start()
        a1, a2, c3 = rig.connect("a1"), rig.connect("a2"), rig.connect("c3")
        rig.order("ro-000000000002", Selector(namespace="shop"))
        await rig.changed()
        assert [o.serial for o in a1.orders()] == ["a1"]
        assert [o.serial for o in a2.orders()] == ["a2"]
        assert c3.orders() == []
        await rig.changed()  # nothing new: nothing pushed again
        assert len(a1.orders()) == 1

    run(body)


def test_pushes_are_spread_by_target_index_and_a_late_holder_waits_only_for_what_is_left() -> None:
    async def body(rig: Rig) -> None:
        serials = ["a1", "a2", "a3", "a4"]
        for serial in serials:
            rig.issue(serial)
        await rig.start()
        sessions = {serial: rig.connect(serial) for serial in serials[:3]}
        rig.order(
            "ro-000000000003",
            Selector(namespace="shop"),
            spread=timedelta(seconds=20),
            grace=timedelta(minutes=5),
        )
        await rig.changed()
        index = {t.certificate.serial: t.index for t in rig.store.targets("ro-000000000003", rig.clock.now())}
        for serial, session in sessions.items():
            assert session.orders()[0].delay_ms == index[serial] * 5000
        rig.clock.advance(timedelta(seconds=12))
        late = rig.connect("a4")
        assert late.orders()[0].delay_ms == max(0, index["a4"] * 5000 - 12000)

    run(body)


def test_a_revocation_reaches_every_session_and_ends_the_revoked_ones_stream_with_reissue() -> None:
    async def body(rig: Rig) -> None:
        rig.issue("a1")
        rig.issue("a2")
        await rig.start()
        a1, a2 = rig.connect("a1"), rig.connect("a2")
        first = a1.crl_numbers()[0]
        rig.clock.advance(timedelta(seconds=1))
        rig.store.revoke(["a1"], reason="keyCompromise", at=rig.clock.now())
        await rig.changed()
        assert a1.kinds() == ["revocations", "revocations", "reissue"]
        assert a1.messages[-1].reissue.serial == "a1"
        assert a1.closed is not None and a1.closed[0] is grpc.StatusCode.UNAUTHENTICATED
        assert a2.kinds() == ["revocations", "revocations"] and a2.closed is None
        assert a2.crl_numbers()[1] > first
        crl = x509.load_der_x509_crl(a2.messages[1].revocations.crl_der[0])
        assert [entry.serial_number for entry in crl] == [0xA1]
        assert rig.coordinator.is_revoked("a1") and not rig.coordinator.is_revoked("a2")
        assert rig.coordinator.pushable_serials() == {"a2"}

    run(body)


def test_connecting_with_a_revoked_certificate_gets_the_crl_and_reissue_and_is_not_registered() -> None:
    async def body(rig: Rig) -> None:
        rig.issue("a1")
        rig.store.revoke(["a1"], reason="keyCompromise", at=rig.clock.now())
        await rig.start()
        session = FakeSession("a1")
        assert rig.coordinator.register(session) is False
        assert session.kinds() == ["revocations", "reissue"]
        assert session.closed is not None
        assert rig.coordinator.connected_serials() == set()

    run(body)


def test_when_the_grace_period_ends_the_targets_are_revoked_and_their_holders_told() -> None:
    async def body(rig: Rig) -> None:
        rig.issue("a1")
        await rig.start()
        session = rig.connect("a1")
        rig.order("ro-000000000004", Selector(serials=("a1",)), grace=timedelta(seconds=30))
        await rig.changed()
        before = rig.coordinator.reloads
        rig.clock.advance(timedelta(seconds=29))
        rig.coordinator.tick()
        assert not rig.store.is_revoked("a1")
        rig.clock.advance(timedelta(seconds=1))
        rig.coordinator.tick()
        await until(lambda: rig.coordinator.reloads > before, "the reload after completion")
        assert rig.store.is_revoked("a1")
        assert session.kinds()[-2:] == ["revocations", "reissue"]

    run(body)


def test_an_order_counts_as_past_grace_from_its_grace_end_until_it_is_completed() -> None:
    async def body(rig: Rig) -> None:
        rig.issue("a1")
        rig.issue("b1")
        await rig.start()
        rig.order("ro-000000000007", Selector(serials=("a1",)), grace=timedelta(seconds=30))
        rig.order("ro-000000000008", Selector(serials=("b1",)), grace=timedelta(seconds=60))
        await rig.changed()
        rig.clock.advance(timedelta(seconds=29))
        assert rig.coordinator.orders_past_grace() == 0
        rig.clock.advance(timedelta(seconds=1))
        assert rig.coordinator.orders_past_grace() == 1  # the first one's grace ends now
        before = rig.coordinator.reloads
        rig.coordinator.tick()  # completes it
        await until(lambda: rig.coordinator.reloads > before, "the reload after completion")
        assert rig.coordinator.orders_past_grace() == 0

    run(body)


class StuckStore(MemoryRotationStore):
    """A store whose due orders cannot be completed (the ledger's database went away)."""

    def complete_due_orders(self, now: datetime) -> list[Any]:
        raise OSError("the database is gone")


def test_an_order_whose_completion_fails_stays_past_grace(caplog: pytest.LogCaptureFixture) -> None:
    async def body(rig: Rig) -> None:
        rig.issue("a1")
        await rig.start()
        rig.order("ro-000000000009", Selector(serials=("a1",)), grace=timedelta(seconds=30))
        await rig.changed()
        rig.clock.advance(timedelta(seconds=45))
        rig.coordinator.tick()
        await rig.changed()
        assert rig.coordinator.orders_past_grace() == 1
        assert "could not complete due rotation orders" in caplog.text

    rig = Rig()
    rig.store = StuckStore()
    rig.coordinator = PushCoordinator(store=rig.store, clock=rig.clock, crl=crl_maker(rig.authority))
    try:
        asyncio.run(body(rig))
    finally:
        rig.coordinator.close()


def test_past_grace_counts_the_orders_whose_grace_ended_by_then() -> None:
    def plan(grace_s: int) -> OrderPlan:
        order = Order(
            id=f"ro-{grace_s:012x}",
            ordered_by="admin",
            time=T0,
            selector=Selector(all=True),
            reason="test",
            grace=timedelta(seconds=grace_s),
        )
        return OrderPlan.of(order, [])

    plans = [plan(10), plan(20), plan(30)]
    assert [past_grace(plans, T0 + timedelta(seconds=s)) for s in (9, 10, 25, 30, 31)] == [0, 1, 2, 3, 3]
    assert past_grace([], T0) == 0


def test_the_crl_is_rebuilt_halfway_to_its_next_update_without_any_change() -> None:
    async def body(rig: Rig) -> None:
        rig.issue("a1", lifetime=timedelta(days=3))
        rig.issue("a2", lifetime=timedelta(days=3))
        rig.store.revoke(["a2"], reason="keyCompromise", at=rig.clock.now())
        await rig.start()
        session = rig.connect("a1")
        before = rig.coordinator.reloads
        rig.clock.advance(CRL_VALIDITY / 2 - timedelta(minutes=5))  # thisUpdate is backdated
        rig.coordinator.tick()
        assert rig.coordinator.reloads == before and len(session.crl_numbers()) == 1
        rig.clock.advance(timedelta(minutes=5))
        rig.coordinator.tick()
        await until(lambda: len(session.crl_numbers()) == 2, "a fresh CRL")
        assert session.crl_numbers()[1] > session.crl_numbers()[0]
        published = [r for r in rig.store.records if r["kind"] == "crl_published"]
        assert [r["crl_number"] for r in published] == session.crl_numbers()

    run(body)


def test_a_replacement_claim_is_verified_against_the_order_and_the_identity() -> None:
    async def body(rig: Rig) -> None:
        rig.issue("a1")
        rig.issue("d4", service_account="web")
        rig.order("ro-000000000005", Selector(namespace="shop"))
        await rig.start()
        verified = rig.coordinator.verified_replacement
        assert verified(order_id="ro-000000000005", replaces="a1", spiffe_id=CART)
        assert not verified(order_id="ro-000000000005", replaces="a1", spiffe_id=WEB)  # another's
        assert not verified(order_id="ro-000000000005", replaces="ff", spiffe_id=CART)  # no target
        assert not verified(order_id="ro-00000000000x", replaces="a1", spiffe_id=CART)  # malformed
        # An order made a moment ago, not loaded yet (as through another replica): asked of the store.
        rig.order("ro-000000000006", Selector(serials=("d4",)))
        assert verified(order_id="ro-000000000006", replaces="d4", spiffe_id=WEB)

    run(body)


def test_a_recorded_replacement_is_not_pushed_again_and_costs_no_write_of_the_coordinators() -> None:
    """The issued record that carries the link marks the target in the ledger (ca.ledger.store);
    the coordinator only stops pushing the order to that serial."""

    async def body(rig: Rig) -> None:
        rig.issue("a1")
        rig.order("ro-000000000007", Selector(namespace="shop"))
        await rig.start()
        marker = rig.store.change_marker()
        rig.coordinator.replaced(order_id="ro-000000000007", old_serial="a1", new_serial="b1")
        assert rig.connect("a1").kinds() == ["revocations"]
        assert rig.store.change_marker() == marker
        target = rig.store.target("ro-000000000007", "a1", rig.clock.now())
        assert target is not None and target.state is TargetState.OUTSTANDING

    run(body)


def test_a_replaced_report_is_only_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def body(rig: Rig) -> None:
        for serial, account in (("a1", "cart"), ("b1", "cart")):
            rig.issue(serial, service_account=account)
        rig.order("ro-000000000008", Selector(serials=("a1",)))
        await rig.start()
        holder, stranger = rig.connect("a1"), rig.connect("b1")
        marker = rig.store.change_marker()
        rig.coordinator.report_replaced(
            stranger, order_id="ro-000000000008", old_serial="a1", new_serial="b1"
        )
        rig.coordinator.report_replaced(holder, order_id="ro-000000000008", old_serial="a1", new_serial="b1")
        assert rig.store.change_marker() == marker
        assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
            "ignored a replacement report for another certificate"
        ]

    run(body)


def test_holders_for_a_dry_run() -> None:
    async def body(rig: Rig) -> None:
        rig.issue("a1")
        rig.issue("a2")
        rig.issue("a3", from_meshca_agent=False)
        await rig.start()
        rig.connect("a1")
        targets = rig.store.live_certificates(Selector(namespace="shop"), rig.clock.now())
        assert rig.coordinator.holders(targets) == {
            "a1": Holder.CONNECTED,
            "a2": Holder.NOT_CONNECTED,
            "a3": Holder.NOT_PUSHABLE,
        }

    run(body)


def test_a_burst_of_changes_is_taken_in_by_few_reloads_none_overlapping() -> None:
    async def body(rig: Rig) -> None:
        await rig.start()
        active = 0
        most = 0
        original = rig.store.orders

        def counting_orders(**kwargs: Any) -> list[Order]:
            nonlocal active, most
            active += 1
            most = max(most, active)
            try:
                return original(**kwargs)
            finally:
                active -= 1

        rig.store.orders = counting_orders  # type: ignore[method-assign]
        before = rig.coordinator.reloads
        for _ in range(50):
            rig.coordinator.notify_changed()
        await until(lambda: rig.coordinator.reloads > before, "a reload")
        await asyncio.sleep(0.1)
        assert 1 <= rig.coordinator.reloads - before <= 3
        assert most == 1

    run(body)


def test_unregistered_sessions_are_no_longer_connected() -> None:
    async def body(rig: Rig) -> None:
        await rig.start()
        session = rig.connect("a1")
        assert rig.coordinator.session_count() == 1
        rig.coordinator.unregister(session)
        rig.coordinator.unregister(session)
        assert rig.coordinator.connected_serials() == set() and rig.coordinator.session_count() == 0

    run(body)


@pytest.mark.parametrize("hours", [1, 24])
def test_crl_maker_lists_the_revocations_and_describes_itself(hours: int) -> None:
    clock = FakeClock(T0)
    store = MemoryRotationStore()
    store.add_issued(certificate("a1", issued=T0))
    revocations = store.revoke(["a1"], reason="keyCompromise", at=T0)
    authority = make_root(clock)
    release = crl_maker(authority, timedelta(hours=hours))(revocations, T0)
    crl = x509.load_der_x509_crl(release.ders[0])
    assert release.published.entries == len(crl) == 1
    assert release.published.next_update - release.published.this_update == timedelta(hours=hours)
    assert release.published.ca_key_id == authority.key_id
    assert release.refresh_at() == release.published.this_update + timedelta(hours=hours) / 2


def test_crl_maker_sends_each_signing_ca_and_its_chain_with_the_crls() -> None:
    store = MemoryRotationStore()
    store.add_issued(certificate("a1", issued=T0))
    revocations = store.revoke(["a1"], reason="keyCompromise", at=T0)
    cas = two_signing_cas(T0)  # a rotation: the retiring and the active signing CA, one root
    deep = make_hierarchy(T0)  # root -> intermediate -> signing CA, as plugged-in cacerts
    signers = (cas.first, cas.second, authority_from(deep), cas.second)
    release = crl_maker(lambda: signers)(revocations, T0)

    def der(cert: x509.Certificate) -> bytes:
        return cert.public_bytes(serialization.Encoding.DER)

    assert [x509.load_der_x509_crl(d).issuer for d in release.ders] == [
        a.signing_cert.subject for a in signers
    ]
    # Each CA certificate once, never a root (the agent holds those in its bundle).
    assert release.signers == (
        der(cas.first.signing_cert),
        der(cas.second.signing_cert),
        der(deep.signing),
        der(deep.intermediate),
    )
    message = pb.ControlMessage.FromString(revocation_message(release)).revocations
    assert list(message.signer_der) == list(release.signers)
    assert list(message.crl_der) == list(release.ders)

    # A self-signed root signing leaves itself has no certificate to send beyond the bundle's.
    assert crl_maker(make_root(FakeClock(T0)))(revocations, T0).signers == ()


def test_crls_are_recorded_while_they_list_something_and_once_when_they_stop() -> None:
    async def body(rig: Rig) -> None:
        rig.issue("a1", lifetime=timedelta(hours=1))
        await rig.start()

        def recorded() -> list[int]:
            return [r["entries"] for r in rig.store.records if r["kind"] == "crl_published"]

        assert recorded() == []  # nothing revoked: the CA's empty CRL is no record
        rig.store.revoke(["a1"], reason="keyCompromise", at=rig.clock.now())
        await rig.changed()
        assert recorded() == [1]
        rig.clock.advance(timedelta(hours=1))  # a1 expires: it leaves the CRL
        await rig.changed()
        assert recorded() == [1, 0]
        rig.clock.advance(CRL_VALIDITY)
        rig.coordinator.tick()
        await rig.changed()
        assert recorded() == [1, 0]

    run(body)


# --------------------------------------------------------------------------- the trust bundle


def _sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _bundles(session: FakeSession) -> list[pb.TrustBundle]:
    return [m.bundle for m in session.messages if m.WhichOneof("kind") == "bundle"]


def test_no_trust_bundle_is_sent_before_one_is_published() -> None:
    async def body(rig: Rig) -> None:
        rig.issue("a1")
        await rig.start()
        session = rig.connect("a1")
        assert session.kinds() == ["revocations"]

    run(body)


def test_a_published_bundle_reaches_every_open_session_and_each_new_one_right_after_its_crl() -> None:
    async def body(rig: Rig) -> None:
        for serial in ("a1", "a2", "a3"):
            rig.issue(serial)
        rig.order("ro-000000000006", Selector(serials=("a3",)))
        await rig.start()
        a1 = rig.connect("a1")
        new_root = make_root(rig.clock).signing_cert
        rig.coordinator.publish_bundle([rig.authority.signing_cert, new_root])
        await until(lambda: _bundles(a1), "the bundle on the open session")
        assert a1.kinds() == ["revocations", "bundle"]
        sent = _bundles(a1)[0]
        assert list(sent.root_der) == [
            c.public_bytes(serialization.Encoding.DER) for c in (rig.authority.signing_cert, new_root)
        ]
        assert sent.sequence == int(T0.timestamp() * 1000)
        a2, a3 = rig.connect("a2"), rig.connect("a3")
        assert a2.kinds() == ["revocations", "bundle"]
        assert a3.kinds() == ["revocations", "bundle", "rotate"]
        assert _bundles(a2)[0] == sent

        rig.coordinator.publish_bundle([new_root])  # at the same instant: the number still grows
        await until(lambda: len(_bundles(a2)) == 2, "the second bundle")
        assert [b.sequence for b in _bundles(a1)] == [sent.sequence, sent.sequence + 1]
        rig.clock.advance(timedelta(seconds=3))
        rig.coordinator.publish_bundle([new_root])
        await until(lambda: len(_bundles(a1)) == 3, "the third bundle")
        assert _bundles(a1)[2].sequence == int(T0.timestamp() * 1000) + 3000

    run(body)


def test_a_bundle_published_from_another_thread_is_sent_on_the_loop() -> None:
    async def body(rig: Rig) -> None:
        rig.issue("a1")
        await rig.start()
        a1 = rig.connect("a1")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, rig.coordinator.publish_bundle, [rig.authority.signing_cert])
        await until(lambda: _bundles(a1), "the bundle")
        assert len(_bundles(a1)) == 1

    run(body)


def test_an_empty_bundle_is_refused() -> None:
    rig = Rig()
    try:
        with pytest.raises(CaMaterialError) as caught:
            rig.coordinator.publish_bundle([])
        assert "at least one root" in caught.value.message
    finally:
        rig.coordinator.close()


def test_bundle_holders_counts_open_sessions_by_their_latest_report() -> None:
    async def body(rig: Rig) -> None:
        for serial in ("a1", "a2", "a3"):
            rig.issue(serial)
        await rig.start()
        old, new = _sha256(rig.authority.signing_cert), _sha256(make_root(rig.clock).signing_cert)
        holders = rig.coordinator.bundle_holders
        assert holders(new) == Acknowledgement(holding=0, connected=0)
        a1, a2, a3 = FakeSession("a1"), FakeSession("a2"), FakeSession("a3")
        rig.coordinator.register(a1, held=[old])
        rig.coordinator.register(a2, held=[old, new.upper()])  # hex in either case
        rig.coordinator.register(a3, held=["not-a-digest", new[:10]])
        assert holders(new) == Acknowledgement(holding=1, connected=3)
        assert holders(old) == Acknowledgement(holding=2, connected=3)

        rig.coordinator.report_bundle(a1, [old, new], sequence=7)
        rig.coordinator.report_bundle(a2, [new])  # the latest report replaces the one before
        assert holders(new) == Acknowledgement(holding=2, connected=3)
        assert holders(old.upper()) == Acknowledgement(holding=1, connected=3)

        rig.coordinator.unregister(a1)
        assert holders(new) == Acknowledgement(holding=1, connected=2)
        assert holders(old) == Acknowledgement(holding=0, connected=2)
        rig.coordinator.report_bundle(a1, [old])  # a report on a stream that ended counts for nothing
        assert holders(old) == Acknowledgement(holding=0, connected=2)

    run(body)


def test_bundle_reports_drop_what_is_not_a_digest_and_cap_how_many_count() -> None:
    digests = [f"{i:064x}" for i in range(MAX_REPORTED_ROOTS + 5)]
    assert reported_roots(["x", "AB" * 32, *digests]) == frozenset(
        ["ab" * 32, *digests[: MAX_REPORTED_ROOTS - 1]]
    )
    reports = BundleReports()
    reports.report("s1", frozenset(["ab" * 32]))
    reports.report("s2", frozenset(["ab" * 32]))
    reports.forget("s1")
    reports.forget("s1")  # twice: nothing more
    assert reports.holding("ab" * 32) == 1 and reports.holding("cd" * 32) == 0


def test_the_bundle_sequence_follows_the_clock_and_never_goes_back() -> None:
    assert next_bundle_sequence(0, T0) == int(T0.timestamp() * 1000)
    later = int(T0.timestamp() * 1000) + 10_000
    assert next_bundle_sequence(later, T0) == later + 1  # a clock behind the last number


def test_when_the_signers_change_the_new_crls_go_out_before_the_new_bundle() -> None:
    async def body(rig: Rig) -> None:
        rig.issue("a1")
        await rig.start()
        a1 = rig.connect("a1")
        assert a1.kinds() == ["revocations"]
        before = rig.coordinator.reloads
        rig.coordinator.signers_changed(bundle=[rig.authority.signing_cert])
        assert _bundles(a1) == []  # held back until the CRLs are out
        await until(lambda: _bundles(a1), "the bundle after the CRLs")
        assert rig.coordinator.reloads > before
        assert a1.kinds() == ["revocations", "revocations", "bundle"]

    run(body)


def test_a_bundle_held_for_crls_that_cannot_be_made_goes_out_at_a_tick_after_the_wait() -> None:
    async def body(rig: Rig) -> None:
        rig.issue("a1")
        await rig.start()
        a1 = rig.connect("a1")

        def broken(revocations: Any, now: datetime) -> Any:
            raise RuntimeError("no signing key")

        rig.coordinator._make_crl = broken
        rig.coordinator.signers_changed(bundle=[rig.authority.signing_cert])
        rig.coordinator.tick()
        await asyncio.sleep(0)
        assert _bundles(a1) == []
        rig.clock.advance(timedelta(seconds=BUNDLE_AFTER_CRL_S))
        rig.coordinator.tick()
        await until(lambda: _bundles(a1), "the overdue bundle")
        assert a1.kinds() == ["revocations", "bundle"]

    run(body)


class QuietSession(FakeSession):
    """A session that keeps nothing of what it is sent."""

    def send(self, message: bytes) -> None:
        pass


IDLE_SESSIONS = 2000


def test_an_idle_session_costs_the_coordinator_little() -> None:
    """A CA holds thousands of agents' streams, most of which report no root: per session the
    coordinator keeps its serial's entry, with no set of one session and no empty report (each
    216 bytes; with them, this measured about 500 bytes a session)."""

    async def body(rig: Rig) -> None:
        await rig.start()
        sessions = [QuietSession(f"{i:x}") for i in range(IDLE_SESSIONS)]
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for session in sessions:
                assert rig.coordinator.register(session)
            per_session = (tracemalloc.get_traced_memory()[0] - before) / IDLE_SESSIONS
        finally:
            tracemalloc.stop()
        assert rig.coordinator.session_count() == IDLE_SESSIONS
        assert per_session < 250  # about 70 bytes

    run(body)


def test_a_session_known_twice_by_one_serial_is_counted_and_removed_one_at_a_time() -> None:
    async def body(rig: Rig) -> None:
        await rig.start()
        # An agent that reconnects before the CA saw its old stream end.
        first, second = rig.connect("a1"), rig.connect("a1")
        assert rig.coordinator.session_count() == 2 and rig.coordinator.connected_serials() == {"a1"}
        rig.coordinator.unregister(first)
        assert rig.coordinator.session_count() == 1 and rig.coordinator.connected_serials() == {"a1"}
        assert rig.coordinator.rebind(second, "b2")
        assert rig.coordinator.connected_serials() == {"b2"}
        rig.coordinator.unregister(second)
        assert rig.coordinator.session_count() == 0 and rig.coordinator.connected_serials() == set()

    run(body)
