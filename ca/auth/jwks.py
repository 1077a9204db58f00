"""Where token-signing keys come from: a JWKS file, a JWKS URL, or OIDC discovery.

Keys are parsed once into PyJWK objects and looked up by `kid`, so a request
costs a dictionary lookup rather than a key parse.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jwt

from ca.errors import AuthenticationError, ConfigError

REFRESH_MIN_INTERVAL_S = 10.0


def parse_jwks(document: Mapping[str, Any], source: str) -> dict[str, jwt.PyJWK]:
    try:
        key_set = jwt.PyJWKSet.from_dict(dict(document))
    except jwt.PyJWKSetError as err:
        raise ConfigError(f"{source} is not a usable JWKS ({err})") from err
    keys: dict[str, jwt.PyJWK] = {}
    for index, key in enumerate(key_set.keys):
        keys[key.key_id or f"#{index}"] = key
    return keys


def _unknown_key(kid: str | None, source: str) -> AuthenticationError:
    return AuthenticationError(
        f"the token is signed with key id {kid!r}, which is not among the issuer's keys from "
        f"{source}; check that --jwks or --token-issuer point at this cluster's API server",
        reason="token_unknown_key",
    )


def _pick(keys: Mapping[str, jwt.PyJWK], kid: str | None) -> jwt.PyJWK | None:
    if kid is not None:
        return keys.get(kid)
    return next(iter(keys.values())) if len(keys) == 1 else None


class StaticKeySet:
    def __init__(self, keys: Mapping[str, jwt.PyJWK], description: str) -> None:
        self._keys = dict(keys)
        self.description = description

    @classmethod
    def from_file(cls, path: Path) -> StaticKeySet:
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot read the JWKS file {path} ({err}); give a JSON Web Key Set") from err
        return cls(parse_jwks(document, str(path)), str(path))

    def key_for(self, kid: str | None) -> jwt.PyJWK:
        key = _pick(self._keys, kid)
        if key is None:
            raise _unknown_key(kid, self.description)
        return key


JwksFetcher = Callable[[], Mapping[str, Any]]


class RefreshingKeySet:
    """Keys fetched from a remote JWKS, refetched when an unknown kid appears.

    Refetches are rate-limited so a flood of tokens with a bogus kid cannot turn
    into a flood of requests to the issuer.
    """

    def __init__(
        self, fetch: JwksFetcher, description: str, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._fetch = fetch
        self.description = description
        self._monotonic = monotonic
        self._keys: dict[str, jwt.PyJWK] = {}
        self._last_fetch: float | None = None
        self._lock = threading.Lock()

    def key_for(self, kid: str | None) -> jwt.PyJWK:
        key = _pick(self._keys, kid)
        if key is not None:
            return key
        self._refresh()
        key = _pick(self._keys, kid)
        if key is None:
            raise _unknown_key(kid, self.description)
        return key

    def _refresh(self) -> None:
        with self._lock:
            now = self._monotonic()
            if self._last_fetch is not None and now - self._last_fetch < REFRESH_MIN_INTERVAL_S:
                return
            self._last_fetch = now
            try:
                document = self._fetch()
            except Exception as err:
                if self._keys:
                    return
                raise AuthenticationError(
                    f"cannot fetch the token issuer's keys from {self.description} ({err}); "
                    "check the URL and that meshca can reach it",
                    reason="jwks_unavailable",
                ) from err
            self._keys = parse_jwks(document, self.description)


def http_json_fetcher(url: str, timeout_s: float = 5.0) -> JwksFetcher:
    def fetch() -> Mapping[str, Any]:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            result: Mapping[str, Any] = json.loads(response.read())
            return result

    return fetch


def oidc_jwks_fetcher(issuer: str, timeout_s: float = 5.0) -> JwksFetcher:
    """OIDC discovery: `<issuer>/.well-known/openid-configuration` names the JWKS URL."""
    discovery_url = issuer.rstrip("/") + "/.well-known/openid-configuration"

    def fetch() -> Mapping[str, Any]:
        discovery = http_json_fetcher(discovery_url, timeout_s)()
        jwks_uri = discovery.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise ValueError(f"{discovery_url} names no jwks_uri")
        return http_json_fetcher(jwks_uri, timeout_s)()

    return fetch
