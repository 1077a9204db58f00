"""An Appender for the ledger process in tests: it runs in the child, so it reports through files.

It writes each batch's ids as a line of `batches.jsonl` in its directory, and obeys
control files the test creates there: `fail-next` (the next append raises),
`hold` (a hung disk: while it exists, each append writes its batch's ids to `held`
and waits until the test deletes `held`, which lets that one batch through, or
`hold`, which lets every batch through), `exit-next` (the process dies in the next
append), `refuse-open` (a new one cannot open the ledger) and `hang-open` (a new one
hangs while opening it).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ca.errors import UnavailableError
from ca.ledger.chain import Entry


class RecordingAppender:
    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        self.log = self.directory / "batches.jsonl"
        if (self.directory / "refuse-open").exists():
            raise UnavailableError("the test refuses to open the ledger", reason="ledger_unavailable")
        while (self.directory / "hang-open").exists():
            time.sleep(0.01)

    def _take(self, name: str) -> bool:
        try:
            (self.directory / name).unlink()
            return True
        except FileNotFoundError:
            return False

    def append(self, records: Sequence[Any]) -> list[Entry]:
        if self._take("exit-next"):
            os._exit(3)
        ids = [str(r["id"]) if isinstance(r, Mapping) else format(r.serial, "x") for r in records]
        self._wait_while_held(ids)
        if self._take("fail-next"):
            raise UnavailableError("disk on fire", reason="ledger_unavailable")
        seq = sum(len(batch) for batch in recorded_batches(self.directory))
        with self.log.open("a") as log:
            log.write(json.dumps({"pid": os.getpid(), "ids": ids}) + "\n")
        return [
            Entry(seq=seq + i, content_json="{}", prev_hash="", entry_hash=str(seq + i))
            for i in range(1, len(ids) + 1)
        ]

    def _wait_while_held(self, ids: list[str]) -> None:
        hold, held = self.directory / "hold", self.directory / "held"
        if not hold.exists():
            return
        written = self.directory / "held.tmp"
        written.write_text(json.dumps(ids))
        written.rename(held)  # the test never reads half a list
        while held.exists() and hold.exists():
            time.sleep(0.01)
        held.unlink(missing_ok=True)

    def dispose(self) -> None:
        pass


def recorded_batches(directory: Path, *, with_pid: bool = False) -> list[Any]:
    log = directory / "batches.jsonl"
    if not log.exists():
        return []
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    return [(line["pid"], line["ids"]) if with_pid else line["ids"] for line in lines]


def held_batch(directory: Path) -> list[str] | None:
    """The ids of the batch the appender holds (see `hold`), if it holds one."""
    try:
        ids: list[str] = json.loads((directory / "held").read_text())
    except FileNotFoundError:
        return None
    return ids
