"""The cache of verified tokens: what it skips, what it never holds, how it is bounded."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.clock import FakeClock
from tests.support.tokens import (
    RSA_KID,
    Setup,
    claims_for,
    sign_jwt,
)


def test_cache_skips_re_verification(setup: Setup, rs256: str) -> None:
    first = setup.authenticate(rs256)
    for _ in range(5):
        assert setup.authenticate(rs256) == first
    assert len(setup.keys.lookups) == 1
    assert len(setup.cache) == 1


def test_refused_tokens_are_not_cached(
    setup: Setup, clock: FakeClock, rsa_impostor: rsa.RSAPrivateKey
) -> None:
    forged = sign_jwt(claims_for(clock.now()), rsa_impostor, RSA_KID, "RS256")
    for _ in range(3):
        assert setup.refusal(forged).reason == "token_bad_signature"
    assert len(setup.keys.lookups) == 3
    assert len(setup.cache) == 0


def test_cache_disabled_verifies_every_time(jwks: dict[str, Any], clock: FakeClock, rs256: str) -> None:
    setup = Setup(jwks, clock, cache_size=0)
    for _ in range(3):
        setup.authenticate(rs256)
    assert len(setup.keys.lookups) == 3


def test_cache_is_a_bounded_lru(
    jwks: dict[str, Any], clock: FakeClock, rsa_signer: rsa.RSAPrivateKey
) -> None:
    setup = Setup(jwks, clock, cache_size=2)
    a, b, c = (
        sign_jwt(claims_for(clock.now(), jti=name), rsa_signer, RSA_KID, "RS256") for name in ("a", "b", "c")
    )
    setup.authenticate(a)
    setup.authenticate(b)
    setup.authenticate(a)
    assert len(setup.keys.lookups) == 2
    setup.authenticate(c)
    assert len(setup.cache) == 2
    assert len(setup.keys.lookups) == 3
    setup.authenticate(a)
    assert len(setup.keys.lookups) == 3
    setup.authenticate(b)
    assert len(setup.keys.lookups) == 4
    assert len(setup.cache) == 2


def test_cache_holds_no_usable_token(setup: Setup, rs256: str) -> None:
    setup.authenticate(rs256)
    held = repr(vars(setup.cache))
    assert rs256 not in held
    assert rs256.split(".")[2] not in held
