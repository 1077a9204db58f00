"""The TLS half of meshca's HTTPS endpoints: a context rebuilt only when the material changes, and
material that cannot be loaded refused with the endpoint's name."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from ca.errors import ConfigError
from ca.issuance.spiffe_id import SpiffeId
from ca.net.tls_http import TlsContexts, shown_host
from ca.server.serving_cert import ServingIdentity
from tests.support.clock import FakeClock
from tests.support.issuing import TRUST_DOMAIN, make_root


@dataclass(frozen=True)
class Material:
    chain_pem: bytes
    key_pem: bytes


def test_the_context_is_rebuilt_only_when_the_material_changes() -> None:
    clock = FakeClock(datetime(2026, 12, 1, tzinfo=UTC))
    identity = ServingIdentity(
        authority=make_root(clock),
        hosts=["127.0.0.1"],
        spiffe_id=SpiffeId.for_workload(TRUST_DOMAIN, "istio-system", "meshca"),
        clock=clock,
    )
    contexts = TlsContexts(lambda: identity.current, what="the test endpoint")
    first = contexts.current()
    assert contexts.current() is first
    identity.rotate()
    assert contexts.current() is not first


def test_material_that_cannot_be_loaded_names_the_endpoint() -> None:
    contexts = TlsContexts(lambda: Material(b"not a certificate", b"not a key"), what="the test endpoint")
    with pytest.raises(ConfigError, match="the test endpoint's certificate or key cannot be loaded"):
        contexts.current()


def test_an_ipv6_host_is_bracketed_in_urls() -> None:
    assert shown_host("::1") == "[::1]" and shown_host("127.0.0.1") == "127.0.0.1"
