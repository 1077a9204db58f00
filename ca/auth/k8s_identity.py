"""Kubernetes service-account identities from token claims and TokenReview results.

Pure code, table-tested.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ca.auth.service_account_username import split_username
from ca.errors import AuthenticationError

POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"


@dataclass(frozen=True, kw_only=True)
class ServiceAccountIdentity:
    namespace: str
    service_account: str
    service_account_uid: str | None = None
    pod_name: str | None = None
    pod_uid: str | None = None
    node_name: str | None = None
    token_id: str | None = None


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _named(obj: object) -> tuple[str | None, str | None]:
    if not isinstance(obj, Mapping):
        return None, None
    return _str_or_none(obj.get("name")), _str_or_none(obj.get("uid"))


def identity_from_claims(claims: Mapping[str, Any]) -> ServiceAccountIdentity:
    """The identity a verified projected token states; `sub` and `kubernetes.io` must agree."""
    namespace, name = split_username(claims.get("sub"))
    private = claims.get("kubernetes.io")
    if not isinstance(private, Mapping):
        private = {}
    claimed_ns = private.get("namespace")
    sa_name, sa_uid = _named(private.get("serviceaccount"))
    if (claimed_ns is not None and claimed_ns != namespace) or (sa_name is not None and sa_name != name):
        raise AuthenticationError(
            "the token's 'sub' and 'kubernetes.io' claims name different service accounts; "
            "the token is malformed",
            reason="token_malformed",
        )
    pod_name, pod_uid = _named(private.get("pod"))
    node_name, _ = _named(private.get("node"))
    return ServiceAccountIdentity(
        namespace=namespace,
        service_account=name,
        service_account_uid=sa_uid,
        pod_name=pod_name,
        pod_uid=pod_uid,
        node_name=node_name,
        token_id=_str_or_none(claims.get("jti")),
    )


def _first_extra(extra: Mapping[str, Any], key: str) -> str | None:
    values = extra.get(key)
    if isinstance(values, list) and values and isinstance(values[0], str):
        return values[0]
    return None


def identity_from_review(status: Mapping[str, Any]) -> ServiceAccountIdentity:
    """The identity a TokenReview `status` vouches for, or AuthenticationError."""
    if status.get("authenticated") is not True:
        detail = status.get("error") or "the API server did not authenticate the token"
        raise AuthenticationError(f"TokenReview refused the token: {detail}", reason="tokenreview_rejected")
    user = status.get("user")
    if not isinstance(user, Mapping):
        raise AuthenticationError("TokenReview returned no user", reason="tokenreview_rejected")
    namespace, name = split_username(user.get("username"))
    extra = user.get("extra")
    if not isinstance(extra, Mapping):
        extra = {}
    return ServiceAccountIdentity(
        namespace=namespace,
        service_account=name,
        service_account_uid=_str_or_none(user.get("uid")),
        pod_name=_first_extra(extra, POD_NAME_EXTRA),
        pod_uid=_first_extra(extra, POD_UID_EXTRA),
        node_name=_first_extra(extra, NODE_NAME_EXTRA),
        token_id=_first_extra(extra, "authentication.kubernetes.io/credential-id"),
    )
