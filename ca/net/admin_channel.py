"""A mutual-TLS channel to a CA's admin API, and the CA's refusals as meshca errors.

Shared by the operator commands that call the admin services (`meshca rotate`, `meshca revoke`,
`meshca ca`). Refusals come back as meshca errors that say what to do (exit 1); files that
cannot be read are configuration errors (exit 2).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc

from ca.common.admin_endpoint import AdminEndpoint
from ca.errors import (
    AuthenticationError,
    ConfigError,
    InvalidRequestError,
    MeshcaError,
    PermissionDeniedError,
    UnavailableError,
)

CALL_TIMEOUT_S = 60.0
Answer = TypeVar("Answer")


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read {flag} {path} ({err.strerror or err})") from err


def admin_channel(endpoint: AdminEndpoint) -> grpc.Channel:
    """A channel to the CA with the operator's client certificate; nothing is sent yet."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(endpoint.ca_root, "--ca-root"),
        private_key=_read(endpoint.key, "--key"),
        certificate_chain=_read(endpoint.cert, "--cert"),
    )
    options: list[tuple[str, Any]] = []
    if endpoint.server_name:
        options.append(("grpc.ssl_target_name_override", endpoint.server_name))
    return grpc.secure_channel(endpoint.address, credentials, options=options)


def refusal(err: grpc.RpcError, address: str, service: str) -> MeshcaError:
    """The CA's answer to a failed call of `service` as the meshca error that explains it."""
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
            f"the CA at {address} does not serve the {service} admin service; upgrade it",
            reason="unimplemented",
        )
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return UnavailableError(
            f"cannot reach the CA's admin API at {address} ({details}); check --ca-addr (the CA's "
            "--renew-listen port), --ca-root, and that --cert and --key are a pair the CA issued",
            reason="ca_unavailable",
        )
    return MeshcaError(f"{said} ({code.name})", reason=code.name.lower())


def admin_call(
    method: Callable[..., Answer],
    request: Any,
    *,
    address: str,
    service: str,
    timeout_s: float = CALL_TIMEOUT_S,
) -> Answer:
    """One unary call; a failed one raises the meshca error `refusal` makes of it."""
    try:
        return method(request, timeout=timeout_s)
    except grpc.RpcError as err:
        raise refusal(err, address, service) from None
