"""The CA's admin Rotation service, called over mutual TLS with the operator's client certificate.

The CA admits the call when the certificate's SPIFFE ID is one of its --admin-identity values.
The channel and the CA's refusals as meshca errors are `ca.net.admin_channel`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ca._proto import meshca_admin_pb2 as pb
from ca._proto import meshca_admin_pb2_grpc as pb_grpc
from ca.ledger import rotation_messages as messages
from ca.ledger.rotation import Order, OrderCounts, Revocation
from ca.ledger.rotation_operations import OrderStatus, RotationRequest, RotationResult
from ca.net.admin_channel import admin_call, admin_channel
from ca.rotate.settings import Connection

SERVICE = "Rotation"
Answer = TypeVar("Answer")


class CaRotationClient:
    def __init__(self, connection: Connection) -> None:
        assert connection.admin is not None
        self._address = connection.admin.address
        self._channel = admin_channel(connection.admin)
        self._stub = pb_grpc.RotationStub(self._channel)  # type: ignore[no-untyped-call]

    def _call(self, method: Callable[..., Answer], request: Any) -> Answer:
        return admin_call(method, request, address=self._address, service=SERVICE)

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
