"""The certificate API end to end: real gRPC over real TLS, checked by independent validators."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest
from cryptography import x509

from tests.support.ca_server import RunningCa
from tests.support.validate import assert_valid_svid


def test_issues_a_valid_svid_for_the_token_identity(ca: RunningCa) -> None:
    chain, key = ca.request(token=ca.token("shop", "cart"))
    assert len(chain) == 2
    leaf = assert_valid_svid(chain, key, "spiffe://cluster.local/ns/shop/sa/cart", ca.clock.now())
    assert leaf.not_valid_after_utc - ca.clock.now() == timedelta(hours=24)


def test_missing_token_is_unauthenticated(ca: RunningCa) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        ca.request()
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer" in caught.value.details()
