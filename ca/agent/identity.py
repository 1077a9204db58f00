"""The identity this workload expects, read from its token without verifying it.

Used only to ask for the right name in the CSR and to refuse a CA answer for
someone else; the CA decides the identity from the verified token.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Any

from ca.agent.ca_client import TokenUnavailableError, read_token
from ca.auth.service_account_username import split_username
from ca.errors import MeshcaError
from ca.issuance.spiffe_id import SpiffeId

_BASE64URL = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_SUPPORTED_CRIT = frozenset({"b64"})


class _MalformedToken(ValueError):
    pass


def token_identity(token_file: Path, trust_domain: str) -> SpiffeId | None:
    try:
        claims = unverified_claims(read_token(token_file))
        if claims is None:
            return None
        namespace, service_account = split_username(claims.get("sub"))
        return SpiffeId.for_workload(trust_domain, namespace, service_account)
    except (TokenUnavailableError, MeshcaError):
        return None


def token_placement(token_file: Path) -> tuple[str | None, str | None]:
    """The pod and node a projected token is bound to (its `kubernetes.io` claim), if it says;
    the agent tells the CA, for the operators' dry runs."""
    try:
        claims = unverified_claims(read_token(token_file))
    except TokenUnavailableError:
        return None, None
    if claims is None:
        return None, None
    bound = claims.get("kubernetes.io")
    if not isinstance(bound, dict):
        return None, None
    return _name_of(bound.get("pod")), _name_of(bound.get("node"))


def _name_of(ref: object) -> str | None:
    name = ref.get("name") if isinstance(ref, dict) else None
    return name if isinstance(name, str) and name else None


def unverified_claims(token: str) -> dict[str, Any] | None:
    """The claims of a compact JWS token, its signature not checked; None for a token PyJWT's
    `jwt.decode(token, options={"verify_signature": False})` refuses, and what it returns
    otherwise (tests hold the two together). Read here, not through PyJWT, because importing
    PyJWT costs an init container's start about 10 ms (it imports an HTTP client for JWKS);
    the CA verifies the token in any case."""
    try:
        signing_input, signature = token.encode("utf-8").rsplit(b".", 1)
        header_segment, payload_segment = signing_input.split(b".", 1)
        header = _json_object(_segment(header_segment))
        if header.get("b64", True) is False:
            return None  # a detached payload: there are no claims to read
        payload = _segment(payload_segment)
        _segment(signature)
        _check_header(header)
        return _json_object(payload)
    except (_MalformedToken, ValueError):
        return None


def _segment(segment: bytes) -> bytes:
    """A base64url segment, decoded as strictly as PyJWT does: at most two '=' of padding, and
    only in a whole quantum; no character outside the alphabet; the canonical encoding only."""
    stripped = segment.rstrip(b"=")
    padding = len(segment) - len(stripped)
    if padding > 2 or (padding and len(segment) % 4 != 0):
        raise _MalformedToken("padding")
    if len(stripped) % 4 == 1 or not _BASE64URL.issuperset(stripped):
        raise _MalformedToken("alphabet")
    try:
        decoded = base64.urlsafe_b64decode(stripped + b"=" * (-len(stripped) % 4))
    except binascii.Error as err:
        raise _MalformedToken("base64") from err
    if base64.urlsafe_b64encode(decoded).replace(b"=", b"") != stripped:
        raise _MalformedToken("not canonical")
    return decoded


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as err:
        raise _MalformedToken("json") from err
    if not isinstance(value, dict):
        raise _MalformedToken("not an object")
    return value


def _check_header(header: dict[str, Any]) -> None:
    """What PyJWT checks of a header without a key: `kid` a string; `crit` a non-empty list of
    supported extensions, each present."""
    if "kid" in header and not isinstance(header["kid"], str):
        raise _MalformedToken("kid")
    if "crit" in header:
        crit = header["crit"]
        if not isinstance(crit, list) or not crit:
            raise _MalformedToken("crit")
        for ext in crit:
            if not isinstance(ext, str) or ext not in _SUPPORTED_CRIT or ext not in header:
                raise _MalformedToken("crit")
