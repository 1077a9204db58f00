"""The SPIFFE Workload API (X.509 part) over a Unix socket.

FetchX509SVID and FetchX509Bundles stream the current SVID and bundle and
send again whenever they change. Both carry the CA's revocation lists (DER) in
their `crl` field once the agent has them, and send again when those change.
The spec's `workload.spiffe.io: true` header is required, so that a request a
browser or proxy was tricked into sending is refused.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator

import grpc

from ca._proto import spiffe_workload_pb2 as pb
from ca.agent.broadcast import Delivery, Event, SvidBroadcast

SERVICE = "SpiffeWorkloadAPI"
SECURITY_HEADER = ("workload.spiffe.io", "true")


def x509_svid_response(now: Delivery) -> pb.X509SVIDResponse:
    svid = now.svid
    assert svid is not None
    return pb.X509SVIDResponse(
        svids=[
            pb.X509SVID(
                spiffe_id=svid.spiffe_id.uri,
                x509_svid=svid.chain_der(),
                x509_svid_key=svid.key_der(),
                bundle=svid.roots_der(),
            )
        ],
        crl=now.revocations.ders(),
    )


def x509_bundles_response(now: Delivery) -> pb.X509BundlesResponse:
    svid = now.svid
    assert svid is not None
    return pb.X509BundlesResponse(
        bundles={svid.spiffe_id.trust_domain: svid.roots_der()}, crl=now.revocations.ders()
    )


def _svid_changed(old: Delivery, new: Delivery) -> bool:
    return old.svid is not new.svid or old.revocations is not new.revocations


def _bundle_changed(old: Delivery, new: Delivery) -> bool:
    assert old.svid is not None and new.svid is not None
    return (
        old.svid.roots_fingerprint() != new.svid.roots_fingerprint() or old.revocations is not new.revocations
    )


class WorkloadApiService:
    def __init__(self, broadcast: SvidBroadcast) -> None:
        self._broadcast = broadcast

    def _stream(
        self,
        context: grpc.ServicerContext,
        render: Callable[[Delivery], object],
        changed: Callable[[Delivery, Delivery], bool],
    ) -> Iterator[object]:
        if (SECURITY_HEADER[0], SECURITY_HEADER[1]) not in tuple(context.invocation_metadata()):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "security header missing from request: send 'workload.spiffe.io: true'",
            )
        events: queue.SimpleQueue[Event] = self._broadcast.listen()
        context.add_callback(lambda: events.put(("end", None)))
        sent: Delivery | None = None
        try:
            while True:
                now = self._broadcast.snapshot()
                if now.svid is not None and (sent is None or changed(sent, now)):
                    sent = now
                    yield render(now)
                kind, _ = events.get()
                if kind == "end":
                    return
        finally:
            self._broadcast.forget(events)

    def fetch_x509_svid(self, request: pb.X509SVIDRequest, context: grpc.ServicerContext) -> Iterator[object]:
        return self._stream(context, x509_svid_response, _svid_changed)

    def fetch_x509_bundles(
        self, request: pb.X509BundlesRequest, context: grpc.ServicerContext
    ) -> Iterator[object]:
        return self._stream(context, x509_bundles_response, _bundle_changed)

    def handler(self) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "FetchX509SVID": grpc.unary_stream_rpc_method_handler(
                    self.fetch_x509_svid,
                    request_deserializer=pb.X509SVIDRequest.FromString,
                    response_serializer=pb.X509SVIDResponse.SerializeToString,
                ),
                "FetchX509Bundles": grpc.unary_stream_rpc_method_handler(
                    self.fetch_x509_bundles,
                    request_deserializer=pb.X509BundlesRequest.FromString,
                    response_serializer=pb.X509BundlesResponse.SerializeToString,
                ),
            },
        )
