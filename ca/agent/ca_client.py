"""The agent's side of the certificate API: one call, the token read fresh every time."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from ca import __version__
from ca._proto import istio_ca_pb2, istio_ca_pb2_grpc
from ca.agent.bundle import HeldBundle
from ca.agent.ca_tls import points_at_tls, verification_failure
from ca.errors import MeshcaError, UnavailableError

# Every request says it comes from a meshca agent, so the CA's ledger knows which holders a
# rotation order can reach over the control stream.
AGENT_HEADER = "meshca-agent"


class TokenUnavailableError(MeshcaError):
    """The service-account token file is missing or empty."""


class CaRefusedError(MeshcaError):
    """The CA answered with an error status."""


RETRYABLE = frozenset(
    {
        # The CA is down, still starting, or the connection to it failed.
        grpc.StatusCode.UNAVAILABLE,
        # The CA or the network was too slow for this one call.
        grpc.StatusCode.DEADLINE_EXCEEDED,
        # The CA or a proxy in front of it sheds load; later calls get through.
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        # meshca answers INTERNAL when it is not ready or signing failed this time (a ledger
        # write that timed out, say); nothing in the request was wrong.
        grpc.StatusCode.INTERNAL,
        # A failure with no status of its own (a reset stream) says nothing lasting.
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.ABORTED,
    }
)
"""Statuses another call may cure; the agent reports them as UnavailableError.

The others are answers about this request, which the same request would get again:
UNAUTHENTICATED (a token that is invalid, expired, for another audience or for a pod
that is gone), PERMISSION_DENIED, INVALID_ARGUMENT (the CSR or TTL refused),
UNIMPLEMENTED and NOT_FOUND (no meshca CA at that address), FAILED_PRECONDITION. A running
agent still retries them on its backoff (a new token may arrive in the file); `--once`
gives up at once.
"""


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
    """The CA's certificate service: its address, the --ca-root file the agent trusts it with, the
    name its serving certificate must have, the cluster ID sent with each request, and each
    request's timeout."""

    address: str
    root_file: Path
    server_name: str | None = None
    cluster_id: str | None = None
    timeout_s: float = 10.0


class CaClient:
    """Calls CreateCertificate; reconnects when the roots it trusts the CA with change: the
    --ca-root file, and the trust bundle the agent holds (`bundle`), taken together."""

    def __init__(self, endpoint: CaEndpoint, token_file: Path, bundle: HeldBundle | None = None) -> None:
        self._endpoint = endpoint
        self._token_file = token_file
        self._bundle = bundle
        self._lock = threading.Lock()
        self._root: bytes | None = None
        self._channel: grpc.Channel | None = None
        self._stub: istio_ca_pb2_grpc.IstioCertificateServiceStub | None = None

    def create_certificate(
        self, csr_pem: str, ttl_seconds: int, *, metadata: Sequence[tuple[str, str]] = ()
    ) -> list[str]:
        """Ask with the token; `metadata` is added to the request's (a rotation order's)."""
        token = read_token(self._token_file)
        stub, root = self._current_stub()
        headers = [("authorization", f"Bearer {token}"), (AGENT_HEADER, f"meshca/{__version__}"), *metadata]
        if self._endpoint.cluster_id:
            headers.append(("clusterid", self._endpoint.cluster_id))
        request = istio_ca_pb2.IstioCertificateRequest(csr=csr_pem, validity_duration=ttl_seconds)
        try:
            response = stub.CreateCertificate(request, metadata=headers, timeout=self._endpoint.timeout_s)
        except grpc.RpcError as err:
            raise self._call_failed(err, root) from err
        return list(response.cert_chain)

    def _call_failed(self, err: grpc.RpcError, root: bytes) -> MeshcaError:
        code, details = err.code(), err.details()
        address = self._endpoint.address
        if code is grpc.StatusCode.UNAVAILABLE and points_at_tls(details):
            untrusted = verification_failure(
                address,
                self._endpoint.root_file,
                root,
                self._endpoint.server_name,
                self._endpoint.timeout_s,
            )
            if untrusted is not None:
                return untrusted
        if code is grpc.StatusCode.UNAVAILABLE:
            return UnavailableError(
                f"cannot reach the CA at {address} ({details}); check that it runs and that "
                "--ca-addr names it",
                reason="unavailable",
            )
        message = f"the CA at {address} answered {code.name}: {details}"
        if code in RETRYABLE:
            return UnavailableError(message, reason=code.name.lower())
        return CaRefusedError(message, reason=code.name.lower())

    def _current_stub(self) -> tuple[istio_ca_pb2_grpc.IstioCertificateServiceStub, bytes]:
        """The stub of a channel that trusts the root file as it is now and the bundle held: a
        changed file or bundle means a new channel, so a CA whose serving certificate moved to a
        new root is reached again."""
        try:
            root = self._endpoint.root_file.read_bytes()
        except OSError as err:
            raise UnavailableError(
                f"cannot read the CA root {self._endpoint.root_file} ({err.strerror}); "
                "set --ca-root to the CA's root-cert.pem",
                reason="ca_root_missing",
            ) from err
        if self._bundle is not None:
            root = self._bundle.trust_pem(root)
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
            return self._stub, root

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
                self._channel = None
                self._stub = None
