"""The authenticator seam: one method, tried in order, first success wins."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from ca.errors import AuthenticationError
from ca.issuance.spiffe_id import SpiffeId


@dataclass(frozen=True, kw_only=True)
class Credentials:
    """What a request presents; the token is never printed."""

    bearer_token: str | None = field(default=None, repr=False)
    peer_certificate_pem: str | None = None
    peer_address: str = ""
    cluster_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class TokenLeeway:
    """The clock leeway decided a token's time check: by the strict clock its `claim` ('exp' or
    'nbf') put it `needed` outside its validity, and the leeway in force was `leeway` (accepted
    within it, refused beyond it)."""

    claim: str
    needed: timedelta
    leeway: timedelta


class TokenTimeError(AuthenticationError):
    """A token refused on its time claims: expired, or not yet valid, beyond the leeway."""

    def __init__(self, message: str, *, reason: str, leeway: TokenLeeway) -> None:
        super().__init__(message, reason=reason)
        self.leeway = leeway


@dataclass(frozen=True, kw_only=True)
class Caller:
    """An authenticated workload."""

    spiffe_id: SpiffeId
    namespace: str
    service_account: str
    method: str
    service_account_uid: str | None = None
    pod_name: str | None = None
    pod_uid: str | None = None
    node_name: str | None = None
    token_id: str | None = None
    expires_at: datetime | None = None
    not_before: datetime | None = None
    token_leeway: TokenLeeway | None = None  # set when the leeway let this token's time check pass
    certificate_serial: str | None = None  # lower-case hex, when a client certificate proved the caller


class Authenticator(Protocol):
    name: str

    def authenticate(self, credentials: Credentials) -> Caller | None:
        """The caller, or None if these credentials are not this authenticator's kind.

        Raises AuthenticationError when the credentials are its kind but fail.
        """
        ...


class AuthenticatorChain:
    def __init__(self, authenticators: Sequence[Authenticator]) -> None:
        self._authenticators = tuple(authenticators)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self._authenticators)

    def authenticate(self, credentials: Credentials) -> Caller:
        first_error: AuthenticationError | None = None
        for authenticator in self._authenticators:
            try:
                caller = authenticator.authenticate(credentials)
            except AuthenticationError as err:
                first_error = first_error or err
                continue
            if caller is not None:
                return caller
        if first_error is not None:
            raise first_error
        raise AuthenticationError(
            "the request carries no credentials: send 'authorization: Bearer <service-account token>' "
            "(the projected token with audience istio-ca), or call the renewal port with a client "
            "certificate from this CA",
            reason="token_missing",
        )
