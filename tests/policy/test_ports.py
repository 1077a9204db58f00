"""`--inbound` and `--proxy-protocol` as `meshca enforce` and `meshca policy envoy-config` read them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ca.errors import ConfigError
from ca.policy.ports import InboundPort, Protocol, check_proxy_protocol_ports, parse_inbound, parse_port_list

ports = st.integers(min_value=1, max_value=65535)
protocols: st.SearchStrategy[Protocol | None] = st.sampled_from(["http", "tcp", None])


def test_forms_of_inbound() -> None:
    assert parse_inbound("15006:8080/http, 15007:9090 ,15008:9091/TCP") == [
        InboundPort(15006, 8080, "http"),
        InboundPort(15007, 9090, "tcp"),
        InboundPort(15008, 9091, "tcp"),
    ]
    assert parse_inbound(["15006:8080/http", "15007:8080,15009:7000/tcp"]) == [
        InboundPort(15006, 8080, "http"),
        InboundPort(15007, 8080, "tcp"),
        InboundPort(15009, 7000, "tcp"),
    ]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "names no port"),
        (" , ", "names no port"),
        ("15006", "has no ':'"),
        ("15006:", "application port ''"),
        (":8080", "listen port ''"),
        ("65536:8080", "listen port '65536'"),
        ("15006:0", "application port '0'"),
        ("15006:65536", "application port '65536'"),
        ("15006:80a", "application port '80a'"),
        ("15006:-1", "application port '-1'"),
        ("15006:8080/udp", "protocol 'udp'"),
        ("15006:8080/", "protocol ''"),
        ("15006:8080,15006:9090", "listen port 15006 twice"),
        ("0:8080/http,0:8080/tcp", "application port 8080 listen port 0 twice"),
    ],
)
def test_bad_inbound_says_what_is_wrong_and_how_to_write_it(text: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_inbound(text)
    assert says in str(caught.value)
    assert "twice" in says or "LISTEN_PORT:APP_PORT" in str(caught.value)


@given(st.lists(st.tuples(ports, ports, protocols), min_size=1, max_size=8, unique_by=lambda t: t[0]))
def test_inbound_round_trips(items: list[tuple[int, int, Protocol | None]]) -> None:
    text = ",".join(f"{listen}:{app}" + (f"/{proto}" if proto else "") for listen, app, proto in items)
    assert parse_inbound(text) == [InboundPort(listen, app, proto or "tcp") for listen, app, proto in items]


@given(st.text(max_size=40))
def test_inbound_never_fails_other_than_with_config_error(text: str) -> None:
    try:
        parsed = parse_inbound(text)
    except ConfigError:
        return
    assert parsed and all(0 <= p.listen_port <= 65535 and 1 <= p.app_port <= 65535 for p in parsed)


def test_listen_port_0_asks_for_any_free_port_once_per_application_port() -> None:
    assert parse_inbound("0:8080/http,0:9090,15006:8080") == [
        InboundPort(0, 8080, "http"),
        InboundPort(0, 9090, "tcp"),
        InboundPort(15006, 8080, "tcp"),
    ]


def test_port_lists() -> None:
    assert parse_port_list(None, "--proxy-protocol") == frozenset()
    assert parse_port_list("", "--proxy-protocol") == frozenset()
    assert parse_port_list("9090, 9091,9090", "--proxy-protocol") == {9090, 9091}
    with pytest.raises(ConfigError, match="--proxy-protocol 'x' is not a port"):
        parse_port_list("9090,x", "--proxy-protocol")


def test_proxy_protocol_only_on_tcp_application_ports() -> None:
    inbound = parse_inbound("15006:8080/http,15007:9090")
    check_proxy_protocol_ports(frozenset({9090}), inbound)
    with pytest.raises(ConfigError, match="an HTTP port"):
        check_proxy_protocol_ports(frozenset({8080}), inbound)
    with pytest.raises(ConfigError, match="which no --inbound forwards to"):
        check_proxy_protocol_ports(frozenset({15007}), inbound)


@pytest.mark.parametrize("text", ["15006:\u00b2", "\u0661\u0665:8080", "15006:\uff18\uff10"])
def test_only_ascii_digits_are_ports(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_inbound(text)
