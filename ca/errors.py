"""The one error hierarchy of meshca.

Every error a user can meet says what went wrong and what to do about it. Each
class carries a `kind`; only the API layer maps kinds to gRPC status codes and
the CLI maps them to exit codes.
"""

from __future__ import annotations

from enum import Enum


class ErrorKind(Enum):
    CONFIG = "config"
    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission_denied"
    INVALID_ARGUMENT = "invalid_argument"
    UNAVAILABLE = "unavailable"
    FAILED_PRECONDITION = "failed_precondition"
    INTERNAL = "internal"


class MeshcaError(Exception):
    """Base of every error meshca raises on purpose.

    `reason` is a short stable token for metrics and logs (for example
    `token_expired`); the message is for people.
    """

    kind: ErrorKind = ErrorKind.INTERNAL

    def __init__(self, message: str, *, reason: str = "error") -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason

    def __str__(self) -> str:
        return self.message


class ConfigError(MeshcaError):
    """A setting, flag or file given to meshca is wrong; fix the configuration."""

    kind = ErrorKind.CONFIG


class CaMaterialError(ConfigError):
    """CA certificates or keys are missing, inconsistent or unusable."""


class InvalidSpiffeIdError(MeshcaError):
    kind = ErrorKind.INVALID_ARGUMENT


class AuthenticationError(MeshcaError):
    kind = ErrorKind.UNAUTHENTICATED


class PermissionDeniedError(MeshcaError):
    kind = ErrorKind.PERMISSION_DENIED


class InvalidRequestError(MeshcaError):
    kind = ErrorKind.INVALID_ARGUMENT


class UnavailableError(MeshcaError):
    kind = ErrorKind.UNAVAILABLE


class UnsafeTransitionError(MeshcaError):
    """A change of the CA's own signing slots that would break consumers now; the message says
    why and what makes it safe (or `--force`)."""

    kind = ErrorKind.FAILED_PRECONDITION


class SigningError(MeshcaError):
    kind = ErrorKind.INTERNAL


class PolicyError(ConfigError):
    """A PeerAuthentication manifest is invalid; the message names the object and the field."""


class LedgerTamperedError(MeshcaError):
    """An entry of the issuance ledger fails its hash chain; `seq` names the first one found."""

    def __init__(self, message: str, *, seq: int) -> None:
        super().__init__(message, reason="ledger_tampered")
        self.seq = seq
