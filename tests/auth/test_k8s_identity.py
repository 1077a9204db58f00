"""The caller's identity from a TokenReview status or from projected token claims."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from ca.auth.k8s_identity import identity_from_claims, identity_from_review
from ca.errors import AuthenticationError
from tests.support.clock import FakeClock
from tests.support.tokens import FULL_REVIEW, POD_UID, claims_for


def test_identity_from_a_full_review() -> None:
    identity = identity_from_review(FULL_REVIEW)
    assert (identity.namespace, identity.service_account) == ("shop", "web")
    assert identity.service_account_uid == "sa-uid-1"
    assert identity.pod_name == "web-7d9f"
    assert identity.pod_uid == POD_UID
    assert identity.node_name == "node-1"
    assert identity.token_id == "JTI=3e4f5a6b-jti"


def test_identity_from_a_review_without_extra() -> None:
    identity = identity_from_review(
        {"authenticated": True, "user": {"username": "system:serviceaccount:a:b"}}
    )
    assert (identity.namespace, identity.service_account) == ("a", "b")
    assert identity.pod_name is None and identity.pod_uid is None and identity.service_account_uid is None


@pytest.mark.parametrize(
    "extra",
    [
        {"authentication.kubernetes.io/pod-name": "web-7d9f"},
        {"authentication.kubernetes.io/pod-name": []},
        {"authentication.kubernetes.io/pod-name": [5]},
        "not a mapping",
    ],
)
def test_malformed_review_extra_gives_no_pod(extra: Any) -> None:
    status = {"authenticated": True, "user": {"username": "system:serviceaccount:a:b", "extra": extra}}
    assert identity_from_review(status).pod_name is None


@pytest.mark.parametrize(
    ("status", "reason", "words"),
    [
        (
            {"authenticated": False, "error": "token has expired"},
            "tokenreview_rejected",
            ["token has expired"],
        ),
        ({"authenticated": False}, "tokenreview_rejected", ["did not authenticate"]),
        ({}, "tokenreview_rejected", ["did not authenticate"]),
        ({"authenticated": "true", "user": FULL_REVIEW["user"]}, "tokenreview_rejected", []),
        ({"error": "[invalid bearer token]"}, "tokenreview_rejected", ["invalid bearer token"]),
        ({"authenticated": True}, "tokenreview_rejected", ["no user"]),
        ({"authenticated": True, "user": "x"}, "tokenreview_rejected", ["no user"]),
        ({"authenticated": True, "user": {"username": "alice"}}, "token_not_service_account", ["'alice'"]),
        ({"authenticated": True, "user": {"username": "system:node:n1"}}, "token_not_service_account", []),
        (
            {"authenticated": True, "user": {"username": "system:serviceaccount:a"}},
            "token_not_service_account",
            [],
        ),
        ({"authenticated": True, "user": {}}, "token_not_service_account", []),
        ({"authenticated": True, "user": {"username": 7}}, "token_not_service_account", []),
    ],
)
def test_refused_reviews(status: Mapping[str, Any], reason: str, words: list[str]) -> None:
    with pytest.raises(AuthenticationError) as caught:
        identity_from_review(status)
    assert caught.value.reason == reason
    for word in words:
        assert word in caught.value.message


def test_identity_from_full_claims(clock: FakeClock) -> None:
    identity = identity_from_claims(claims_for(clock.now()))
    assert (identity.namespace, identity.service_account) == ("shop", "web")
    assert identity.service_account_uid == "sa-uid-1"
    assert (identity.pod_name, identity.pod_uid, identity.node_name) == ("web-7d9f", POD_UID, "node-1")
    assert identity.token_id == "3e4f5a6b-jti"


@pytest.mark.parametrize(
    ("private", "expected_pod"),
    [
        (None, (None, None)),
        ("not a mapping", (None, None)),
        ({}, (None, None)),
        ({"namespace": "shop", "pod": {"name": "p"}}, ("p", None)),
        ({"namespace": "shop", "pod": {"name": "", "uid": "u"}}, (None, "u")),
        ({"namespace": "shop", "pod": ["p", "u"]}, (None, None)),
    ],
)
def test_claims_with_partial_private_claim(private: Any, expected_pod: tuple[str | None, str | None]) -> None:
    claims: dict[str, Any] = {"sub": "system:serviceaccount:shop:web"}
    if private is not None:
        claims["kubernetes.io"] = private
    identity = identity_from_claims(claims)
    assert (identity.namespace, identity.service_account) == ("shop", "web")
    assert (identity.pod_name, identity.pod_uid) == expected_pod


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        (
            {"sub": "system:serviceaccount:shop:web", "kubernetes.io": {"namespace": "prod"}},
            "token_malformed",
        ),
        (
            {"sub": "system:serviceaccount:shop:web", "kubernetes.io": {"serviceaccount": {"name": "admin"}}},
            "token_malformed",
        ),
        ({"sub": "system:serviceaccount:shop:web", "kubernetes.io": {"namespace": 5}}, "token_malformed"),
        ({}, "token_not_service_account"),
        ({"sub": "admin"}, "token_not_service_account"),
        ({"sub": ["system:serviceaccount:shop:web"]}, "token_not_service_account"),
    ],
)
def test_refused_claims(claims: Mapping[str, Any], reason: str) -> None:
    with pytest.raises(AuthenticationError) as caught:
        identity_from_claims(claims)
    assert caught.value.reason == reason
