"""`meshca ca status` and `meshca ca rotate`: the CA's own slots, on a state directory.

Status reads what the running CA last reported (`ca-status.json`, with the agents'
acknowledgements), or the keyring itself when no CA reported in the last few seconds.
Transitions are requests that the leading `meshca serve` on the same state directory makes
or refuses with its reason (exit code 3 for a refusal).
"""

from __future__ import annotations

import argparse
import getpass
import json
import socket
import sys
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from ca.common.clock import Clock, SystemClock
from ca.common.durations import parse_duration
from ca.errors import ConfigError
from ca.issuance.slots import RotationPolicy
from ca.server.ca_requests import CaAnswer, CaInbox, CaRequest, request_id
from ca.server.ca_status import render_status, status_document
from ca.server.keyring_store import KeyringDirectory

EXIT_REFUSED = 3
STATUS_FRESH_S = 10.0


def run_ca(args: argparse.Namespace, clock: Clock | None = None, out: TextIO = sys.stdout) -> int:
    clock = clock or SystemClock()
    state_dir = Path(args.state_dir)
    if not state_dir.is_dir():
        raise ConfigError(
            f"--state-dir {state_dir} does not exist; give the state directory of `meshca serve`"
        )
    if args.ca_action == "status":
        return _status(state_dir, args.format, clock, out)
    return _rotate(args, state_dir, clock, out)


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
    if fmt == "json":
        out.write(json.dumps(document, indent=2) + "\n")
    else:
        out.write("\n".join(render_status(document, live=live)) + "\n")
    return 0


def _fresh(document: Mapping[str, Any], now: datetime) -> bool:
    try:
        written = datetime.fromisoformat(document["written_at"])
    except (KeyError, TypeError, ValueError):
        return False
    return now - written <= timedelta(seconds=STATUS_FRESH_S)


def _rotate(args: argparse.Namespace, state_dir: Path, clock: Clock, out: TextIO) -> int:
    wait_s = parse_duration(args.wait).total_seconds()
    inbox = CaInbox(state_dir)
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
        inbox.submit(request)
        timeout_s = max(1.0, min(15.0, deadline - clock.monotonic()))
        answer = inbox.wait_answer(request.id, timeout_s=timeout_s, clock=clock)
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
