"""The control stream on a real `meshca serve` over real mutual TLS: what an agent's stream is sent,
the orders written into the ledger reaching it, revoked certificates told to reissue and refused
by the renewal port, and the issued record that links a replacement to its order."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import TypeVar

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca._proto import meshca_control_pb2 as pb
from ca.auth.base import Authenticator, Caller, Credentials
from ca.auth.client_cert import ClientCertificateAuthenticator
from ca.common.clock import SystemClock
from ca.errors import AuthenticationError
from ca.issuance.possession import prove_possession, rebind_statement
from ca.ledger.rotation import Selector, TargetState
from ca.server.control_api import MAX_WRITES, WRITE_TIMEOUT_S, AgentHello, ControlService, StreamSession
from tests.support.clock import FakeClock
from tests.support.control import AGENT_METADATA, CaProcess, Issued, ca_process
from tests.support.svids import CART, make_svid

T = TypeVar("T")
ORDER = "ro-00000000c0de"


@pytest.fixture
def ca() -> Iterator[CaProcess]:
    with ca_process() as running:
        yield running


def eventually(check: Callable[[], T | None], what: str, timeout: float = 5.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def kind(message: pb.ControlMessage) -> str:
    return str(message.WhichOneof("kind"))


def crl_serials(message: pb.ControlMessage) -> list[int]:
    return [
        entry.serial_number for der in message.revocations.crl_der for entry in x509.load_der_x509_crl(der)
    ]


def target_state(ca: CaProcess, order_id: str, serial: str) -> TargetState | None:
    with ca.store() as store:
        target = store.target(order_id, serial, SystemClock().now())
    return target.state if target is not None else None


def renewal_refusal(ca: CaProcess, client: Issued) -> grpc.RpcError | None:
    try:
        ca.renew(client)
    except grpc.RpcError as err:
        return err
    return None


def test_the_stream_starts_with_the_crl_then_an_order_made_while_the_agent_was_away(ca: CaProcess) -> None:
    cart = ca.issue()
    ca.order(ORDER, Selector(serials=(cart.serial,)))
    stream = ca.control(cart)
    first = stream.next()
    assert kind(first) == "revocations"
    crl = x509.load_der_x509_crl(first.revocations.crl_der[0])
    signing_ca = x509.load_pem_x509_certificate(cart.chain[1].encode())
    assert crl.is_signature_valid(signing_ca.public_key()) and len(crl) == 0  # type: ignore[arg-type]
    assert first.revocations.number > 0
    assert stream.next().rotate == pb.RotateOrder(
        order_id=ORDER, serial=cart.serial, delay_ms=0, reason="test order"
    )


def test_the_crl_is_valid_for_the_cas_crl_validity() -> None:
    with ca_process("--crl-validity", "6h") as ca:
        first = ca.control(ca.issue()).next()
    assert kind(first) == "revocations"
    for der in first.revocations.crl_der:
        crl = x509.load_der_x509_crl(der)
        assert crl.next_update_utc is not None
        assert crl.next_update_utc - crl.last_update_utc == timedelta(hours=6)


def test_an_order_made_while_connected_is_pushed_to_the_holder_within_seconds(ca: CaProcess) -> None:
    cart, canary = ca.issue(), ca.issue("shop-canary")
    cart_stream, canary_stream = ca.control(cart), ca.control(canary)
    assert kind(cart_stream.next()) == kind(canary_stream.next()) == "revocations"
    started = time.monotonic()
    ca.order(ORDER, Selector(namespace="shop"))
    pushed = cart_stream.next()
    assert time.monotonic() - started < 3  # the SQLite watch looks every second
    assert pushed.rotate.order_id == ORDER and pushed.rotate.serial == cart.serial
    # shop-canary is not shop: its stream gets nothing; it is still open and idle.
    canary_stream.close()
    with pytest.raises(grpc.RpcError) as ended:
        canary_stream.next()
    assert ended.value.code() is grpc.StatusCode.CANCELLED


def test_a_replacement_for_an_order_is_recorded_with_the_order_and_the_serial_it_replaces(
    ca: CaProcess,
) -> None:
    old = ca.issue()
    ca.order(ORDER, Selector(serials=(old.serial,)))
    new = ca.issue(
        metadata=(*AGENT_METADATA, ("meshca-order", ORDER), ("meshca-replaces", old.serial.upper()))
    )
    record = next(r for r in ca.records(new.serial) if r["kind"] == "issued")
    assert (record["order_id"], record["replaces"], record["agent"]) == (ORDER, old.serial, "meshca")
    # Marked by the write that recorded the certificate, so before the certificate came back.
    assert target_state(ca, ORDER, old.serial) is TargetState.REPLACED
    plain = ca.issue(metadata=())
    assert {"order_id", "replaces", "agent"}.isdisjoint(next(r for r in ca.records(plain.serial)))


def test_a_claim_to_replace_another_identitys_certificate_is_not_recorded(ca: CaProcess) -> None:
    web = ca.issue("shop", "web")
    ca.order(ORDER, Selector(serials=(web.serial,)))
    cart = ca.issue(metadata=(("meshca-order", ORDER), ("meshca-replaces", web.serial)))
    record = next(r for r in ca.records(cart.serial) if r["kind"] == "issued")
    assert "order_id" not in record and "replaces" not in record
    assert target_state(ca, ORDER, web.serial) is TargetState.OUTSTANDING
    assert "issued without the rotation link" in ca.log()


def test_a_revoked_certificate_connecting_is_told_to_reissue_and_its_stream_ends(ca: CaProcess) -> None:
    cart = ca.issue()
    ca.revoke(cart.serial)
    eventually(lambda: renewal_refusal(ca, cart), "the CA to take the revocation in")
    stream = ca.control(cart)
    listed = stream.next()
    assert kind(listed) == "revocations" and crl_serials(listed) == [int(cart.serial, 16)]
    assert stream.next().reissue.serial == cart.serial
    with pytest.raises(grpc.RpcError) as ended:
        stream.next()
    assert ended.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in (ended.value.details() or "")


def test_a_connected_certificate_revoked_gets_the_new_crl_and_reissue(ca: CaProcess) -> None:
    cart, web = ca.issue(), ca.issue("shop", "web")
    cart_stream, web_stream = ca.control(cart), ca.control(web)
    cart_stream.next()
    web_stream.next()
    ca.revoke(cart.serial)
    assert crl_serials(cart_stream.next()) == [int(cart.serial, 16)]
    assert kind(cart_stream.next()) == "reissue"
    assert crl_serials(web_stream.next()) == [int(cart.serial, 16)]


def rebind(new: Issued, old_serial: str, *, signer: Issued | None = None) -> pb.AgentMessage:
    """The Rebind an agent holding `new` sends on a stream opened as `old_serial`."""
    proof = prove_possession((signer or new).key, rebind_statement(old_serial, new.serial))
    der = new.leaf.public_bytes(serialization.Encoding.DER)
    return pb.AgentMessage(rebind=pb.Rebind(certificate_der=der, proof=proof))


def test_a_rebind_moves_the_stream_to_the_new_certificate_without_a_new_connection(ca: CaProcess) -> None:
    cart = ca.issue()
    stream = ca.control(cart)
    assert kind(stream.next()) == "revocations"
    renewed = ca.issue()
    stream.send(rebind(renewed, cart.serial))
    # The old certificate revoked: its CRL reaches the stream, but no Reissue, as it is not
    # the stream's any more; an order for the new certificate is pushed on the same stream.
    ca.revoke(cart.serial)
    assert crl_serials(stream.next()) == [int(cart.serial, 16)]
    ca.order(ORDER, Selector(serials=(renewed.serial,)))
    pushed = stream.next()
    assert kind(pushed) == "rotate" and pushed.rotate.serial == renewed.serial


def test_a_connected_certificate_revoked_after_a_rebind_gets_reissue(ca: CaProcess) -> None:
    cart = ca.issue()
    stream = ca.control(cart)
    stream.next()
    renewed = ca.issue()
    stream.send(rebind(renewed, cart.serial))
    ca.order(ORDER, Selector(serials=(renewed.serial,)))
    assert stream.next().rotate.serial == renewed.serial  # the CA knows the stream as renewed's
    ca.revoke(renewed.serial)
    assert crl_serials(stream.next()) == [int(renewed.serial, 16)]
    assert stream.next().reissue.serial == renewed.serial


def _foreign_cart() -> Issued:
    """A shop/cart certificate, valid now, from a CA that is not this one."""
    svid = make_svid(FakeClock())
    chain = [c.public_bytes(serialization.Encoding.PEM).decode() for c in svid.chain]
    return Issued(chain=chain, key=svid.key)


REFUSED_REBINDS: dict[str, Callable[[CaProcess, Issued], pb.AgentMessage]] = {
    "rebind_other_identity": lambda ca, cart: rebind(ca.issue("shop", "web"), cart.serial),
    "rebind_proof_invalid": lambda ca, cart: rebind(ca.issue(), cart.serial, signer=cart),
    "rebind_unreadable": lambda ca, cart: pb.AgentMessage(rebind=pb.Rebind(certificate_der=b"0\x03junk")),
    "rebind_unknown_issuer": lambda ca, cart: rebind(_foreign_cart(), cart.serial),
}


@pytest.mark.parametrize("reason", sorted(REFUSED_REBINDS))
def test_a_rebind_that_cannot_be_trusted_ends_the_stream_with_what_to_do(ca: CaProcess, reason: str) -> None:
    cart = ca.issue()
    stream = ca.control(cart)
    stream.next()
    stream.send(REFUSED_REBINDS[reason](ca, cart))
    with pytest.raises(grpc.RpcError) as ended:
        stream.next()
    assert ended.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "reconnect with the certificate held" in (ended.value.details() or "")
    eventually(lambda: reason in ca.log(), f"the refusal logged with reason {reason}")


def test_a_rebind_to_a_revoked_certificate_ends_the_stream(ca: CaProcess) -> None:
    cart = ca.issue()
    renewed = ca.issue()
    ca.revoke(renewed.serial)
    eventually(lambda: renewal_refusal(ca, renewed), "the CA to take the revocation in")
    stream = ca.control(cart)
    assert crl_serials(stream.next()) == [int(renewed.serial, 16)]
    stream.send(rebind(renewed, cart.serial))
    with pytest.raises(grpc.RpcError) as ended:
        stream.next()
    assert ended.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in (ended.value.details() or "")


def test_the_renewal_port_refuses_a_revoked_certificate(ca: CaProcess) -> None:
    _refuses_a_revoked_certificate(ca)


def test_the_threaded_servers_renewal_port_refuses_a_revoked_certificate_too() -> None:
    with ca_process("--grpc-server", "threaded") as ca:
        _refuses_a_revoked_certificate(ca)


def _refuses_a_revoked_certificate(ca: CaProcess) -> None:
    cart = ca.issue()
    renewed = ca.renew(cart)
    assert renewed.leaf.subject == cart.leaf.subject
    ca.revoke(renewed.serial)
    err = eventually(
        lambda: renewal_refusal(ca, renewed), "the renewal port to refuse the revoked certificate"
    )
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED
    assert f"serial {renewed.serial}" in (err.details() or "") and "revoked" in (err.details() or "")
    ca.renew(cart)  # the certificate it replaced is not revoked


def test_the_token_port_does_not_serve_the_control_stream(ca: CaProcess) -> None:
    stream = ca.control(None, port_name="grpc")
    with pytest.raises(grpc.RpcError) as refused:
        stream.next()
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "--renew-listen" in (refused.value.details() or "")


def test_a_stream_must_start_with_hello(ca: CaProcess) -> None:
    cart = ca.issue()
    replaced = pb.AgentMessage(replaced=pb.Replaced(order_id=ORDER, old_serial="1", new_serial="2"))
    stream = ca.control(cart, hello=replaced)
    with pytest.raises(grpc.RpcError) as refused:
        stream.next()
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_the_threaded_server_refuses_control_streams() -> None:
    with ca_process("--grpc-server", "threaded") as ca:
        stream = ca.control(ca.issue())
        with pytest.raises(grpc.RpcError) as refused:
            stream.next()
        assert refused.value.code() is grpc.StatusCode.UNIMPLEMENTED
        assert "--grpc-server asyncio" in (refused.value.details() or "")


def test_without_a_ledger_there_is_no_control_service() -> None:
    with ca_process("--ledger", "off") as ca:
        stream = ca.control(ca.issue())
        with pytest.raises(grpc.RpcError) as refused:
            stream.next()
        assert refused.value.code() is grpc.StatusCode.UNIMPLEMENTED


# ---------------------------------------------------------------------- a session's writes


class StalledContext:
    """A stream whose writes complete only when the test says (the agent reading them)."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.pending: list[asyncio.Future[None]] = []
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    async def write(self, message: bytes) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append(done)
        await done
        self.written.append(message)

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise grpc.aio.AbortError()

    def release(self) -> None:
        for done in self.pending:
            if not done.done():
                done.set_result(None)


def _session(context: StalledContext, clock: FakeClock, writes: asyncio.Semaphore) -> StreamSession:
    return StreamSession(
        serial="a1",
        spiffe_id="spiffe://cluster.local/ns/shop/sa/cart",
        pod=None,
        node=None,
        context=context,
        writes=writes,
        clock=clock,
    )


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_a_newer_revocation_list_takes_the_place_of_one_not_yet_sent() -> None:
    async def body() -> None:
        context = StalledContext()
        session = _session(context, FakeClock(), asyncio.Semaphore(MAX_WRITES))
        session.send(b"first")
        await _settle()  # "first" is being written; the rest queue behind it
        session.send_revocations(b"crl-1")
        session.send(b"order")
        session.send_revocations(b"crl-2")
        while context.pending and not all(f.done() for f in context.pending):
            context.release()
            await _settle()
        assert context.written == [b"first", b"crl-2", b"order"]
        session.send_revocations(b"crl-3")  # nothing queued now: it goes after the others
        await _settle()
        context.release()
        await _settle()
        assert context.written[-1] == b"crl-3"

    asyncio.run(body())


def test_an_agent_that_takes_nothing_in_is_dropped_and_frees_its_write() -> None:
    async def body() -> None:
        clock = FakeClock()
        writes = asyncio.Semaphore(1)
        stuck, other = StalledContext(), StalledContext()
        _session(stuck, clock, writes).send_revocations(b"crl")
        waiting = _session(other, clock, writes)
        waiting.send_revocations(b"crl")
        await _settle()
        assert len(stuck.pending) == 1 and other.pending == []  # the only write slot is taken
        clock.advance_s(WRITE_TIMEOUT_S - 1)
        await _settle()
        assert stuck.aborted is None
        clock.advance_s(1)
        await _settle()
        assert stuck.aborted is not None and stuck.aborted[0] is grpc.StatusCode.UNAVAILABLE
        assert len(other.pending) == 1  # the slot went to the next stream
        other.release()
        await _settle()
        assert other.written == [b"crl"] and other.aborted is None

    asyncio.run(body())


class PromptContext:
    """A stream whose agent takes every message in at once."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    async def write(self, message: bytes) -> None:
        self.written.append(message)


IDLE_SESSIONS = 2000


def test_an_idle_session_keeps_nothing_but_itself() -> None:
    """A CA holds thousands of idle streams: once its queue is written, a session keeps no queue
    (an empty one is about 760 bytes; with one, this measured about 1,000 bytes a session)."""

    async def body() -> float:
        writes, clock = asyncio.Semaphore(MAX_WRITES), SystemClock()
        contexts = [PromptContext() for _ in range(IDLE_SESSIONS)]
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            sessions = [_session(context, clock, writes) for context in contexts]  # type: ignore[arg-type]
            for session in sessions:
                session.send_revocations(b"crl")
            deadline = time.monotonic() + 10
            while not all(context.written for context in contexts) and time.monotonic() < deadline:
                await asyncio.sleep(0)
            await _settle()
            assert all(context.written == [b"crl"] for context in contexts)
            return (tracemalloc.get_traced_memory()[0] - before) / IDLE_SESSIONS
        finally:
            tracemalloc.stop()

    assert asyncio.run(body()) < 500  # about 260 bytes: the session, and its agent's one message


class HelloContext:
    def __init__(self, hello: pb.Hello) -> None:
        self._first = pb.AgentMessage(hello=hello).SerializeToString()

    async def read(self) -> bytes:
        return self._first


def test_the_ca_keeps_only_the_fields_it_needs_of_a_hello() -> None:
    hello = pb.Hello(
        agent_version="test", pod_name="cart-1", node_name="", bundle_sha256=["ab" * 32, "cd" * 32]
    )
    service = ControlService.__new__(ControlService)
    kept = asyncio.run(service._hello(HelloContext(hello)))  # type: ignore[arg-type]
    assert kept == AgentHello(pod="cart-1", node=None, roots=("ab" * 32, "cd" * 32))


# ---------------------------------------------------------------------- who opened the stream


class PeerContext:
    """A stream opened over mutual TLS with `pem` as the client certificate."""

    def __init__(self, pem: bytes) -> None:
        self._pem = pem

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [self._pem]}

    def peer(self) -> str:
        return "ipv4:127.0.0.1:40000"


def _identifying_service(authenticator: Authenticator) -> ControlService:
    service = ControlService.__new__(ControlService)
    service._authenticator = authenticator
    return service


def test_a_stream_is_known_by_the_serial_the_authenticator_read_parsing_the_certificate_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    svid = make_svid(clock)
    pem = svid.leaf.public_bytes(serialization.Encoding.PEM)
    parses: list[bytes] = []
    load = x509.load_pem_x509_certificate

    def counting_load(data: bytes) -> x509.Certificate:
        parses.append(data)
        return load(data)

    monkeypatch.setattr(x509, "load_pem_x509_certificate", counting_load)
    authenticator = ClientCertificateAuthenticator(trust_domain="cluster.local", clock=clock)
    serial, spiffe_id = _identifying_service(authenticator).identify(PeerContext(pem))
    assert (serial, spiffe_id) == (format(svid.leaf.serial_number, "x"), CART.uri)
    assert len(parses) == 1


class SerialLessAuthenticator:
    """Names a caller but not the certificate that proved it."""

    name = "serial-less"

    def authenticate(self, credentials: Credentials) -> Caller | None:
        return Caller(spiffe_id=CART, namespace="shop", service_account="cart", method=self.name)


def test_a_caller_proved_by_no_certificate_serial_is_refused() -> None:
    pem = make_svid(FakeClock()).leaf.public_bytes(serialization.Encoding.PEM)
    with pytest.raises(AuthenticationError) as refused:
        _identifying_service(SerialLessAuthenticator()).identify(PeerContext(pem))
    assert refused.value.reason == "client_cert_missing"
