"""Run the real CA server in-process on loopback, and call it over real TLS."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc

from ca._proto import istio_ca_pb2, istio_ca_pb2_grpc
from ca.cli.main import build_parser
from ca.issuance.keys import PrivateKey, private_key_pem
from ca.server.devtoken import DevTokenIssuer
from ca.server.settings import serve_config
from ca.server.wiring import CaServer, build_server
from tests.support.clock import FakeClock
from tests.support.pki import ec_key, make_csr


def serve_args(state_dir: Path, *extra: str) -> list[str]:
    return [
        "serve",
        "--state-dir",
        str(state_dir),
        "--listen",
        "127.0.0.1:0",
        "--renew-listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        *extra,
    ]


@dataclass
class RunningCa:
    server: CaServer
    state_dir: Path
    clock: FakeClock
    channels: list[grpc.Channel] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.server.ports["grpc"]

    @property
    def bundle(self) -> bytes:
        return (self.state_dir / "root-cert.pem").read_bytes()

    def dev_tokens(self) -> DevTokenIssuer:
        return DevTokenIssuer.load_or_create(self.state_dir, self.clock)

    def token(self, namespace: str = "default", service_account: str = "web", **kwargs: Any) -> str:
        return self.dev_tokens().mint(namespace=namespace, service_account=service_account, **kwargs)

    def channel(
        self,
        *,
        port: int | None = None,
        client_key: PrivateKey | None = None,
        client_chain: bytes | None = None,
    ) -> grpc.Channel:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.bundle,
            private_key=private_key_pem(client_key) if client_key is not None else None,
            certificate_chain=client_chain,
        )
        channel = grpc.secure_channel(
            f"127.0.0.1:{port or self.port}",
            credentials,
            options=[("grpc.ssl_target_name_override", "localhost")],
        )
        self.channels.append(channel)
        return channel

    def stub(self, **kwargs: Any) -> istio_ca_pb2_grpc.IstioCertificateServiceStub:
        return istio_ca_pb2_grpc.IstioCertificateServiceStub(self.channel(**kwargs))

    def request(
        self,
        *,
        token: str | None = None,
        csr: str | None = None,
        key: PrivateKey | None = None,
        ttl: int = 0,
        metadata: Sequence[tuple[str, str]] | None = None,
        **stub_kwargs: Any,
    ) -> tuple[list[str], PrivateKey]:
        key = key or ec_key()
        request = istio_ca_pb2.IstioCertificateRequest(csr=csr or make_csr(key), validity_duration=ttl)
        headers = list(metadata or [])
        if token is not None:
            headers.append(("authorization", f"Bearer {token}"))
        response = self.stub(**stub_kwargs).CreateCertificate(request, metadata=headers, timeout=10)
        return list(response.cert_chain), key

    def stop(self, grace_s: float = 0.5) -> None:
        for channel in self.channels:
            channel.close()
        self.server.stop(grace_s=grace_s)


def start_ca(
    state_dir: Path, *extra: str, clock: FakeClock | None = None, environ: dict[str, str] | None = None
) -> RunningCa:
    clock = clock or FakeClock()
    args = build_parser(environ or {}).parse_args(serve_args(state_dir, *extra))
    server = build_server(serve_config(args, environ or {}), clock=clock)
    server.start()
    return RunningCa(server=server, state_dir=state_dir, clock=clock)


HOUR = timedelta(hours=1)
