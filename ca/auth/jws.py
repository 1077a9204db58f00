"""A compact JWS (a JWT's three parts) checked with `cryptography` directly. Pure code.

pyjwt parses each key once (ca.auth.jwks); the per-request work is then one signature check and
one JSON decode of the payload, without pyjwt's per-call option handling, which cost about twice
the RSA verification itself on every token.

The accepted algorithms are the RSA and ECDSA ones a Kubernetes API server or an OIDC issuer signs
service-account tokens with. A header naming extensions that must be understood (`crit`) is
refused, as RFC 7515 requires of a verifier that understands none.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "PS256")
_HASHES: Mapping[str, type[hashes.HashAlgorithm]] = {
    "RS256": hashes.SHA256,
    "RS384": hashes.SHA384,
    "RS512": hashes.SHA512,
    "PS256": hashes.SHA256,
    "ES256": hashes.SHA256,
    "ES384": hashes.SHA384,
}
_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1"}
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


class JwsMalformed(ValueError):
    """The token is not a compact JWS meshca can check (its algorithm, parts or payload)."""


class JwsKeyMismatch(ValueError):
    """The token's algorithm does not fit the key it names."""


class JwsBadSignature(ValueError):
    """The signature does not verify with the key."""


def b64url_decode(part: str) -> bytes:
    """Base64url without padding, strictly: Python's decoder alone would also take '+', '/', '='
    and drop other characters, so a token altered that way would still verify."""
    if not _B64URL.fullmatch(part):
        raise JwsMalformed("a part holds characters outside base64url")
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (ValueError, binascii.Error) as err:
        raise JwsMalformed(f"a part is not base64url ({err})") from err


def verified_payload(token: str, header: Mapping[str, Any], key: object) -> Mapping[str, Any]:
    """The token's claims, once its signature verifies with `key` under the header's algorithm."""
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise JwsMalformed(f"the algorithm {alg!r} is not accepted; accepted: {', '.join(ALGORITHMS)}")
    if "crit" in header:
        raise JwsMalformed("the header names critical extensions (crit), which meshca does not support")
    parts = token.split(".")
    if len(parts) != 3:
        raise JwsMalformed("a JWT has three '.'-separated parts")
    head, payload, signature = parts
    if not _B64URL.fullmatch(head):
        raise JwsMalformed("the header holds characters outside base64url")
    body = b64url_decode(payload)
    _verify(str(alg), key, f"{head}.{payload}".encode("ascii"), b64url_decode(signature))
    try:
        claims = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise JwsMalformed(f"the payload is not JSON ({err})") from err
    if not isinstance(claims, dict):
        raise JwsMalformed("the payload is not a JSON object")
    return claims


def _verify(alg: str, key: object, message: bytes, signature: bytes) -> None:
    digest = _HASHES[alg]()
    try:
        if alg.startswith(("RS", "PS")):
            if not isinstance(key, rsa.RSAPublicKey):
                raise JwsKeyMismatch(f"{alg} needs an RSA key")
            scheme: padding.AsymmetricPadding = (
                padding.PKCS1v15()
                if alg.startswith("RS")
                else padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
            )
            key.verify(signature, message, scheme, digest)
            return
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != _CURVES[alg]:
            raise JwsKeyMismatch(f"{alg} needs an EC key on {_CURVES[alg]}")
        size = (key.curve.key_size + 7) // 8
        if len(signature) != 2 * size:
            raise JwsBadSignature(f"an {alg} signature is {2 * size} bytes, not {len(signature)}")
        r, s = int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big")
        key.verify(encode_dss_signature(r, s), message, ec.ECDSA(digest))
    except InvalidSignature as err:
        raise JwsBadSignature("the signature does not verify") from err
