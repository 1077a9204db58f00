"""Token keys from a JWKS URL and from OIDC discovery, served over real HTTP."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from ca.server.devtoken import DevTokenIssuer
from tests.support.ca_server import start_ca
from tests.support.clock import FakeClock
from tests.support.validate import assert_valid_svid

ISSUER_PATH = "/issuer"


class _OidcProvider:
    def __init__(self) -> None:
        self.signer: DevTokenIssuer | None = None
        self.hits: dict[str, int] = {}
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.hits[self.path] = provider.hits.get(self.path, 0) + 1
                document = provider.document(self.path)
                body = json.dumps(document).encode() if document is not None else b"{}"
                self.send_response(200 if document is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.rotate()

    @property
    def issuer(self) -> str:
        return self.url + ISSUER_PATH

    def rotate(self) -> DevTokenIssuer:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.signer = DevTokenIssuer(key, clock=FakeClock(), issuer=self.issuer)
        return self.signer

    def document(self, path: str) -> dict[str, Any] | None:
        assert self.signer is not None
        if path == ISSUER_PATH + "/.well-known/openid-configuration":
            return {"issuer": self.issuer, "jwks_uri": self.url + "/keys"}
        if path == "/keys":
            return self.signer.jwks()
        return None


@pytest.fixture
def provider() -> Iterator[_OidcProvider]:
    oidc = _OidcProvider()
    yield oidc
    oidc.server.shutdown()


def _token(provider: _OidcProvider) -> str:
    assert provider.signer is not None
    return provider.signer.mint(namespace="shop", service_account="cart")


@pytest.mark.parametrize("source", ["jwks-url", "discovery"])
def test_keys_fetched_once_from_the_network(tmp_path: Path, provider: _OidcProvider, source: str) -> None:
    flags = (
        ["--jwks", provider.url + "/keys", "--token-issuer", provider.issuer]
        if source == "jwks-url"
        else ["--token-issuer", provider.issuer]
    )
    ca = start_ca(tmp_path, *flags)
    try:
        chain, key = ca.request(token=_token(provider))
        assert_valid_svid(chain, key, "spiffe://cluster.local/ns/shop/sa/cart", ca.clock.now())
        assert provider.signer is not None
        ca.request(token=provider.signer.mint(namespace="shop", service_account="orders"))
        assert provider.hits["/keys"] == 1
    finally:
        ca.stop()


def test_a_bogus_key_id_does_not_flood_the_issuer(tmp_path: Path, provider: _OidcProvider) -> None:
    ca = start_ca(tmp_path, "--token-issuer", provider.issuer)
    try:
        ca.request(token=_token(provider))
        stranger = DevTokenIssuer(
            rsa.generate_private_key(public_exponent=65537, key_size=2048),
            clock=FakeClock(),
            issuer=provider.issuer,
        )
        for _ in range(20):
            with pytest.raises(grpc.RpcError) as caught:
                ca.request(token=stranger.mint(namespace="shop", service_account="cart"))
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "not among the issuer's keys" in caught.value.details()
        assert provider.hits["/keys"] <= 2
    finally:
        ca.stop()
