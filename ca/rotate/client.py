"""The CA's admin Rotation service, called over mutual TLS with the operator's client certificate.

The CA admits the call when the certificate's SPIFFE ID is one of its --admin-identity values.
Its refusals come back as meshca errors that say what to do (exit 1); files that cannot be read
are configuration errors (exit 2).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc

from ca._proto import meshca_admin_pb2 as pb
from ca._proto import meshca_admin_pb2_grpc as pb_grpc
from ca.errors import (
    AuthenticationError,
    ConfigError,
    InvalidRequestError,
    MeshcaError,
    PermissionDeniedError,
    UnavailableError,
)
from ca.ledger import rotation_messages as messages
from ca.ledger.rotation import Order, OrderCounts, Revocation
from ca.ledger.rotation_operations import OrderStatus, RotationRequest, RotationResult
from ca.rotate.settings import Connection

CALL_TIMEOUT_S = 60.0
Answer = TypeVar("Answer")


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read {flag} {path} ({err.strerror or err})") from err


def refusal(err: grpc.RpcError, address: str) -> MeshcaError:
    """The CA's answer to a failed call as the meshca error that explains it."""
    code: grpc.StatusCode = err.code()
    details = str(err.details() or "")
    said = f"the CA at {address} refused: {details}"
    if code is grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDeniedError(said, reason="admin_denied")
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return AuthenticationError(
            f"{said}; give --cert and --key of a certificate this CA issued", reason="unauthenticated"
        )
    if code in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
    ):
        return InvalidRequestError(said, reason=code.name.lower())
    if code is grpc.StatusCode.UNIMPLEMENTED:
        return UnavailableError(
            f"the CA at {address} does not serve the Rotation admin service; upgrade it",
            reason="unimplemented",
        )
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return UnavailableError(
            f"cannot reach the CA's admin API at {address} ({details}); check --ca-addr (the CA's "
            "--renew-listen port), --ca-root, and that --cert and --key are a pair the CA issued",
            reason="ca_unavailable",
        )
    return MeshcaError(f"{said} ({code.name})", reason=code.name.lower())


class CaRotationClient:
    def __init__(self, connection: Connection) -> None:
        assert connection.ca_addr is not None and connection.cert is not None and connection.key is not None
        self._address = connection.ca_addr
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(connection.ca_root, "--ca-root"),
            private_key=_read(connection.key, "--key"),
            certificate_chain=_read(connection.cert, "--cert"),
        )
        options: list[tuple[str, Any]] = []
        if connection.ca_server_name:
            options.append(("grpc.ssl_target_name_override", connection.ca_server_name))
        self._channel = grpc.secure_channel(connection.ca_addr, credentials, options=options)
        self._stub = pb_grpc.RotationStub(self._channel)  # type: ignore[no-untyped-call]

    def _call(self, method: Callable[..., Answer], request: Any) -> Answer:
        try:
            return method(request, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as err:
            raise refusal(err, self._address) from None

    def rotate(self, request: RotationRequest) -> RotationResult:
        return messages.rotation_result(self._call(self._stub.Rotate, messages.rotate_request(request)))

    def status(self, order_id: str) -> OrderStatus:
        answer = self._call(self._stub.OrderStatus, pb.OrderStatusRequest(id=order_id))
        return messages.order_status_from(answer)

    def orders(self, limit: int) -> list[tuple[Order, OrderCounts]]:
        return messages.orders_from(self._call(self._stub.ListOrders, pb.ListOrdersRequest(limit=limit)))

    def revoke(self, serials: Sequence[str], *, reason: str, note: str | None) -> list[Revocation]:
        request = pb.RevokeRequest(serials=list(serials), reason=reason, note=note or "")
        return [messages.revocation_from(r) for r in self._call(self._stub.Revoke, request).revoked]

    def close(self) -> None:
        self._channel.close()
