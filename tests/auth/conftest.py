"""Token signing keys, their JWKS and a fake clock, shared by the authentication tests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.support.clock import FakeClock
from tests.support.pki import ec_key, rsa_key
from tests.support.tokens import EC_KID, RSA_KID, Setup, claims_for, public_jwk, sign_jwt


@pytest.fixture(scope="module")
def rsa_signer() -> rsa.RSAPrivateKey:
    return rsa_key(2048)


@pytest.fixture(scope="module")
def rsa_impostor() -> rsa.RSAPrivateKey:
    return rsa_key(2048)


@pytest.fixture(scope="module")
def ec_signer() -> ec.EllipticCurvePrivateKey:
    return ec_key()


@pytest.fixture(scope="module")
def jwks(rsa_signer: rsa.RSAPrivateKey, ec_signer: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    return {"keys": [public_jwk(rsa_signer, RSA_KID), public_jwk(ec_signer, EC_KID)]}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2030, 1, 1, 12, tzinfo=UTC))


@pytest.fixture
def setup(jwks: dict[str, Any], clock: FakeClock) -> Setup:
    return Setup(jwks, clock)


@pytest.fixture
def rs256(rsa_signer: rsa.RSAPrivateKey, clock: FakeClock) -> str:
    return sign_jwt(claims_for(clock.now()), rsa_signer, RSA_KID, "RS256")
