"""The admin Rotation service over gRPC: `meshca rotate` and `meshca revoke` through the CA.

Behind the same gate as the ledger admin service (an --admin-identity caller, see
`server/admin_api`), with the same plumbing and status codes. Every refused call is also a
"refused" ledger record naming the method, so an attempt by someone who is not an admin is on
the record. The work itself is `ledger/rotation_operations` over the ledger's RotationStore;
who is connected comes from the CA's control streams, and restarts go through the CA's own
Kubernetes access.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import grpc

from ca._proto import meshca_admin_pb2 as pb
from ca.auth.base import AuthenticatorChain, Caller
from ca.common.clock import Clock
from ca.errors import InvalidRequestError
from ca.ledger import rotation_messages as messages
from ca.ledger import rotation_operations as operations
from ca.ledger.ledger import Ledger
from ca.ledger.rotation import RotationStore
from ca.ledger.rotation_operations import PodRef, Workload, WorkloadFinder
from ca.ledger.rotation_store import SqlRotationStore
from ca.server.admin_api import AdminCalls, AdminGate, LedgerOffError, ledger_refusals
from ca.server.certificate_api import IssuanceRecorder

log = logging.getLogger("meshca.rotation")

ROTATION_SERVICE_NAME = "meshca.admin.v1.Rotation"
WORK_THREADS = 2
INTERNAL_MESSAGE = "the rotation call failed; the CA logged the details"

ConnectedSerials = Callable[[], Collection[str]]
# The CA's workload finder at a given time (restarts are stamped with it); None without cluster access.
WorkloadFinders = Callable[[datetime], WorkloadFinder]


def _no_connections() -> Collection[str]:
    return ()


def _pods_only(pods: Iterable[PodRef], restart: bool) -> list[Workload]:
    return operations.pods_as_workloads(list(pods), problem="the CA has no Kubernetes access to find owners")


class RotationService:
    name = ROTATION_SERVICE_NAME

    def __init__(
        self,
        *,
        authenticators: AuthenticatorChain,
        admin_identities: Iterable[str],
        clock: Clock,
        store: RotationStore | None,
        random_bytes: Callable[[int], bytes],
        connected: ConnectedSerials = _no_connections,
        recorder: IssuanceRecorder | None = None,
        workloads: WorkloadFinders | None = None,
        on_close: Callable[[], None] = lambda: None,
        changed: Callable[[], None] = lambda: None,
    ) -> None:
        self._clock = clock
        self._changed = changed
        self._store = store
        self._on_close = on_close
        self._random_bytes = random_bytes
        self._connected = connected
        self._recorder = recorder
        self._workloads = workloads
        self._executor = ThreadPoolExecutor(max_workers=WORK_THREADS, thread_name_prefix="rotation-admin")
        self._calls = AdminCalls(
            service=ROTATION_SERVICE_NAME,
            gate=AdminGate(authenticators=authenticators, admin_identities=admin_identities),
            executor=self._executor,
            methods={
                "Rotate": (pb.RotateRequest, self.rotate),
                "OrderStatus": (pb.OrderStatusRequest, self.order_status),
                "ListOrders": (pb.ListOrdersRequest, self.list_orders),
                "Revoke": (pb.RevokeRequest, self.revoke),
            },
            internal_message=INTERNAL_MESSAGE,
            on_refused=ledger_refusals(recorder, ROTATION_SERVICE_NAME),
        )

    def _rotation_store(self) -> RotationStore:
        if self._store is None:
            raise LedgerOffError(
                "this CA keeps no issuance ledger (--ledger off), and orders and revocations live "
                "there; start it with --ledger auto or a database URL",
                reason="ledger_off",
            )
        return self._store

    # ------------------------------------------------------------------ the calls

    def rotate(self, request: pb.RotateRequest, caller: Caller) -> pb.RotateResponse:
        store = self._rotation_store()
        now = self._clock.now()
        rotation = messages.rotation_request(request, now)
        if rotation.restart_workloads and not rotation.dry_run and self._workloads is None:
            raise InvalidRequestError(
                "this CA has no Kubernetes access (--kubeconfig or in-cluster), so it cannot restart "
                "workloads; place the order without --restart-workloads and restart them yourself",
                reason="restart_unavailable",
            )
        result = operations.rotate(
            store,
            rotation,
            now=now,
            order_id=operations.new_order_id(self._random_bytes),
            ordered_by=caller.spiffe_id.uri,
            connected=frozenset(self._connected()),
            workloads=self._workloads(now) if self._workloads is not None else _pods_only,
        )
        if result.order is not None:
            self._changed()  # this replica pushes at once, without waiting for its change watcher
            log.info(
                "rotation order placed",
                extra={
                    "order_id": result.order.id,
                    "ordered_by": result.order.ordered_by,
                    "selector": result.order.selector.describe(),
                    "matched": result.matched,
                    "restarted": sum(1 for w in result.workloads if w.restarted),
                },
            )
        return messages.rotate_response(result)

    def order_status(self, request: pb.OrderStatusRequest, caller: Caller) -> pb.OrderStatusResponse:
        status = operations.order_status(
            self._rotation_store(), request.id, self._clock.now(), frozenset(self._connected())
        )
        return messages.status_response(status)

    def list_orders(self, request: pb.ListOrdersRequest, caller: Caller) -> pb.ListOrdersResponse:
        limit = request.limit or operations.DEFAULT_LIST_LIMIT
        return messages.list_response(
            operations.list_orders(self._rotation_store(), limit, self._clock.now())
        )

    def revoke(self, request: pb.RevokeRequest, caller: Caller) -> pb.RevokeResponse:
        revoked = operations.revoke(
            self._rotation_store(),
            list(request.serials),
            reason=request.reason,
            note=request.note,
            now=self._clock.now(),
        )
        self._changed()
        log.info(
            "certificates revoked",
            extra={"serials": [r.serial for r in revoked], "by": caller.spiffe_id.uri},
        )
        return pb.RevokeResponse(revoked=[messages.revocation_message(r) for r in revoked])

    # ------------------------------------------------------------------ plumbing

    def handler(self, *, asynchronous: bool = False) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
        return self._calls.handler(asynchronous=asynchronous)

    @property
    def store(self) -> RotationStore | None:
        """The ledger's rotation store (None without a ledger), for the CA's other rotation parts."""
        return self._store

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._on_close()


def build_rotation_service(
    *,
    authenticators: AuthenticatorChain,
    admin_identities: Iterable[str],
    clock: Clock,
    ledger: Ledger | None,
    api: Any | None,
    random_bytes: Callable[[int], bytes],
    connected: ConnectedSerials = _no_connections,
    changed: Callable[[], None] = lambda: None,
    store: SqlRotationStore | None = None,
) -> RotationService:
    """The Rotation service for this CA, on its ledger's database (refusals recorded there too);
    with cluster access it finds and restarts workloads. `store`: the rotation store the CA's
    other parts use too (its owner disposes of it); without it, one of the service's own."""
    owned = store is None and ledger is not None
    if owned and ledger is not None:
        store = SqlRotationStore(ledger.store)
    workloads: WorkloadFinders | None = None
    if api is not None:
        from ca.kube import workloads as kube_workloads

        def find(now: datetime) -> WorkloadFinder:
            return kube_workloads.finder(api, now)

        workloads = find
    return RotationService(
        authenticators=authenticators,
        admin_identities=admin_identities,
        clock=clock,
        store=store,
        random_bytes=random_bytes,
        connected=connected,
        recorder=ledger,
        workloads=workloads,
        on_close=store.dispose if owned and store is not None else lambda: None,
        changed=changed,
    )
