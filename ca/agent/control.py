"""The agent's end of the control stream: one long-lived stream to the CA's renewal port.

The agent opens it with the certificate it holds (mutual TLS), says Hello, and follows
what the CA sends:

- RevocationList: handed to the agent's CRL delivery (`SvidBroadcast.publish_crl`: crl.pem,
  the ROOTCA SDS secret, the Workload API);
- TrustBundle: checked (every root parses and is a CA; the sequence is newer than the one
  held, else it is ignored), served everywhere (`SvidBroadcast.publish_bundle`: root-cert.pem,
  the ROOTCA SDS secret, Workload API bundles), held, and reported with BundleHeld. If the
  certificate the agent holds no longer chains to any of the new roots, it asks for a new one
  at once (as for an order, without its id);
- RotateOrder: after the order's delay, ask for a new certificate at once, with the order's
  metadata so the CA's ledger links the new certificate to the order and the old one;
- Reissue: the certificate is revoked: ask for a new one at once (with the token, as every
  request of the agent is).

Whenever the agent's certificate changes (an order, a new trust bundle, or its ordinary
renewal) it reports Replaced for each order the old certificate had, then a Rebind on the same
stream: the new certificate, signed for by its key. The CA then knows the stream by the new
certificate, and no new connection is made; were the CA to refuse the Rebind, it ends the stream
and the agent reconnects with the new certificate at once. After a Reissue (the certificate is
revoked) the CA ends the stream itself, and the agent connects anew once it holds a new
certificate. When the stream fails or the CA goes away it reconnects after a jittered wait that
grows with each failure (CONTROL_BACKOFF): agents that lose a restarted CA together come back
spread over seconds, not in the same one. A CA that answers UNIMPLEMENTED does not serve the
stream at all (no ledger, or its threaded gRPC server): the agent says so once, as a warning,
and asks again only within a minute each time (UNSERVED_BACKOFF: 6-60 s).

The Hello names the roots the agent holds, and each stream trusts the CA's TLS certificate
with the --ca-root file and those roots together, read again for each stream: once the CA's
serving certificate moves to a new root, an agent whose --ca-root file is stale still connects.

One thread reads the stream; an order with a delay waits on a short-lived thread of its own.
Every wait is on the injected clock.
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca import __version__
from ca._proto import meshca_control_pb2 as pb
from ca._proto import meshca_control_pb2_grpc as pb_grpc
from ca.agent.agent import Replacement
from ca.agent.bundle import HeldBundle, check_bundle, root_sha256
from ca.agent.svid import Svid, chains_to
from ca.common.backoff import Backoff, Retrying, UniformRandom
from ca.common.clock import Clock
from ca.errors import MeshcaError
from ca.issuance.possession import prove_possession, rebind_statement

log = logging.getLogger("meshca.agent")

CONTROL_BACKOFF = Backoff(initial_s=5.0, maximum_s=60.0, jitter=0.9)
"""After the stream fails: 0.5-5 s, doubling to 6-60 s. The first wait spans a factor of ten so
that many agents losing one CA together do not all come back within the same second."""

UNSERVED_BACKOFF = Backoff(
    initial_s=CONTROL_BACKOFF.maximum_s, maximum_s=CONTROL_BACKOFF.maximum_s, jitter=CONTROL_BACKOFF.jitter
)
"""After the CA answered UNIMPLEMENTED (it runs without the control service): 6-60 s each time, as
the last step of CONTROL_BACKOFF; asking sooner would get the same answer."""
UNSERVED = (
    "the CA does not serve the control stream (it answered UNIMPLEMENTED): rotation orders and "
    "revocation lists cannot reach this agent, while an order can still revoke its certificate; "
    "a meshca CA serves the stream when it has a ledger and runs its default asyncio gRPC server "
    "(meshca serve --grpc-server asyncio); asking again within a minute each time"
)

CLOSE_WAIT_S = 10.0  # after asking the CA to end a stream, cancel it if it has not ended by then
KEEPALIVE_MS = 60_000  # a ping on the open stream, so a CA that vanished is noticed
KEEPALIVE_TIMEOUT_MS = 20_000

CrlSink = Callable[[Sequence[bytes], Sequence[bytes]], object]
"""Serves the CA's CRLs (DER), given the CA certificates that signed them (DER, with their chains);
raises MeshcaError for lists it will not use."""

BundleServer = Callable[[Sequence[x509.Certificate]], object]
"""Serves a checked trust bundle everywhere the agent serves roots; raises MeshcaError when it
could not (the bundle is then neither held nor reported)."""

Placement = Callable[[], tuple[str | None, str | None]]
"""The pod and node this agent serves, when it knows them."""


class Renewer(Protocol):
    def renew_now(self, replacing: Replacement | None) -> None:
        """Ask the CA for a new certificate at once, with the order's metadata when replacing;
        returns at once (the renewal runs on the agent's own schedule)."""
        ...


@dataclass(frozen=True, kw_only=True)
class ControlEndpoint:
    address: str
    root_file: Path
    server_name: str | None = None


class StreamEnd(enum.Enum):
    FAILED = "failed"  # the CA ended it, or the connection did
    REISSUE = "reissue"  # the certificate is revoked
    UNSERVED = "unserved"  # the CA does not serve the control stream (UNIMPLEMENTED)
    STOPPED = "stopped"


def serial_of(svid: Svid) -> str:
    return format(svid.leaf.serial_number, "x")


def hello_message(
    svid: Svid, pod: str | None, node: str | None, roots: Sequence[x509.Certificate] = ()
) -> pb.AgentMessage:
    """The Hello: the roots held (`roots`, else the certificate's) and where the agent runs."""
    held = [root_sha256(r) for r in (roots or svid.roots)]
    return pb.AgentMessage(
        hello=pb.Hello(
            agent_version=__version__, bundle_sha256=held, pod_name=pod or "", node_name=node or ""
        )
    )


def bundle_held_message(roots: Sequence[x509.Certificate], sequence: int) -> pb.AgentMessage:
    return pb.AgentMessage(
        bundle_held=pb.BundleHeld(bundle_sha256=[root_sha256(r) for r in roots], sequence=sequence)
    )


def replaced_message(order_id: str, old_serial: str, new_serial: str) -> pb.AgentMessage:
    return pb.AgentMessage(
        replaced=pb.Replaced(order_id=order_id, old_serial=old_serial, new_serial=new_serial)
    )


def rebind_message(svid: Svid, old_serial: str) -> pb.AgentMessage:
    """The Rebind that moves a stream opened with certificate `old_serial` to `svid`."""
    statement = rebind_statement(old_serial, serial_of(svid))
    return pb.AgentMessage(
        rebind=pb.Rebind(
            certificate_der=svid.leaf.public_bytes(serialization.Encoding.DER),
            proof=prove_possession(svid.key, statement),
        )
    )


def _outgoing(messages: queue.SimpleQueue[pb.AgentMessage | None]) -> Iterator[pb.AgentMessage]:
    """What the agent sends on one stream, until None ends its side of it."""
    while True:
        message = messages.get()
        if message is None:
            return
        yield message


@dataclass
class _Stream:
    """The open stream: the serial the CA knows it by (its certificate's, or the one it was
    rebound to), its call, and what it still has to send."""

    serial: str
    call: Any
    outgoing: queue.SimpleQueue[pb.AgentMessage | None]
    ending: bool = False
    answered: bool = False  # the CA has sent something on it (it sends a CRL at once)


def _known_serial(stream: _Stream | None, opened_with: str) -> str:
    """The serial the CA knows a stream by: the one it was rebound to, else the one it was opened
    with (`stream` is None when the call could not be made)."""
    return stream.serial if stream is not None else opened_with


class ControlStream:
    """The agent's control stream; also an SvidSink (`publish`), to learn of each new certificate."""

    def __init__(
        self,
        *,
        endpoint: ControlEndpoint,
        renewer: Renewer,
        crls: CrlSink,
        clock: Clock,
        random: UniformRandom,
        placement: Placement = lambda: (None, None),
        backoff: Backoff = CONTROL_BACKOFF,
        bundle: HeldBundle | None = None,
        serve_bundle: BundleServer = lambda roots: None,
    ) -> None:
        self._endpoint = endpoint
        self._renewer = renewer
        self._crls = crls
        self._bundle = bundle or HeldBundle()
        self._serve_bundle = serve_bundle
        self._clock = clock
        self._placement = placement
        self._retrying = Retrying(backoff, random)
        self._random = random
        self._told_unserved = False  # the UNIMPLEMENTED warning is logged once, not every minute
        self._lock = threading.Lock()
        self._changed = threading.Event()  # a new certificate, or stop
        self._stopped = threading.Event()
        self._svid: Svid | None = None
        self._revoked: str | None = None  # a serial the CA said is revoked: never connect with it
        self._orders: dict[str, pb.RotateOrder] = {}  # orders for the current certificate
        self._stream: _Stream | None = None
        self._thread: threading.Thread | None = None
        self.connects = 0  # streams opened (each with its certificate)

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="meshca-control", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopped.set()
        self._changed.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.call.cancel()
        if self._thread is not None:
            self._thread.join(timeout_s)

    @property
    def connected(self) -> bool:
        """Whether a stream is open and the CA has answered on it (a metric)."""
        with self._lock:
            return self._stream is not None and self._stream.answered

    @property
    def connected_serial(self) -> str | None:
        """The serial the open stream was opened with (None between streams)."""
        with self._lock:
            return self._stream.serial if self._stream is not None else None

    # ------------------------------------------------------------------ a new certificate

    def publish(self, svid: Svid) -> None:
        """The agent holds `svid` now: report the orders the old certificate had as followed,
        then move the open stream to `svid` (a stream still connecting is ended instead, and
        the next one opens with `svid`)."""
        with self._lock:
            old, self._svid = self._svid, svid
            orders, self._orders = self._orders, {}
            stream = self._stream
            new_serial = serial_of(svid)
            moving = (
                stream is not None
                and not stream.ending
                and old is not None
                and stream.serial == serial_of(old) != new_serial
            )
            if moving:
                assert stream is not None
                old_serial, stream.serial = stream.serial, new_serial
                for order_id in orders:
                    stream.outgoing.put(replaced_message(order_id, old_serial, new_serial))
                stream.outgoing.put(rebind_message(svid, old_serial))
        if moving:
            for order_id in orders:
                log.info(
                    "rotation order followed",
                    extra={"order_id": order_id, "old_serial": old_serial, "new_serial": new_serial},
                )
        self._changed.set()

    def _end(self, stream: _Stream) -> None:
        """Close our side of the stream (the CA then ends it); cancel it if the CA does not."""
        if stream.ending:
            return
        stream.ending = True
        stream.outgoing.put(None)

        def cancel_late() -> None:
            if not self._clock.wait(self._stopped, CLOSE_WAIT_S):
                stream.call.cancel()

        threading.Thread(target=cancel_late, name="meshca-control-close", daemon=True).start()

    # ------------------------------------------------------------------ the stream loop

    def _run(self) -> None:
        while not self._stopped.is_set():
            svid = self._usable_svid()
            if svid is None:
                return
            known = serial_of(svid)  # the serial the CA knew the stream by when it ended
            try:
                healthy, end, known = self._serve(svid)
            except OSError as err:  # the --ca-root file, read for each stream
                log.warning(
                    "cannot open the control stream to the CA; retrying",
                    extra={"root_file": str(self._endpoint.root_file), "detail": str(err)},
                )
                healthy, end = False, StreamEnd.FAILED
            except Exception:  # a bug must not end the stream's thread for good
                log.exception("the control stream failed unexpectedly; reconnecting")
                healthy, end = False, StreamEnd.FAILED
            if end is StreamEnd.STOPPED or self._stopped.is_set():
                return
            if end is StreamEnd.REISSUE:
                continue  # the next stream waits for the new certificate
            if end is StreamEnd.UNSERVED:
                self._changed.clear()
                self._clock.wait(self._changed, UNSERVED_BACKOFF.delay_s(0, self._random))
                continue
            if self._current_serial() != known:
                self._retrying.reset()
                continue  # ended on a certificate no longer held: reconnect with the new one at once
            if healthy:
                self._retrying.reset()
            self._wait_before_reconnect()

    def _current_serial(self) -> str | None:
        with self._lock:
            return serial_of(self._svid) if self._svid is not None else None

    def _usable_svid(self) -> Svid | None:
        """The certificate to connect with: held, and not one the CA said is revoked."""
        while not self._stopped.is_set():
            self._changed.clear()
            with self._lock:
                svid, revoked = self._svid, self._revoked
            if svid is not None and serial_of(svid) != revoked:
                return svid
            self._clock.wait(self._changed, 3600)
        return None

    def _wait_before_reconnect(self) -> None:
        delay = self._retrying.next_delay_s()
        log.info(
            "control stream to the CA ended; reconnecting",
            extra={"address": self._endpoint.address, "retry_in_s": round(delay, 3)},
        )
        self._changed.clear()
        self._clock.wait(self._changed, delay)

    def _serve(self, svid: Svid) -> tuple[bool, StreamEnd, str]:
        """One stream, opened with `svid`, until it ends: whether the CA answered on it, why it
        ended, and the serial the CA knew it by at the end (`svid`'s, or one it was rebound to)."""
        serial = serial_of(svid)
        stream: _Stream | None = None
        outgoing: queue.SimpleQueue[pb.AgentMessage | None] = queue.SimpleQueue()
        outgoing.put(hello_message(svid, *self._placement(), roots=self._bundle.roots))
        channel = self._channel(svid)
        healthy, end = False, StreamEnd.FAILED
        try:
            call = pb_grpc.ControlStub(channel).Connect(_outgoing(outgoing))  # type: ignore[no-untyped-call]
            stream = _Stream(serial=serial, call=call, outgoing=outgoing)
            with self._lock:
                self._stream = stream
                changed = self._svid is not svid
            self.connects += 1
            if changed:  # a new certificate arrived while this one was connecting
                self._end(stream)
            for message in call:
                healthy, self._told_unserved, stream.answered = True, False, True
                if self._handle(message, stream.serial) is StreamEnd.REISSUE:
                    end = StreamEnd.REISSUE
        except grpc.RpcError as err:
            if err.code() is grpc.StatusCode.UNIMPLEMENTED and not healthy:
                end = StreamEnd.UNSERVED
                self._unserved(err)
            elif (
                end is not StreamEnd.REISSUE
                and not self._stopped.is_set()
                and self._current_serial() == _known_serial(stream, serial)
            ):
                log.warning(
                    "control stream to the CA failed",
                    extra={
                        "address": self._endpoint.address,
                        "code": err.code().name,
                        "detail": err.details(),
                    },
                )
        finally:
            outgoing.put(None)  # lets gRPC's sending thread finish
            with self._lock:
                self._stream = None
            channel.close()
        return healthy, StreamEnd.STOPPED if self._stopped.is_set() else end, _known_serial(stream, serial)

    def _unserved(self, err: grpc.RpcError) -> None:
        """Say once, clearly, that this CA will not push anything; later refusals only at debug."""
        extra = {"address": self._endpoint.address, "detail": err.details()}
        if self._told_unserved:
            log.debug("the CA still does not serve the control stream", extra=extra)
            return
        self._told_unserved = True
        log.warning(UNSERVED, extra=extra)

    def _channel(self, svid: Svid) -> grpc.Channel:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self._bundle.trust_pem(self._endpoint.root_file.read_bytes()),
            private_key=svid.key_pem(),
            certificate_chain=svid.chain_pem(),
        )
        options: list[tuple[str, Any]] = [
            ("grpc.keepalive_time_ms", KEEPALIVE_MS),
            ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
            ("grpc.http2.max_pings_without_data", 0),  # the stream is idle for hours: keep pinging
        ]
        if self._endpoint.server_name:
            options.append(("grpc.ssl_target_name_override", self._endpoint.server_name))
        return grpc.secure_channel(self._endpoint.address, credentials, options=options)

    # ------------------------------------------------------------------ what the CA says

    def _handle(self, message: pb.ControlMessage, serial: str) -> StreamEnd | None:
        kind = message.WhichOneof("kind")
        if kind == "revocations":
            self._deliver_crls(message.revocations)
        elif kind == "rotate":
            self._follow(message.rotate, serial)
        elif kind == "bundle":
            self._take_bundle(message.bundle, serial)
        elif kind == "reissue":
            log.warning(
                "the CA says this agent's certificate is revoked; asking for a new one",
                extra={"serial": serial, "reason": message.reissue.reason},
            )
            with self._lock:
                self._revoked = serial
            self._renewer.renew_now(None)
            return StreamEnd.REISSUE
        return None

    def _deliver_crls(self, revocations: pb.RevocationList) -> None:
        try:
            self._crls(list(revocations.crl_der), list(revocations.signer_der))
        except MeshcaError as err:
            log.warning("the CA's revocation lists were not used", extra={"detail": err.message})

    def _take_bundle(self, bundle: pb.TrustBundle, serial: str) -> None:
        """Check a pushed bundle, serve it, hold it, say so; renew if the leaf no longer chains."""
        try:
            roots = check_bundle(list(bundle.root_der))
        except MeshcaError as err:
            log.warning(
                "refused the CA's trust bundle",
                extra={"reason": err.reason, "detail": err.message, "sequence": bundle.sequence},
            )
            return
        if not self._bundle.newer(bundle.sequence):
            log.debug(
                "ignored a trust bundle no newer than the one held",
                extra={"sequence": bundle.sequence, "held": self._bundle.sequence},
            )
            return
        try:
            self._serve_bundle(roots)
        except MeshcaError as err:
            log.warning(
                "the CA's trust bundle could not be served everywhere; not reporting it held",
                extra={"reason": err.reason, "detail": err.message, "sequence": bundle.sequence},
            )
            return
        self._bundle.take(bundle.sequence, roots)
        with self._lock:
            stream, svid = self._stream, self._svid
        if stream is not None and stream.serial == serial and not stream.ending:
            stream.outgoing.put(bundle_held_message(roots, bundle.sequence))
        log.info(
            "trust bundle received and served",
            extra={"sequence": bundle.sequence, "roots": [root_sha256(r) for r in roots]},
        )
        if svid is not None and not chains_to(svid, roots, self._clock.now()):
            held = serial_of(svid)
            log.warning(
                "the certificate held does not chain to the CA's new trust bundle; asking for a new one",
                extra={"serial": held},
            )
            self._renewer.renew_now(Replacement(serial=held))

    def _follow(self, order: pb.RotateOrder, serial: str) -> None:
        if order.serial != serial:
            return  # for a certificate this agent no longer holds
        with self._lock:
            if order.order_id in self._orders or self._current_serial_locked() != serial:
                return
            self._orders[order.order_id] = order
        log.info(
            "rotation order received",
            extra={
                "order_id": order.order_id,
                "serial": serial,
                "delay_ms": order.delay_ms,
                "reason": order.reason,
            },
        )
        replacement = Replacement(order_id=order.order_id, serial=serial)
        if order.delay_ms == 0:
            self._renewer.renew_now(replacement)
            return

        def after_delay() -> None:
            if self._clock.wait(self._stopped, order.delay_ms / 1000):
                return
            if self._current_serial() == serial:  # not replaced meanwhile
                self._renewer.renew_now(replacement)

        threading.Thread(target=after_delay, name="meshca-control-order", daemon=True).start()

    def _current_serial_locked(self) -> str | None:
        return serial_of(self._svid) if self._svid is not None else None
