"""Inbound: PeerAuthentication applied to each connection to a workload port.

Per connection: peek at the first bytes (TLS or plaintext, `ca.enforce.sniff`),
ask the policy for the port's mode (per connection, so a policy change applies
to the next connection), then

- STRICT: TLS is terminated as mutual TLS; plaintext is refused.
- PERMISSIVE: TLS is terminated as mutual TLS; plaintext is forwarded.
- DISABLE: nothing is terminated; TLS and plaintext are forwarded as they are.

Terminated TLS must present a client certificate that chains to root-cert.pem
and names exactly one SPIFFE ID of the trust domain (`ca.enforce.peer`).
Refusals close the connection, are counted and logged with reason and peer.
The peer's identity reaches the application in x-forwarded-client-cert (HTTP
ports, `ca.enforce.http1`; a caller's own header is removed in every mode) or
in a PROXY protocol v2 header (TCP ports named in --proxy-protocol).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from functools import cached_property

from ca.common.clock import Clock
from ca.enforce import proxy_v2
from ca.enforce.connect import Connecting
from ca.enforce.events import OpenConnections, RefusalLog
from ca.enforce.http_session import HttpSession
from ca.enforce.loop import READ, WRITE, DeadlineQueue, EventLoop
from ca.enforce.material import CertWatcher
from ca.enforce.metrics import EnforcerMetrics
from ca.enforce.peer import PeerCache, PeerIdentity, PeerRefused, check
from ca.enforce.relay import PlainEndpoint, Relay
from ca.enforce.settings import Timeouts
from ca.enforce.sniff import PEEK_BYTES, FirstBytes, classify, classify_after_timeout
from ca.enforce.tls import HANDSHAKE_DONE, WANT_READ, TlsConnection, TlsContexts, TlsFailure
from ca.enforce.xfcc import xfcc_header_line, xfcc_value
from ca.policy.model import Decision, MtlsMode
from ca.policy.ports import InboundPort

RESNIFF_S = 0.005  # a lone 0x16 byte: look again shortly (level-triggered epoll would spin)


@dataclass(frozen=True, kw_only=True)
class Deadlines:
    """The per-connection timeouts, as FIFO queues on the loop (see loop.DeadlineQueue)."""

    first_byte: DeadlineQueue
    handshake: DeadlineQueue
    connect: DeadlineQueue

    @classmethod
    def on(cls, loop: EventLoop, timeouts: Timeouts) -> Deadlines:
        return cls(
            first_byte=loop.deadline_queue(timeouts.first_byte_s),
            handshake=loop.deadline_queue(timeouts.handshake_s),
            connect=loop.deadline_queue(timeouts.connect_s),
        )


@dataclass(frozen=True, kw_only=True)
class Shared:
    """What every connection of the enforcer uses."""

    loop: EventLoop
    metrics: EnforcerMetrics
    certs: CertWatcher
    peers: PeerCache
    trust_domain: str
    deadlines: Deadlines
    refusals: RefusalLog
    connections: OpenConnections
    clock: Clock


@dataclass(frozen=True, kw_only=True)
class PortContext:
    shared: Shared
    port: InboundPort
    decide: Callable[[int], Decision]
    app_family: int
    app_address: tuple[str, int]
    proxy_protocol: bool

    @cached_property
    def label(self) -> str:
        return str(self.port.app_port)


class _State(Enum):
    SNIFF = "sniff"
    ROUTED = "routed"  # decided; between steps
    HANDSHAKE = "handshake"
    CONNECTING = "connecting"
    RELAY = "relay"
    CLOSED = "closed"


class InboundFlow:
    __slots__ = (
        "app",
        "connecting",
        "ctx",
        "fd",
        "identity",
        "local",
        "mode",
        "outcome",
        "peer",
        "relay",
        "sock",
        "state",
        "tls",
        "tls_contexts",
    )

    def __init__(self, ctx: PortContext, sock: socket.socket, peer: tuple[str, int]) -> None:
        self.ctx = ctx
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.state = _State.SNIFF
        self.mode = ""
        self.outcome = ""
        self.tls: TlsConnection | None = None
        self.tls_contexts: TlsContexts | None = None
        self.identity: PeerIdentity | None = None
        self.app: socket.socket | None = None
        self.connecting: Connecting | None = None  # while the application's answer is awaited
        self.relay: Relay | None = None
        self.local: tuple[str, int] | None = None

    def start(self) -> None:
        shared = self.ctx.shared
        shared.connections.opened(self, self.ctx.label)
        # Under load the first bytes have often arrived by the time the connection is accepted.
        first = self._peek()
        kind = FirstBytes.NEED_MORE if not first else classify(first)
        if first is None:
            self.close()
        elif kind is not FirstBytes.NEED_MORE:
            self._route(kind)
        else:
            shared.loop.watch(self.fd, READ, self.on_sniff)
            shared.deadlines.first_byte.add(self.on_first_byte_timeout)

    # ----------------------------------------------------------------- first bytes

    def _peek(self) -> bytes | None:
        """The first bytes without consuming them: b"" if none yet, None if the connection is gone."""
        try:
            return self.sock.recv(PEEK_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT) or None
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError:
            return None

    def on_sniff(self, fd: int, events: int) -> None:
        if self.state is not _State.SNIFF:
            return
        first = self._peek()
        if first is None:
            self.close()  # closed or reset before saying anything: not a policy decision
            return
        kind = classify(first)
        if kind is FirstBytes.NEED_MORE:
            self.ctx.shared.loop.watch(self.fd, 0, self.on_sniff)
            self.ctx.shared.loop.call_later(RESNIFF_S, self._watch_again)
            return
        self._route(kind)

    def _watch_again(self) -> None:
        if self.state is _State.SNIFF:
            self.ctx.shared.loop.watch(self.fd, READ, self.on_sniff)

    def on_first_byte_timeout(self) -> None:
        if self.state is not _State.SNIFF:
            return
        first = self._peek()
        if first is None:
            self.close()
            return
        self._route(classify_after_timeout(first))

    def _route(self, kind: FirstBytes) -> None:
        self.state = _State.ROUTED
        mode = self.ctx.decide(self.ctx.port.app_port).mode
        self.mode = mode.value
        if self.ctx.proxy_protocol:
            self.local = self._local_address()
        if kind is FirstBytes.TLS:
            if mode is MtlsMode.DISABLE:
                self.outcome = "passthrough"
                self._connect_app()
            else:
                self._start_handshake()
        elif mode is MtlsMode.STRICT:
            self.refuse("plaintext", "plaintext connection to a STRICT port")
        else:
            self.outcome = "accepted_plaintext"
            self._connect_app()

    def _local_address(self) -> tuple[str, int] | None:
        try:
            name = self.sock.getsockname()
        except OSError:
            return None
        return str(name[0]), int(name[1])

    # ----------------------------------------------------------------- mutual TLS

    def _start_handshake(self) -> None:
        shared = self.ctx.shared
        contexts = shared.certs.current
        if contexts is None:
            self.refuse("no_certificate", "no workload certificate is loaded yet")
            return
        self.tls_contexts = contexts
        try:
            self.tls = contexts.accept(self.sock)
        except TlsFailure as failure:
            self.refuse(failure.reason, failure.detail)
            return
        self.state = _State.HANDSHAKE
        shared.deadlines.handshake.add(self.on_handshake_timeout)
        self._step_handshake()

    def on_handshake_event(self, fd: int, events: int) -> None:
        if self.state is _State.HANDSHAKE:
            self._step_handshake()

    def on_handshake_timeout(self) -> None:
        if self.state is _State.HANDSHAKE:
            self.refuse("handshake_timeout", "the TLS handshake did not finish in time")

    def _step_handshake(self) -> None:
        tls = self.tls
        assert tls is not None
        try:
            result = tls.handshake()
        except TlsFailure as failure:
            self.refuse(failure.reason, failure.detail)
            return
        if result != HANDSHAKE_DONE:
            mask = READ if result == WANT_READ else WRITE
            self.ctx.shared.loop.watch(self.fd, mask, self.on_handshake_event)
            return
        self.state = _State.ROUTED
        try:
            self.identity = self._peer_identity(tls)
        except PeerRefused as refused:
            self.refuse(refused.reason, refused.detail)
            return
        except TlsFailure as failure:
            self.refuse(failure.reason, failure.detail)
            return
        self.outcome = "accepted_mtls"
        self._connect_app()

    def _peer_identity(self, tls: TlsConnection) -> PeerIdentity:
        fingerprint = tls.peer_fingerprint()
        if fingerprint is None:
            raise PeerRefused("no_client_cert", "the client sent no certificate")
        shared = self.ctx.shared
        identity = shared.peers.identify(fingerprint, tls.peer_der)
        check(identity, trust_domain=shared.trust_domain, now=shared.clock.now())
        return identity

    # ----------------------------------------------------------------- the application

    def _connect_app(self) -> None:
        shared = self.ctx.shared
        connecting = Connecting(shared.loop, shared.deadlines.connect, self, to="the application")
        if connecting.start(self.ctx.app_family, self.ctx.app_address):
            self.connecting = connecting
            self.state = _State.CONNECTING
            shared.loop.watch(self.fd, 0, self.on_handshake_event)  # the caller waits until the app answers

    def next_hop_failed(self, detail: str) -> None:
        self.connecting = None
        self.refuse("app_unreachable", detail)

    def next_hop_connected(self, sock: socket.socket) -> None:
        self.connecting = None
        self.app = sock
        ctx, shared = self.ctx, self.ctx.shared
        shared.metrics.connection(ctx.label, self.mode, self.outcome, "ok")
        identity = self.identity
        if identity is not None:
            shared.metrics.peer(ctx.label, identity.uri)
        client = self.tls if self.tls is not None else PlainEndpoint(self.sock)
        self.state = _State.RELAY
        self.relay = Relay(
            shared.loop,
            client,
            PlainEndpoint(self.app),
            on_close=self._relay_closed,
            session=self._http_session(),
            to_app_first=self._proxy_header(),
        )
        self.relay.start()

    def _http_session(self) -> HttpSession | None:
        if self.ctx.port.protocol != "http" or self.outcome == "passthrough":
            return None
        identity, contexts = self.identity, self.tls_contexts
        if identity is None or contexts is None:
            return HttpSession(None)  # plaintext: the caller's x-forwarded-client-cert is only removed
        value = xfcc_value(
            by=contexts.material.spiffe_id.uri, cert_hash_hex=identity.der_hash, peer_uri=identity.uri
        )
        return HttpSession(xfcc_header_line(value))

    def _proxy_header(self) -> bytes:
        if not self.ctx.proxy_protocol or self.local is None:
            return b""
        facts = None
        if self.identity is not None and self.tls is not None:
            facts = proxy_v2.TlsFacts(
                version=self.tls.version(), cipher=self.tls.cipher(), spiffe_id=self.identity.uri
            )
        try:
            return proxy_v2.encode((str(self.peer[0]), int(self.peer[1])), self.local, facts)
        except ValueError:
            return b""

    def _relay_closed(self, relay: Relay) -> None:
        ctx, shared = self.ctx, self.ctx.shared
        shared.metrics.relayed(ctx.label, relay.up.moved, relay.down.moved)
        session = relay.session
        if session is not None:
            refusal = session.refusal
            shared.metrics.http(ctx.label, session.requests.requests, refusal.reason if refusal else None)
            if refusal is not None:
                shared.refusals.refused(
                    "HTTP request refused",
                    port=ctx.port.app_port,
                    peer=self._peer_text(),
                    reason=refusal.reason,
                    status=refusal.status,
                    detail=refusal.detail,
                )
        self.state = _State.CLOSED
        self.relay = None  # the relay refers back to this flow: let both go without the cycle collector
        shared.connections.closed(self)

    # ----------------------------------------------------------------- endings

    def _peer_text(self) -> str:
        host, port = self.peer[0], self.peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"

    def refuse(self, reason: str, detail: str) -> None:
        ctx, shared = self.ctx, self.ctx.shared
        shared.metrics.connection(ctx.label, self.mode or "unknown", "refused", reason)
        shared.refusals.refused(
            "connection refused",
            port=ctx.port.app_port,
            listen_port=ctx.port.listen_port,
            peer=self._peer_text(),
            mode=self.mode,
            reason=reason,
            detail=detail,
        )
        self.close()

    def abort(self) -> None:
        if self.relay is not None:
            self.relay.close("aborted")
        else:
            self.close()

    def close(self) -> None:
        if self.state is _State.CLOSED:
            return
        self.state = _State.CLOSED
        shared = self.ctx.shared
        shared.loop.forget(self.fd)
        if self.connecting is not None:
            self.connecting.cancel()
        if self.app is not None:
            shared.loop.forget(self.app.fileno())
            self.app.close()
        if self.tls is not None:
            self.tls.close()
        else:
            self.sock.close()
        shared.connections.closed(self)
