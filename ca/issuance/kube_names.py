"""Kubernetes object name rules (pure): what the API server would accept as a name."""

from __future__ import annotations

import re

from ca.errors import InvalidRequestError

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(rf"{_DNS_LABEL.pattern}(\.{_DNS_LABEL.pattern})*")
DNS_LABEL_MAX = 63
DNS_SUBDOMAIN_MAX = 253


def check_dns_label(value: str, what: str) -> str:
    """A namespace name: an RFC 1123 label, as the API server requires."""
    if len(value) > DNS_LABEL_MAX or not _DNS_LABEL.fullmatch(value):
        raise InvalidRequestError(
            f"{what} {value!r} is not a valid Kubernetes name: use at most {DNS_LABEL_MAX} lowercase "
            "letters, digits and '-', starting and ending with a letter or digit (as in shop-canary)",
            reason="invalid_name",
        )
    return value


def check_dns_subdomain(value: str, what: str) -> str:
    """A service account or pod name: an RFC 1123 subdomain, as the API server requires."""
    if len(value) > DNS_SUBDOMAIN_MAX or not _DNS_SUBDOMAIN.fullmatch(value):
        raise InvalidRequestError(
            f"{what} {value!r} is not a valid Kubernetes name: use at most {DNS_SUBDOMAIN_MAX} lowercase "
            "letters, digits, '-' and '.', each dot-separated part starting and ending with a letter "
            "or digit (as in cart or web-0)",
            reason="invalid_name",
        )
    return value
