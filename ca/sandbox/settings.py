"""`meshca up`: its flags and frozen settings (no heavy import: every command line builds this parser)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from ca.common.durations import format_duration, parse_duration
from ca.common.flags import Subcommands
from ca.errors import ConfigError

MIN_CERT_TTL = timedelta(seconds=30)
MAX_CERT_TTL = timedelta(hours=24)
MIN_CALL_INTERVAL = timedelta(milliseconds=100)
MAX_CALL_INTERVAL = timedelta(minutes=1)

DESCRIPTION = (
    "Start a CA and three demo workloads (web -> api -> db, each an agent, an enforcer and a small "
    "HTTP app, plus a legacy caller without a certificate) on this machine, with no cluster, and "
    "watch their identities, certificates, calls and PeerAuthentication modes live. From another "
    "terminal, `meshca rotate` or an edit of the policy file shows its effect. Ctrl-C stops "
    "everything it started."
)


@dataclass(frozen=True, kw_only=True)
class UpConfig:
    state_dir: Path | None  # None: a temporary directory, removed at exit
    cert_ttl: timedelta  # each workload certificate's lifetime; agents renew at half of it
    call_interval: timedelta  # how often each demo app calls each of its peers


def add_up_parser(commands: Subcommands) -> None:
    up = commands.add_parser(
        "up", help="a local sandbox: a CA and three workloads over mutual TLS, live", description=DESCRIPTION
    )
    # Not read from MESHCA_STATE_DIR: the sandbox's directory holds a CA state directory of its own
    # (DIR/ca), and a CA's state directory must not become a sandbox's by accident.
    up.add_argument(
        "--state-dir",
        default=None,
        help="keep the sandbox's files here (CA state, certificates, policies, logs) and reuse them on "
        "the next run; default: a temporary directory, removed at exit",
    )
    up.add_argument(
        "--cert-ttl",
        default="4m",
        help="lifetime of the workload certificates; agents renew at half of it (default 4m)",
    )
    up.add_argument(
        "--call-interval",
        default="1s",
        help="how often each demo workload calls each of its peers (default 1s)",
    )


def _bounded(text: str, flag: str, lowest: timedelta, highest: timedelta) -> timedelta:
    value = parse_duration(text)
    if not lowest <= value <= highest:
        raise ConfigError(
            f"{flag} {text!r} is outside {_spoken(lowest)} to {_spoken(highest)}; give a duration such as "
            f"{_spoken(lowest * 4)}"
        )
    return value


def _spoken(value: timedelta) -> str:
    if value < timedelta(seconds=1):
        return f"{int(value.total_seconds() * 1000)}ms"
    return format_duration(value)


def up_config(args: argparse.Namespace) -> UpConfig:
    return UpConfig(
        state_dir=Path(args.state_dir) if args.state_dir else None,
        cert_ttl=_bounded(args.cert_ttl, "--cert-ttl", MIN_CERT_TTL, MAX_CERT_TTL),
        call_interval=_bounded(args.call_interval, "--call-interval", MIN_CALL_INTERVAL, MAX_CALL_INTERVAL),
    )
