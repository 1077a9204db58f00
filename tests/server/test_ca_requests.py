"""The CA's status file: rewritten when it changes, and as a heartbeat while it does not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ca.server.ca_requests import STATUS_REWRITE_S, CaInbox, StatusHeartbeat
from tests.support.clock import FakeClock


def _status(written_at: str, holding: int = 0) -> dict[str, Any]:
    return {
        "written_at": written_at,
        "replica": "ca-0",
        "bundle": [{"fingerprint": "ab", "holding": holding}],
    }


def _on_disk(inbox: CaInbox) -> dict[str, Any]:
    return dict(json.loads(inbox.status_path.read_text()))


def test_the_status_is_rewritten_when_it_changes_and_at_the_heartbeat(tmp_path: Path) -> None:
    clock = FakeClock()
    inbox = CaInbox(tmp_path)
    status = StatusHeartbeat(inbox, clock)
    assert status.write(_status("t0"))
    assert _on_disk(inbox)["written_at"] == "t0"
    # A second later only the time differs: no write (two fsyncs saved at each turn).
    clock.advance_s(1)
    assert not status.write(_status("t1"))
    assert _on_disk(inbox)["written_at"] == "t0"
    # A change in what it reports is written at once.
    clock.advance_s(1)
    assert status.write(_status("t2", holding=3))
    assert _on_disk(inbox)["bundle"][0]["holding"] == 3
    # Unchanged for the heartbeat's interval: written again, so the CLI sees a fresh report.
    clock.advance_s(STATUS_REWRITE_S - 1)
    assert not status.write(_status("t3", holding=3))
    clock.advance_s(1)
    assert status.write(_status("t4", holding=3))
    assert _on_disk(inbox)["written_at"] == "t4"
