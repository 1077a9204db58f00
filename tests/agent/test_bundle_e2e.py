"""The trust bundle end to end: a real CA in-process (its control stream on the renewal port, over
mutual TLS) and two in-process agents with SDS sockets. A bundle with an extra root, published
through the CA's push coordinator, reaches both agents' root-cert.pem and the ROOTCA secret on an
SDS stream opened before it, and the CA then counts both agents as holding the new root."""

from __future__ import annotations

import hashlib
import queue
import threading
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from ca.agent.sds import ROOT_SECRET, SECRET_TYPE_URL
from ca.issuance.slots import Acknowledgement
from tests.support.agent import LiveClock, RunningAgent, agent_args, short_dir, start_agent, wait_until
from tests.support.ca_server import RunningCa, start_ca
from tests.support.issuing import make_root

pytestmark = pytest.mark.slow


def _sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _pem(certs: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


class RootCaStream:
    """An SDS stream asking for ROOTCA, as Envoy keeps one open: each trusted_ca it is sent."""

    def __init__(self, socket: Path) -> None:
        self._channel = grpc.insecure_channel(f"unix:{socket}")
        self._requests: queue.SimpleQueue[discovery_pb2.DiscoveryRequest | None] = queue.SimpleQueue()
        self.trusted: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        stub = sds_pb2_grpc.SecretDiscoveryServiceStub(self._channel)
        self._call = stub.StreamSecrets(iter(self._requests.get, None))
        self._requests.put(
            discovery_pb2.DiscoveryRequest(resource_names=[ROOT_SECRET], type_url=SECRET_TYPE_URL)
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for response in self._call:
                for resource in response.resources:
                    secret = secret_pb2.Secret()
                    resource.Unpack(secret)
                    self.trusted.put(secret.validation_context.trusted_ca.inline_bytes)
        except grpc.RpcError:
            pass

    def wait_for(self, expected: bytes, timeout: float) -> None:
        """Read what the agent sends until ROOTCA trusts `expected` (fail after `timeout`)."""
        seen: list[bytes] = []
        wait_until(
            lambda: self._take(seen) == expected,
            timeout,
            "the ROOTCA secret with the published bundle",
        )

    def _take(self, seen: list[bytes]) -> bytes | None:
        while True:
            try:
                seen.append(self.trusted.get_nowait())
            except queue.Empty:
                return seen[-1] if seen else None

    def close(self) -> None:
        self._requests.put(None)
        self._call.cancel()
        self._channel.close()


def _agent(ca: RunningCa, tmp_path: Path, sockets: Path, name: str) -> RunningAgent:
    token = tmp_path / f"token-{name}"
    token.write_text(ca.token("shop", name))
    return start_agent(
        agent_args(
            ca_port=ca.port,
            ca_root=ca.state_dir / "root-cert.pem",
            token_file=token,
            output_dir=tmp_path / f"certs-{name}",
            sds_socket=sockets / f"{name}.sock",
            health=False,
            extra=["--ca-control-addr", f"127.0.0.1:{ca.server.ports['renew']}"],
        ),
        clock=LiveClock(),
    )


def test_a_published_bundle_reaches_two_agents_files_and_sds_and_both_are_counted(tmp_path: Path) -> None:
    with short_dir("meshca-bundle") as sockets:
        ca = start_ca(tmp_path / "state", clock=LiveClock())
        agents: list[RunningAgent] = []
        streams: list[RootCaStream] = []
        try:
            push = ca.server.push
            assert push is not None, "the CA runs with a ledger, so it serves control streams"
            names = ("cart", "web")
            agents = [_agent(ca, tmp_path, sockets, name) for name in names]
            held_roots = x509.load_pem_x509_certificates(ca.bundle)
            old = _sha256(held_roots[0])
            wait_until(
                lambda: push.bundle_holders(old) == Acknowledgement(holding=2, connected=2),
                15,
                "both agents connected, reporting the CA's root in their Hello",
            )
            serials = [agent.serial for agent in agents]
            streams = [RootCaStream(sockets / f"{name}.sock") for name in names]
            for stream in streams:
                stream.wait_for(_pem(held_roots), 10)

            extra = make_root(LiveClock()).signing_cert
            assert push.bundle_holders(_sha256(extra)) == Acknowledgement(holding=0, connected=2)
            push.publish_bundle([*held_roots, extra])

            expected = _pem([*held_roots, extra])
            for name, stream in zip(names, streams, strict=True):
                root_cert = tmp_path / f"certs-{name}" / "root-cert.pem"
                wait_until(lambda f=root_cert: f.read_bytes() == expected, 10, f"{name}'s root-cert.pem")  # type: ignore[misc]
                stream.wait_for(expected, 10)
            wait_until(
                lambda: push.bundle_holders(_sha256(extra)) == Acknowledgement(holding=2, connected=2),
                10,
                "both agents reporting the new root held",
            )
            assert push.bundle_holders(old) == Acknowledgement(holding=2, connected=2)
            # Their certificates still chain to a root of the bundle: nothing was renewed.
            assert [agent.serial for agent in agents] == serials
        finally:
            for stream in streams:
                stream.close()
            for agent in agents:
                agent.stop()
            ca.stop()
