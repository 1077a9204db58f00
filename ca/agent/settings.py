"""`meshca agent`: its flags and frozen settings."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from ca.common.durations import parse_duration
from ca.common.flags import PORTS_FILE_HELP, EnvDefaults, Subcommands, fraction, listen_address, path_or_off
from ca.errors import ConfigError

if TYPE_CHECKING:
    from ca.issuance.keys import KeyAlgorithm


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    """`meshca agent`'s settings, read from its flags and environment."""

    ca_address: str
    ca_root: Path
    ca_server_name: str | None
    cluster_id: str | None
    token_file: Path
    output_dir: Path
    trust_domain: str
    key_type: KeyAlgorithm
    ttl: timedelta
    rotation_ratio: float
    rotation_jitter: float
    sds_socket: Path | None
    workload_api_socket: Path | None
    health_listen: str | None
    once: bool
    log_level: str
    ports_file: Path | None = None
    once_timeout: timedelta = timedelta(seconds=60)
    # The CA's renewal port, for the control stream (None: no control stream).
    ca_control_address: str | None = None


def add_agent_parser(commands: Subcommands, environ: Mapping[str, str]) -> None:
    agent = commands.add_parser("agent", help="run the workload agent beside a sidecar")
    a = EnvDefaults(agent, environ)
    a.add("--ca-addr", "localhost:15012", "address of the meshca CA service")
    a.add(
        "--ca-control-addr",
        "auto",
        "the CA's mutual-TLS renewal port, for the control stream that pushes rotation orders and "
        "revocation lists; 'auto': the --ca-addr host on port 15013 when --ca-addr uses port 15012 "
        "(meshca serve's defaults), else off; 'off' to disable",
    )
    a.add("--ca-root", "./meshca-state/root-cert.pem", "root certificate(s) to trust the CA's TLS with")
    a.add("--ca-server-name", None, "TLS server name to expect from the CA, if not the address's host")
    a.add("--cluster-id", None, "cluster id sent to the CA")
    a.add(
        "--token-file",
        "/var/run/secrets/tokens/istio-token",
        "projected service-account token, re-read on each request",
    )
    a.add("--output-dir", "./meshca-certs", "where cert-chain.pem, key.pem and root-cert.pem are written")
    a.add("--trust-domain", "cluster.local", "trust domain the certificate must belong to")
    a.add(
        "--key-type", "ec-p256", "workload key type", choices=["ec-p256", "ec-p384", "rsa-2048", "rsa-3072"]
    )
    a.add("--ttl", "24h", "requested certificate lifetime")
    a.add("--rotation-ratio", "0.5", "renew after this fraction of the remaining lifetime")
    a.add("--rotation-jitter", "0.01", "random spread of the renewal time, as a fraction of the lifetime")
    a.add(
        "--sds-socket",
        "/var/run/secrets/workload-spiffe-uds/socket",
        "Envoy SDS Unix socket; 'off' to disable",
    )
    a.add(
        "--workload-api-socket",
        "/var/run/secrets/meshca/workload-api.sock",
        "SPIFFE Workload API Unix socket; 'off' to disable",
    )
    a.add(
        "--health-listen", "127.0.0.1:15021", "HTTP address for /healthz/ready and /metrics; 'off' to disable"
    )
    a.add("--once", "off", "write the files once and exit (init containers)", choices=["on", "off"])
    a.add(
        "--once-timeout",
        "60s",
        "with --once on: how long to retry while the CA cannot be reached (0: one attempt)",
    )
    a.add("--log-level", "info", "log level", choices=["debug", "info", "warning", "error"])
    a.add("--ports-file", None, PORTS_FILE_HELP)


def agent_config(args: argparse.Namespace) -> AgentConfig:
    # Imported here: reading the command line needs neither, and keys imports cryptography.
    from ca.issuance.keys import KeyAlgorithm
    from ca.issuance.spiffe_id import trust_domain_flag

    return AgentConfig(
        ca_address=args.ca_addr,
        ca_root=Path(args.ca_root),
        ca_server_name=args.ca_server_name or None,
        cluster_id=args.cluster_id or None,
        token_file=Path(args.token_file),
        output_dir=Path(args.output_dir),
        trust_domain=trust_domain_flag(args.trust_domain),
        key_type=KeyAlgorithm.parse(args.key_type),
        ttl=parse_duration(args.ttl),
        rotation_ratio=fraction(args.rotation_ratio, "--rotation-ratio"),
        rotation_jitter=fraction(args.rotation_jitter, "--rotation-jitter"),
        sds_socket=path_or_off(args.sds_socket),
        workload_api_socket=path_or_off(args.workload_api_socket),
        health_listen=listen_address(args.health_listen),
        once=args.once == "on",
        once_timeout=parse_duration(args.once_timeout),
        log_level=args.log_level,
        ports_file=path_or_off(args.ports_file),
        ca_control_address=control_address(args.ca_control_addr, args.ca_addr),
    )


CA_PORT = 15012
RENEWAL_PORT = 15013


def control_address(text: str, ca_address: str) -> str | None:
    """--ca-control-addr as an address, or None for no control stream."""
    text = text.strip()
    if text in ("", "off", "none"):
        return None
    if text != "auto":
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
            raise ConfigError(f"--ca-control-addr {text!r} is not an address; write it as HOST:PORT (or off)")
        return text
    host, sep, port = ca_address.rpartition(":")
    if sep and host and port == str(CA_PORT):
        return f"{host}:{RENEWAL_PORT}"
    return None
