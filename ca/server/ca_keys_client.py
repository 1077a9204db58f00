"""`meshca ca --ca-addr`: the CA's admin CaKeys service, called over mutual TLS with the
operator's client certificate (an --admin-identity of the CA). The channel and the CA's refusals
as meshca errors are `ca.net.admin_channel`'s."""

from __future__ import annotations

import json
from typing import Any

from ca._proto import meshca_admin_pb2 as pb
from ca._proto import meshca_admin_pb2_grpc as pb_grpc
from ca.common.admin_endpoint import AdminEndpoint
from ca.errors import MeshcaError
from ca.net.admin_channel import admin_call, admin_channel
from ca.server.ca_requests import CaAnswer, CaRequest

SERVICE = "CaKeys"


class CaKeysClient:
    def __init__(self, endpoint: AdminEndpoint) -> None:
        self._address = endpoint.address
        self._channel = admin_channel(endpoint)
        self._stub = pb_grpc.CaKeysStub(self._channel)  # type: ignore[no-untyped-call]

    def status(self) -> dict[str, Any]:
        answer = admin_call(self._stub.Status, pb.CaStatusRequest(), address=self._address, service=SERVICE)
        try:
            document = json.loads(answer.status_json)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise MeshcaError(
                f"the CA at {self._address} sent a status this meshca cannot read; use a meshca "
                "of the CA's version",
                reason="status_unreadable",
            )
        return document

    def transition(self, request: CaRequest, timeout_s: float) -> CaAnswer:
        """The CA's answer; the CA names the requester by the client certificate, and answers at
        once (`timeout_s`, how long the file inbox would wait, does not apply)."""
        message = pb.TransitionRequest(
            action=request.action,
            force=request.force,
            dry_run=request.dry_run,
            new_root=request.new_root,
            slot=request.slot,
        )
        answer = admin_call(self._stub.Transition, message, address=self._address, service=SERVICE)
        return CaAnswer(
            ok=answer.ok, done=answer.done, lines=tuple(answer.lines), reason=answer.reason, slot=answer.slot
        )

    def close(self) -> None:
        self._channel.close()
