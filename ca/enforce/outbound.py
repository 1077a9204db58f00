"""Outbound: plaintext from the pod's own processes, mutual TLS to a mesh peer.

`--outbound LISTEN_PORT:HOST:PORT[=SPIFFE_ID]` listens on 127.0.0.1 only (the
workload's certificate must not become anybody's on the network), connects to
HOST:PORT, presents the workload certificate and requires the server's chain to
verify against root-cert.pem and its certificate to name a SPIFFE ID of the
trust domain (SPIFFE_ID itself, when given). A server that fails any of this
gets no byte from the client: the client's connection is closed, the refusal
logged and counted.

Host names are resolved off the loop thread (a small pool running
getaddrinfo), cached for a few seconds.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from functools import cached_property

from ca.enforce.connect import Connecting
from ca.enforce.inbound import Shared
from ca.enforce.loop import READ, WRITE, EventLoop
from ca.enforce.peer import PeerRefused, check
from ca.enforce.relay import PlainEndpoint, Relay
from ca.enforce.settings import OutboundTarget
from ca.enforce.tls import HANDSHAKE_DONE, WANT_READ, TlsConnection, TlsFailure

OUTBOUND_HOST = "127.0.0.1"
RESOLVE_TTL_S = 5.0

Resolved = tuple[int, tuple[str, int]] | str  # (family, address) or the error text


class Resolver:
    """getaddrinfo on worker threads; answers delivered on the loop thread."""

    def __init__(self, loop: EventLoop) -> None:
        self._loop = loop
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="enforce-dns")
        self._cache: dict[tuple[str, int], tuple[float, Resolved]] = {}

    def resolve(self, host: str, port: int, callback: Callable[[Resolved], None]) -> None:
        key = (host, port)
        cached = self._cache.get(key)
        if cached is not None and cached[0] > self._loop.monotonic():
            callback(cached[1])
            return

        def lookup() -> None:
            answer = self._lookup(host, port)
            self._loop.call_soon_threadsafe(lambda: self._answer(key, answer, callback))

        self._pool.submit(lookup)

    def _answer(self, key: tuple[str, int], answer: Resolved, callback: Callable[[Resolved], None]) -> None:
        if not isinstance(answer, str):
            self._cache[key] = (self._loop.monotonic() + RESOLVE_TTL_S, answer)
        callback(answer)

    @staticmethod
    def _lookup(host: str, port: int) -> Resolved:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as err:
            return f"cannot resolve {host}: {err}"
        family, _, _, _, address = infos[0]
        return family, (str(address[0]), int(address[1]))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True, kw_only=True)
class OutboundContext:
    shared: Shared
    target: OutboundTarget
    resolver: Resolver

    @cached_property
    def label(self) -> str:
        return f"outbound-{self.target.listen_port}"


class _State(Enum):
    RESOLVING = "resolving"
    CONNECTING = "connecting"
    HANDSHAKE = "handshake"
    RELAY = "relay"
    CLOSED = "closed"


class OutboundFlow:
    __slots__ = ("client", "connecting", "ctx", "peer", "relay", "state", "tls", "upstream")

    def __init__(self, ctx: OutboundContext, client: socket.socket, peer: tuple[str, int]) -> None:
        self.ctx = ctx
        self.client = client
        self.peer = peer
        self.state = _State.RESOLVING
        self.upstream: socket.socket | None = None
        self.connecting: Connecting | None = None  # while the upstream's answer is awaited
        self.tls: TlsConnection | None = None
        self.relay: Relay | None = None

    def start(self) -> None:
        self.ctx.shared.connections.opened(self, self.ctx.label)
        target = self.ctx.target
        if target.host_is_address:
            family = socket.AF_INET6 if ":" in target.host else socket.AF_INET
            self._resolved((family, (target.host, target.port)))
        else:
            self.ctx.resolver.resolve(target.host, target.port, self._resolved)

    def _resolved(self, answer: Resolved) -> None:
        if self.state is not _State.RESOLVING:
            return
        if isinstance(answer, str):
            self.refuse("unresolvable", answer)
            return
        family, address = answer
        shared = self.ctx.shared
        connecting = Connecting(shared.loop, shared.deadlines.connect, self, to="the upstream")
        if connecting.start(family, address):
            self.connecting = connecting
            self.state = _State.CONNECTING

    def next_hop_failed(self, detail: str) -> None:
        self.connecting = None
        self.refuse("upstream_unreachable", detail)

    def on_handshake_timeout(self) -> None:
        if self.state is _State.HANDSHAKE:
            self.refuse("handshake_timeout", "the TLS handshake did not finish in time")

    def next_hop_connected(self, sock: socket.socket) -> None:
        self.connecting = None
        self.upstream = sock
        shared, target = self.ctx.shared, self.ctx.target
        contexts = shared.certs.current
        if contexts is None:
            self.refuse("no_certificate", "no workload certificate is loaded yet")
            return
        server_name = None if target.host_is_address else target.host
        try:
            self.tls = contexts.connect(self.upstream, server_name)
        except TlsFailure as failure:
            self.refuse(failure.reason, failure.detail)
            return
        self.state = _State.HANDSHAKE
        shared.deadlines.handshake.add(self.on_handshake_timeout)
        self._step()

    def on_handshake_event(self, fd: int, events: int) -> None:
        if self.state is _State.HANDSHAKE:
            self._step()

    def _step(self) -> None:
        tls, shared = self.tls, self.ctx.shared
        assert tls is not None
        try:
            result = tls.handshake()
        except TlsFailure as failure:
            self.refuse(failure.reason, failure.detail)
            return
        if result != HANDSHAKE_DONE:
            shared.loop.watch(tls.fileno(), READ if result == WANT_READ else WRITE, self.on_handshake_event)
            return
        self.state = _State.RESOLVING  # between steps: no timeout applies
        try:
            fingerprint = tls.peer_fingerprint()
            if fingerprint is None:
                raise PeerRefused("no_server_cert", "the server sent no certificate")
            identity = shared.peers.identify(fingerprint, tls.peer_der)
            check(
                identity,
                trust_domain=shared.trust_domain,
                now=shared.clock.now(),
                expected=self.ctx.target.spiffe_id,
            )
        except PeerRefused as refused:
            self.refuse(refused.reason, refused.detail)
            return
        shared.metrics.outbound_connection(self._port(), self.ctx.target.label, "accepted_mtls", "ok")
        self.state = _State.RELAY
        self.relay = Relay(shared.loop, PlainEndpoint(self.client), tls, on_close=self._relay_closed)
        self.relay.start()

    def _relay_closed(self, relay: Relay) -> None:
        shared = self.ctx.shared
        shared.metrics.relayed(self.ctx.label, relay.up.moved, relay.down.moved)
        self.state = _State.CLOSED
        self.relay = None  # break the flow <-> relay cycle
        shared.connections.closed(self)

    def _port(self) -> str:
        return str(self.ctx.target.listen_port)

    def refuse(self, reason: str, detail: str) -> None:
        shared = self.ctx.shared
        shared.metrics.outbound_connection(self._port(), self.ctx.target.label, "refused", reason)
        shared.refusals.refused(
            "outbound connection refused",
            listen_port=self.ctx.target.listen_port,
            target=self.ctx.target.label,
            peer=f"{self.peer[0]}:{self.peer[1]}",
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
        if self.connecting is not None:
            self.connecting.cancel()
        if self.tls is not None:
            shared.loop.forget(self.tls.fileno())
            self.tls.close()
        elif self.upstream is not None:
            shared.loop.forget(self.upstream.fileno())
            self.upstream.close()
        self.client.close()
        shared.connections.closed(self)
