"""The identity this workload expects, read from its token without verifying it.

Used only to ask for the right name in the CSR and to refuse a CA answer for
someone else; the CA decides the identity from the verified token.
"""

from __future__ import annotations

from pathlib import Path

import jwt

from ca.agent.ca_client import TokenUnavailableError, read_token
from ca.auth.k8s_identity import split_username
from ca.errors import MeshcaError
from ca.issuance.spiffe_id import SpiffeId


def token_identity(token_file: Path, trust_domain: str) -> SpiffeId | None:
    try:
        claims = jwt.decode(read_token(token_file), options={"verify_signature": False})
        namespace, service_account = split_username(claims.get("sub"))
        return SpiffeId.for_workload(trust_domain, namespace, service_account)
    except (TokenUnavailableError, jwt.PyJWTError, MeshcaError):
        return None


def token_placement(token_file: Path) -> tuple[str | None, str | None]:
    """The pod and node a projected token is bound to (its `kubernetes.io` claim), if it says;
    the agent tells the CA, for the operators' dry runs."""
    try:
        claims = jwt.decode(read_token(token_file), options={"verify_signature": False})
    except (TokenUnavailableError, jwt.PyJWTError):
        return None, None
    bound = claims.get("kubernetes.io")
    if not isinstance(bound, dict):
        return None, None
    return _name_of(bound.get("pod")), _name_of(bound.get("node"))


def _name_of(ref: object) -> str | None:
    name = ref.get("name") if isinstance(ref, dict) else None
    return name if isinstance(name, str) and name else None
