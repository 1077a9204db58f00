"""The SDS server's protocol over a real Unix socket, with a gRPC client playing Envoy."""

from __future__ import annotations

import queue
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from ca.agent.broadcast import SvidBroadcast
from ca.agent.runner import unix_server
from ca.agent.sds import SECRET_TYPE_URL, SdsService
from ca.agent.svid import Svid
from ca.issuance.crl import load_pem_crls
from tests.support.clock import FakeClock
from tests.support.crls import crl_revoking
from tests.support.svids import FakeCa, make_svid


class EnvoyLikeStream:
    def __init__(self, channel: grpc.Channel) -> None:
        self.requests: queue.SimpleQueue[discovery_pb2.DiscoveryRequest | None] = queue.SimpleQueue()
        self.responses: queue.SimpleQueue[discovery_pb2.DiscoveryResponse] = queue.SimpleQueue()
        stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
        self.call = stub.StreamSecrets(iter(self.requests.get, None))
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for response in self.call:
                self.responses.put(response)
        except grpc.RpcError:
            pass

    def ask(self, names: list[str], version: str = "", nonce: str = "") -> None:
        self.requests.put(
            discovery_pb2.DiscoveryRequest(
                resource_names=names, type_url=SECRET_TYPE_URL, version_info=version, response_nonce=nonce
            )
        )

    def next(self, timeout: float = 5) -> discovery_pb2.DiscoveryResponse:
        return self.responses.get(timeout=timeout)

    def close(self) -> None:
        self.requests.put(None)
        self.call.cancel()


@pytest.fixture
def sds() -> Iterator[tuple[SvidBroadcast, grpc.Channel]]:
    broadcast = SvidBroadcast()
    socket_dir = Path(tempfile.mkdtemp(dir="/tmp"))
    server = unix_server(socket_dir / "sds.sock", [SdsService(broadcast)])
    server.start()
    channel = grpc.insecure_channel(f"unix:{socket_dir / 'sds.sock'}")
    yield broadcast, channel
    channel.close()
    server.stop(0)


def _secrets(response: discovery_pb2.DiscoveryResponse) -> dict[str, secret_pb2.Secret]:
    found = {}
    for resource in response.resources:
        secret = secret_pb2.Secret()
        resource.Unpack(secret)
        found[secret.name] = secret
    return found


def test_serves_default_and_rootca_then_pushes_rotation_without_a_new_request(
    sds: tuple[SvidBroadcast, grpc.Channel],
) -> None:
    broadcast, channel = sds
    first, second = make_svid(FakeClock()), make_svid(FakeClock())
    broadcast.publish(first)
    stream = EnvoyLikeStream(channel)
    try:
        stream.ask(["default"])
        response = stream.next()
        secrets = _secrets(response)
        assert secrets["default"].tls_certificate.certificate_chain.inline_bytes == first.chain_pem()
        assert secrets["default"].tls_certificate.private_key.inline_bytes == first.key_pem()
        stream.ask(["default"], version=response.version_info, nonce=response.nonce)
        with pytest.raises(queue.Empty):
            stream.next(timeout=0.3)
        broadcast.publish(second)
        pushed = stream.next()
        assert pushed.version_info != response.version_info
        assert (
            _secrets(pushed)["default"].tls_certificate.certificate_chain.inline_bytes == second.chain_pem()
        )
    finally:
        stream.close()

    roots = EnvoyLikeStream(channel)
    try:
        roots.ask(["ROOTCA"])
        validation = _secrets(roots.next())["ROOTCA"].validation_context
        assert validation.trusted_ca.inline_bytes == second.roots_pem()
    finally:
        roots.close()


def test_waits_for_the_first_certificate_instead_of_answering_empty(
    sds: tuple[SvidBroadcast, grpc.Channel],
) -> None:
    broadcast, channel = sds
    stream = EnvoyLikeStream(channel)
    try:
        stream.ask(["default"])
        with pytest.raises(queue.Empty):
            stream.next(timeout=0.3)
        svid: Svid = make_svid(FakeClock())
        broadcast.publish(svid)
        assert "default" in _secrets(stream.next())
    finally:
        stream.close()


def test_closed_streams_are_forgotten(sds: tuple[SvidBroadcast, grpc.Channel]) -> None:
    broadcast, channel = sds
    broadcast.publish(make_svid(FakeClock()))
    streams = [EnvoyLikeStream(channel) for _ in range(3)]
    for stream in streams:
        stream.ask(["default"])
        stream.next()
    assert broadcast.listener_count == 3
    for stream in streams:
        stream.close()
    deadline = threading.Event()
    for _ in range(50):
        if broadcast.listener_count == 0:
            break
        deadline.wait(0.05)
    assert broadcast.listener_count == 0


def test_a_new_crl_pushes_rootca_with_it_and_leaf_only_checking(
    sds: tuple[SvidBroadcast, grpc.Channel],
) -> None:
    broadcast, channel = sds
    clock = FakeClock()
    ca = FakeCa(clock)
    svid, revoked = make_svid(clock, ca), make_svid(clock, ca)
    broadcast.publish(svid)
    stream = EnvoyLikeStream(channel)
    try:
        stream.ask(["ROOTCA"])
        response = stream.next()
        before = _secrets(response)["ROOTCA"].validation_context
        assert not before.HasField("crl") and not before.only_verify_leaf_cert_crl
        stream.ask(["ROOTCA"], version=response.version_info, nonce=response.nonce)

        broadcast.publish_crl([crl_revoking(ca.issuer.authority, [revoked.leaf], clock.now())])

        pushed = stream.next()
        assert pushed.version_info != response.version_info
        validation = _secrets(pushed)["ROOTCA"].validation_context
        assert validation.trusted_ca.inline_bytes == svid.roots_pem()
        assert validation.only_verify_leaf_cert_crl
        assert validation.crl.inline_bytes == broadcast.snapshot().revocations.pem()
        crls = load_pem_crls(validation.crl.inline_bytes, "ROOTCA crl")
        assert [r.serial_number for r in crls[0]] == [revoked.leaf.serial_number]
    finally:
        stream.close()
