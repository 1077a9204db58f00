"""The agent's side of the certificate API: one call, the token read fresh every time."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

from ca._proto import istio_ca_pb2, istio_ca_pb2_grpc
from ca.errors import MeshcaError, UnavailableError


class TokenUnavailableError(MeshcaError):
    """The service-account token file is missing or empty."""


class CaRefusedError(MeshcaError):
    """The CA answered with an error status."""


RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.ABORTED,
    }
)


def read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as err:
        raise TokenUnavailableError(
            f"cannot read the service-account token {path} ({err.strerror}); mount the projected "
            "token there or set --token-file",
            reason="token_missing",
        ) from err
    if not token:
        raise TokenUnavailableError(f"the token file {path} is empty", reason="token_missing")
    return token


@dataclass(frozen=True, kw_only=True)
class CaEndpoint:
    address: str
    root_file: Path
    server_name: str | None = None
    cluster_id: str | None = None
    timeout_s: float = 10.0


class CaClient:
    """Calls CreateCertificate; reconnects when the CA's root file changes."""

    def __init__(self, endpoint: CaEndpoint, token_file: Path) -> None:
        self._endpoint = endpoint
        self._token_file = token_file
        self._lock = threading.Lock()
        self._root: bytes | None = None
        self._channel: grpc.Channel | None = None
        self._stub: istio_ca_pb2_grpc.IstioCertificateServiceStub | None = None

    def create_certificate(self, csr_pem: str, ttl_seconds: int) -> list[str]:
        token = read_token(self._token_file)
        stub = self._current_stub()
        metadata = [("authorization", f"Bearer {token}")]
        if self._endpoint.cluster_id:
            metadata.append(("clusterid", self._endpoint.cluster_id))
        request = istio_ca_pb2.IstioCertificateRequest(csr=csr_pem, validity_duration=ttl_seconds)
        try:
            response = stub.CreateCertificate(request, metadata=metadata, timeout=self._endpoint.timeout_s)
        except grpc.RpcError as err:
            code, details = err.code(), err.details()
            message = f"the CA at {self._endpoint.address} answered {code.name}: {details}"
            if code in RETRYABLE:
                raise UnavailableError(message, reason=code.name.lower()) from err
            raise CaRefusedError(message, reason=code.name.lower()) from err
        return list(response.cert_chain)

    def _current_stub(self) -> istio_ca_pb2_grpc.IstioCertificateServiceStub:
        try:
            root = self._endpoint.root_file.read_bytes()
        except OSError as err:
            raise UnavailableError(
                f"cannot read the CA root {self._endpoint.root_file} ({err.strerror}); "
                "set --ca-root to the CA's root-cert.pem",
                reason="ca_root_missing",
            ) from err
        with self._lock:
            if self._stub is None or root != self._root:
                if self._channel is not None:
                    self._channel.close()
                options = []
                if self._endpoint.server_name:
                    options.append(("grpc.ssl_target_name_override", self._endpoint.server_name))
                self._channel = grpc.secure_channel(
                    self._endpoint.address, grpc.ssl_channel_credentials(root), options=options
                )
                self._stub = istio_ca_pb2_grpc.IstioCertificateServiceStub(  # type: ignore[no-untyped-call]
                    self._channel
                )
                self._root = root
            return self._stub

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
                self._channel = None
                self._stub = None
