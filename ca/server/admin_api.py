"""The ledger admin service over gRPC: the audit queries, for callers with an admin identity.

Callers authenticate as for a certificate (client certificate on the renewal
port, or a bearer token); their SPIFFE ID must be one of --admin-identity.
Queries run on a small pool of threads of their own, so a long report or
verify neither blocks the asyncio server's event loop nor takes every worker
of the threaded server. The gate (`AdminGate`) and that plumbing (`AdminCalls`) serve
the Rotation service too (`server/rotation_api`). This module is the only place admin
errors become status codes (`admin_status`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric import ed25519
from google.protobuf.message import Message

from ca._proto import meshca_admin_pb2 as pb
from ca.auth.base import AuthenticatorChain, Caller
from ca.common.clock import Clock
from ca.common.durations import parse_duration
from ca.common.moments import parse_moment
from ca.errors import (
    ConfigError,
    ErrorKind,
    InvalidRequestError,
    LedgerTamperedError,
    MeshcaError,
    PermissionDeniedError,
)
from ca.issuance.issuer import IssuancePolicy
from ca.ledger import queries
from ca.ledger.chain import canonical
from ca.ledger.checkpoint import Checkpoint
from ca.ledger.entries import INDEXED_FIELDS
from ca.ledger.ledger import HEAD_FILE, Ledger
from ca.ledger.live_verify import UnreadableHead, read_head_file, verify_at_head
from ca.ledger.reader import LedgerReader, open_reader
from ca.ledger.rotation_operations import OrderNotFoundError
from ca.ledger.verify import VerifyReport
from ca.server.certificate_api import STATUS_BY_KIND, IssuanceRecorder, Recorded, credentials_from
from ca.server.settings import ServeConfig

log = logging.getLogger("meshca.admin")

ADMIN_SERVICE_NAME = "meshca.admin.v1.LedgerAdmin"
MAX_LIST = 1000
QUERY_THREADS = 2
INTERNAL_MESSAGE = "the ledger admin call failed; the CA logged the details"

Verifier = Callable[[], VerifyReport]
Work = Callable[[Any, Caller], Message]  # the request and the admitted caller -> the answer
HeadSource = Callable[[], Checkpoint | None]


class LedgerOffError(MeshcaError):
    """The CA keeps no ledger, so there is nothing to query."""

    kind = ErrorKind.CONFIG


def _moment(text: str, now: datetime, field: str) -> datetime | None:
    if not text:
        return None
    try:
        return parse_moment(text, now, flag=field)
    except ConfigError as err:
        raise InvalidRequestError(err.message, reason="filter_invalid") from err


def _with_max_ttl(policy: IssuancePolicy, text: str) -> IssuancePolicy:
    try:
        max_ttl = parse_duration(text)
        default_ttl = min(policy.default_ttl, max_ttl)
        return IssuancePolicy(default_ttl=default_ttl, max_ttl=max_ttl, key_policy=policy.key_policy)
    except ConfigError as err:
        raise InvalidRequestError(f"max_ttl: {err.message}", reason="filter_invalid") from err


def audit_filter(message: pb.EntryFilter, now: datetime) -> queries.AuditFilter:
    """The request's filter; empty fields match everything."""
    return queries.AuditFilter(
        spiffe_id=message.spiffe_id or None,
        namespace=message.namespace or None,
        service_account=message.service_account or None,
        pod=message.pod or None,
        since=_moment(message.since, now, "since"),
        until=_moment(message.until, now, "until"),
        status=message.status or None,
        valid_at=_moment(message.valid_at, now, "valid_at"),
    )


def entry_message(entry: Mapping[str, Any]) -> pb.Entry:
    content = {k: v for k, v in entry.items() if k != "seq"}
    return pb.Entry(
        seq=int(entry["seq"]),
        content_json=canonical(content),
        **{name: str(content.get(name) or "") for name in INDEXED_FIELDS},
    )


def report_message(report: queries.Report) -> pb.ReportResponse:
    return pb.ReportResponse(
        at=report.at,
        max_ttl_seconds=report.max_ttl_seconds,
        identities=[
            pb.IdentityStats(
                namespace=i.namespace or "",
                spiffe_id=i.spiffe_id or "",
                issued=i.issued,
                valid_now=i.valid_now,
                ttl=[
                    pb.TtlBucket(label=label, count=count)
                    for label, count in zip(report.ttl_labels, i.ttl_buckets, strict=True)
                ],
                refused=i.refused,
            )
            for i in report.identities
        ],
        refusals=[
            pb.RefusalCount(
                namespace=r.namespace or "", spiffe_id=r.spiffe_id or "", reason=r.reason, count=r.count
            )
            for r in report.refusals
        ],
        violations=[
            pb.Violation(
                seq=v.seq,
                serial=v.serial,
                spiffe_id=v.spiffe_id,
                namespace=v.namespace,
                key_type=v.key_type,
                lifetime_seconds=v.lifetime_seconds,
                not_after=v.not_after,
                problems=list(v.problems),
            )
            for v in report.violations
        ],
        violations_total=report.violations_total,
    )


class AdminGate:
    """Who may call an admin service: a caller authenticated as for a certificate (client
    certificate on the renewal port, or a bearer token) whose SPIFFE ID is an --admin-identity."""

    def __init__(self, *, authenticators: AuthenticatorChain, admin_identities: Iterable[str]) -> None:
        self._authenticators = authenticators
        self._admins = frozenset(admin_identities)

    def authenticate(self, context: grpc.ServicerContext) -> Caller:
        if not self._admins:
            raise PermissionDeniedError(
                "the admin services admit no one: this CA names no admin identity; start it "
                "with --admin-identity spiffe://<trust-domain>/ns/<namespace>/sa/<service-account> "
                "(or MESHCA_ADMIN_IDENTITY, comma-separated) for the operators allowed",
                reason="admin_not_configured",
            )
        return self._authenticators.authenticate(credentials_from(context))

    def admit(self, caller: Caller) -> None:
        if caller.spiffe_id.uri not in self._admins:
            raise PermissionDeniedError(
                f"{caller.spiffe_id} is not an admin identity of this CA; call with a credential "
                "of an identity named by --admin-identity, or ask the CA's operators to add it",
                reason="admin_denied",
            )


def admin_status(err: MeshcaError) -> grpc.StatusCode:
    """The status code of an admin call's error."""
    if isinstance(err, LedgerOffError):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(err, LedgerTamperedError):
        return grpc.StatusCode.DATA_LOSS
    if isinstance(err, OrderNotFoundError):
        return grpc.StatusCode.NOT_FOUND
    return STATUS_BY_KIND[err.kind]


# What a refused admin call leaves behind besides the log line (a ledger record, say):
# (method, error, status, peer, the caller if it authenticated).
RefusalSink = Callable[[str, MeshcaError, grpc.StatusCode, str, Caller | None], None]


def _retrieve(recorded: Recorded) -> None:
    if not recorded.cancelled():
        recorded.exception()


def ledger_refusals(recorder: IssuanceRecorder | None, service: str) -> RefusalSink | None:
    """Each refused call of `service` as a "refused" ledger record naming the method (None without
    a ledger), so an attempt by someone who is not an admin is on the record."""
    if recorder is None:
        return None

    def record(
        method: str, err: MeshcaError, status: grpc.StatusCode, peer: str, caller: Caller | None
    ) -> None:
        recorded = recorder.record_refusal(
            reason=err.reason,
            status_code=status.name,
            message=f"{service}/{method}: {err.message}",
            client_address=peer,
            caller=caller,
        )
        recorded.add_done_callback(_retrieve)

    return record


@dataclass(frozen=True, kw_only=True)
class AdminCalls:
    """The gRPC plumbing every admin service shares: the gate, then the work on the service's
    own threads, and errors as status codes (`status`); the same for both servers."""

    service: str
    gate: AdminGate
    executor: ThreadPoolExecutor
    methods: Mapping[str, tuple[type[Message], Work]]
    internal_message: str
    status: Callable[[MeshcaError], grpc.StatusCode] = admin_status
    on_refused: RefusalSink | None = None

    def _admit(self, method: str, context: grpc.ServicerContext, callers: list[Caller]) -> Caller:
        caller = self.gate.authenticate(context)
        callers.append(caller)
        self.gate.admit(caller)
        log.info(
            "admin call",
            extra={
                "service": self.service,
                "method": method,
                "caller": caller.spiffe_id.uri,
                "peer": context.peer(),
            },
        )
        return caller

    def _refused(self, method: str, err: MeshcaError, peer: str, callers: list[Caller]) -> grpc.StatusCode:
        status = self.status(err)
        log.warning(
            "refused admin call",
            extra={
                "service": self.service,
                "method": method,
                "reason": err.reason,
                "detail": err.message,
                "peer": peer,
            },
        )
        if self.on_refused is not None:
            try:
                self.on_refused(method, err, status, peer, callers[0] if callers else None)
            except Exception:
                log.exception("could not record a refused admin call", extra={"method": method})
        return status

    def _sync(self, method: str, work: Work) -> Callable[[Any, grpc.ServicerContext], Any]:
        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            callers: list[Caller] = []
            try:
                caller = self._admit(method, context, callers)
                return self.executor.submit(work, request, caller).result()
            except MeshcaError as err:
                context.abort(self._refused(method, err, context.peer(), callers), err.message)
            except Exception:
                log.exception("admin call failed", extra={"method": method, "peer": context.peer()})
                context.abort(grpc.StatusCode.INTERNAL, self.internal_message)

        return handle

    def _async(self, method: str, work: Work) -> Callable[..., Any]:
        async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            callers: list[Caller] = []
            try:
                caller = self._admit(method, context, callers)  # type: ignore[arg-type]
                return await asyncio.wrap_future(self.executor.submit(work, request, caller))
            except MeshcaError as err:
                await context.abort(self._refused(method, err, context.peer(), callers), err.message)
            except Exception:
                log.exception("admin call failed", extra={"method": method, "peer": context.peer()})
                await context.abort(grpc.StatusCode.INTERNAL, self.internal_message)

        return handle

    def handler(self, *, asynchronous: bool = False) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
        wrap = self._async if asynchronous else self._sync
        return grpc.method_handlers_generic_handler(
            self.service,
            {
                name: grpc.unary_unary_rpc_method_handler(
                    wrap(name, work),
                    request_deserializer=request_type.FromString,
                    response_serializer=lambda response: response.SerializeToString(),
                )
                for name, (request_type, work) in self.methods.items()
            },
        )


def _any_caller(query: Callable[[Any], Message]) -> Work:
    """A query any admin may run: the caller does not change its answer."""
    return lambda request, caller: query(request)


class LedgerAdminService:
    name = ADMIN_SERVICE_NAME

    def __init__(
        self,
        *,
        authenticators: AuthenticatorChain,
        admin_identities: Iterable[str],
        clock: Clock,
        policy: IssuancePolicy,
        reader: LedgerReader | None,
        verifier: Verifier | None,
    ) -> None:
        self._clock = clock
        self._policy = policy
        self._reader = reader
        self._verifier = verifier
        self._executor = ThreadPoolExecutor(max_workers=QUERY_THREADS, thread_name_prefix="ledger-admin")
        self._calls = AdminCalls(
            service=ADMIN_SERVICE_NAME,
            gate=AdminGate(authenticators=authenticators, admin_identities=admin_identities),
            executor=self._executor,
            methods={
                "ListEntries": (pb.ListEntriesRequest, _any_caller(self.list_entries)),
                "ShowSerial": (pb.ShowSerialRequest, _any_caller(self.show_serial)),
                "Report": (pb.ReportRequest, _any_caller(self.report)),
                "Verify": (pb.VerifyRequest, _any_caller(self.verify)),
            },
            internal_message=INTERNAL_MESSAGE,
        )

    def _ledger(self) -> LedgerReader:
        if self._reader is None:
            raise LedgerOffError(
                "this CA keeps no issuance ledger (--ledger off), so there is nothing to query; "
                "start it with --ledger auto or a database URL",
                reason="ledger_off",
            )
        return self._reader

    # ------------------------------------------------------------------ the queries

    def list_entries(self, request: pb.ListEntriesRequest) -> pb.ListEntriesResponse:
        limit = request.limit or queries.DEFAULT_LIMIT
        if limit > MAX_LIST:
            raise InvalidRequestError(
                f"limit {limit} is over {MAX_LIST}; page with the time filters or use "
                "'meshca audit export' on the ledger",
                reason="limit_invalid",
            )
        audit = audit_filter(request.filter, self._clock.now())
        found, more = queries.list_page(self._ledger(), audit, limit)
        return pb.ListEntriesResponse(entries=[entry_message(e) for e in found], truncated=more)

    def show_serial(self, request: pb.ShowSerialRequest) -> pb.ShowSerialResponse:
        found = queries.find_serial(self._ledger(), request.serial)
        return pb.ShowSerialResponse(entries=[entry_message(e) for e in found])

    def report(self, request: pb.ReportRequest) -> pb.ReportResponse:
        now = self._clock.now()
        at = _moment(request.at, now, "at") or now
        policy = _with_max_ttl(self._policy, request.max_ttl) if request.max_ttl else self._policy
        result = queries.report(self._ledger(), at, policy, audit_filter(request.filter, now))
        return report_message(result)

    def verify(self, request: pb.VerifyRequest) -> pb.VerifyResponse:
        self._ledger()
        assert self._verifier is not None
        result = self._verifier()
        return pb.VerifyResponse(
            ok=result.ok,
            entries_checked=result.entries_checked,
            checkpoints_checked=result.checkpoints_checked,
            bad_seq=result.bad_seq or 0,
            problem=result.problem or "",
            summary=result.summary(),
        )

    def handler(self, *, asynchronous: bool = False) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
        return self._calls.handler(asynchronous=asynchronous)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._reader is not None:
            self._reader.dispose()


def head_verifier(
    reader: LedgerReader,
    public_key: ed25519.Ed25519PublicKey,
    head_file: Path,
    more_heads: Iterable[HeadSource] = (),
) -> Verifier:
    """Verify the ledger against the head file and any further head sources, each read afresh."""

    def verify() -> VerifyReport:
        try:
            heads = [head for head in (read_head_file(head_file), *(s() for s in more_heads)) if head]
        except UnreadableHead as err:
            return VerifyReport(0, 0, None, str(err))
        return verify_at_head(reader, public_key, heads)

    return verify


def build_admin_service(
    cfg: ServeConfig, clock: Clock, authenticators: AuthenticatorChain, ledger: Ledger | None, api: Any | None
) -> LedgerAdminService:
    """The admin service for this CA: its ledger read without write locks, its heads, its policy."""
    reader: LedgerReader | None = None
    verifier: Verifier | None = None
    if ledger is not None and cfg.ledger_url is not None:
        reader = open_reader(cfg.ledger_url)
        more_heads: list[HeadSource] = []
        if api is not None:
            from ca.kube import client as kube

            more_heads.append(functools.partial(kube.read_ledger_head, api, namespace=cfg.ca_namespace))
        verifier = head_verifier(reader, ledger.public_key, cfg.state_dir / HEAD_FILE, more_heads)
    return LedgerAdminService(
        authenticators=authenticators,
        admin_identities=cfg.admin_identities,
        clock=clock,
        policy=cfg.issuance,
        reader=reader,
        verifier=verifier,
    )
