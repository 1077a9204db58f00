"""Where a validated SVID goes: files in the output directory, and the socket servers."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from ca.agent.output import write_svid
from ca.agent.svid import Svid
from ca.issuance.crl import NO_REVOCATIONS, RevocationLists

log = logging.getLogger("meshca.agent")


class FileSink:
    """The output directory: the SVID's files and, once there are any, the CA's CRLs as crl.pem.

    Either change writes a new set (ca.agent.output), so crl.pem switches with the others.
    Called from the renewal thread (SVIDs) and the control stream (CRLs): one write at a time.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._svid: Svid | None = None
        self._revocations = NO_REVOCATIONS

    def publish(self, svid: Svid) -> None:
        with self._lock:
            self._svid = svid
            self._write()

    def publish_crls(self, revocations: RevocationLists) -> None:
        with self._lock:
            self._revocations = revocations
            if self._svid is None:
                return
            try:
                self._write()
            except OSError as err:
                # The sockets serve the new lists already; the next certificate writes them again.
                log.error(
                    "cannot write crl.pem; the files keep the previous revocation lists",
                    extra={"output_dir": str(self.directory), "error": str(err)},
                )

    def _write(self) -> None:
        assert self._svid is not None
        write_svid(self.directory, self._svid, crl_pem=self._revocations.pem() if self._revocations else None)
