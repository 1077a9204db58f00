"""`meshca rotate` (with `rotate status ORDER` and `rotate list`) and `meshca revoke`: their flags
and frozen settings.

Every input is checked here, before anything is asked of a CA or a ledger, so a bad flag is a
usage error (exit 2) that changes nothing.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ca.common.admin_endpoint import ADMIN_FLAGS, AdminEndpoint, add_admin_flags, admin_endpoint
from ca.common.flags import DEFAULT_STATE_DIR, EnvDefaults, Subcommands, positive_int
from ca.common.moments import parse_moment
from ca.errors import ConfigError, InvalidRequestError
from ca.ledger.location import ledger_url
from ca.ledger.rotation import DEFAULT_GRACE, DEFAULT_SPREAD, Selector, revocation_reason
from ca.ledger.rotation_operations import (
    DEFAULT_LIST_LIMIT,
    RotationRequest,
    check_list_limit,
    check_order_id,
    order_duration,
    selector_serials,
)

TIME_HELP = "2026-11-21T08:00:00Z, 2026-11-21, or an age such as 24h or 7d (that long ago)"
OUTPUTS = ["table", "json"]
CONNECTION_FLAGS = (*ADMIN_FLAGS, "--state-dir", "--ledger")


@dataclass(frozen=True, kw_only=True)
class Connection:
    """Where the orders go: a CA's admin Rotation service, or (no --ca-addr) the ledger itself."""

    admin: AdminEndpoint | None  # --ca-addr and the client certificate
    state_dir: Path
    ledger_url: str | None
    kubeconfig: Path | None

    @property
    def through_ca(self) -> bool:
        return self.admin is not None


@dataclass(frozen=True, kw_only=True)
class RotateConfig:
    action: str  # "order", "status", "list" or "revoke"
    connection: Connection
    output: str
    request: RotationRequest | None = None
    order_id: str | None = None
    limit: int = DEFAULT_LIST_LIMIT
    serials: tuple[str, ...] = ()
    revocation_reason: str = "unspecified"
    note: str | None = None


# ------------------------------------------------------------------ the parsers


def _connection_flags(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    add_admin_flags(
        parser, environ, without="without it the order is written into the ledger of --state-dir/--ledger"
    )
    a = EnvDefaults(parser, environ)
    a.add(
        "--state-dir", DEFAULT_STATE_DIR, "without --ca-addr: the CA's state directory, whose ledger to use"
    )
    a.add("--ledger", "auto", "without --ca-addr: the ledger: auto (<state-dir>/ledger.db) or a database URL")
    parser.add_argument("--output", "-o", choices=OUTPUTS, default="table", help="output format")


def _suppressed_connection_flags(parser: argparse.ArgumentParser) -> None:
    """The connection flags again after `status`/`list`, without defaults of their own, so that
    they neither need to come first nor undo a value given before the action."""
    for flag in CONNECTION_FLAGS:
        parser.add_argument(flag, default=argparse.SUPPRESS, help=f"as {flag} of 'meshca rotate'")
    parser.add_argument("--output", "-o", choices=OUTPUTS, default=argparse.SUPPRESS, help="output format")


def add_rotate_parser(commands: Subcommands, environ: Mapping[str, str]) -> None:
    rotate = commands.add_parser(
        "rotate",
        help="force matching workloads onto new certificates, then revoke the old ones",
        description="Order every live certificate the selectors match (they combine with AND; names "
        "match exactly) to be replaced within seconds and revoked when the grace period ends. "
        "'rotate status ORDER' follows an order; 'rotate list' lists them.",
    )
    rotate.add_argument("--spiffe-id", help="certificates of this identity (spiffe://...)")
    rotate.add_argument("--namespace", help="certificates of workloads in this namespace")
    rotate.add_argument("--service-account", help="certificates of this service account")
    rotate.add_argument("--pod", help="the certificate(s) of this pod")
    rotate.add_argument("--node", help="certificates of pods on this node")
    rotate.add_argument(
        "--serial", action="append", default=[], help="this certificate (hex, colons allowed; repeatable)"
    )
    rotate.add_argument("--issued-before", help=f"certificates issued before this time: {TIME_HELP}")
    rotate.add_argument("--all", action="store_true", help="every live certificate (instead of selectors)")
    rotate.add_argument("--reason", default="", help="why, in your words (required; kept in the ledger)")
    a = EnvDefaults(rotate, environ)
    a.add("--grace", "5m", "how long holders have to replace their certificates before they are revoked")
    a.add("--spread", "0s", "spread the replacements evenly over this long, so a large order is no storm")
    rotate.add_argument("--dry-run", action="store_true", help="show what would be rotated; change nothing")
    rotate.add_argument(
        "--restart-workloads",
        action="store_true",
        help="also restart the Deployments, StatefulSets and DaemonSets whose pods cannot be pushed",
    )
    a.add("--kubeconfig", None, "without --ca-addr: cluster access for --restart-workloads and owner lookup")
    _connection_flags(rotate, environ)
    actions = rotate.add_subparsers(dest="rotate_action", required=False)
    status = actions.add_parser(
        "status", help="an order's progress: matched, replaced, still outstanding (pod, node), revoked"
    )
    status.add_argument("order_id", metavar="ORDER", help="the order's id (ro-...)")
    _suppressed_connection_flags(status)
    listing = actions.add_parser("list", help="rotation orders, newest first")
    listing.add_argument("--limit", default=str(DEFAULT_LIST_LIMIT), help="at most this many orders")
    _suppressed_connection_flags(listing)


def add_revoke_parser(commands: Subcommands, environ: Mapping[str, str]) -> None:
    revoke = commands.add_parser(
        "revoke",
        help="revoke certificates at once, without waiting for a replacement",
        description="Revoke certificates now (a compromised key): the CA's CRL lists them, Envoy, "
        "the enforcer and the renewal port refuse them.",
    )
    revoke.add_argument(
        "--serial", action="append", required=True, help="certificate serial number (hex; repeatable)"
    )
    revoke.add_argument(
        "--reason",
        default="unspecified",
        help="the RFC 5280 reason, such as keyCompromise or superseded (default unspecified)",
    )
    revoke.add_argument("--note", help="free text for the ledger")
    _connection_flags(revoke, environ)


# ------------------------------------------------------------------ the settings


def _usage(err: InvalidRequestError) -> ConfigError:
    return ConfigError(err.message, reason=err.reason)


def _connection(args: argparse.Namespace) -> Connection:
    admin = admin_endpoint(args)
    state_dir = Path(args.state_dir)
    url: str | None = None
    if admin is None:
        url = ledger_url(args.ledger, state_dir)
        if url is None:
            raise ConfigError(
                "--ledger off leaves nowhere to order: give the CA's ledger (auto or a URL), "
                "or its address with --ca-addr"
            )
    kubeconfig = getattr(args, "kubeconfig", None)
    return Connection(
        admin=admin,
        state_dir=state_dir,
        ledger_url=url,
        kubeconfig=Path(kubeconfig) if kubeconfig else None,
    )


def _selector(args: argparse.Namespace, now: datetime) -> Selector:
    issued_before = args.issued_before
    return Selector(
        spiffe_id=args.spiffe_id or None,
        namespace=args.namespace or None,
        service_account=args.service_account or None,
        pod=args.pod or None,
        node=args.node or None,
        serials=selector_serials(args.serial),
        issued_before=parse_moment(issued_before, now, flag="--issued-before") if issued_before else None,
        all=args.all,
    )


def _rotation_request(args: argparse.Namespace, connection: Connection, now: datetime) -> RotationRequest:
    request = RotationRequest(
        selector=_selector(args, now),
        reason=args.reason,
        grace=order_duration(args.grace, "--grace", DEFAULT_GRACE),
        spread=order_duration(args.spread, "--spread", DEFAULT_SPREAD),
        dry_run=args.dry_run,
        restart_workloads=args.restart_workloads,
    )
    request.check()
    if request.restart_workloads and not connection.through_ca and connection.kubeconfig is None:
        raise ConfigError(
            "--restart-workloads needs cluster access: give --kubeconfig, or order through the CA "
            "with --ca-addr (it restarts them with its own access)"
        )
    return request


def rotate_config(args: argparse.Namespace, now: datetime) -> RotateConfig:
    """`meshca rotate [status|list]` settings; ConfigError (exit 2) for any bad input."""
    connection = _connection(args)
    action = getattr(args, "rotate_action", None) or "order"
    try:
        if action == "status":
            return RotateConfig(
                action=action,
                connection=connection,
                output=args.output,
                order_id=check_order_id(args.order_id),
            )
        if action == "list":
            limit = check_list_limit(positive_int(args.limit, "--limit"))
            return RotateConfig(action=action, connection=connection, output=args.output, limit=limit)
        return RotateConfig(
            action=action,
            connection=connection,
            output=args.output,
            request=_rotation_request(args, connection, now),
        )
    except InvalidRequestError as err:
        raise _usage(err) from err


def revoke_config(args: argparse.Namespace) -> RotateConfig:
    """`meshca revoke` settings; ConfigError (exit 2) for any bad input."""
    connection = _connection(args)
    try:
        serials = selector_serials(args.serial)
        reason = revocation_reason(args.reason)
    except InvalidRequestError as err:
        raise _usage(err) from err
    return RotateConfig(
        action="revoke",
        connection=connection,
        output=args.output,
        serials=serials,
        revocation_reason=reason,
        note=(args.note or "").strip() or None,
    )
