"""The enforcer's settings: outbound targets, flags and environment."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from ca.cli.main import build_parser
from ca.enforce.settings import config_from_args, parse_outbound
from ca.errors import ConfigError


def enforce_args(*extra: str) -> argparse.Namespace:
    return build_parser({}).parse_args(["enforce", *extra])


def test_outbound_targets_parse() -> None:
    targets = parse_outbound(
        [
            "15001:backend.shop:8443=spiffe://cluster.local/ns/shop/sa/backend",
            "15002:[::1]:9000,15003:10.0.0.1:80",
        ],
        "cluster.local",
    )
    assert [(t.listen_port, t.host, t.port, str(t.spiffe_id)) for t in targets] == [
        (15001, "backend.shop", 8443, "spiffe://cluster.local/ns/shop/sa/backend"),
        (15002, "::1", 9000, "None"),
        (15003, "10.0.0.1", 80, "None"),
    ]
    assert [t.label for t in targets] == ["backend.shop:8443", "[::1]:9000", "10.0.0.1:80"]
    assert [t.host_is_address for t in targets] == [False, True, True]


def test_outbound_listen_port_0_asks_for_any_free_port_as_often_as_given() -> None:
    targets = parse_outbound(["0:backend.shop:8443,0:payments.shop:8443"], "cluster.local")
    assert [(t.listen_port, t.label) for t in targets] == [
        (0, "backend.shop:8443"),
        (0, "payments.shop:8443"),
    ]
    flags = ("--inbound", "0:80", "--outbound", "0:backend.shop:8443", "--namespace", "a", "--policies", "/p")
    cfg = config_from_args(enforce_args(*flags))
    assert cfg.inbound[0].listen_port == cfg.outbound[0].listen_port == 0  # no clash between two 0s


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("15001:backend", "malformed"),
        ("15001:backend:0", "not a port"),
        ("99999:backend:80", "not a port"),
        ("15001:b:80=spiffe://other.local/x", "outside trust domain"),
        ("15001:b:80=https://x", "invalid SPIFFE ID"),
        ("15001:a:80,15001:b:80", "one listen port twice"),
    ],
)
def test_bad_outbound_targets_say_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        parse_outbound([text], "cluster.local")


def test_config_from_flags_and_environment() -> None:
    environ = {"MESHCA_INBOUND": "15006:8080/http", "MESHCA_PROXY_PROTOCOL": "9090"}
    args = build_parser(environ).parse_args(
        ["enforce", "--inbound", "15006:8080/http,15007:9090", "--namespace", "shop", "--policies", "/p"]
    )
    cfg = config_from_args(args)
    assert [(p.listen_port, p.app_port, p.protocol) for p in cfg.inbound] == [
        (15006, 8080, "http"),
        (15007, 9090, "tcp"),
    ]
    assert cfg.proxy_protocol_ports == frozenset({9090})
    assert cfg.metrics_listen == "0.0.0.0:15020"
    assert cfg.cert_dir == Path("./meshca-certs")
    assert cfg.tls_engine == "auto"


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        ([], "give --inbound"),
        (["--inbound", "15006:8080"], "give --policies"),
        (["--inbound", "15006:8080", "--policies", "/p"], "give --namespace"),
        (["--inbound", "15006:8080", "--policies", "/p", "--namespace", "x", "--proxy-protocol", "9"], "9"),
        (["--inbound", "1:2", "--outbound", "1:h:3", "--policies", "/p", "--namespace", "x"], "both"),
        (["--outbound", "1:h:3", "--trust-domain", "Bad"], "trust domain"),
    ],
)
def test_bad_settings_are_config_errors(flags: list[str], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        config_from_args(enforce_args(*flags))
