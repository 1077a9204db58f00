"""Authentication by asking the API server (TokenReview), with a short result cache.

The API call is injected; the parse of its answer is pure (ca.auth.k8s_identity).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from ca.auth.base import Caller, Credentials
from ca.auth.jwt_token import caller_from
from ca.auth.k8s_identity import identity_from_review
from ca.auth.token_cache import TokenCache
from ca.common.clock import Clock

# (token, audiences) -> TokenReview `status`; raises UnavailableError when the API is unreachable.
ReviewCall = Callable[[str, Sequence[str]], Mapping[str, Any]]


def unverified_expiry(token: str) -> datetime | None:
    """The `exp` a token states, read without verification: used only to bound caching."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    exp = claims.get("exp")
    return datetime.fromtimestamp(exp, UTC) if isinstance(exp, int | float) else None


class TokenReviewAuthenticator:
    name = "tokenreview"

    def __init__(
        self,
        *,
        review: ReviewCall,
        audiences: Sequence[str],
        trust_domain: str,
        clock: Clock,
        cache: TokenCache | None = None,
        cache_ttl: timedelta = timedelta(seconds=60),
    ) -> None:
        self._review = review
        self._audiences = tuple(audiences)
        self._trust_domain = trust_domain
        self._clock = clock
        self._cache = cache if cache is not None else TokenCache(0)
        self._cache_ttl = cache_ttl

    def authenticate(self, credentials: Credentials) -> Caller | None:
        token = credentials.bearer_token
        if token is None:
            return None
        now = self._clock.now()
        return self._cache.through(token, now, lambda: self._review_token(token, now))

    def _review_token(self, token: str, now: datetime) -> tuple[Caller, datetime]:
        identity = identity_from_review(self._review(token, self._audiences))
        expires = unverified_expiry(token)
        caller = caller_from(identity, self._trust_domain, self.name, expires)
        valid_until = now + self._cache_ttl
        return caller, valid_until if expires is None else min(valid_until, expires)
