"""The certificate API over gRPC (Istio's `CreateCertificate`): meshca errors become status codes here
and in the admin API, through one table (`STATUS_BY_KIND`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import grpc
from google.protobuf.message import DecodeError

from ca._proto import istio_ca_pb2
from ca.auth.base import AuthenticatorChain, Caller, Credentials, TokenLeeway, TokenTimeError
from ca.errors import (
    AuthenticationError,
    ErrorKind,
    InvalidRequestError,
    MeshcaError,
    PermissionDeniedError,
    SigningError,
    UnavailableError,
)
from ca.issuance.csr import parse_csr
from ca.issuance.issuer import IssuedCertificate, Issuer
from ca.ledger.entries import MESHCA_AGENT
from ca.ledger.rotation import normalize_serial
from ca.server.metrics import CaMetrics

log = logging.getLogger("meshca.ca")

SERVICE_NAME = "istio.v1.auth.IstioCertificateService"
# Request metadata a meshca agent sends: on every request, and for a rotation order.
AGENT_HEADER = "meshca-agent"
ORDER_HEADER = "meshca-order"
REPLACES_HEADER = "meshca-replaces"
METHOD_NAME = "CreateCertificate"

STATUS_BY_KIND: Mapping[ErrorKind, grpc.StatusCode] = {
    ErrorKind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorKind.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorKind.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorKind.CONFIG: grpc.StatusCode.INTERNAL,
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
}


def _single(metadata: Mapping[str, list[str]], key: str) -> str | None:
    values = metadata.get(key, [])
    if len(values) > 1:
        raise InvalidRequestError(
            f"the request carries {len(values)} '{key}' headers; send exactly one",
            reason="metadata_invalid",
        )
    return values[0] if values else None


def bearer_token(header: str | None) -> str | None:
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError(
            "the authorization header is not 'Bearer <token>'; send the service-account token "
            "as 'authorization: Bearer <token>'",
            reason="token_malformed",
        )
    return token.strip()


def request_metadata(context: grpc.ServicerContext) -> dict[str, list[str]]:
    metadata: dict[str, list[str]] = {}
    for key, value in context.invocation_metadata():
        if isinstance(value, str):
            metadata.setdefault(key.lower(), []).append(value)
    return metadata


def credentials_from(
    context: grpc.ServicerContext, metadata: Mapping[str, list[str]] | None = None
) -> Credentials:
    if metadata is None:
        metadata = request_metadata(context)
    peer_pems: list[bytes] = context.auth_context().get("x509_pem_cert") or []  # type: ignore[assignment]
    return Credentials(
        bearer_token=bearer_token(_single(metadata, "authorization")),
        peer_certificate_pem=bytes(peer_pems[0]).decode() if peer_pems else None,
        peer_address=context.peer(),
        cluster_id=_single(metadata, "clusterid"),
    )


def check_request_metadata(request: istio_ca_pb2.IstioCertificateRequest, caller: Caller) -> None:
    fields = request.metadata.fields if request.HasField("metadata") else {}
    if "ImpersonatedIdentity" in fields:
        raise PermissionDeniedError(
            f"{caller.spiffe_id} may not request a certificate for another identity "
            "(ImpersonatedIdentity); meshca issues only the caller's own identity",
            reason="impersonation_denied",
        )
    signer = fields.get("CertSigner")
    if signer is not None and signer.WhichOneof("kind") not in (None, "null_value") and signer.string_value:
        raise InvalidRequestError(
            f"CertSigner {signer.string_value!r} is not served; meshca signs with one CA, "
            "so leave CertSigner unset",
            reason="cert_signer_unknown",
        )


@dataclass(frozen=True)
class ReplacementLink:
    """A certificate issued for a rotation order: the order and the serial it replaces."""

    order_id: str
    replaces: str


@dataclass(frozen=True)
class ReplacementClaim:
    """What a request says its certificate replaces: the serial, and the order that asked for it.

    An agent following an order names both; an agent that restarted names only the certificate
    it held before (it never heard of the orders made while it was down).
    """

    replaces: str
    order_id: str | None = None


class ReplacementLinks(Protocol):
    """Checks a request's rotation claim before the issued record links it (the push
    coordinator, ca.server.push)."""

    def verified_replacement(self, *, order_id: str, replaces: str, spiffe_id: str) -> bool: ...

    def replaced(self, *, order_id: str, old_serial: str, new_serial: str) -> None:
        """The new certificate's record, with its link, is committed."""
        ...


OutstandingOrders = Callable[[str], Sequence[str]]
"""Ids of the pushing orders that have this serial as a target not yet replaced, oldest first
(the ledger's rotation tables: `RotationStore.outstanding_for`)."""


def replacement_claim(metadata: Mapping[str, list[str]]) -> ReplacementClaim | None:
    """What "meshca-replaces" (and "meshca-order", if given) claim, when well formed."""
    order_id, replaces = _single(metadata, ORDER_HEADER), _single(metadata, REPLACES_HEADER)
    if not replaces or order_id == "":
        return None
    try:
        serial = normalize_serial(replaces)
    except InvalidRequestError:
        return None
    return ReplacementClaim(replaces=serial, order_id=order_id.strip() if order_id is not None else None)


def link_for(
    claim: ReplacementClaim,
    spiffe_id: str,
    links: ReplacementLinks,
    outstanding: OutstandingOrders | None,
) -> ReplacementLink | None:
    """The link an issued record carries for `claim`, made by `spiffe_id`: the order the claim
    names, if the serial is a target of that order for this identity; for a claim without an
    order, the oldest order still pushing to that serial for this identity. None: no link.

    A record links one order: a serial that several pushing orders target counts as replaced
    in the oldest of them only, as it counts in the one order an agent followed.
    """
    if claim.order_id is not None:
        candidates: Sequence[str] = (claim.order_id,)
    elif outstanding is not None:
        candidates = outstanding(claim.replaces)
    else:
        candidates = ()
    for order_id in candidates:
        if links.verified_replacement(order_id=order_id, replaces=claim.replaces, spiffe_id=spiffe_id):
            return ReplacementLink(order_id=order_id, replaces=claim.replaces)
    return None


class Refusal(NamedTuple):
    code: grpc.StatusCode
    message: str


class IssuanceRecorder(Protocol):
    """Where issuances and refusals are recorded (the ledger).

    An asyncio future it returns settles within a bounded time of its own (the loop
    writer's deadline), so the handler awaits it without a timer per request; a thread's
    future is waited for at most the service's `record_timeout_s`.
    """

    def record_issued(
        self,
        issued: IssuedCertificate,
        caller: Caller,
        *,
        client_address: str,
        cluster_id: str | None,
        order_id: str | None = None,
        replaces: str | None = None,
        agent: str | None = None,
    ) -> Recorded: ...

    def record_refusal(
        self,
        *,
        reason: str,
        status_code: str,
        message: str,
        client_address: str,
        caller: Caller | None,
        token_leeway: TokenLeeway | None = None,
    ) -> Recorded: ...


# The asyncio server's ledger hands out asyncio futures on its loop; the threaded one, thread futures.
Recorded = Future[Any] | asyncio.Future[Any]


def _retrieve(recorded: Recorded) -> None:
    if not recorded.cancelled():
        recorded.exception()


@dataclass(frozen=True)
class Pending:
    """A signed certificate waiting for its ledger record to commit before it is returned."""

    issued: IssuedCertificate
    caller: Caller
    recorded: Recorded | None  # None: no ledger
    started: float
    peer: str
    link: ReplacementLink | None = None  # verified


class CertificateService:
    def __init__(
        self,
        *,
        issuer: Issuer,
        authenticators: AuthenticatorChain,
        metrics: CaMetrics,
        cluster_id: str | None = None,
        recorder: IssuanceRecorder | None = None,
        record_timeout_s: float = 10.0,
        links: ReplacementLinks | None = None,
        outstanding: OutstandingOrders | None = None,
    ) -> None:
        self._issuer = issuer
        self._authenticators = authenticators
        self._metrics = metrics
        self._cluster_id = cluster_id
        self._recorder = recorder
        self.record_timeout_s = record_timeout_s
        self._links = links
        self._outstanding = outstanding

    def respond(self, request_bytes: bytes, context: grpc.ServicerContext) -> Pending | Refusal:
        """A signed certificate pending its record, or the status to refuse with.

        Uses only the context accessors that the sync and asyncio servers share.
        """
        started = time.perf_counter()
        self._metrics.csr_count.inc()
        caller: Caller | None = None
        credentials: Credentials | None = None
        try:
            metadata = request_metadata(context)
            credentials = credentials_from(context, metadata)
            self._check_cluster(credentials)
            caller = self._authenticators.authenticate(credentials)
            issued = self._issue(request_bytes, caller)
            link = self._verified_link(metadata, caller, issued)
        except MeshcaError as err:
            return self._refusal(err, context.peer(), caller)
        except Exception:
            log.exception("unexpected error while issuing a certificate", extra={"peer": context.peer()})
            return self._refusal(
                SigningError(
                    "internal error while issuing the certificate; the CA logged the details",
                    reason="internal",
                ),
                context.peer(),
                caller,
            )
        peer = context.peer()
        recorded = (
            None
            if self._recorder is None
            else self._recorder.record_issued(
                issued,
                caller,
                client_address=peer,
                cluster_id=credentials.cluster_id,
                order_id=link.order_id if link else None,
                replaces=link.replaces if link else None,
                agent=MESHCA_AGENT if metadata.get(AGENT_HEADER) else None,
            )
        )
        return Pending(issued=issued, caller=caller, recorded=recorded, started=started, peer=peer, link=link)

    def _verified_link(
        self, metadata: Mapping[str, list[str]], caller: Caller, issued: IssuedCertificate
    ) -> ReplacementLink | None:
        """The request's rotation claim as the issued record links it (`link_for`); without a
        verified link the certificate is recorded without one."""
        claim = replacement_claim(metadata)
        if claim is None or self._links is None:
            return None
        spiffe_id = caller.spiffe_id.uri
        serial = format(issued.serial, "x")
        if claim.order_id is None:
            return self._restart_link(claim, spiffe_id, serial, self._links)
        link = link_for(claim, spiffe_id, self._links, None)
        if link is None:
            log.warning(
                "issued without the rotation link the request claimed: that serial is not a target "
                "of that order for this identity",
                extra={
                    "order_id": claim.order_id,
                    "replaces": claim.replaces,
                    "spiffe_id": spiffe_id,
                    "serial": serial,
                },
            )
        return link

    def _restart_link(
        self, claim: ReplacementClaim, spiffe_id: str, serial: str, links: ReplacementLinks
    ) -> ReplacementLink | None:
        """An agent that restarted names the certificate it held: linked to an order still pushing
        to it, if any (most restarts find none). A failed lookup costs the link, not the
        certificate: the agent has none until this request succeeds."""
        try:
            link = link_for(claim, spiffe_id, links, self._outstanding)
        except MeshcaError as err:
            log.warning(
                "issued without looking for rotation orders the replaced certificate had",
                extra={"replaces": claim.replaces, "serial": serial, "detail": err.message},
            )
            return None
        if link is not None:
            log.info(
                "a restarted agent's certificate replaces one a rotation order targets",
                extra={"order_id": link.order_id, "replaces": link.replaces, "serial": serial},
            )
        return link

    def finish(self, pending: Pending, record_error: BaseException | None) -> bytes | Refusal:
        """The response once the record is committed; UNAVAILABLE if it could not be."""
        if record_error is not None:
            err = (
                record_error
                if isinstance(record_error, MeshcaError)
                else UnavailableError(
                    "the issuance ledger did not confirm the record "
                    f"({str(record_error) or 'no answer in time'}); no certificate was returned; retry",
                    reason="ledger_unavailable",
                )
            )
            return self._refusal(err, pending.peer, pending.caller, record=False)
        issued, caller = pending.issued, pending.caller
        if pending.link is not None and self._links is not None:
            link = pending.link
            self._links.replaced(
                order_id=link.order_id, old_serial=link.replaces, new_serial=format(issued.serial, "x")
            )
        self._metrics.success_count.inc()
        self._metrics.issuance_latency.observe(time.perf_counter() - pending.started)
        if log.isEnabledFor(logging.INFO):
            log.info(
                "issued certificate",
                extra={
                    "spiffe_id": issued.spiffe_id.uri,
                    "serial": format(issued.serial, "x"),
                    "not_after": issued.not_after.isoformat(),
                    "auth": caller.method,
                    "pod": caller.pod_name,
                    "peer": pending.peer,
                    **(
                        {"order_id": pending.link.order_id, "replaces": pending.link.replaces}
                        if pending.link
                        else {}
                    ),
                },
            )
        response: bytes = istio_ca_pb2.IstioCertificateResponse(cert_chain=issued.chain).SerializeToString()
        return response

    def create_certificate(self, request_bytes: bytes, context: grpc.ServicerContext) -> bytes:
        pending = self.respond(request_bytes, context)
        if isinstance(pending, Refusal):
            context.abort(pending.code, pending.message)
        recorded = pending.recorded
        error: BaseException | None = None
        try:
            if isinstance(recorded, asyncio.Future):
                raise RuntimeError("the threaded server was given a ledger that runs on an event loop")
            if recorded is not None:
                recorded.result(timeout=self.record_timeout_s)
        except BaseException as err:
            error = err
        response = self.finish(pending, error)
        if isinstance(response, Refusal):
            context.abort(response.code, response.message)
        return response

    async def create_certificate_async(
        self, request_bytes: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> bytes:
        pending = self.respond(request_bytes, context)  # type: ignore[arg-type]
        if isinstance(pending, Refusal):
            await context.abort(pending.code, pending.message)
            raise AssertionError("abort returned")
        recorded = pending.recorded
        error: BaseException | None = None
        try:
            if isinstance(recorded, asyncio.Future):
                await recorded  # settled by its writer's deadline at the latest
            elif recorded is not None:
                if not recorded.done():
                    await asyncio.wait_for(asyncio.wrap_future(recorded), self.record_timeout_s)
                recorded.result()
        except Exception as err:
            error = err
        response = self.finish(pending, error)
        if isinstance(response, Refusal):
            await context.abort(response.code, response.message)
            raise AssertionError("abort returned")
        return response

    def _issue(self, request_bytes: bytes, caller: Caller) -> IssuedCertificate:
        request = self._parse(request_bytes)
        check_request_metadata(request, caller)
        try:
            csr = parse_csr(request.csr, self._issuer.policy.key_policy)
        except InvalidRequestError:
            self._metrics.csr_parsing_err_count.inc()
            raise
        return self._issuer.issue(
            spiffe_id=caller.spiffe_id, csr=csr, requested_ttl_seconds=request.validity_duration
        )

    def _check_cluster(self, credentials: Credentials) -> None:
        requested = credentials.cluster_id
        if requested and self._cluster_id and requested != self._cluster_id:
            raise AuthenticationError(
                f"clusterid {requested!r} is not served by this CA (it serves {self._cluster_id!r}); "
                "point the agent at its own cluster's CA or fix CLUSTER_ID",
                reason="cluster_unknown",
            )

    @staticmethod
    def _parse(request_bytes: bytes) -> istio_ca_pb2.IstioCertificateRequest:
        try:
            request: istio_ca_pb2.IstioCertificateRequest
            request = istio_ca_pb2.IstioCertificateRequest.FromString(request_bytes)
            return request
        except (DecodeError, ValueError, RuntimeError) as err:
            raise InvalidRequestError(
                f"the request is not a valid IstioCertificateRequest message ({err})",
                reason="request_malformed",
            ) from err

    def _refusal(self, err: MeshcaError, peer: str, caller: Caller | None, *, record: bool = True) -> Refusal:
        status = STATUS_BY_KIND[err.kind]
        if err.kind is ErrorKind.UNAUTHENTICATED:
            self._metrics.auth_failure_count.labels(reason=err.reason).inc()
        else:
            self._metrics.sign_err_count.labels(error=err.reason).inc()
        log.warning(
            "refused certificate request", extra={"reason": err.reason, "detail": err.message, "peer": peer}
        )
        if record and self._recorder is not None:
            recorded = self._recorder.record_refusal(
                reason=err.reason,
                status_code=status.name,
                message=err.message,
                client_address=peer,
                caller=caller,
                token_leeway=err.leeway if isinstance(err, TokenTimeError) else None,
            )
            # Nobody awaits a refusal's record; its failure is logged by the ledger already.
            recorded.add_done_callback(_retrieve)
        return Refusal(status, err.message)

    def handler(self, *, asynchronous: bool = False) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
        method = self.create_certificate_async if asynchronous else self.create_certificate
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                METHOD_NAME: grpc.unary_unary_rpc_method_handler(
                    method,
                    request_deserializer=None,
                    response_serializer=None,
                )
            },
        )
