"""Envoy's Secret Discovery Service over a Unix socket: `default` and `ROOTCA`.

A new SVID, or new revocation lists from the CA, is pushed on every open stream,
so Envoy rotates its certificate and applies revocations without a restart.
Requests that ACK what was sent get no answer; a NACK is logged.

Once the agent holds revocation lists, ROOTCA's validation context carries them
as `crl` (PEM, all of them) with `only_verify_leaf_cert_crl`: the CA publishes a
CRL for the certificate that signs leaves, not for the intermediates above it,
and Envoy would otherwise want one for every CA of the chain.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from google.protobuf import any_pb2

from ca.agent.broadcast import Delivery, Event, SvidBroadcast
from ca.agent.svid import Svid
from ca.issuance.crl import NO_REVOCATIONS, RevocationLists

log = logging.getLogger("meshca.agent.sds")

SECRET_TYPE_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
WORKLOAD_SECRET = "default"
ROOT_SECRET = "ROOTCA"


def validation_context(svid: Svid, revocations: RevocationLists) -> common_pb2.CertificateValidationContext:
    context = common_pb2.CertificateValidationContext(
        trusted_ca=base_pb2.DataSource(inline_bytes=svid.roots_pem())
    )
    if revocations:
        context.crl.inline_bytes = revocations.pem()
        context.only_verify_leaf_cert_crl = True
    return context


def secret_for(
    name: str, svid: Svid, revocations: RevocationLists = NO_REVOCATIONS
) -> secret_pb2.Secret | None:
    if name == WORKLOAD_SECRET:
        return secret_pb2.Secret(
            name=name,
            tls_certificate=common_pb2.TlsCertificate(
                certificate_chain=base_pb2.DataSource(inline_bytes=svid.chain_pem()),
                private_key=base_pb2.DataSource(inline_bytes=svid.key_pem()),
            ),
        )
    if name == ROOT_SECRET:
        return secret_pb2.Secret(name=name, validation_context=validation_context(svid, revocations))
    return None


def discovery_response(
    names: set[str], version: int, svid: Svid, nonce: str, revocations: RevocationLists = NO_REVOCATIONS
) -> discovery_pb2.DiscoveryResponse:
    resources = []
    for name in sorted(names):
        secret = secret_for(name, svid, revocations)
        if secret is None:
            log.warning("Envoy asked for an unknown secret", extra={"secret": name})
            continue
        packed = any_pb2.Any()
        packed.Pack(secret)
        resources.append(packed)
    return discovery_pb2.DiscoveryResponse(
        version_info=str(version), resources=resources, type_url=SECRET_TYPE_URL, nonce=nonce
    )


class SdsService(sds_pb2_grpc.SecretDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(self, broadcast: SvidBroadcast) -> None:
        self._broadcast = broadcast
        self._nonce = 0
        self._nonce_lock = threading.Lock()
        self.pushes = 0

    def _next_nonce(self) -> str:
        with self._nonce_lock:
            self._nonce += 1
            return str(self._nonce)

    def StreamSecrets(
        self, request_iterator: Iterator[discovery_pb2.DiscoveryRequest], context: grpc.ServicerContext
    ) -> Iterator[discovery_pb2.DiscoveryResponse]:
        events = self._broadcast.listen()
        context.add_callback(lambda: events.put(("end", None)))

        def read_requests() -> None:
            try:
                for request in request_iterator:
                    events.put(("request", request))
            except grpc.RpcError:
                pass
            events.put(("end", None))

        threading.Thread(target=read_requests, name="sds-reader", daemon=True).start()
        try:
            yield from self._serve(events)
        finally:
            self._broadcast.forget(events)

    def _serve(self, events: queue.SimpleQueue[Event]) -> Iterator[discovery_pb2.DiscoveryResponse]:
        names: set[str] = set()
        sent_version = -1
        while True:
            kind, item = events.get()
            if kind == "end":
                return
            if kind == "request":
                request: discovery_pb2.DiscoveryRequest = item
                if request.HasField("error_detail"):
                    log.warning(
                        "Envoy rejected a secret",
                        extra={
                            "detail": request.error_detail.message,
                            "secrets": list(request.resource_names),
                        },
                    )
                if request.resource_names:
                    if set(request.resource_names) != names:
                        sent_version = -1
                    names = set(request.resource_names)
            now = self._broadcast.snapshot()
            if names and now.svid is not None and now.version != sent_version:
                sent_version = now.version
                self.pushes += 1
                yield self._response(names, now)

    def _response(self, names: set[str], now: Delivery) -> discovery_pb2.DiscoveryResponse:
        assert now.svid is not None
        return discovery_response(names, now.version, now.svid, self._next_nonce(), now.revocations)

    def FetchSecrets(
        self, request: discovery_pb2.DiscoveryRequest, context: grpc.ServicerContext
    ) -> discovery_pb2.DiscoveryResponse:
        now = self._broadcast.snapshot()
        if now.svid is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "no certificate yet; the agent is still asking the CA")
        return self._response(set(request.resource_names), now)
