"""`meshca policy ...`: the subcommands that read PeerAuthentication policy."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from ca.common.flags import Subcommands
from ca.policy import envoy_command, explain


def add_policy_parser(commands: Subcommands, environ: Mapping[str, str]) -> None:
    policy = commands.add_parser(
        "policy", help="PeerAuthentication: explain the effective mode, render Envoy config"
    )
    actions = policy.add_subparsers(dest="policy_command", required=True)
    explain.add_parser(actions, environ)
    envoy_command.add_parser(actions, environ)


def run(args: argparse.Namespace) -> int:
    if args.policy_command == "explain":
        return explain.run(args)
    return envoy_command.run(args)
