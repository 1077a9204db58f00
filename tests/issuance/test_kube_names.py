"""Kubernetes names as the API server checks them: RFC 1123 labels and subdomains."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ca.errors import InvalidRequestError
from ca.issuance.kube_names import check_dns_label, check_dns_subdomain

LABEL = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", fullmatch=True)


@given(LABEL)
def test_every_rfc1123_label_is_a_namespace(name: str) -> None:
    assert check_dns_label(name, "--namespace") == name
    assert check_dns_subdomain(name, "--service-account") == name


@given(st.text(max_size=80))
def test_a_namespace_is_checked_character_by_character(name: str) -> None:
    valid = (
        0 < len(name) <= 63
        and all(c in "abcdefghijklmnopqrstuvwxyz0123456789-" for c in name)
        and name[0] != "-"
        and name[-1] != "-"
    )
    if valid:
        assert check_dns_label(name, "--namespace") == name
    else:
        with pytest.raises(InvalidRequestError):
            check_dns_label(name, "--namespace")


@pytest.mark.parametrize("name", ["a" * 64, "-a", "a-", "a.b", "A", "a_b", ""])
def test_namespaces_the_api_server_refuses(name: str) -> None:
    with pytest.raises(InvalidRequestError):
        check_dns_label(name, "--namespace")


@pytest.mark.parametrize("name", ["a" * 254, "a..b", ".a", "a.", "a.-b", "A", "a_b", ""])
def test_service_accounts_the_api_server_refuses(name: str) -> None:
    with pytest.raises(InvalidRequestError):
        check_dns_subdomain(name, "--service-account")
