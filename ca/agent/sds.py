"""Envoy's Secret Discovery Service over a Unix socket: `default` and `ROOTCA`.

A new SVID is pushed on every open stream, so Envoy rotates its certificate
without a restart. Requests that ACK what was sent get no answer; a NACK is
logged.
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

from ca.agent.broadcast import Event, SvidBroadcast
from ca.agent.svid import Svid

log = logging.getLogger("meshca.agent.sds")

SECRET_TYPE_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
WORKLOAD_SECRET = "default"
ROOT_SECRET = "ROOTCA"


def secret_for(name: str, svid: Svid) -> secret_pb2.Secret | None:
    if name == WORKLOAD_SECRET:
        return secret_pb2.Secret(
            name=name,
            tls_certificate=common_pb2.TlsCertificate(
                certificate_chain=base_pb2.DataSource(inline_bytes=svid.chain_pem()),
                private_key=base_pb2.DataSource(inline_bytes=svid.key_pem()),
            ),
        )
    if name == ROOT_SECRET:
        return secret_pb2.Secret(
            name=name,
            validation_context=common_pb2.CertificateValidationContext(
                trusted_ca=base_pb2.DataSource(inline_bytes=svid.roots_pem())
            ),
        )
    return None


def discovery_response(
    names: set[str], version: int, svid: Svid, nonce: str
) -> discovery_pb2.DiscoveryResponse:
    resources = []
    for name in sorted(names):
        secret = secret_for(name, svid)
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
            version, svid = self._broadcast.current
            if names and svid is not None and version != sent_version:
                sent_version = version
                self.pushes += 1
                yield discovery_response(names, version, svid, self._next_nonce())

    def FetchSecrets(
        self, request: discovery_pb2.DiscoveryRequest, context: grpc.ServicerContext
    ) -> discovery_pb2.DiscoveryResponse:
        version, svid = self._broadcast.current
        if svid is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "no certificate yet; the agent is still asking the CA")
        return discovery_response(set(request.resource_names), version, svid, self._next_nonce())
