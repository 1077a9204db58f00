"""SQLite's WAL checkpoints, run beside the ledger's commits instead of inside one of them.

In WAL mode a commit appends the pages it changed to the write-ahead log, and a checkpoint
copies them back into the database file and syncs it. By default SQLite runs the checkpoint
inside the commit that takes the log past 1,000 pages. A ledger entry changes about eleven
pages (the entries table and its seven indexes), so at half load one commit in about ninety
carried a checkpoint of some 350 distinct pages: 6-8 ms on the CA's pinned core, every 0.17 s,
and every certificate waiting behind that commit waited that long (scripts/bench_ca.py
--trace, 2026-12-07).

`WalCheckpointer` runs PASSIVE checkpoints on a connection and thread of its own. A passive
checkpoint takes no write lock, so commits go on while it copies. The writer's connection keeps
SQLite's own checkpoint only as a backstop (BACKSTOP_PAGES), for a checkpointer that falls far
behind or has stopped.

The log is reused from its start only when a new transaction begins after a checkpoint that
copied every page in it. Under steady commits a checkpoint that starts as a commit lands copies
all but that commit's pages, so the checkpointer repeats at once, up to ROUNDS times, while
pages remain, and then copies the last few pages holding the writer's lock (`hold_writer`), so
that no commit lands meanwhile and the next one starts the log over. Without that last step a
stream of commits 2 ms apart grew the log to 14-64 MiB, and each checkpoint copied thousands
of pages; with it the log stays at about 2.5 MiB.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager

log = logging.getLogger("meshca.ledger")

BACKSTOP_PAGES = 16_384  # 64 MiB of log at SQLite's 4 KiB pages: the writer checkpoints itself past it
PAUSE_S = 0.1  # at most one run of checkpoints per pause, however often commits nudge
ROUNDS = 8  # checkpoints per run at most, while pages written meanwhile remain


def checkpoint(conn: sqlite3.Connection) -> tuple[int, int]:
    """One passive checkpoint: (pages in the log, pages copied into the database); (-1, -1) when
    another connection is checkpointing (a second CA process on the same file)."""
    _busy, in_log, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return int(in_log), int(copied)


def checkpoint_until_copied(conn: sqlite3.Connection, rounds: int = ROUNDS) -> tuple[int, int]:
    """Checkpoint until every page in the log is copied, or `rounds` times, or another connection
    is checkpointing; the last result."""
    result = checkpoint(conn)
    for _ in range(rounds - 1):
        in_log, copied = result
        if copied >= in_log:
            break
        result = checkpoint(conn)
    return result


class WalCheckpointer:
    """Checkpoints the ledger's log on a thread of its own whenever a commit nudges it."""

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        *,
        hold_writer: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
        pause_s: float = PAUSE_S,
    ) -> None:
        """`hold_writer` keeps the writer from committing while held (its lock)."""
        self._connect = connect
        self._hold_writer = hold_writer
        self._pause_s = pause_s
        self._nudged = threading.Event()
        self._stopping = threading.Event()
        self._done = threading.Condition()
        self._runs = 0
        self._last: tuple[int, int] | None = None
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="ledger-wal-checkpoint", daemon=True)
        self._thread.start()

    def nudge(self) -> None:
        """A commit has grown the log."""
        self._nudged.set()

    @property
    def runs(self) -> int:
        """Runs of checkpoints finished (with or without an error) since the start."""
        with self._done:
            return self._runs

    @property
    def last(self) -> tuple[int, int] | None:
        """What the last run's last checkpoint found: (pages in the log, pages copied)."""
        with self._done:
            return self._last

    def wait_for_runs(self, runs: int, timeout_s: float) -> bool:
        """Block until `runs` runs have finished; False if `timeout_s` passed first."""
        with self._done:
            return self._done.wait_for(lambda: self._runs >= runs, timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        self._stopping.set()
        self._nudged.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while True:
                self._nudged.wait()
                if self._stopping.is_set():
                    return
                self._nudged.clear()
                conn, last = self._run_once(conn)
                with self._done:
                    self._runs += 1
                    self._last = last
                    self._done.notify_all()
                if self._stopping.wait(self._pause_s):
                    return
        finally:
            if conn is not None:
                conn.close()

    def _run_once(
        self, conn: sqlite3.Connection | None
    ) -> tuple[sqlite3.Connection | None, tuple[int, int] | None]:
        """The connection to use next time (None after a failure: reconnect then), and what the
        last checkpoint found."""
        try:
            conn = conn or self._connect()
            checkpoint_until_copied(conn)
            # What a checkpoint reports is the log as it found it: commits may have landed since.
            with self._hold_writer():
                result = checkpoint(conn)
        except sqlite3.Error as err:
            if not self._failing:  # once per spell of failures; the backstop keeps the log bounded
                log.warning(
                    "could not checkpoint the ledger's write-ahead log; commits will do it instead "
                    "past %d pages; check the ledger file's disk",
                    BACKSTOP_PAGES,
                    extra={"detail": str(err)},
                )
            self._failing = True
            if conn is not None:
                conn.close()
            return None, None
        self._failing = False
        return conn, result
