"""A local token issuer for running meshca without a cluster.

`meshca token` mints Kubernetes-shaped service-account tokens signed with a key
in the state directory; `meshca serve` on the same state directory trusts that
key when no other token issuer is configured. Not for production clusters.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ca.auth.jwks import StaticKeySet, parse_jwks
from ca.common.clock import Clock
from ca.common.files import SECRET_MODE, atomic_write, exclusive_lock
from ca.errors import ConfigError
from ca.issuance.keys import load_private_key_pem, private_key_pem

DEV_ISSUER = "https://meshca.dev.local"
SIGNER_FILE = "dev-token-signer.pem"
LOCK = ".meshca.lock"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _service_account_uid(namespace: str, name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"meshca-dev:{namespace}/{name}"))


class DevTokenIssuer:
    def __init__(
        self,
        key: rsa.RSAPrivateKey,
        *,
        clock: Clock,
        issuer: str = DEV_ISSUER,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self._key = key
        self._clock = clock
        self.issuer = issuer
        self._new_id = new_id
        spki = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.kid = _b64url(hashlib.sha256(spki).digest())

    @classmethod
    def load_or_create(cls, state_dir: Path, clock: Clock) -> DevTokenIssuer:
        path = state_dir / SIGNER_FILE
        with exclusive_lock(state_dir / LOCK):
            if not path.exists():
                key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
                atomic_write(path, private_key_pem(key), mode=SECRET_MODE)
                return cls(key, clock=clock)
        loaded = load_private_key_pem(path.read_bytes(), str(path))
        if not isinstance(loaded, rsa.RSAPrivateKey):
            raise ConfigError(f"{path} is not an RSA key; delete it to make a new dev token signer")
        return cls(loaded, clock=clock)

    def jwks(self) -> dict[str, Any]:
        public = self._key.public_key().public_numbers()
        return {
            "keys": [
                {
                    "kty": "RSA",
                    "alg": "RS256",
                    "use": "sig",
                    "kid": self.kid,
                    "n": _b64url(public.n.to_bytes((public.n.bit_length() + 7) // 8, "big")),
                    "e": _b64url(public.e.to_bytes((public.e.bit_length() + 7) // 8, "big")),
                }
            ]
        }

    def key_set(self) -> StaticKeySet:
        return StaticKeySet(parse_jwks(self.jwks(), "the dev token signer"), "the dev token signer")

    def mint(
        self,
        *,
        namespace: str,
        service_account: str,
        audiences: Sequence[str] = ("istio-ca",),
        ttl: timedelta = timedelta(hours=12),
        pod_name: str | None = None,
        pod_uid: str | None = None,
    ) -> str:
        now = int(self._clock.now().timestamp())
        private: dict[str, Any] = {
            "namespace": namespace,
            "serviceaccount": {
                "name": service_account,
                "uid": _service_account_uid(namespace, service_account),
            },
        }
        if pod_name and pod_uid:
            private["pod"] = {"name": pod_name, "uid": pod_uid}
        claims = {
            "iss": self.issuer,
            "aud": list(audiences),
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
            "iat": now,
            "nbf": now,
            "exp": now + int(ttl.total_seconds()),
            "jti": self._new_id(),
            "kubernetes.io": private,
        }
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid})
