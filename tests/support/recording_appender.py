"""An Appender for the ledger process in tests: it runs in the child, so it reports through files.

It writes each batch's ids as a line of `batches.jsonl` in its directory, and obeys
control files the test creates there: `fail-next` (the next append raises),
`hold` (appends wait while it exists: a hung disk), `delay` (each append takes
that many seconds), `exit-next` (the process dies in the next append),
`refuse-open` (a new one cannot open the ledger) and `hang-open` (a new one hangs
while opening it).
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
        while (self.directory / "hold").exists():
            time.sleep(0.01)
        delay = self.directory / "delay"
        if delay.exists():
            time.sleep(float(delay.read_text()))
        if self._take("fail-next"):
            raise UnavailableError("disk on fire", reason="ledger_unavailable")
        ids = [str(r["id"]) if isinstance(r, Mapping) else format(r.serial, "x") for r in records]
        seq = sum(len(batch) for batch in recorded_batches(self.directory))
        with self.log.open("a") as log:
            log.write(json.dumps({"pid": os.getpid(), "ids": ids}) + "\n")
        return [
            Entry(seq=seq + i, content_json="{}", prev_hash="", entry_hash=str(seq + i))
            for i in range(1, len(ids) + 1)
        ]

    def dispose(self) -> None:
        pass


def recorded_batches(directory: Path, *, with_pid: bool = False) -> list[Any]:
    log = directory / "batches.jsonl"
    if not log.exists():
        return []
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    return [(line["pid"], line["ids"]) if with_pid else line["ids"] for line in lines]
