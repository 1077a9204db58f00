"""The ledger's own process: where a busy CA's entries are encoded, chained and written.

Writing an entry costs about 0.07 ms of Python: fingerprinting the certificate,
encoding the entry as canonical JSON, hashing the chain and the INSERT. On the
gRPC event loop that is 7-10% of what a certificate costs, and a thread would
not help because it needs the same GIL. A child process does that work on
another core; the loop only hands it each batch through a pipe and reads back
the written entries.

The parent side, `LedgerProcess`, is driven by `LoopLedgerWriter` on the loop.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing
import signal
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any, Protocol

from ca.errors import MeshcaError, UnavailableError
from ca.ledger.chain import Entry
from ca.ledger.entries import Record

log = logging.getLogger("meshca.ledger")

READY = "ready"
WRITTEN = "written"
FAILED = "failed"


class Appender(Protocol):
    def append(self, records: Sequence[Record]) -> list[Entry]: ...

    def dispose(self) -> None: ...


def child_main(conn: Connection, make_appender: Callable[[], Appender]) -> None:
    """The child: append each batch it is sent as one transaction and answer with the entries
    or the error, until the pipe closes or it is sent None."""
    # Ctrl-C, or a SIGTERM sent to the whole process group, is the CA's to handle: it drains
    # what was submitted and then stops this process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        appender = make_appender()
    except Exception as err:
        conn.send((FAILED, f"the ledger process could not open the ledger ({err})"))
        return
    conn.send((READY,))
    try:
        while True:
            try:
                records = conn.recv()
            except EOFError:
                return  # the CA is gone
            if records is None:
                return
            conn.send(_append(appender, records))
    finally:
        appender.dispose()


def _append(appender: Appender, records: Sequence[Record]) -> tuple[Any, ...]:
    try:
        return (WRITTEN, appender.append(records))
    except MeshcaError as err:
        return (FAILED, err.message)
    except Exception as err:
        log.exception("the ledger process failed to write a batch")
        return (FAILED, f"the issuance ledger failed ({type(err).__name__}: {err})")


class LedgerProcess:
    """The parent's handle on the child: start it, send it batches, read its answers."""

    def __init__(self, make_appender: Callable[[], Appender]) -> None:
        self._make_appender = make_appender
        self._context = multiprocessing.get_context("spawn")  # no fork of a process with threads
        self._process: Any = None
        self.conn: Connection | None = None
        self._stops_at_exit = False

    def start(self) -> None:
        if not self._stops_at_exit:
            # Before multiprocessing's own exit handler (atexit runs the last registered first),
            # which would wait for a child that ignores SIGTERM.
            atexit.register(self.stop, 2.0)
            self._stops_at_exit = True
        multiprocessing.active_children()  # reaps children killed earlier
        parent, child = self._context.Pipe(duplex=True)
        self._process = self._context.Process(
            target=child_main, args=(child, self._make_appender), name="meshca-ledger", daemon=True
        )
        self._process.start()
        child.close()
        self.conn = parent

    def wait_ready(self, timeout_s: float) -> None:
        """Block until the child has opened the ledger (used at start-up, before serving)."""
        reply = self.receive(timeout_s)
        if reply[0] != READY:
            raise UnavailableError(str(reply[1]), reason="ledger_unavailable")

    def receive(self, timeout_s: float | None = None) -> tuple[Any, ...]:
        """The child's next message; raises EOFError if it has exited or did not answer in time."""
        assert self.conn is not None
        if timeout_s is not None and not self.conn.poll(timeout_s):
            raise EOFError(f"the ledger process did not answer within {timeout_s:g}s")
        reply: tuple[Any, ...] = self.conn.recv()
        return reply

    def send(self, records: Sequence[Record] | None) -> None:
        assert self.conn is not None
        self.conn.send(records)

    @property
    def pid(self) -> int | None:
        return None if self._process is None else int(self._process.pid)

    def exit_code(self, wait_s: float = 0.0) -> int | None:
        """The child's exit code, waiting up to `wait_s` for it to finish exiting."""
        if self._process is None:
            return None
        self._process.join(wait_s)
        exit_code: int | None = self._process.exitcode
        return exit_code

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the child to finish, then make sure it has."""
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.send(None)
        if self._process is not None:
            self._process.join(timeout_s)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(timeout_s)
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def kill(self) -> None:
        """For a child that stopped answering: the next start gets a fresh one. It is not waited
        for (one stuck in a hung disk dies only when the disk answers); `start` reaps it."""
        if self._process is not None and self._process.is_alive():
            self._process.kill()
        if self.conn is not None:
            self.conn.close()
            self.conn = None
