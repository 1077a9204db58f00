"""The agent's control stream: against a scripted Control server over real mutual TLS with a fake
clock (what it sends, when it renews, when it reconnects), then end to end against a real
`meshca serve` with an in-process agent."""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca import __version__
from ca._proto import meshca_control_pb2 as pb
from ca.agent.agent import Replacement
from ca.agent.bundle import BundleNotServedError, HeldBundle
from ca.agent.control import (
    CONTROL_BACKOFF,
    UNSERVED,
    UNSERVED_BACKOFF,
    ControlEndpoint,
    ControlStream,
    serial_of,
)
from ca.agent.settings import control_address
from ca.agent.svid import Svid
from ca.errors import ConfigError, MeshcaError
from ca.issuance.crl import load_pem_crls
from ca.issuance.possession import check_possession, rebind_statement
from ca.issuance.spiffe_id import SpiffeId
from ca.ledger.rotation import Selector, TargetState
from ca.server.serving_cert import ServingIdentity
from tests.support.agent import RunningAgent, agent_args, start_agent, wait_until
from tests.support.clock import FakeClock
from tests.support.control import CaProcess, ca_process
from tests.support.svids import FakeCa, make_svid

END = object()  # what a scripted stream is told to end with (as the CA does on the agent's EOF)


@dataclass
class ScriptedStream:
    """One stream the agent opened: what it sent, and what the test has the server send."""

    serial: str
    received: queue.Queue[pb.AgentMessage | None] = field(default_factory=queue.Queue)
    outbox: queue.Queue[object] = field(default_factory=queue.Queue)

    def next_received(self, timeout: float = 5.0) -> pb.AgentMessage | None:
        return self.received.get(timeout=timeout)

    def send(self, message: pb.ControlMessage) -> None:
        self.outbox.put(message)


class ScriptedControl:
    """meshca.control.v1.Control over mutual TLS, each stream scripted by the test."""

    def __init__(self, ca: FakeCa, clock: FakeClock) -> None:
        self.streams: queue.Queue[ScriptedStream] = queue.Queue()
        identity = ServingIdentity(
            authority=ca.issuer.authority,
            hosts=("localhost",),
            spiffe_id=SpiffeId.for_workload("cluster.local", "istio-system", "meshca"),
            clock=clock,
        )
        self._server = grpc.server(ThreadPoolExecutor(max_workers=8))
        handler = grpc.stream_stream_rpc_method_handler(
            self._connect,
            request_deserializer=pb.AgentMessage.FromString,
            response_serializer=pb.ControlMessage.SerializeToString,
        )
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("meshca.control.v1.Control", {"Connect": handler}),)
        )
        self.port = self._server.add_secure_port(
            "127.0.0.1:0", identity.server_credentials(require_client_cert=True)
        )
        self._server.start()

    def _connect(
        self, requests: Iterator[pb.AgentMessage], context: grpc.ServicerContext
    ) -> Iterator[object]:
        pem = bytes(context.auth_context()["x509_pem_cert"][0])
        stream = ScriptedStream(serial=format(x509.load_pem_x509_certificate(pem).serial_number, "x"))
        self.streams.put(stream)

        def read() -> None:
            try:
                for message in requests:
                    stream.received.put(message)
            except grpc.RpcError:
                pass
            stream.received.put(None)
            stream.outbox.put(END)

        threading.Thread(target=read, daemon=True).start()
        while (item := stream.outbox.get()) is not END:
            if isinstance(item, grpc.StatusCode):
                context.abort(item, "scripted end")
            yield item

    def next_stream(self, timeout: float = 5.0) -> ScriptedStream:
        return self.streams.get(timeout=timeout)

    def stop(self) -> None:
        self._server.stop(0)


class RecordingRenewer:
    def __init__(self) -> None:
        self.calls: list[Replacement | None] = []
        self.called = threading.Event()

    def renew_now(self, replacing: Replacement | None) -> None:
        self.calls.append(replacing)
        self.called.set()


@dataclass
class Rig:
    clock: FakeClock
    ca: FakeCa
    server: ScriptedControl
    renewer: RecordingRenewer
    crls: list[list[bytes]]
    control: ControlStream
    root_file: Path
    bundle: HeldBundle = field(default_factory=HeldBundle)
    served: list[tuple[x509.Certificate, ...]] = field(default_factory=list)
    serve_fails: MeshcaError | None = None
    crl_signers: list[list[bytes]] = field(default_factory=list)  # what came with each list

    def serve_bundle(self, roots: Sequence[x509.Certificate]) -> None:
        if self.serve_fails is not None:
            raise self.serve_fails
        self.served.append(tuple(roots))


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    clock = FakeClock()
    ca = FakeCa(clock)
    server = ScriptedControl(ca, clock)
    root_file = tmp_path / "root-cert.pem"
    root_file.write_bytes(ca.issuer.authority.trust_bundle_pem().encode())
    renewer = RecordingRenewer()
    crls: list[list[bytes]] = []
    crl_signers: list[list[bytes]] = []
    bundle = HeldBundle()
    served: list[tuple[x509.Certificate, ...]] = []
    rig: Rig | None = None

    def serve_bundle(roots: Sequence[x509.Certificate]) -> None:
        assert rig is not None
        rig.serve_bundle(roots)

    def deliver_crls(ders: Sequence[bytes], signers: Sequence[bytes]) -> None:
        crl_signers.append(list(signers))
        crls.append(list(ders))

    control = ControlStream(
        endpoint=ControlEndpoint(
            address=f"127.0.0.1:{server.port}", root_file=root_file, server_name="localhost"
        ),
        renewer=renewer,
        crls=deliver_crls,
        clock=clock,
        random=lambda: 0.25,
        placement=lambda: ("cart-0", "node-1"),
        bundle=bundle,
        serve_bundle=serve_bundle,
    )
    rig = Rig(
        clock,
        ca,
        server,
        renewer,
        crls,
        control,
        root_file,
        bundle=bundle,
        served=served,
        crl_signers=crl_signers,
    )
    control.start()
    try:
        yield rig
    finally:
        control.stop()
        server.stop()


def connected(rig: Rig, svid: Svid) -> ScriptedStream:
    """Publish `svid` and return the stream the agent opens with it, its Hello read."""
    rig.control.publish(svid)
    stream = rig.server.next_stream()
    assert stream.serial == serial_of(svid)
    hello = stream.next_received()
    assert hello is not None and hello.WhichOneof("kind") == "hello"
    return stream


def test_the_stream_opens_with_the_certificate_held_and_says_hello(rig: Rig) -> None:
    svid = make_svid(rig.clock, rig.ca)
    rig.control.publish(svid)
    stream = rig.server.next_stream()
    assert stream.serial == serial_of(svid)
    hello = stream.next_received()
    assert hello is not None
    root_sha = hashlib.sha256(svid.roots[0].public_bytes(serialization.Encoding.DER)).hexdigest()
    assert hello.hello == pb.Hello(
        agent_version=__version__, bundle_sha256=[root_sha], pod_name="cart-0", node_name="node-1"
    )


def test_revocation_lists_go_to_the_crl_delivery(rig: Rig) -> None:
    stream = connected(rig, make_svid(rig.clock, rig.ca))
    stream.send(
        pb.ControlMessage(
            revocations=pb.RevocationList(crl_der=[b"one", b"two"], number=7, signer_der=[b"I1", b"I2"])
        )
    )
    wait_until(lambda: rig.crls, 5, "the CRLs delivered")
    assert rig.crls == [[b"one", b"two"]]
    assert rig.crl_signers == [[b"I1", b"I2"]]  # the CA certificates that signed them, with them


def test_an_order_waits_its_delay_on_the_clock_then_renews_with_the_orders_metadata(rig: Rig) -> None:
    svid = make_svid(rig.clock, rig.ca)
    stream = connected(rig, svid)
    before = len(rig.clock.waits(0))
    order = pb.RotateOrder(order_id="ro-0123456789ab", serial=serial_of(svid), delay_ms=5000, reason="leak")
    stream.send(pb.ControlMessage(rotate=order))
    assert 5.0 in rig.clock.waits(before + 1)[before:]
    rig.clock.advance(timedelta(seconds=4.9))
    assert not rig.renewer.called.wait(0.2)
    rig.clock.advance(timedelta(seconds=0.1))
    assert rig.renewer.called.wait(5)
    assert rig.renewer.calls == [Replacement(order_id="ro-0123456789ab", serial=serial_of(svid))]
    assert Replacement(order_id="ro-0123456789ab", serial=serial_of(svid)).metadata() == (
        ("meshca-order", "ro-0123456789ab"),
        ("meshca-replaces", serial_of(svid)),
    )


def test_orders_for_another_certificate_or_twice_the_same_are_ignored(rig: Rig) -> None:
    svid = make_svid(rig.clock, rig.ca)
    stream = connected(rig, svid)
    stream.send(pb.ControlMessage(rotate=pb.RotateOrder(order_id="ro-000000000001", serial="ff")))
    mine = pb.RotateOrder(order_id="ro-000000000002", serial=serial_of(svid))
    stream.send(pb.ControlMessage(rotate=mine))
    stream.send(pb.ControlMessage(rotate=mine))
    stream.send(pb.ControlMessage(revocations=pb.RevocationList()))  # a marker: the rest was read
    wait_until(lambda: rig.crls, 5, "the messages read")
    assert rig.renewer.calls == [Replacement(order_id="ro-000000000002", serial=serial_of(svid))]


def test_a_new_certificate_reports_the_orders_followed_then_moves_the_stream_to_it(rig: Rig) -> None:
    old = make_svid(rig.clock, rig.ca)
    stream = connected(rig, old)
    stream.send(pb.ControlMessage(rotate=pb.RotateOrder(order_id="ro-0123456789ab", serial=serial_of(old))))
    assert rig.renewer.called.wait(5)
    new = make_svid(rig.clock, rig.ca)
    rig.control.publish(new)
    report = stream.next_received()
    assert report is not None and report.replaced == pb.Replaced(
        order_id="ro-0123456789ab", old_serial=serial_of(old), new_serial=serial_of(new)
    )
    moved = stream.next_received()
    assert moved is not None and moved.WhichOneof("kind") == "rebind"
    assert moved.rebind.certificate_der == new.leaf.public_bytes(serialization.Encoding.DER)
    check_possession(new.leaf, rebind_statement(serial_of(old), serial_of(new)), moved.rebind.proof)
    with pytest.raises(MeshcaError):  # the proof is the new key's, for this change only
        check_possession(old.leaf, rebind_statement(serial_of(old), serial_of(new)), moved.rebind.proof)
    assert rig.control.connected_serial == serial_of(new)
    with pytest.raises(queue.Empty):
        rig.server.next_stream(timeout=0.5)  # no new connection
    # What the CA sends now is for the new certificate: an order for it is followed.
    stream.send(pb.ControlMessage(rotate=pb.RotateOrder(order_id="ro-0000000000b2", serial=serial_of(new))))
    wait_until(lambda: len(rig.renewer.calls) == 2, 5, "the order for the new certificate")
    assert rig.renewer.calls[-1] == Replacement(order_id="ro-0000000000b2", serial=serial_of(new))


def test_a_stream_moved_to_a_new_certificate_that_the_ca_ends_reconnects_after_the_backoff(rig: Rig) -> None:
    old = make_svid(rig.clock, rig.ca)
    stream = connected(rig, old)
    stream.send(pb.ControlMessage(revocations=pb.RevocationList()))
    wait_until(lambda: rig.crls, 5, "the list")
    new = make_svid(rig.clock, rig.ca)
    rig.control.publish(new)
    moved = stream.next_received()
    assert moved is not None and moved.WhichOneof("kind") == "rebind"
    count = len(rig.clock.waits(0))
    # A CA restart ends every stream: a moved one waits its jittered step like any other, so
    # that thousands of agents rotated together do not all come back in the same second.
    stream.outbox.put(grpc.StatusCode.UNAVAILABLE)
    waits = rig.clock.waits(count + 1)
    assert waits[-1] == pytest.approx(CONTROL_BACKOFF.delay_s(0, lambda: 0.25))
    with pytest.raises(queue.Empty):
        rig.server.next_stream(timeout=0.3)
    rig.clock.advance_s(waits[-1])
    assert rig.server.next_stream().serial == serial_of(new)


def test_a_certificate_that_arrives_while_the_stream_is_ending_opens_a_new_stream_at_once(rig: Rig) -> None:
    old = make_svid(rig.clock, rig.ca)
    stream = connected(rig, old)
    count = len(rig.clock.waits(0))
    stream.outbox.put(grpc.StatusCode.UNAVAILABLE)
    rig.clock.waits(count + 1)  # the stream ended; the agent waits to reconnect
    new = make_svid(rig.clock, rig.ca)
    rig.control.publish(new)  # wakes the wait: the next stream opens with the new certificate
    assert rig.server.next_stream().serial == serial_of(new)


def test_reissue_renews_with_the_token_and_waits_for_the_new_certificate_to_reconnect(rig: Rig) -> None:
    revoked = make_svid(rig.clock, rig.ca)
    stream = connected(rig, revoked)
    stream.send(pb.ControlMessage(reissue=pb.Reissue(serial=serial_of(revoked), reason="revoked")))
    stream.outbox.put(grpc.StatusCode.UNAUTHENTICATED)
    assert rig.renewer.called.wait(5)
    assert rig.renewer.calls == [None]
    with pytest.raises(queue.Empty):
        rig.server.next_stream(timeout=0.5)  # never again with the revoked certificate
    rig.clock.advance_s(CONTROL_BACKOFF.maximum_s * 2)
    with pytest.raises(queue.Empty):
        rig.server.next_stream(timeout=0.3)
    fresh = make_svid(rig.clock, rig.ca)
    rig.control.publish(fresh)
    assert rig.server.next_stream().serial == serial_of(fresh)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _sha(cert: x509.Certificate) -> str:
    return hashlib.sha256(_der(cert)).hexdigest()


def _bundle(*roots: x509.Certificate, sequence: int, extra: Sequence[bytes] = ()) -> pb.ControlMessage:
    return pb.ControlMessage(
        bundle=pb.TrustBundle(root_der=[*(_der(r) for r in roots), *extra], sequence=sequence)
    )


def _held(stream: ScriptedStream) -> pb.BundleHeld:
    report = stream.next_received()
    assert report is not None and report.WhichOneof("kind") == "bundle_held", report
    return report.bundle_held


def test_a_pushed_bundle_is_served_held_and_reported(rig: Rig) -> None:
    svid = make_svid(rig.clock, rig.ca)
    stream = connected(rig, svid)
    old, new = rig.ca.issuer.authority.roots[0], FakeCa(rig.clock).issuer.authority.roots[0]
    stream.send(_bundle(old, new, sequence=1_000))
    assert _held(stream) == pb.BundleHeld(bundle_sha256=[_sha(old), _sha(new)], sequence=1_000)
    assert rig.served == [(old, new)]
    assert rig.bundle.roots == (old, new) and rig.bundle.sequence == 1_000
    assert rig.renewer.calls == []  # the certificate held still chains to the old root


def test_a_bad_bundle_is_refused_with_its_reason_logged(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="meshca.agent")
    svid = make_svid(rig.clock, rig.ca)
    stream = connected(rig, svid)
    root = rig.ca.issuer.authority.roots[0]
    stream.send(_bundle(sequence=1))  # no root at all
    stream.send(_bundle(root, sequence=2, extra=[b"not a certificate"]))
    stream.send(_bundle(root, svid.leaf, sequence=3))  # a leaf is no root
    stream.send(_bundle(root, sequence=4))  # a good one: the others were read before it
    assert _held(stream).sequence == 4
    assert rig.served == [(root,)]
    refusals = [r for r in caplog.records if r.getMessage() == "refused the CA's trust bundle"]
    assert [(r.reason, r.sequence) for r in refusals] == [  # type: ignore[attr-defined]
        ("bundle_empty", 1),
        ("bundle_unparsable", 2),
        ("bundle_not_ca", 3),
    ]
    assert "root 2 does not parse" in refusals[1].detail  # type: ignore[attr-defined]
    assert "root 2 (" in refusals[2].detail and "is not a CA certificate" in refusals[2].detail  # type: ignore[attr-defined]


def test_a_bundle_no_newer_than_the_one_held_is_ignored(rig: Rig) -> None:
    svid = make_svid(rig.clock, rig.ca)
    stream = connected(rig, svid)
    root, other = rig.ca.issuer.authority.roots[0], FakeCa(rig.clock).issuer.authority.roots[0]
    stream.send(_bundle(root, other, sequence=50))
    assert _held(stream).sequence == 50
    stream.send(_bundle(root, sequence=50))  # the same again (as a new stream gets it)
    stream.send(_bundle(root, sequence=49))  # an older one
    stream.send(_bundle(root, sequence=51))
    assert _held(stream).sequence == 51
    assert rig.served == [(root, other), (root,)]


def test_a_bundle_that_cannot_be_served_is_neither_held_nor_reported(rig: Rig) -> None:
    stream = connected(rig, make_svid(rig.clock, rig.ca))
    root = rig.ca.issuer.authority.roots[0]
    rig.serve_fails = BundleNotServedError("cannot write root-cert.pem", reason="bundle_write_failed")
    stream.send(_bundle(root, sequence=7))
    rig.serve_fails = None
    stream.send(_bundle(root, sequence=7))  # the same bundle again: taken this time
    assert _held(stream).sequence == 7
    assert rig.served == [(root,)]


def test_a_leaf_that_no_longer_chains_to_the_bundle_is_replaced_at_once(rig: Rig) -> None:
    svid = make_svid(rig.clock, rig.ca)
    stream = connected(rig, svid)
    new_root = FakeCa(rig.clock).issuer.authority.roots[0]
    stream.send(_bundle(new_root, sequence=9))
    assert _held(stream).bundle_sha256 == [_sha(new_root)]
    assert rig.renewer.called.wait(5)
    # The renewal a rotation order asks for, without an order: the CA links it to the held serial.
    assert rig.renewer.calls == [Replacement(serial=serial_of(svid))]


def test_the_ca_is_trusted_through_the_held_bundle_when_the_ca_root_file_is_stale(rig: Rig) -> None:
    svid = make_svid(rig.clock, rig.ca)
    first = connected(rig, svid)
    ours, other = rig.ca.issuer.authority.roots[0], FakeCa(rig.clock).issuer.authority.roots[0]
    first.send(_bundle(other, ours, sequence=3))
    assert _held(first).sequence == 3
    # The file now names another root only: the CA's certificate chains to one the bundle holds.
    rig.root_file.write_bytes(other.public_bytes(serialization.Encoding.PEM))
    count = len(rig.clock.waits(0))
    first.outbox.put(grpc.StatusCode.UNAVAILABLE)
    rig.clock.advance_s(rig.clock.waits(count + 1)[-1])
    second = rig.server.next_stream()
    hello = second.next_received()
    assert hello is not None and list(hello.hello.bundle_sha256) == [_sha(other), _sha(ours)]


def test_reconnects_after_a_failure_wait_a_jittered_step_that_grows(tmp_path: Path) -> None:
    clock = FakeClock()
    ca = FakeCa(clock)
    root_file = tmp_path / "root-cert.pem"
    root_file.write_bytes(ca.issuer.authority.trust_bundle_pem().encode())
    draws = iter([0.25, 0.75, 0.0, 1.0])
    attempts: list[float] = []

    def crls(_ders: object, _signers: object) -> None:
        raise AssertionError("no CA answers")

    # Nothing listens on port 9 of the loopback: each stream fails at once.
    control = ControlStream(
        endpoint=ControlEndpoint(address="127.0.0.1:9", root_file=root_file),
        renewer=RecordingRenewer(),
        crls=crls,
        clock=clock,
        random=lambda: next(draws),
    )
    control.publish(make_svid(clock, ca))
    control.start()
    try:
        for attempt, draw in enumerate([0.25, 0.75, 0.0]):
            waits = clock.waits(attempt + 1, timeout_s=10)
            attempts.append(waits[-1])
            assert waits[-1] == pytest.approx(CONTROL_BACKOFF.delay_s(attempt, _fixed(draw)))
            clock.advance(timedelta(seconds=waits[-1]))
    finally:
        control.stop()
    assert attempts == pytest.approx([5 * (0.1 + 0.9 * 0.25), 10 * (0.1 + 0.9 * 0.75), 20 * 0.1])
    assert control.connects == 3


def _fixed(value: float) -> Callable[[], float]:
    return lambda: value


def test_the_first_reconnect_of_many_agents_spreads_over_seconds() -> None:
    # What CONTROL_BACKOFF gives agents that lose the same CA at once: their first waits span
    # 0.5 s to 5 s, so a restarted CA sees them return over seconds, not in the same one.
    draws = [i / 1000 for i in range(1000)]
    waits = sorted(CONTROL_BACKOFF.delay_s(0, _fixed(d)) for d in draws)
    per_second = [sum(1 for w in waits if s <= w < s + 1) for s in range(6)]
    assert waits[0] == pytest.approx(0.5) and waits[-1] == pytest.approx(5.0, abs=0.01)
    assert max(per_second) <= 250  # at most a quarter of them in any one second


def test_connected_once_the_ca_answers_on_the_open_stream_until_it_ends(rig: Rig) -> None:
    """What meshca_agent_control_stream_connected reports."""
    assert not rig.control.connected  # no certificate yet, so no stream
    stream = connected(rig, make_svid(rig.clock, rig.ca))
    assert not rig.control.connected  # open, but the CA has said nothing on it
    stream.send(pb.ControlMessage(revocations=pb.RevocationList()))
    wait_until(lambda: rig.control.connected, 5, "connected once the CA's first message came")
    stream.outbox.put(grpc.StatusCode.UNAVAILABLE)
    wait_until(lambda: not rig.control.connected, 5, "not connected once the stream ended")
    assert rig.control.connects == 1  # the next attempt waits for the (fake) clock


def test_after_a_healthy_stream_ends_the_wait_starts_again_from_the_first_step(rig: Rig) -> None:
    first = connected(rig, make_svid(rig.clock, rig.ca))
    count = len(rig.clock.waits(0))
    first.outbox.put(grpc.StatusCode.UNAVAILABLE)  # ends before the CA said anything: a failure
    waits = rig.clock.waits(count + 1)
    assert waits[-1] == pytest.approx(CONTROL_BACKOFF.delay_s(0, lambda: 0.25))
    rig.clock.advance_s(waits[-1])
    second = rig.server.next_stream()
    second.send(pb.ControlMessage(revocations=pb.RevocationList()))
    wait_until(lambda: rig.crls, 5, "the list")
    second.outbox.put(grpc.StatusCode.UNAVAILABLE)  # the CA went away after serving the stream
    waits = rig.clock.waits(count + 2)
    assert waits[-1] == pytest.approx(CONTROL_BACKOFF.delay_s(0, lambda: 0.25))  # not the second step
    rig.clock.advance_s(waits[-1])
    assert rig.server.next_stream().serial == first.serial


def test_a_ca_that_does_not_serve_the_stream_is_reported_once_and_asked_again_within_a_minute(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="meshca.agent")
    svid = make_svid(rig.clock, rig.ca)
    first = connected(rig, svid)
    count = len(rig.clock.waits(0))
    for attempt in range(3):
        stream = first if attempt == 0 else rig.server.next_stream()
        assert stream.serial == serial_of(svid)
        stream.outbox.put(grpc.StatusCode.UNIMPLEMENTED)
        waits = rig.clock.waits(count + attempt + 1)
        assert waits[-1] == pytest.approx(UNSERVED_BACKOFF.delay_s(0, _fixed(0.25)))
        assert waits[-1] >= CONTROL_BACKOFF.maximum_s * 0.3  # not the 0.5-5 s of a first failure
        rig.clock.advance_s(waits[-1])
    rig.server.next_stream()
    agent_lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "meshca.agent"]
    warnings = [message for level, message in agent_lines if level >= logging.WARNING]
    assert warnings == [UNSERVED]
    assert "UNIMPLEMENTED" in UNSERVED and "--grpc-server asyncio" in UNSERVED
    assert "control stream to the CA ended; reconnecting" not in [message for _, message in agent_lines]


# ---------------------------------------------------------------------- end to end, real CA


@pytest.fixture
def ca() -> Iterator[CaProcess]:
    with ca_process() as running:
        yield running


def _agent(ca: CaProcess, tmp_path: Path, namespace: str = "shop") -> RunningAgent:
    token = tmp_path / f"token-{namespace}"
    token.write_text(ca.token(namespace, "cart"))
    return start_agent(
        agent_args(
            ca_port=ca.ports["grpc"],
            ca_root=ca.root_file,
            token_file=token,
            output_dir=tmp_path / f"certs-{namespace}",
            health=False,
            extra=["--ca-control-addr", f"127.0.0.1:{ca.ports['renew']}"],
        )
    )


def _stream_serial(agent: RunningAgent) -> str | None:
    control = agent.process.control
    assert control is not None
    return control.connected_serial


def _connected(agent: RunningAgent) -> str:
    serial = serial_of(agent.wait_for_svid())
    wait_until(lambda: _stream_serial(agent) == serial, 10, "the control stream")
    return serial


def test_an_order_in_the_ledger_replaces_the_agents_certificate_within_seconds(
    ca: CaProcess, tmp_path: Path
) -> None:
    agent, other = _agent(ca, tmp_path), _agent(ca, tmp_path, "shop-canary")
    try:
        old, untouched = _connected(agent), _connected(other)
        started = time.monotonic()
        ca.order("ro-00000000e2e0", Selector(namespace="shop"))
        new_svid = agent.wait_for_svid(timeout=10, not_serial=int(old, 16))
        took = time.monotonic() - started
        new = serial_of(new_svid)
        wait_until(lambda: _stream_serial(agent) == new, 10, "the stream with the new certificate")
        assert took < 5, f"replaced in {took:.2f}s"
        record = next(r for r in ca.records(new) if r["kind"] == "issued")
        assert (record["order_id"], record["replaces"], record["agent"]) == ("ro-00000000e2e0", old, "meshca")

        def replaced() -> bool:
            with ca.store() as store:
                target = store.target("ro-00000000e2e0", old, new_svid.not_before)
            return target is not None and target.state is TargetState.REPLACED

        wait_until(replaced, 5, "the target marked replaced")
        assert other.current is not None and serial_of(other.current) == untouched
    finally:
        agent.stop()
        other.stop()


def test_a_revoked_agent_is_told_to_reissue_renews_with_its_token_and_serves_the_crl(
    ca: CaProcess, tmp_path: Path
) -> None:
    agent = _agent(ca, tmp_path)
    try:
        old = _connected(agent)
        ca.revoke(old)
        fresh = serial_of(agent.wait_for_svid(timeout=10, not_serial=int(old, 16)))
        wait_until(lambda: _stream_serial(agent) == fresh, 10, "the stream with the new certificate")
        record = next(r for r in ca.records(fresh) if r["kind"] == "issued")
        assert record["auth_method"] == "jwt" and "order_id" not in record  # by token, not by an order

        def listed() -> list[int]:
            path = tmp_path / "certs-shop" / "crl.pem"
            if not path.exists():
                return []
            return [
                entry.serial_number for crl in load_pem_crls(path.read_bytes(), "crl.pem") for entry in crl
            ]

        assert wait_until(listed, 10, "crl.pem listing the revoked certificate") == [int(old, 16)]
    finally:
        agent.stop()


@pytest.mark.parametrize(
    ("flag", "ca_address", "expected"),
    [
        ("auto", "meshca.istio-system.svc:15012", "meshca.istio-system.svc:15013"),
        ("auto", "127.0.0.1:40000", None),  # not meshca serve's default ports: no guess
        ("off", "meshca:15012", None),
        ("10.0.0.7:9443", "meshca:15012", "10.0.0.7:9443"),
    ],
)
def test_the_control_address_flag(flag: str, ca_address: str, expected: str | None) -> None:
    assert control_address(flag, ca_address) == expected


@pytest.mark.parametrize("flag", ["meshca", ":15013", "meshca:port", "meshca:0"])
def test_a_control_address_without_host_and_port_is_refused(flag: str) -> None:
    with pytest.raises(ConfigError) as caught:
        control_address(flag, "meshca:15012")
    assert "--ca-control-addr" in caught.value.message


def test_an_unreadable_ca_root_is_retried_on_the_backoff_not_the_end_of_the_stream(tmp_path: Path) -> None:
    clock = FakeClock()
    ca = FakeCa(clock)
    server = ScriptedControl(ca, clock)
    root_file = tmp_path / "root-cert.pem"  # not there yet
    control = ControlStream(
        endpoint=ControlEndpoint(
            address=f"127.0.0.1:{server.port}", root_file=root_file, server_name="localhost"
        ),
        renewer=RecordingRenewer(),
        crls=lambda _ders, _signers: None,
        clock=clock,
        random=lambda: 0.25,
    )
    svid = make_svid(clock, ca)
    control.publish(svid)
    control.start()
    try:
        waits = clock.waits(1)
        assert waits[-1] == pytest.approx(CONTROL_BACKOFF.delay_s(0, _fixed(0.25)))
        root_file.write_bytes(ca.issuer.authority.trust_bundle_pem().encode())
        clock.advance_s(waits[-1])
        assert server.next_stream().serial == serial_of(svid)
    finally:
        control.stop()
        server.stop()
