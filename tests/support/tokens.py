"""Signed service-account tokens, their keys and claims, for the authentication tests."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.api_jws import PyJWS

from ca.auth.base import Caller, Credentials
from ca.auth.jwks import StaticKeySet, parse_jwks
from ca.auth.jwt_token import JwtAuthenticator, TokenRules
from ca.auth.token_cache import TokenCache
from ca.errors import AuthenticationError, ErrorKind
from tests.support.clock import FakeClock

ISSUER = "https://kubernetes.default.svc.cluster.local"


AUDIENCE = "istio-ca"


TRUST_DOMAIN = "cluster.local"


RSA_KID = "rsa-key-1"


EC_KID = "ec-key-1"


LEEWAY = timedelta(seconds=30)


POD_UID = "0b1c7d6e-5f4a-4b3c-9d2e-1f0a9b8c7d6e"


def public_jwk(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        jwk: dict[str, Any] = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        jwk["alg"] = "RS256"
    else:
        jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        jwk["alg"] = "ES256"
    jwk.update(kid=kid, use="sig")
    return jwk


def claims_for(now: datetime, **overrides: Any) -> dict[str, Any]:
    stamp = int(now.timestamp())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": [AUDIENCE],
        "sub": "system:serviceaccount:shop:web",
        "iat": stamp,
        "nbf": stamp,
        "exp": stamp + 12 * 3600,
        "jti": "3e4f5a6b-jti",
        "kubernetes.io": {
            "namespace": "shop",
            "serviceaccount": {"name": "web", "uid": "sa-uid-1"},
            "pod": {"name": "web-7d9f", "uid": POD_UID},
            "node": {"name": "node-1", "uid": "node-uid-1"},
        },
    }
    for name, value in overrides.items():
        name = name.replace("__", ".")
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def sign_jwt(claims: Mapping[str, Any], key: Any, kid: str | None, algorithm: str) -> str:
    headers = {"kid": kid, "typ": "JWT"} if kid is not None else {"typ": "JWT"}
    return PyJWS().encode(json.dumps(dict(claims)).encode(), key, algorithm=algorithm, headers=headers)


class CountingKeys:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.description = inner.description
        self.lookups: list[str | None] = []

    def key_for(self, kid: str | None) -> jwt.PyJWK:
        self.lookups.append(kid)
        key: jwt.PyJWK = self.inner.key_for(kid)
        return key


class FakePods:
    def __init__(self) -> None:
        self.gone: set[tuple[str, str, str]] = set()
        self.checks: list[tuple[str, str, str]] = []

    def check_bound_pod(self, namespace: str, name: str, uid: str) -> None:
        self.checks.append((namespace, name, uid))
        if (namespace, name, uid) in self.gone:
            raise AuthenticationError(f"pod {namespace}/{name} is gone", reason="token_pod_gone")


class Setup:
    def __init__(
        self,
        jwks: Mapping[str, Any],
        clock: FakeClock,
        *,
        cache_size: int = 100,
        pods: FakePods | None = None,
        issuers: tuple[str, ...] = (ISSUER,),
        audiences: tuple[str, ...] = (AUDIENCE,),
        leeway: timedelta = LEEWAY,
    ) -> None:
        self.keys = CountingKeys(StaticKeySet(parse_jwks(jwks, "test JWKS"), "test JWKS"))
        self.cache = TokenCache(cache_size)
        self.clock = clock
        self.auth = JwtAuthenticator(
            keys=self.keys,
            rules=TokenRules(issuers=issuers, audiences=audiences, trust_domain=TRUST_DOMAIN, leeway=leeway),
            clock=clock,
            pods=pods,
            cache=self.cache,
        )

    def authenticate(self, token: str) -> Caller:
        caller = self.auth.authenticate(Credentials(bearer_token=token))
        assert caller is not None
        return caller

    def refusal(self, token: str) -> AuthenticationError:
        with pytest.raises(AuthenticationError) as caught:
            self.auth.authenticate(Credentials(bearer_token=token))
        assert caught.value.kind is ErrorKind.UNAUTHENTICATED
        return caught.value


FULL_REVIEW: dict[str, Any] = {
    "authenticated": True,
    "user": {
        "username": "system:serviceaccount:shop:web",
        "uid": "sa-uid-1",
        "groups": ["system:serviceaccounts", "system:serviceaccounts:shop", "system:authenticated"],
        "extra": {
            "authentication.kubernetes.io/pod-name": ["web-7d9f"],
            "authentication.kubernetes.io/pod-uid": [POD_UID],
            "authentication.kubernetes.io/node-name": ["node-1"],
            "authentication.kubernetes.io/credential-id": ["JTI=3e4f5a6b-jti"],
        },
    },
    "audiences": ["istio-ca"],
}
