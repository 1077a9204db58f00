"""The service-account username split: what Kubernetes calls a service account, and nothing else."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ca.auth.service_account_username import split_username
from ca.errors import AuthenticationError


def test_a_service_account_username_splits_into_namespace_and_name() -> None:
    assert split_username("system:serviceaccount:shop:cart") == ("shop", "cart")


@pytest.mark.parametrize(
    "username",
    [
        "alice",
        "system:node:n1",
        "system:serviceaccount:shop",
        "system:serviceaccount::cart",
        "system:serviceaccount:shop:",
        "system:serviceaccount:shop:cart:extra",
        7,
        None,
        ["system:serviceaccount:shop:cart"],
    ],
)
def test_anything_else_is_refused_naming_the_form_expected(username: object) -> None:
    with pytest.raises(AuthenticationError) as refused:
        split_username(username)
    assert refused.value.reason == "token_not_service_account"
    assert "system:serviceaccount:<ns>:<sa>" in refused.value.message


@given(st.text())
def test_any_text_splits_or_is_refused_with_the_service_account_reason(username: str) -> None:
    try:
        namespace, name = split_username(username)
    except AuthenticationError as err:
        assert err.reason == "token_not_service_account"
    else:
        assert username == f"system:serviceaccount:{namespace}:{name}"
        assert namespace and name and ":" not in name
