"""The flags that point an operator command at a CA's admin API, and the frozen endpoint they make.

`meshca rotate`, `meshca revoke` and `meshca ca` reach a running CA over mutual TLS on its
renewal port, with a client certificate whose SPIFFE ID the CA names with --admin-identity.
Without --ca-addr each command works on the state directory instead (its own fallback, named
in `without`). No gRPC here: the parsers stay light; `ca.net.admin_channel` opens the channel.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ca.common.flags import DEFAULT_STATE_DIR, EnvDefaults, path_or_off
from ca.errors import ConfigError

ADMIN_FLAGS = ("--ca-addr", "--cert", "--key", "--ca-root", "--ca-server-name")


@dataclass(frozen=True, kw_only=True)
class AdminEndpoint:
    """A CA's admin API and the operator's credentials for it."""

    address: str
    cert: Path
    key: Path
    ca_root: Path
    server_name: str | None


def add_admin_flags(parser: argparse.ArgumentParser, environ: Mapping[str, str], *, without: str) -> None:
    """--ca-addr, --cert, --key, --ca-root and --ca-server-name; `without` says what the command
    does when --ca-addr is not given."""
    a = EnvDefaults(parser, environ)
    a.add(
        "--ca-addr",
        None,
        f"the CA's renewal port (its --renew-listen, mutual TLS), to go through its admin API; {without}",
    )
    a.add("--cert", None, "with --ca-addr: client certificate chain (PEM) of an --admin-identity of the CA")
    a.add("--key", None, "with --ca-addr: the client certificate's private key (PEM)")
    a.add(
        "--ca-root",
        f"{DEFAULT_STATE_DIR}/root-cert.pem",
        "with --ca-addr: root certificate(s) to trust the CA",
    )
    a.add(
        "--ca-server-name", None, "with --ca-addr: TLS name to expect from the CA, if not the address's host"
    )


def admin_endpoint(args: argparse.Namespace) -> AdminEndpoint | None:
    """The endpoint the flags name; None without --ca-addr. ConfigError (exit 2) when --ca-addr
    comes without a client certificate."""
    address = (args.ca_addr or "").strip() or None
    if address is None:
        return None
    cert, key = path_or_off(args.cert), path_or_off(args.key)
    if cert is None or key is None:
        raise ConfigError(
            "--ca-addr needs --cert and --key: a client certificate of the CA whose SPIFFE ID is "
            "one of its --admin-identity values (an agent's cert-chain.pem and key.pem will do)"
        )
    return AdminEndpoint(
        address=address,
        cert=cert,
        key=key,
        ca_root=Path(args.ca_root),
        server_name=(args.ca_server_name or "").strip() or None,
    )
