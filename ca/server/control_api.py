"""The control stream's CA side: meshca.control.v1.Control/Connect, on the renewal port only.

An agent opens one stream with the certificate it holds; the TLS layer has verified its
chain, and here it must be a workload SVID of our trust domain, valid now. The CA reads the
agent's Hello, waits for the push coordinator's first load, and hands the stream to it as a
`StreamSession`: the revocation list goes first, then any rotation order covering the
certificate (or, for a revoked certificate, a Reissue and the end of the stream). The
Hello's roots are the agent's first report of the trust bundle it holds. The stream then stays
open, reading the agent's Replaced, BundleHeld and Rebind reports, until either side ends it.

A Rebind moves the stream to the agent's new certificate without a new connection: a
reconnect costs the CA a TLS handshake and a new HTTP/2 connection, about twice the CPU of
issuing the certificate, and a rotation order makes thousands of agents replace theirs at once.
The new certificate must be a live workload SVID of one of the CA's signing CAs, for the
stream's SPIFFE ID, not revoked, and the agent must prove it holds its key
(`ca.issuance.possession`). A Rebind that fails any of these ends the stream with
UNAUTHENTICATED, and the agent reconnects with the certificate it holds.

A session is this handler's coroutine, blocked reading, plus a writer task only while there
is something to send: thousands of idle agents cost no thread and no timer each. The
threaded gRPC server cannot hold them; there the service answers UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import grpc
from cryptography import x509
from google.protobuf.message import DecodeError

from ca._proto import meshca_control_pb2 as pb
from ca.auth.base import Authenticator, Credentials
from ca.common.clock import Clock
from ca.errors import AuthenticationError, InvalidRequestError, InvalidSpiffeIdError, MeshcaError
from ca.issuance.authority import issued_by, valid_at
from ca.issuance.possession import check_possession, rebind_statement
from ca.issuance.svid_id import svid_spiffe_id
from ca.ledger.rotation import normalize_serial
from ca.server.certificate_api import STATUS_BY_KIND
from ca.server.push import PushCoordinator

log = logging.getLogger("meshca.control")

CONTROL_SERVICE_NAME = "meshca.control.v1.Control"
CONNECT_METHOD = "Connect"
MAX_SESSIONS = 50_000
# Messages being written at once across all streams: a CRL listing ten thousand certificates is
# about half a megabyte, and gRPC holds a copy of each message until it is on the wire.
MAX_WRITES = 256
# An agent that takes no message in for this long (its flow-control window full) is dropped, so
# that it cannot hold one of those writes for good; it reconnects.
WRITE_TIMEOUT_S = 30.0
TOO_SLOW = (
    f"this control stream took no message in for {WRITE_TIMEOUT_S:g} s; the CA closed it; "
    "reconnect to get what it holds"
)
_MAX_NAME = 253
NOT_ON_THIS_PORT = (
    "the control stream is served on the CA's renewal port (--renew-listen) and needs the "
    "agent's current certificate as its client certificate; point --ca-control-addr there"
)
THREADED_SERVER = (
    "this CA runs the threaded gRPC server, which cannot hold the agents' control streams; "
    "start it with --grpc-server asyncio (the default)"
)
THREADED_SERVER_AT_START = (
    "--grpc-server threaded cannot hold the agents' control streams: rotation orders and "
    "revocation lists will never reach the agents, while an order still revokes their "
    "certificates when its grace period ends; run the default asyncio server "
    "(--grpc-server asyncio)"
)


class StreamSession:
    """One agent's stream: what the coordinator sends is queued and written in order by a
    writer task that exists only while the queue is not empty; `writes` bounds the writes in
    flight across every stream."""

    __slots__ = (
        "_clock",
        "_closing",
        "_context",
        "_outbox",
        "_queued_crl",
        "_writer",
        "_writes",
        "node",
        "pod",
        "serial",
        "spiffe_id",
    )

    def __init__(
        self,
        *,
        serial: str,
        spiffe_id: str,
        pod: str | None,
        node: str | None,
        context: Any,
        writes: asyncio.Semaphore,
        clock: Clock,
    ) -> None:
        self.serial = serial
        self.spiffe_id = spiffe_id
        self.pod = pod
        self.node = node
        self._context = context
        # Only while something waits to be written: an empty deque is about 760 bytes, and the
        # thousands of idle streams a CA holds have nothing queued.
        self._outbox: collections.deque[bytes] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closing: tuple[grpc.StatusCode, str] | None = None
        self._queued_crl: bytes | None = None  # the revocation list in the outbox, not yet sent
        self._writes = writes
        self._clock = clock

    def send(self, message: bytes) -> None:
        if self._closing is not None:
            return
        if self._outbox is None:
            self._outbox = collections.deque()
        self._outbox.append(message)
        self._wake_writer()

    def send_revocations(self, message: bytes) -> None:
        if self._closing is not None:
            return
        if self._queued_crl is not None and self._outbox:
            for index, queued in enumerate(self._outbox):
                if queued is self._queued_crl:
                    self._outbox[index] = self._queued_crl = message
                    return
        self._queued_crl = message
        self.send(message)

    def close(self, code: grpc.StatusCode, details: str) -> None:
        if self._closing is None:
            self._closing = (code, details)
            self._wake_writer()

    async def _write(self, message: bytes) -> bool:
        """Write one message; False if the agent took none in for WRITE_TIMEOUT_S."""
        write = asyncio.ensure_future(self._context.write(message))
        timed_out = False

        def give_up() -> None:
            nonlocal timed_out
            timed_out = True
            write.cancel()

        timer = self._clock.call_later(asyncio.get_running_loop(), WRITE_TIMEOUT_S, give_up)
        try:
            await write
        except asyncio.CancelledError:
            if not timed_out:
                raise
            return False
        finally:
            timer.cancel()
        return True

    def _wake_writer(self) -> None:
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._outbox:
                async with self._writes:
                    if not self._outbox:
                        break
                    message = self._outbox.popleft()
                    if message is self._queued_crl:
                        self._queued_crl = None
                    if not await self._write(message):
                        self._outbox = None
                        self._closing = (grpc.StatusCode.UNAVAILABLE, TOO_SLOW)
                        log.warning(
                            "closed a control stream too slow to take a message",
                            extra={"serial": self.serial},
                        )
                        break
            if self._closing is not None:
                # Ends the RPC; the handler's pending read then raises and it returns.
                await self._context.abort(*self._closing)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            pass
        except Exception as err:  # the stream ended under us: nothing more can be sent
            self._outbox = None
            log.debug("control stream write failed", extra={"serial": self.serial, "detail": repr(err)})
        finally:
            self._writer = None
            if not self._outbox:
                self._outbox = None


def _name(text: str) -> str | None:
    return text[:_MAX_NAME] or None


class AgentHello(NamedTuple):
    """What the CA keeps of an agent's Hello for as long as its stream lasts: the parsed message
    would keep the buffer it was parsed from."""

    pod: str | None
    node: str | None
    roots: tuple[str, ...]  # SHA-256 hex of the roots the agent holds, as it reported them


class ControlService:
    """The Control service for the gRPC server's `extra` services (asyncio server only)."""

    name = CONTROL_SERVICE_NAME

    def __init__(
        self,
        *,
        coordinator: PushCoordinator,
        authenticator: Authenticator,
        leaf_issuers: Callable[[], Sequence[x509.Certificate]],
        clock: Clock,
        max_sessions: int = MAX_SESSIONS,
    ) -> None:
        self._coordinator = coordinator
        self._authenticator = authenticator
        self._leaf_issuers = leaf_issuers
        self.max_sessions = max_sessions
        self._writes = asyncio.Semaphore(MAX_WRITES)
        self._clock = clock
        self._warned_threaded = False

    def identify(self, context: Any) -> tuple[str, str]:
        """The serial and SPIFFE ID of the caller's certificate; AuthenticationError if it
        has none (the token port) or it is not a valid workload SVID of ours."""
        pems: list[bytes] = context.auth_context().get("x509_pem_cert") or []
        if not pems:
            raise AuthenticationError(NOT_ON_THIS_PORT, reason="client_cert_missing")
        pem = bytes(pems[0]).decode()
        caller = self._authenticator.authenticate(
            Credentials(peer_certificate_pem=pem, peer_address=context.peer())
        )
        if caller is None or caller.certificate_serial is None:
            raise AuthenticationError(NOT_ON_THIS_PORT, reason="client_cert_missing")
        return normalize_serial(caller.certificate_serial), caller.spiffe_id.uri

    async def connect(self, _requests: object, context: grpc.aio.ServicerContext[bytes, bytes]) -> None:
        try:
            serial, spiffe_id = self.identify(context)
            if self._coordinator.session_count() >= self.max_sessions:
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"this CA holds {self.max_sessions} control streams already; retry later or "
                    "add a replica",
                )
            hello = await self._hello(context)
        except MeshcaError as err:
            log.warning(
                "refused control stream",
                extra={"reason": err.reason, "detail": err.message, "peer": context.peer()},
            )
            await context.abort(STATUS_BY_KIND[err.kind], err.message)
            return
        await self._coordinator.wait_ready()
        session = StreamSession(
            serial=serial,
            spiffe_id=spiffe_id,
            pod=hello.pod,
            node=hello.node,
            context=context,
            writes=self._writes,
            clock=self._clock,
        )
        log.debug(
            "control stream opened",
            extra={"serial": serial, "spiffe_id": spiffe_id, "pod": session.pod, "node": session.node},
        )
        if not self._coordinator.register(session, held=hello.roots):
            await self._read_until_closed(context)
            return
        try:
            await self._serve(session, context)
        finally:
            self._coordinator.unregister(session)

    async def _hello(self, context: grpc.aio.ServicerContext[bytes, bytes]) -> AgentHello:
        first = await context.read()
        message = _agent_message(first)
        if message is None or message.WhichOneof("kind") != "hello":
            raise InvalidRequestError(
                "a control stream starts with a Hello from the agent", reason="control_hello_missing"
            )
        hello = message.hello
        return AgentHello(_name(hello.pod_name), _name(hello.node_name), tuple(hello.bundle_sha256))

    async def _serve(self, session: StreamSession, context: grpc.aio.ServicerContext[bytes, bytes]) -> None:
        while True:
            try:
                raw = await context.read()
            except grpc.aio.AbortError:
                return
            if not isinstance(raw, bytes):  # the agent closed its side
                return
            message = _agent_message(raw)
            if message is None:
                continue
            kind = message.WhichOneof("kind")
            if kind == "replaced":
                self._replaced(session, message.replaced)
            elif kind == "bundle_held":
                held = message.bundle_held
                self._coordinator.report_bundle(session, held.bundle_sha256, sequence=held.sequence)
            elif kind == "rebind":
                self._rebind(session, message.rebind)

    def _rebind(self, session: StreamSession, rebind: pb.Rebind) -> None:
        """Know the stream by the agent's new certificate, or end it if that cannot be trusted."""
        old_serial = session.serial
        try:
            new_serial = self._checked_rebind(session, rebind)
            if not self._coordinator.rebind(session, new_serial):
                raise AuthenticationError(
                    f"certificate {new_serial} is revoked; get a new one with the service-account token",
                    reason="rebind_revoked",
                )
        except MeshcaError as err:
            log.warning(
                "refused to move a control stream to a new certificate; ending it",
                extra={"serial": old_serial, "reason": err.reason, "detail": err.message},
            )
            session.close(STATUS_BY_KIND[err.kind], err.message)
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "control stream moved to a new certificate",
                extra={"old_serial": old_serial, "serial": new_serial, "spiffe_id": session.spiffe_id},
            )

    def _checked_rebind(self, session: StreamSession, rebind: pb.Rebind) -> str:
        """The new certificate's serial, once it is a live SVID of this CA for the stream's
        SPIFFE ID and the agent proved it holds its key; AuthenticationError otherwise."""
        try:
            cert = x509.load_der_x509_certificate(rebind.certificate_der)
        except ValueError as err:
            raise _rebind_refused(
                f"the new certificate cannot be parsed ({err})", "rebind_unreadable"
            ) from None
        if not valid_at(cert, self._clock.now()):
            raise _rebind_refused(
                f"the new certificate is valid only from {cert.not_valid_before_utc} to "
                f"{cert.not_valid_after_utc}",
                "rebind_not_valid_now",
            )
        try:
            spiffe_id = svid_spiffe_id(cert).uri
        except InvalidSpiffeIdError as err:
            raise _rebind_refused(str(err), "rebind_not_an_svid") from None
        if spiffe_id != session.spiffe_id:
            raise _rebind_refused(
                f"the new certificate is for {spiffe_id}, the stream for {session.spiffe_id}",
                "rebind_other_identity",
            )
        if not any(issued_by(cert, issuer) for issuer in self._leaf_issuers()):
            raise _rebind_refused(
                "no signing CA of this CA issued the new certificate", "rebind_unknown_issuer"
            )
        new_serial = format(cert.serial_number, "x")
        check_possession(cert, rebind_statement(session.serial, new_serial), rebind.proof)
        return new_serial

    @staticmethod
    async def _read_until_closed(context: grpc.aio.ServicerContext[bytes, bytes]) -> None:
        """Wait for the session's writer to end the stream (a Reissue)."""
        try:
            while isinstance(await context.read(), bytes):
                pass
        except grpc.aio.AbortError:
            return

    def _replaced(self, session: StreamSession, report: pb.Replaced) -> None:
        try:
            old, new = normalize_serial(report.old_serial), normalize_serial(report.new_serial)
        except InvalidRequestError as err:
            log.warning(
                "ignored a malformed replacement report",
                extra={"serial": session.serial, "detail": err.message},
            )
            return
        self._coordinator.report_replaced(session, order_id=report.order_id, old_serial=old, new_serial=new)

    def _unimplemented(self, _requests: object, context: grpc.ServicerContext) -> None:
        if not self._warned_threaded:
            self._warned_threaded = True
            log.warning("refused control streams: " + THREADED_SERVER, extra={"peer": context.peer()})
        context.abort(grpc.StatusCode.UNIMPLEMENTED, THREADED_SERVER)

    def handler(self, *, asynchronous: bool = False) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
        behaviour = self.connect if asynchronous else self._unimplemented
        return grpc.method_handlers_generic_handler(
            CONTROL_SERVICE_NAME,
            {
                CONNECT_METHOD: grpc.stream_stream_rpc_method_handler(
                    behaviour, request_deserializer=None, response_serializer=None
                )
            },
        )


def _rebind_refused(what: str, reason: str) -> AuthenticationError:
    return AuthenticationError(
        f"{what}; the stream is ended: reconnect with the certificate held", reason=reason
    )


def _agent_message(raw: object) -> pb.AgentMessage | None:
    if not isinstance(raw, bytes):
        return None
    try:
        message: pb.AgentMessage = pb.AgentMessage.FromString(raw)
        return message
    except DecodeError:
        return None
