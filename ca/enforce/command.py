"""`meshca enforce`: the PeerAuthentication data plane in front of a workload's ports."""

from __future__ import annotations

import argparse
import gc
from collections.abc import Mapping

from ca.common import logs
from ca.common.flags import PORTS_FILE_HELP, EnvDefaults, Subcommands
from ca.enforce.settings import OUTBOUND_SYNTAX, TLS_ENGINES, config_from_args
from ca.policy.workload_flags import add_workload_flags

DESCRIPTION = (
    "Listen in front of the workload's ports and apply its PeerAuthentication to every connection: "
    "STRICT takes only mutual TLS from the mesh, PERMISSIVE also plaintext, DISABLE passes everything "
    "through. Terminated mTLS is forwarded in plaintext with the caller's SPIFFE ID in "
    "x-forwarded-client-cert (HTTP ports) or a PROXY protocol v2 header (--proxy-protocol TCP ports). "
    "--outbound lets plaintext clients in the pod call STRICT peers over mTLS."
)


def add_enforce_parser(commands: Subcommands, environ: Mapping[str, str]) -> None:
    parser = commands.add_parser(
        "enforce", help="enforce PeerAuthentication on a workload's connections", description=DESCRIPTION
    )
    e = EnvDefaults(parser, environ)
    e.add(
        "--inbound",
        None,
        "LISTEN_PORT:APP_PORT[/http|/tcp]; repeatable or a comma list (default protocol tcp); APP_PORT "
        "is the workload port whose mode applies",
        action="append",
    )
    e.add("--listen-host", "0.0.0.0", "address the inbound listeners bind")
    e.add("--app-host", "127.0.0.1", "address of the application")
    e.add("--cert-dir", "./meshca-certs", "the agent's output: cert-chain.pem, key.pem, root-cert.pem")
    e.add("--trust-domain", "cluster.local", "SPIFFE trust domain peers must belong to")
    add_workload_flags(e, environ, namespace_help="the workload's namespace (needed with --inbound)")
    e.add("--proxy-protocol", "", "application TCP ports that get a PROXY protocol v2 header; comma list")
    e.add(
        "--outbound",
        None,
        f"{OUTBOUND_SYNTAX}: plaintext in on 127.0.0.1:LISTEN_PORT, mutual TLS out; repeatable",
        action="append",
    )
    e.add("--metrics-listen", ":15020", "HTTP address for /metrics and /healthz/ready; 'off' to disable")
    e.add(
        "--tls-engine",
        "auto",
        "TLS library: openssl (the one bundled with cryptography; fastest), stdlib (Python's ssl), "
        "or auto (openssl when usable)",
        choices=TLS_ENGINES,
    )
    e.add("--log-level", "info", "log level", choices=["debug", "info", "warning", "error"])
    e.add("--ports-file", None, PORTS_FILE_HELP)


def run(args: argparse.Namespace) -> int:
    from ca.common.signals import until_signalled
    from ca.enforce.enforcer import build_enforcer

    cfg = config_from_args(args)
    logs.configure(cfg.log_level)
    enforcer = build_enforcer(cfg)
    enforcer.start()
    # Everything built so far lives as long as the process: keep the cycle collector off it.
    gc.freeze()
    return until_signalled(enforcer.stop, enforcer.wait)
