"""Authentication by TokenReview: the API server's answer, cached within the token's lifetime."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from ca.auth.base import Credentials
from ca.auth.token_cache import TokenCache
from ca.auth.tokenreview import TokenReviewAuthenticator
from ca.errors import AuthenticationError, ErrorKind, UnavailableError
from tests.support.clock import FakeClock
from tests.support.tokens import (
    AUDIENCE,
    FULL_REVIEW,
    POD_UID,
    RSA_KID,
    TRUST_DOMAIN,
    claims_for,
    sign_jwt,
)


class FakeReview:
    def __init__(self, status: Mapping[str, Any]) -> None:
        self.status = status
        self.calls: list[tuple[str, tuple[str, ...]]] = []

    def __call__(self, token: str, audiences: Sequence[str]) -> Mapping[str, Any]:
        self.calls.append((token, tuple(audiences)))
        return self.status


def _review_auth(
    review: Any, clock: FakeClock, *, cache_size: int = 100, cache_ttl: int = 60
) -> TokenReviewAuthenticator:
    return TokenReviewAuthenticator(
        review=review,
        audiences=[AUDIENCE],
        trust_domain=TRUST_DOMAIN,
        clock=clock,
        cache=TokenCache(cache_size),
        cache_ttl=timedelta(seconds=cache_ttl),
    )


def _review_token(clock: FakeClock, rsa_signer: rsa.RSAPrivateKey, lifetime: int) -> str:
    stamp = int(clock.now().timestamp())
    return sign_jwt(claims_for(clock.now(), exp=stamp + lifetime), rsa_signer, RSA_KID, "RS256")


def test_tokenreview_success_yields_the_caller(clock: FakeClock, rsa_signer: rsa.RSAPrivateKey) -> None:
    review = FakeReview(FULL_REVIEW)
    token = _review_token(clock, rsa_signer, 3600)
    caller = _review_auth(review, clock).authenticate(Credentials(bearer_token=token))
    assert caller is not None
    assert caller.spiffe_id.uri == "spiffe://cluster.local/ns/shop/sa/web"
    assert caller.method == "tokenreview"
    assert (caller.pod_name, caller.pod_uid) == ("web-7d9f", POD_UID)
    assert caller.expires_at == clock.now() + timedelta(seconds=3600)
    assert review.calls == [(token, (AUDIENCE,))]


def test_tokenreview_needs_a_bearer_token(clock: FakeClock) -> None:
    review = FakeReview(FULL_REVIEW)
    assert _review_auth(review, clock).authenticate(Credentials()) is None
    assert review.calls == []


def test_tokenreview_cache_hit_avoids_the_second_call(
    clock: FakeClock, rsa_signer: rsa.RSAPrivateKey
) -> None:
    review = FakeReview(FULL_REVIEW)
    auth = _review_auth(review, clock)
    token = _review_token(clock, rsa_signer, 3600)
    first = auth.authenticate(Credentials(bearer_token=token))
    second = auth.authenticate(Credentials(bearer_token=token))
    assert first == second
    assert len(review.calls) == 1


def test_tokenreview_without_cache_calls_every_time(clock: FakeClock) -> None:
    review = FakeReview(FULL_REVIEW)
    auth = TokenReviewAuthenticator(
        review=review, audiences=[AUDIENCE], trust_domain=TRUST_DOMAIN, clock=clock
    )
    auth.authenticate(Credentials(bearer_token="opaque"))
    auth.authenticate(Credentials(bearer_token="opaque"))
    assert len(review.calls) == 2


def test_tokenreview_cache_is_bounded_by_the_token_expiry(
    clock: FakeClock, rsa_signer: rsa.RSAPrivateKey
) -> None:
    review = FakeReview(FULL_REVIEW)
    auth = _review_auth(review, clock, cache_ttl=60)
    token = _review_token(clock, rsa_signer, 30)
    auth.authenticate(Credentials(bearer_token=token))
    clock.advance(timedelta(seconds=29))
    auth.authenticate(Credentials(bearer_token=token))
    assert len(review.calls) == 1
    clock.advance(timedelta(seconds=1))
    auth.authenticate(Credentials(bearer_token=token))
    assert len(review.calls) == 2


def test_tokenreview_cache_is_bounded_by_cache_ttl(clock: FakeClock, rsa_signer: rsa.RSAPrivateKey) -> None:
    review = FakeReview(FULL_REVIEW)
    auth = _review_auth(review, clock, cache_ttl=60)
    token = _review_token(clock, rsa_signer, 3600)
    auth.authenticate(Credentials(bearer_token=token))
    clock.advance(timedelta(seconds=59))
    auth.authenticate(Credentials(bearer_token=token))
    assert len(review.calls) == 1
    clock.advance(timedelta(seconds=1))
    auth.authenticate(Credentials(bearer_token=token))
    assert len(review.calls) == 2


def test_tokenreview_opaque_token_is_cached_for_cache_ttl(clock: FakeClock) -> None:
    review = FakeReview(FULL_REVIEW)
    auth = _review_auth(review, clock, cache_ttl=60)
    caller = auth.authenticate(Credentials(bearer_token="opaque-token"))
    assert caller is not None and caller.expires_at is None
    clock.advance(timedelta(seconds=59))
    auth.authenticate(Credentials(bearer_token="opaque-token"))
    assert len(review.calls) == 1
    clock.advance(timedelta(seconds=1))
    auth.authenticate(Credentials(bearer_token="opaque-token"))
    assert len(review.calls) == 2


def test_tokenreview_rejection_is_not_cached(clock: FakeClock) -> None:
    review = FakeReview({"authenticated": False, "error": "token has been invalidated"})
    auth = _review_auth(review, clock)
    for _ in range(2):
        with pytest.raises(AuthenticationError) as caught:
            auth.authenticate(Credentials(bearer_token="opaque"))
        assert caught.value.reason == "tokenreview_rejected"
        assert "token has been invalidated" in caught.value.message
    assert len(review.calls) == 2


def test_tokenreview_unavailable_api_propagates(clock: FakeClock) -> None:
    def review(token: str, audiences: Sequence[str]) -> Mapping[str, Any]:
        raise UnavailableError("API server unreachable", reason="tokenreview_unavailable")

    with pytest.raises(UnavailableError) as caught:
        _review_auth(review, clock).authenticate(Credentials(bearer_token="opaque"))
    assert caught.value.kind is ErrorKind.UNAVAILABLE
