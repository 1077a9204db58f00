"""The admin CaKeys service over gRPC: `meshca ca status` and `meshca ca rotate` through the CA.

Behind the same gate as the other admin services (an --admin-identity caller, see
`server/admin_api`), with the same plumbing and status codes; every refused call is also a
"refused" ledger record naming the method. Any replica answers: the transition is made on this
replica's `CaKeys`, whose store saves with compare-and-swap, and the other replicas adopt it at
their next turn. An unsafe transition is an answer (ok false, with the reason), not an error.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import grpc

from ca._proto import meshca_admin_pb2 as pb
from ca.auth.base import AuthenticatorChain, Caller
from ca.common.clock import Clock
from ca.errors import InvalidRequestError
from ca.server.admin_api import AdminCalls, AdminGate, ledger_refusals
from ca.server.ca_keys import CaKeys, Reissue, answer_ca_request
from ca.server.ca_requests import CaRequest
from ca.server.ca_status import status_document
from ca.server.certificate_api import IssuanceRecorder
from ca.server.settings import CA_ACTIONS

log = logging.getLogger("meshca.ca_keys")

CA_KEYS_SERVICE_NAME = "meshca.admin.v1.CaKeys"
WORK_THREADS = 2
INTERNAL_MESSAGE = "the CA keys call failed; the CA logged the details"
API_REQUEST_ID = "admin-api"  # answer_ca_request does not use it; the file inbox names files with it


class CaKeysService:
    name = CA_KEYS_SERVICE_NAME

    def __init__(
        self,
        *,
        authenticators: AuthenticatorChain,
        admin_identities: Iterable[str],
        keys: CaKeys,
        clock: Clock,
        replica: Callable[[], str],
        reissue: Reissue,
        recorder: IssuanceRecorder | None = None,
    ) -> None:
        self._keys = keys
        self._clock = clock
        self._replica = replica
        self._reissue = reissue
        self._executor = ThreadPoolExecutor(max_workers=WORK_THREADS, thread_name_prefix="ca-keys-admin")
        self._calls = AdminCalls(
            service=CA_KEYS_SERVICE_NAME,
            gate=AdminGate(authenticators=authenticators, admin_identities=admin_identities),
            executor=self._executor,
            methods={
                "Status": (pb.CaStatusRequest, self.status),
                "Transition": (pb.TransitionRequest, self.transition),
            },
            internal_message=INTERNAL_MESSAGE,
            on_refused=ledger_refusals(recorder, CA_KEYS_SERVICE_NAME),
        )

    def status(self, request: pb.CaStatusRequest, caller: Caller) -> pb.CaStatusResponse:
        self._keys.refresh()  # a transition another replica made a moment ago
        document = status_document(
            self._keys.keyring,
            policy=self._keys.policy,
            now=self._clock.now(),
            acks=self._keys.acks,
            replica=self._replica(),
        )
        return pb.CaStatusResponse(status_json=json.dumps(document))

    def transition(self, request: pb.TransitionRequest, caller: Caller) -> pb.TransitionResponse:
        if request.action not in CA_ACTIONS:
            raise InvalidRequestError(
                f"unknown CA transition {request.action!r}; ask for one of {', '.join(CA_ACTIONS)}",
                reason="unknown_transition",
            )
        ca_request = CaRequest(
            id=API_REQUEST_ID,
            action=request.action,
            requested_by=caller.spiffe_id.uri,
            force=request.force,
            dry_run=request.dry_run,
            new_root=request.new_root,
            slot=request.slot,
        )
        answer = answer_ca_request(self._keys, ca_request, reissue=self._reissue)
        log.info(
            "CA transition asked through the admin API",
            extra={
                "action": request.action,
                "requested_by": caller.spiffe_id.uri,
                "dry_run": request.dry_run,
                "forced": request.force,
                "ok": answer.ok,
                "done": answer.done,
                "reason": answer.reason,
                "replica": self._replica(),
            },
        )
        return pb.TransitionResponse(
            ok=answer.ok, done=answer.done, lines=list(answer.lines), reason=answer.reason, slot=answer.slot
        )

    def handler(self, *, asynchronous: bool = False) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
        return self._calls.handler(asynchronous=asynchronous)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
