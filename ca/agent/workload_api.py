"""The SPIFFE Workload API (X.509 part) over a Unix socket.

FetchX509SVID and FetchX509Bundles stream the current SVID and bundle and
send again whenever they change. The spec's `workload.spiffe.io: true` header
is required, so that a request a browser or proxy was tricked into sending
is refused.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator

import grpc

from ca._proto import spiffe_workload_pb2 as pb
from ca.agent.broadcast import Event, SvidBroadcast
from ca.agent.svid import Svid

SERVICE = "SpiffeWorkloadAPI"
SECURITY_HEADER = ("workload.spiffe.io", "true")


def x509_svid_response(svid: Svid) -> pb.X509SVIDResponse:
    return pb.X509SVIDResponse(
        svids=[
            pb.X509SVID(
                spiffe_id=svid.spiffe_id.uri,
                x509_svid=svid.chain_der(),
                x509_svid_key=svid.key_der(),
                bundle=svid.roots_der(),
            )
        ]
    )


def x509_bundles_response(svid: Svid) -> pb.X509BundlesResponse:
    return pb.X509BundlesResponse(bundles={svid.spiffe_id.trust_domain: svid.roots_der()})


class WorkloadApiService:
    def __init__(self, broadcast: SvidBroadcast) -> None:
        self._broadcast = broadcast

    def _stream(
        self,
        context: grpc.ServicerContext,
        render: Callable[[Svid], object],
        changed: Callable[[Svid, Svid], bool],
    ) -> Iterator[object]:
        if (SECURITY_HEADER[0], SECURITY_HEADER[1]) not in tuple(context.invocation_metadata()):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "security header missing from request: send 'workload.spiffe.io: true'",
            )
        events: queue.SimpleQueue[Event] = self._broadcast.listen()
        context.add_callback(lambda: events.put(("end", None)))
        sent: Svid | None = None
        try:
            while True:
                _, svid = self._broadcast.current
                if svid is not None and (sent is None or changed(sent, svid)):
                    sent = svid
                    yield render(svid)
                kind, _ = events.get()
                if kind == "end":
                    return
        finally:
            self._broadcast.forget(events)

    def fetch_x509_svid(self, request: pb.X509SVIDRequest, context: grpc.ServicerContext) -> Iterator[object]:
        return self._stream(context, x509_svid_response, lambda old, new: old is not new)

    def fetch_x509_bundles(
        self, request: pb.X509BundlesRequest, context: grpc.ServicerContext
    ) -> Iterator[object]:
        return self._stream(
            context,
            x509_bundles_response,
            lambda old, new: old.roots_fingerprint() != new.roots_fingerprint(),
        )

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
