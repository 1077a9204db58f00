"""Where a validated SVID goes: files in the output directory, and the socket servers."""

from __future__ import annotations

from pathlib import Path

from ca.agent.output import write_svid
from ca.agent.svid import Svid


class FileSink:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def publish(self, svid: Svid) -> None:
        write_svid(self.directory, svid)
