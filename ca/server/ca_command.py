"""`meshca ca status` and `meshca ca rotate`: the CA's own slots, through the CA's admin API
(--ca-addr) or on a state directory.

With --ca-addr, the CaKeys admin service of any replica answers (the client certificate must be
an --admin-identity of the CA). Without it, status reads what the running CA last reported
(`ca-status.json`, with the agents' acknowledgements), or the keyring itself when no CA reported
in the last few seconds, and transitions are requests that the leading `meshca serve` on the
same state directory makes or refuses. Either way a refused (unsafe) transition exits 3, a call
the CA refuses or a CA that cannot be reached 1, a bad flag 2.
"""

from __future__ import annotations

import argparse
import getpass
import json
import socket
import sys
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from ca.common.admin_endpoint import AdminEndpoint, admin_endpoint
from ca.common.clock import Clock, SystemClock
from ca.common.durations import parse_duration
from ca.errors import ConfigError
from ca.issuance.slots import RotationPolicy
from ca.server.ca_requests import CaAnswer, CaInbox, CaRequest, request_id
from ca.server.ca_status import render_status, status_document
from ca.server.keyring_store import KeyringDirectory

EXIT_REFUSED = 3
STATUS_FRESH_S = 10.0

# Hands a transition request to the CA and returns its answer, waiting at most the given seconds.
Ask = Callable[[CaRequest, float], CaAnswer]


def run_ca(args: argparse.Namespace, clock: Clock | None = None, out: TextIO | None = None) -> int:
    clock = clock or SystemClock()
    out = out or sys.stdout  # looked up at the call: the command line's stdout, not the import's
    endpoint = admin_endpoint(args)
    if endpoint is not None:
        return _through_api(args, endpoint, clock, out)
    state_dir = Path(args.state_dir)
    if not state_dir.is_dir():
        raise ConfigError(
            f"--state-dir {state_dir} does not exist; give the state directory of `meshca serve`"
        )
    if args.ca_action == "status":
        return _status(state_dir, args.format, clock, out)
    inbox = CaInbox(state_dir)

    def ask(request: CaRequest, timeout_s: float) -> CaAnswer:
        inbox.submit(request)
        return inbox.wait_answer(request.id, timeout_s=timeout_s, clock=clock)

    return _rotate(args, ask, clock, out)


def _through_api(args: argparse.Namespace, endpoint: AdminEndpoint, clock: Clock, out: TextIO) -> int:
    if args.ca_action == "rotate":
        parse_duration(args.wait)  # a bad --wait is a usage error before anything is asked
    from ca.server.ca_keys_client import CaKeysClient  # gRPC only for the commands that call

    client = CaKeysClient(endpoint)
    try:
        if args.ca_action == "status":
            _print_status(client.status(), args.format, live=True, out=out)
            return 0
        return _rotate(args, client.transition, clock, out)
    finally:
        client.close()


def _status(state_dir: Path, fmt: str, clock: Clock, out: TextIO) -> int:
    reported = CaInbox(state_dir).read_status()
    live = reported is not None and _fresh(reported, clock.now())
    document: Mapping[str, Any]
    if reported is not None and live:
        document = reported
    else:
        stored = KeyringDirectory(state_dir).read()
        if stored is None:
            raise ConfigError(
                f"{state_dir} holds no CA keyring yet; `meshca serve --state-dir {state_dir}` makes one"
            )
        document = status_document(
            stored.keyring, policy=RotationPolicy(), now=clock.now(), acks=None, replica="-"
        )
    _print_status(document, fmt, live=live, out=out)
    return 0


def _print_status(document: Mapping[str, Any], fmt: str, *, live: bool, out: TextIO) -> None:
    if fmt == "json":
        out.write(json.dumps(document, indent=2) + "\n")
    else:
        out.write("\n".join(render_status(document, live=live)) + "\n")


def _fresh(document: Mapping[str, Any], now: datetime) -> bool:
    try:
        written = datetime.fromisoformat(document["written_at"])
    except (KeyError, TypeError, ValueError):
        return False
    return now - written <= timedelta(seconds=STATUS_FRESH_S)


def _rotate(args: argparse.Namespace, ask: Ask, clock: Clock, out: TextIO) -> int:
    """Ask until the transition is done or refused; `--now` is asked again each second while the
    new root waits for the agents, until --wait runs out."""
    wait_s = parse_duration(args.wait).total_seconds()
    deadline = clock.monotonic() + wait_s
    by = f"{getpass.getuser()}@{socket.gethostname()}"
    slot = ""
    while True:
        request = CaRequest(
            id=request_id(),
            action=args.transition,
            requested_by=by,
            force=args.force,
            dry_run=args.dry_run,
            new_root=args.new_root,
            slot=slot,
        )
        answer = ask(request, max(1.0, min(15.0, deadline - clock.monotonic())))
        if answer.done or not answer.ok or clock.monotonic() >= deadline:
            return _report(answer, out, timed_out=not answer.done and answer.ok)
        if not slot:
            for line in answer.lines:
                out.write(line + "\n")
        slot = answer.slot
        clock.sleep(1.0)


def _report(answer: CaAnswer, out: TextIO, *, timed_out: bool) -> int:
    for line in answer.lines:
        out.write(line + "\n")
    if not answer.ok:
        return EXIT_REFUSED
    if timed_out:
        out.write("still waiting for the agents when --wait ran out; run the command again, or add --force\n")
        return EXIT_REFUSED
    return 0
