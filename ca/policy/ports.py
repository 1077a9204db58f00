"""The ports a data plane stands in front of, as `--inbound` and `--proxy-protocol` write them.

Shared by `meshca enforce` and `meshca policy envoy-config`, so both read the
same flags the same way. Pure code: no I/O.

`--inbound LISTEN_PORT:APP_PORT[/http|/tcp]`, several as a comma list or by
repeating the flag: the data plane listens on LISTEN_PORT and forwards to the
application's APP_PORT. PeerAuthentication port-level modes name the
application's port, so APP_PORT is the port whose mode applies. Without a
suffix a port is TCP: its bytes are forwarded as they are. LISTEN_PORT 0 asks
for any free port (the data plane reports the one it got).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from ca.errors import ConfigError

Protocol = Literal["http", "tcp"]
PROTOCOLS: dict[str, Protocol] = {"http": "http", "tcp": "tcp"}
DEFAULT_PROTOCOL: Protocol = "tcp"

# PROXY protocol v2 TLV type that carries the peer's SPIFFE ID (UTF-8) to the
# application. 0xE0 is the first of the types the specification leaves to
# applications (PP2_TYPE_MIN_CUSTOM .. PP2_TYPE_MAX_CUSTOM = 0xE0 .. 0xEF).
SPIFFE_ID_TLV_TYPE = 0xE0

_PORT = re.compile(r"[0-9]{1,5}")
INBOUND_SYNTAX = "LISTEN_PORT:APP_PORT[/http|/tcp], for example 15006:8080/http"


@dataclass(frozen=True, order=True)
class InboundPort:
    listen_port: int
    app_port: int
    protocol: Protocol = DEFAULT_PROTOCOL


def _port(text: str, what: str, item: str, *, lowest: int = 1) -> int:
    text = text.strip()
    if not _PORT.fullmatch(text) or not lowest <= int(text) <= 65535:
        raise ConfigError(
            f"--inbound {item!r}: {what} {text!r} is not a port number {lowest}-65535; write {INBOUND_SYNTAX}"
        )
    return int(text)


def _one_inbound(item: str) -> InboundPort:
    ports, slash, suffix = item.partition("/")
    protocol = PROTOCOLS.get(suffix.strip().lower()) if slash else DEFAULT_PROTOCOL
    if protocol is None:
        raise ConfigError(
            f"--inbound {item!r}: protocol {suffix!r} is not http or tcp; write {INBOUND_SYNTAX}"
        )
    listen, colon, app = ports.partition(":")
    if not colon:
        raise ConfigError(f"--inbound {item!r} has no ':'; write {INBOUND_SYNTAX}")
    return InboundPort(
        listen_port=_port(listen, "listen port", item, lowest=0),
        app_port=_port(app, "application port", item),
        protocol=protocol,
    )


def parse_inbound(text: str | Sequence[str]) -> list[InboundPort]:
    """`15006:8080/http,15007:9090` (or a list of such texts) -> InboundPorts in the order given.

    Raises ConfigError for a malformed item, a port outside 1-65535 (a listen port
    may be 0), an unknown protocol, no ports at all, or one listen port used twice.
    """
    texts = [text] if isinstance(text, str) else list(text)
    items = [item.strip() for value in texts for item in value.split(",") if item.strip()]
    if not items:
        raise ConfigError(f"--inbound names no port; write {INBOUND_SYNTAX}")
    ports = [_one_inbound(item) for item in items]
    _check_unique_listen_ports(ports)
    return ports


def _check_unique_listen_ports(ports: Iterable[InboundPort]) -> None:
    """Each listen port once; listen port 0 (any free port) any number of times, but once per
    application port, which then tells those listeners apart."""
    seen: set[int] = set()
    any_port_apps: set[int] = set()
    for port in ports:
        if port.listen_port == 0:
            if port.app_port in any_port_apps:
                raise ConfigError(
                    f"--inbound gives application port {port.app_port} listen port 0 twice; give one of "
                    "them a listen port of its own"
                )
            any_port_apps.add(port.app_port)
        elif port.listen_port in seen:
            raise ConfigError(
                f"--inbound uses listen port {port.listen_port} twice; each listen port forwards to one "
                "application port"
            )
        seen.add(port.listen_port)


def parse_port_list(text: str | Sequence[str] | None, flag: str) -> frozenset[int]:
    """`8080,9090` -> {8080, 9090}; None or empty -> no ports."""
    if text is None:
        return frozenset()
    texts = [text] if isinstance(text, str) else list(text)
    ports: set[int] = set()
    for item in (i.strip() for value in texts for i in value.split(",")):
        if not item:
            continue
        if not _PORT.fullmatch(item) or not 1 <= int(item) <= 65535:
            raise ConfigError(
                f"{flag} {item!r} is not a port number 1-65535; write a comma list such as 9090"
            )
        ports.add(int(item))
    return frozenset(ports)


def check_proxy_protocol_ports(proxy_ports: frozenset[int], inbound: Sequence[InboundPort]) -> None:
    """Every --proxy-protocol port must be the application port of an inbound TCP port.

    PROXY protocol describes one downstream connection; on an HTTP port the data
    plane pools upstream connections, so a header could describe another caller.
    """
    app_ports = {port.app_port for port in inbound}
    for app_port in sorted(proxy_ports):
        if app_port not in app_ports:
            raise ConfigError(
                f"--proxy-protocol names port {app_port}, which no --inbound forwards to; name an "
                "application port from --inbound"
            )
        if any(p.app_port == app_port and p.protocol == "http" for p in inbound):
            raise ConfigError(
                f"--proxy-protocol names port {app_port}, an HTTP port; PROXY protocol applies to TCP "
                "ports (HTTP ports carry the peer in x-forwarded-client-cert)"
            )
