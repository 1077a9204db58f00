"""Flag helpers: the environment variable each flag reads, listen addresses."""

from __future__ import annotations

import pytest

from ca.common.flags import env_name, listen_address
from ca.errors import ConfigError


@pytest.mark.parametrize(
    ("flag", "env"),
    [
        ("--listen", "MESHCA_LISTEN"),
        ("--renew-listen", "MESHCA_RENEW_LISTEN"),
        ("--state-dir", "MESHCA_STATE_DIR"),
        ("--token-cache-size", "MESHCA_TOKEN_CACHE_SIZE"),
        ("strict-csr-names", "MESHCA_STRICT_CSR_NAMES"),
    ],
)
def test_env_names(flag: str, env: str) -> None:
    assert env_name(flag) == env


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (":15012", "0.0.0.0:15012"),
        ("0.0.0.0:15012", "0.0.0.0:15012"),
        ("127.0.0.1:0", "127.0.0.1:0"),
        ("localhost:8080", "localhost:8080"),
        ("[::1]:15012", "[::1]:15012"),
        ("[::]:65535", "[::]:65535"),
        ("  :80  ", "0.0.0.0:80"),
        ("", None),
        ("off", None),
        ("none", None),
        ("  off ", None),
    ],
)
def test_listen_address_forms(text: str, expected: str | None) -> None:
    assert listen_address(text) == expected


@pytest.mark.parametrize(
    "text", ["15012", "localhost", "host:", "host:http", "host:65536", "host:-1", ":1.5"]
)
def test_bad_listen_addresses(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        listen_address(text)
    assert "HOST:PORT" in caught.value.message
    assert repr(text.strip()) in caught.value.message
