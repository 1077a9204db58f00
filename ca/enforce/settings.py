"""`meshca enforce` settings: flags parsed and checked into one frozen value (pure code)."""

from __future__ import annotations

import argparse
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from ca.common.flags import listen_address
from ca.errors import ConfigError, InvalidSpiffeIdError
from ca.issuance.spiffe_id import SpiffeId, trust_domain_flag
from ca.policy.model import Workload
from ca.policy.ports import InboundPort, check_proxy_protocol_ports, parse_inbound, parse_port_list
from ca.policy.workload_flags import parse_labels

OUTBOUND_SYNTAX = "LISTEN_PORT:HOST:PORT[=SPIFFE_ID], for example 15001:backend.shop:8443"
TLS_ENGINES = ["auto", "openssl", "stdlib"]
_OUTBOUND = re.compile(r"([0-9]{1,5}):(\[[0-9A-Fa-f:.]+\]|[^:=\[\]]+):([0-9]{1,5})(?:=(.+))?")


@dataclass(frozen=True, kw_only=True)
class OutboundTarget:
    listen_port: int
    host: str
    port: int
    spiffe_id: SpiffeId | None  # the identity the server must present; None: any of the trust domain

    @property
    def label(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def host_is_address(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


@dataclass(frozen=True, kw_only=True)
class Timeouts:
    first_byte_s: float = 0.15  # silence after which a connection counts as plaintext
    handshake_s: float = 10.0
    connect_s: float = 5.0
    idle_s: float = 3600.0  # as Envoy's tcp_proxy default
    certificate_wait_s: float = 30.0  # at start, for the agent's first files


@dataclass(frozen=True, kw_only=True)
class EnforceConfig:
    inbound: tuple[InboundPort, ...]
    outbound: tuple[OutboundTarget, ...]
    listen_host: str
    app_host: str
    cert_dir: Path
    trust_domain: str
    workload: Workload
    policies: str
    kubeconfig: Path | None
    in_cluster: bool
    root_namespace: str
    proxy_protocol_ports: frozenset[int]
    metrics_listen: str | None
    log_level: str
    tls_engine: str
    ports_file: Path | None = None
    timeouts: Timeouts = Timeouts()


def _port(text: str, item: str, *, lowest: int = 1) -> int:
    value = int(text)
    if not lowest <= value <= 65535:
        raise ConfigError(
            f"--outbound {item!r}: {value} is not a port {lowest}-65535; write {OUTBOUND_SYNTAX}"
        )
    return value


def parse_outbound(texts: list[str], trust_domain: str) -> tuple[OutboundTarget, ...]:
    items = [item.strip() for text in texts for item in text.split(",") if item.strip()]
    targets = []
    for item in items:
        match = _OUTBOUND.fullmatch(item)
        if match is None:
            raise ConfigError(f"--outbound {item!r} is malformed; write {OUTBOUND_SYNTAX}")
        listen, host, port, expected = match.groups()
        spiffe_id = None
        if expected is not None:
            try:
                spiffe_id = SpiffeId.parse(expected)
            except InvalidSpiffeIdError as err:
                raise ConfigError(f"--outbound {item!r}: {err}") from err
            if not spiffe_id.is_member_of(trust_domain):
                raise ConfigError(
                    f"--outbound {item!r}: {spiffe_id} is outside trust domain {trust_domain}; "
                    "servers are accepted only from the trust domain"
                )
        targets.append(
            OutboundTarget(
                listen_port=_port(listen, item, lowest=0),  # 0: any free port
                host=host.strip("[]"),
                port=_port(port, item),
                spiffe_id=spiffe_id,
            )
        )
    fixed = [t.listen_port for t in targets if t.listen_port != 0]
    if len(set(fixed)) != len(fixed):
        raise ConfigError("--outbound uses one listen port twice; give each target its own port")
    return tuple(targets)


def _texts(values: list[str] | None, env_value: str | None) -> list[str]:
    return list(values) if values else ([env_value] if env_value else [])


def config_from_args(args: argparse.Namespace) -> EnforceConfig:
    trust_domain = trust_domain_flag(args.trust_domain)
    inbound_texts = _texts(args.inbound, getattr(args, "inbound_env", None))
    outbound_texts = _texts(args.outbound, getattr(args, "outbound_env", None))
    if not inbound_texts and not outbound_texts:
        raise ConfigError(
            "give --inbound LISTEN_PORT:APP_PORT[/http|/tcp] (e.g. 15006:8080/http) "
            f"or --outbound {OUTBOUND_SYNTAX}"
        )
    inbound = tuple(parse_inbound(inbound_texts)) if inbound_texts else ()
    outbound = parse_outbound(outbound_texts, trust_domain)
    clash = ({p.listen_port for p in inbound} & {t.listen_port for t in outbound}) - {0}
    if clash:
        raise ConfigError(f"port {min(clash)} is both an --inbound and an --outbound listen port")
    if inbound and args.policies is None:
        raise ConfigError("give --policies: a directory or file of PeerAuthentication manifests, or `kube`")
    if inbound and args.namespace is None:
        raise ConfigError("give --namespace: the workload's namespace (policies are resolved for it)")
    proxy_ports = parse_port_list(args.proxy_protocol, "--proxy-protocol")
    check_proxy_protocol_ports(proxy_ports, inbound)
    return EnforceConfig(
        inbound=inbound,
        outbound=outbound,
        listen_host=args.listen_host,
        app_host=args.app_host,
        cert_dir=Path(args.cert_dir),
        trust_domain=trust_domain,
        workload=Workload(namespace=args.namespace or "", labels=parse_labels(args.labels)),
        policies=args.policies or "",
        kubeconfig=Path(args.kubeconfig) if args.kubeconfig else None,
        in_cluster=bool(getattr(args, "in_cluster", False)),
        root_namespace=args.root_namespace,
        proxy_protocol_ports=proxy_ports,
        metrics_listen=listen_address(args.metrics_listen),
        log_level=args.log_level,
        tls_engine=args.tls_engine,
        ports_file=Path(args.ports_file) if args.ports_file not in (None, "", "off") else None,
    )
