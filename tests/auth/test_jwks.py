"""Token keys: a JWKS file, a JWKS URL refreshed lazily and at most once per interval, OIDC discovery
over real HTTP."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from ca.auth.base import Credentials
from ca.auth.jwks import REFRESH_MIN_INTERVAL_S, RefreshingKeySet, StaticKeySet
from ca.auth.jwt_token import JwtAuthenticator, TokenRules
from ca.errors import AuthenticationError, ConfigError
from ca.server.devtoken import DevTokenIssuer
from tests.support.ca_server import start_ca
from tests.support.clock import FakeClock
from tests.support.tokens import (
    AUDIENCE,
    EC_KID,
    ISSUER,
    RSA_KID,
    TRUST_DOMAIN,
    claims_for,
    public_jwk,
    sign_jwt,
)
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


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class JwksServer:
    def __init__(self, *documents: Mapping[str, Any]) -> None:
        self.documents = list(documents)
        self.fetches = 0
        self.fail = False

    def __call__(self) -> Mapping[str, Any]:
        self.fetches += 1
        if self.fail:
            raise OSError("connection refused")
        return self.documents[min(self.fetches, len(self.documents)) - 1]


def test_refreshing_key_set_fetches_lazily_and_once(jwks: dict[str, Any]) -> None:
    server = JwksServer(jwks)
    keys = RefreshingKeySet(server, "test URL", monotonic=FakeMonotonic())
    assert server.fetches == 0
    assert keys.key_for(RSA_KID).key_id == RSA_KID
    assert keys.key_for(EC_KID).key_id == EC_KID
    assert keys.key_for(RSA_KID).key_id == RSA_KID
    assert server.fetches == 1


def test_unknown_kid_refetches_at_most_once_per_interval(jwks: dict[str, Any]) -> None:
    server = JwksServer(jwks)
    clock = FakeMonotonic()
    keys = RefreshingKeySet(server, "test URL", monotonic=clock)
    keys.key_for(RSA_KID)
    for step in range(1, 10):
        clock.now = 1000.0 + step
        with pytest.raises(AuthenticationError) as caught:
            keys.key_for(f"bogus-{step}")
        assert caught.value.reason == "token_unknown_key"
    assert server.fetches == 1
    clock.now = 1000.0 + REFRESH_MIN_INTERVAL_S - 0.001
    with pytest.raises(AuthenticationError):
        keys.key_for("bogus")
    assert server.fetches == 1
    clock.now = 1000.0 + REFRESH_MIN_INTERVAL_S
    with pytest.raises(AuthenticationError):
        keys.key_for("bogus")
    assert server.fetches == 2
    with pytest.raises(AuthenticationError):
        keys.key_for("bogus")
    assert server.fetches == 2


def test_rotated_key_is_found_after_the_interval(
    jwks: dict[str, Any], rsa_impostor: rsa.RSAPrivateKey
) -> None:
    rotated = {"keys": [*jwks["keys"], public_jwk(rsa_impostor, "new-key")]}
    server = JwksServer(jwks, rotated)
    clock = FakeMonotonic()
    keys = RefreshingKeySet(server, "test URL", monotonic=clock)
    keys.key_for(RSA_KID)
    clock.now += REFRESH_MIN_INTERVAL_S
    assert keys.key_for("new-key").key_id == "new-key"
    assert server.fetches == 2


def test_failed_first_fetch_is_unavailable() -> None:
    server = JwksServer()
    server.fail = True
    keys = RefreshingKeySet(server, "https://jwks.example", monotonic=FakeMonotonic())
    with pytest.raises(AuthenticationError) as caught:
        keys.key_for(RSA_KID)
    assert caught.value.reason == "jwks_unavailable"
    assert "https://jwks.example" in caught.value.message


def test_failed_refetch_keeps_the_known_keys(jwks: dict[str, Any]) -> None:
    server = JwksServer(jwks)
    clock = FakeMonotonic()
    keys = RefreshingKeySet(server, "test URL", monotonic=clock)
    keys.key_for(RSA_KID)
    server.fail = True
    clock.now += REFRESH_MIN_INTERVAL_S
    with pytest.raises(AuthenticationError) as caught:
        keys.key_for("unknown")
    assert caught.value.reason == "token_unknown_key"
    assert keys.key_for(RSA_KID).key_id == RSA_KID


def test_jwt_authenticator_with_refreshing_keys_picks_up_a_new_key(
    jwks: dict[str, Any], clock: FakeClock, rsa_impostor: rsa.RSAPrivateKey
) -> None:
    server = JwksServer(jwks, {"keys": [*jwks["keys"], public_jwk(rsa_impostor, "new-key")]})
    monotonic = FakeMonotonic()
    auth = JwtAuthenticator(
        keys=RefreshingKeySet(server, "test URL", monotonic=monotonic),
        rules=TokenRules(issuers=(ISSUER,), audiences=(AUDIENCE,), trust_domain=TRUST_DOMAIN),
        clock=clock,
    )
    token = sign_jwt(claims_for(clock.now()), rsa_impostor, "new-key", "RS256")
    with pytest.raises(AuthenticationError) as caught:
        auth.authenticate(Credentials(bearer_token=token))
    assert caught.value.reason == "token_unknown_key"
    monotonic.now += REFRESH_MIN_INTERVAL_S
    caller = auth.authenticate(Credentials(bearer_token=token))
    assert caller is not None and caller.service_account == "web"
    assert server.fetches == 2


def test_static_key_set_from_file(tmp_path: Path, jwks: dict[str, Any]) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks))
    keys = StaticKeySet.from_file(path)
    assert keys.key_for(EC_KID).key_id == EC_KID
    assert keys.description == str(path)


@pytest.mark.parametrize("content", ["not json", "{}", '{"keys": []}', '{"keys": [{"kty": "nope"}]}'])
def test_bad_jwks_file_is_a_config_error(content: str, tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        StaticKeySet.from_file(path)
    assert str(path) in caught.value.message


def test_missing_jwks_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        StaticKeySet.from_file(tmp_path / "missing.json")
    assert "JSON Web Key Set" in caught.value.message
