"""`meshca serve --grpc-server threaded` with a ledger cannot hold the agents' control streams: it says
so once at start, naming what that costs and the fix."""

from __future__ import annotations

import json
import time

import pytest

from ca.server.control_api import THREADED_SERVER_AT_START
from tests.support.control import CaProcess, ca_process

SERVING_LINE_WAIT_S = 10.0  # the ports file can be written before the "serving" line reaches the log


def warnings_at_start(log: str) -> list[str]:
    """The messages of the warning lines a CA logged before it said it was serving."""
    found: list[str] = []
    for line in log.splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        if entry["msg"] == "meshca CA serving":
            return found
        if entry["level"] == "warning":
            found.append(entry["msg"])
    raise AssertionError(f"the CA never said it was serving:\n{log}")


def start_warnings(ca: CaProcess) -> list[str]:
    """`warnings_at_start` of the CA's log, once the log holds its "serving" line."""
    deadline = time.monotonic() + SERVING_LINE_WAIT_S
    while '"msg": "meshca CA serving"' not in ca.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    return warnings_at_start(ca.log())


def test_the_threaded_server_with_a_ledger_warns_at_start_that_agents_get_no_orders_or_crls() -> None:
    with ca_process("--grpc-server", "threaded") as ca:
        warned = start_warnings(ca)
    assert warned.count(THREADED_SERVER_AT_START) == 1
    for words in ("rotation orders", "revocation lists", "revokes their", "--grpc-server asyncio"):
        assert words in THREADED_SERVER_AT_START


@pytest.mark.parametrize("flags", [(), ("--grpc-server", "threaded", "--ledger", "off")])
def test_no_warning_when_streams_are_served_or_there_is_nothing_to_push(flags: tuple[str, ...]) -> None:
    with ca_process(*flags) as ca:
        assert THREADED_SERVER_AT_START not in start_warnings(ca)
