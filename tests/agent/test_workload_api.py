"""The Workload API over a real Unix socket: the X.509 responses carry the CA's CRLs (DER) and are
sent again when new ones arrive."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc
import pytest

from ca._proto import spiffe_workload_pb2 as pb
from ca.agent.broadcast import SvidBroadcast
from ca.agent.runner import unix_server
from ca.agent.workload_api import SECURITY_HEADER, WorkloadApiService
from tests.support.agent import short_dir
from tests.support.clock import FakeClock
from tests.support.crls import crl_revoking
from tests.support.svids import FakeCa, make_svid

M = TypeVar("M")


@pytest.fixture
def served() -> Iterator[tuple[SvidBroadcast, grpc.Channel]]:
    broadcast = SvidBroadcast()
    with short_dir("mca-wl-") as base:
        server = unix_server(base / "wl.sock", [WorkloadApiService(broadcast)])
        server.start()
        channel = grpc.insecure_channel(f"unix:{base / 'wl.sock'}")
        yield broadcast, channel
        channel.close()
        server.stop(0)


def _follow(
    channel: grpc.Channel, method: str, response: Callable[[bytes], M], request: object
) -> queue.Queue[M]:
    call = channel.unary_stream(
        f"/SpiffeWorkloadAPI/{method}",
        request_serializer=lambda r: r.SerializeToString(),
        response_deserializer=response,
    )(request, metadata=(SECURITY_HEADER,))
    received: queue.Queue[M] = queue.Queue()

    def read() -> None:
        try:
            for message in call:
                received.put(message)
        except grpc.RpcError:
            pass

    threading.Thread(target=read, daemon=True).start()
    return received


def test_svid_and_bundle_responses_carry_the_crls_and_follow_them(
    served: tuple[SvidBroadcast, grpc.Channel],
) -> None:
    broadcast, channel = served
    clock = FakeClock()
    ca = FakeCa(clock)
    svid, revoked = make_svid(clock, ca), make_svid(clock, ca)
    broadcast.publish(svid)
    svids = _follow(channel, "FetchX509SVID", pb.X509SVIDResponse.FromString, pb.X509SVIDRequest())
    bundles = _follow(channel, "FetchX509Bundles", pb.X509BundlesResponse.FromString, pb.X509BundlesRequest())
    first_svid, first_bundle = svids.get(timeout=5), bundles.get(timeout=5)
    assert list(first_svid.crl) == [] and list(first_bundle.crl) == []

    crl = crl_revoking(ca.issuer.authority, [revoked.leaf], clock.now())
    broadcast.publish_crl([crl])

    again, bundle_again = svids.get(timeout=5), bundles.get(timeout=5)
    assert list(again.crl) == [crl]
    assert again.svids[0].x509_svid == svid.chain_der()
    assert list(bundle_again.crl) == [crl]
    assert bundle_again.bundles["cluster.local"] == svid.roots_der()
