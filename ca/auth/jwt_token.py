"""Local validation of Kubernetes service-account tokens (JWTs) against the issuer's keys.

Time checks use the injected clock, not pyjwt's, so expiry is testable without
sleeping; pyjwt checks the signature. A token is accepted up to `leeway` after
its expiry and before its not-before time, for clock skew between the API server
and the CA (`meshca serve --token-leeway`, default 30s). When the leeway decides
(a token accepted only thanks to it, or refused on its time claims), the caller
or the error carries a TokenLeeway saying so, for the ledger's record.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import jwt

from ca.auth.base import Caller, Credentials, TokenLeeway, TokenTimeError
from ca.auth.jws import ALGORITHMS as ALGORITHMS
from ca.auth.jws import JwsBadSignature, JwsKeyMismatch, JwsMalformed, verified_payload
from ca.auth.k8s_identity import ServiceAccountIdentity, identity_from_claims
from ca.auth.token_cache import TokenCache
from ca.common.clock import Clock
from ca.common.durations import format_duration
from ca.errors import AuthenticationError
from ca.issuance.spiffe_id import SpiffeId


class KeySource(Protocol):
    description: str

    def key_for(self, kid: str | None) -> jwt.PyJWK:
        """The key with this id; AuthenticationError if there is none."""
        ...


class PodChecker(Protocol):
    def check_bound_pod(self, namespace: str, name: str, uid: str) -> None:
        """Raise AuthenticationError unless the pod exists with this uid."""
        ...


DEFAULT_LEEWAY = timedelta(seconds=30)


@dataclass(frozen=True, kw_only=True)
class TokenRules:
    issuers: tuple[str, ...]
    audiences: tuple[str, ...]
    trust_domain: str
    leeway: timedelta = DEFAULT_LEEWAY


def _timestamp(claims: Mapping[str, Any], name: str) -> datetime | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise AuthenticationError(f"the token's {name!r} claim is not a number", reason="token_malformed")
    return datetime.fromtimestamp(value, UTC)


@dataclass(frozen=True)
class TokenTimes:
    expires: datetime
    not_before: datetime | None


def check_time_claims(claims: Mapping[str, Any], now: datetime, leeway: timedelta) -> TokenTimes:
    """Check exp and nbf against `now`, each with `leeway`; raises TokenTimeError."""
    expires = _timestamp(claims, "exp")
    if expires is None:
        raise AuthenticationError(
            "the token has no 'exp' claim; meshca accepts only expiring (projected) tokens",
            reason="token_malformed",
        )
    if now >= expires + leeway:
        raise TokenTimeError(
            f"the token expired at {expires.isoformat()}, {_span(now - expires)} ago, beyond the "
            f"{_span(leeway)} leeway (--token-leeway); the kubelet refreshes projected tokens, so "
            "check the token file is a projected volume and is re-read on each request",
            reason="token_expired",
            leeway=TokenLeeway(claim="exp", needed=now - expires, leeway=leeway),
        )
    not_before = _timestamp(claims, "nbf")
    if not_before is not None and now + leeway < not_before:
        raise TokenTimeError(
            f"the token is not valid before {not_before.isoformat()}, {_span(not_before - now)} from "
            f"now, beyond the {_span(leeway)} leeway (--token-leeway); check the clocks of the "
            "API server and the CA",
            reason="token_not_yet_valid",
            leeway=TokenLeeway(claim="nbf", needed=not_before - now, leeway=leeway),
        )
    return TokenTimes(expires, not_before)


def leeway_used(caller: Caller, now: datetime, leeway: timedelta) -> TokenLeeway | None:
    """How the leeway let `caller`'s token pass at `now`, or None if the strict clock did."""
    if caller.expires_at is not None and now >= caller.expires_at:
        return TokenLeeway(claim="exp", needed=now - caller.expires_at, leeway=leeway)
    if caller.not_before is not None and now < caller.not_before:
        return TokenLeeway(claim="nbf", needed=caller.not_before - now, leeway=leeway)
    return None


def _span(value: timedelta) -> str:
    return format_duration(value) if value >= timedelta(seconds=1) else f"{value.total_seconds():g}s"


def check_issuer(claims: Mapping[str, Any], issuers: Sequence[str]) -> None:
    issuer = claims.get("iss")
    if issuer not in issuers:
        raise AuthenticationError(
            f"the token was issued by {issuer!r}, not by {', '.join(map(repr, issuers))}; "
            "set --token-issuer to the API server's service-account issuer",
            reason="token_wrong_issuer",
        )


def check_audience(claims: Mapping[str, Any], audiences: Sequence[str]) -> None:
    raw = claims.get("aud")
    token_audiences = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []
    if not set(token_audiences) & set(audiences):
        raise AuthenticationError(
            f"the token's audiences {token_audiences} include none of {list(audiences)}; mount a "
            f"projected token with audience {audiences[0]!r} or add its audience with --audience",
            reason="token_wrong_audience",
        )


def caller_from(
    identity: ServiceAccountIdentity,
    trust_domain: str,
    method: str,
    expires: datetime | None,
    not_before: datetime | None = None,
) -> Caller:
    return Caller(
        spiffe_id=SpiffeId.for_workload(trust_domain, identity.namespace, identity.service_account),
        namespace=identity.namespace,
        service_account=identity.service_account,
        method=method,
        service_account_uid=identity.service_account_uid,
        pod_name=identity.pod_name,
        pod_uid=identity.pod_uid,
        node_name=identity.node_name,
        token_id=identity.token_id,
        expires_at=expires,
        not_before=not_before,
    )


def check_pod(caller: Caller, pods: PodChecker | None) -> None:
    if pods is not None and caller.pod_name and caller.pod_uid:
        pods.check_bound_pod(caller.namespace, caller.pod_name, caller.pod_uid)


def unverified_header(token: str) -> Mapping[str, Any]:
    """The JOSE header, read to pick the key; pyjwt checks it again with the signature.

    Read here rather than with jwt.get_unverified_header, which would make pyjwt
    parse and validate the whole token twice per request.
    """
    encoded = token.partition(".")[0]
    try:
        if token.count(".") != 2:
            raise ValueError("a JWT has three '.'-separated parts")
        header = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    except (ValueError, binascii.Error) as err:
        raise AuthenticationError(
            f"the bearer token is not a JWT ({err}); send the service-account token itself",
            reason="token_malformed",
        ) from err
    if not isinstance(header, dict):
        raise AuthenticationError("the bearer token's header is not a JSON object", reason="token_malformed")
    return header


class JwtAuthenticator:
    name = "jwt"

    def __init__(
        self,
        *,
        keys: KeySource,
        rules: TokenRules,
        clock: Clock,
        pods: PodChecker | None = None,
        cache: TokenCache | None = None,
    ) -> None:
        self._keys = keys
        self._rules = rules
        self._clock = clock
        self._pods = pods
        self._cache = cache if cache is not None else TokenCache(0)

    def authenticate(self, credentials: Credentials) -> Caller | None:
        token = credentials.bearer_token
        if token is None:
            return None
        now = self._clock.now()
        caller = self._cache.through(token, now, lambda: self._verify(token, now))
        check_pod(caller, self._pods)
        # Per request, not per verification: a cached token may pass its expiry within the leeway.
        used = leeway_used(caller, now, self._rules.leeway)
        return caller if used is None else dataclasses.replace(caller, token_leeway=used)

    def _verify(self, token: str, now: datetime) -> tuple[Caller, datetime]:
        claims = self._verified_claims(token)
        check_issuer(claims, self._rules.issuers)
        check_audience(claims, self._rules.audiences)
        times = check_time_claims(claims, now, self._rules.leeway)
        identity = identity_from_claims(claims)
        caller = caller_from(identity, self._rules.trust_domain, self.name, times.expires, times.not_before)
        return caller, times.expires + self._rules.leeway

    def _verified_claims(self, token: str) -> Mapping[str, Any]:
        header = unverified_header(token)
        kid = header.get("kid")
        key = self._keys.key_for(kid if isinstance(kid, str) else None)
        try:
            return verified_payload(token, header, key.key)
        except JwsBadSignature as err:
            raise AuthenticationError(
                f"the token's signature does not verify with key {kid!r} from {self._keys.description}; "
                "the token was forged or altered",
                reason="token_bad_signature",
            ) from err
        except JwsKeyMismatch as err:
            raise AuthenticationError(
                f"the token's algorithm {header.get('alg')!r} does not fit key {kid!r} from "
                f"{self._keys.description} ({err}); the token was forged or altered",
                reason="token_bad_signature",
            ) from err
        except JwsMalformed as err:
            raise AuthenticationError(
                f"the bearer token cannot be verified: {err}", reason="token_malformed"
            ) from err
