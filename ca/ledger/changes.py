"""Learning that another process changed the rotation tables: orders, replacements, revocations.

Every such change grows the change marker in its own transaction (ca.ledger.rotation_store).
`ChangeWatcher` calls back with the new marker when it grows, from a thread of its own:

- PostgreSQL: LISTEN on CHANGE_CHANNEL on a connection of its own. The writer's NOTIFY is sent
  when its transaction commits, so the callback comes at once. After each (re)connection the
  marker is read again, so changes made while it was away are not lost; the connection is
  checked every `health_interval_s` and replaced, after a jittered backoff, when it fails.
- SQLite has no notifications: the marker is read every `poll_interval_s` (1 s).

Several changes between two looks give one callback, with the latest marker. The callback
runs on the watcher's thread: hand the work to your own loop or thread from there.

psycopg is imported only to watch a PostgreSQL ledger: a CA on SQLite does without its 9 MiB.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import selectors
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine
from sqlalchemy import select as sql_select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from ca.common.backoff import Backoff, Retrying, UniformRandom
from ca.common.clock import Clock
from ca.errors import UnavailableError
from ca.ledger import schema
from ca.ledger.rotation_store import CHANGE_CHANNEL
from ca.ledger.store import redact_url, sqlite_read_engine, storage_error

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger("meshca.ledger")

POLL_INTERVAL_S = 1.0
HEALTH_INTERVAL_S = 30.0
CONNECT_TIMEOUT_S = 5
RECONNECT_BACKOFF = Backoff(initial_s=0.5, maximum_s=30.0, jitter=0.5)
"""Between attempts to listen again after the connection failed; jittered, so that the replicas
of a database that came back do not all reconnect at once."""

_MARKER_SQL = f"SELECT marker FROM {schema.rotation_changes.name} WHERE id = 1"

OnChange = Callable[[int], None]


def libpq_url(url: str) -> str:
    """A postgresql:// or postgresql+psycopg:// URL as libpq takes it."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class ChangeWatcher:
    def __init__(
        self,
        url: str,
        on_change: OnChange,
        *,
        clock: Clock,
        poll_interval_s: float = POLL_INTERVAL_S,
        health_interval_s: float = HEALTH_INTERVAL_S,
        reconnect: Backoff = RECONNECT_BACKOFF,
        random: UniformRandom = random.random,
    ) -> None:
        if not url.startswith(("sqlite", "postgresql")):
            raise ValueError(f"not a ledger URL: {redact_url(url)}")
        self._url = url
        self._on_change = on_change
        self._clock = clock
        self._poll_interval_s = poll_interval_s
        self._health_interval_s = health_interval_s
        self._retrying = Retrying(reconnect, random)
        self._postgres = url.startswith("postgresql")
        self._engine: Engine | None = None if self._postgres else sqlite_read_engine(url)
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._wake_read, self._wake_write = os.pipe()
        self._thread: threading.Thread | None = None
        self._last = 0
        self._failing = False

    @property
    def marker(self) -> int:
        """The newest marker seen."""
        return self._last

    def start(self, since: int | None = None) -> None:
        """Watch from marker `since` (a change past it calls back once watching begins); None
        reads the marker now, so that only later changes call back (UnavailableError if the
        database cannot be read)."""
        self._last = since if since is not None else self._read_once()
        self._thread = threading.Thread(target=self._run, name="rotation-changes", daemon=True)
        self._thread.start()

    def wait_listening(self, timeout_s: float) -> bool:
        """True once changes are being watched (PostgreSQL: the LISTEN is in place)."""
        return self._listening.wait(timeout_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop watching; returns once the thread has ended (it is woken, not waited out)."""
        self._stop.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_write, b"x")
        if self._thread is not None:
            self._thread.join(timeout_s)
        for fd in (self._wake_read, self._wake_write):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._engine is not None:
            self._engine.dispose()

    # ----------------------------------------------------------------------- both

    def _run(self) -> None:
        if self._postgres:
            self._listen_forever()
        else:
            self._poll_forever()

    def _seen(self, marker: int) -> None:
        if marker <= self._last:
            return
        self._last = marker
        try:
            self._on_change(marker)
        except Exception:
            log.exception("a rotation change callback failed", extra={"marker": marker})

    def _read_once(self) -> int:
        if self._engine is not None:
            return self._read_sqlite()
        import psycopg

        try:
            with psycopg.connect(
                libpq_url(self._url), connect_timeout=CONNECT_TIMEOUT_S, autocommit=True
            ) as conn:
                return _marker(conn)
        except psycopg.Error as err:
            raise storage_error("read", err) from err

    def _failed(self, err: Exception) -> None:
        if not self._failing:
            log.warning(
                "cannot watch the ledger for rotation changes; retrying",
                extra={"detail": str(err).splitlines()[0] if str(err) else type(err).__name__},
            )
        self._failing = True

    def _recovered(self) -> None:
        if self._failing:
            log.warning("watching the ledger for rotation changes again")
        self._failing = False

    # ----------------------------------------------------------------------- SQLite

    def _read_sqlite(self) -> int:
        assert self._engine is not None
        c = schema.rotation_changes.c
        try:
            with self._engine.connect() as conn:
                return int(conn.execute(sql_select(c.marker).where(c.id == 1)).scalar_one())
        except SQLAlchemyError as err:
            raise storage_error("read", err) from err

    def _poll_forever(self) -> None:
        self._listening.set()
        while not self._clock.wait(self._stop, self._poll_interval_s):
            try:
                marker = self._read_sqlite()
            except UnavailableError as err:
                self._failed(err)
                continue
            self._recovered()
            self._seen(marker)

    # ----------------------------------------------------------------------- PostgreSQL

    def _listen_forever(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    libpq_url(self._url),
                    connect_timeout=CONNECT_TIMEOUT_S,
                    autocommit=True,
                    application_name="meshca-rotation-watch",
                ) as conn:
                    conn.execute(f"LISTEN {CHANGE_CHANNEL}")
                    self._seen(_marker(conn))  # what changed before the LISTEN took hold
                    self._recovered()
                    self._retrying.reset()
                    self._listening.set()
                    self._listen(conn)
            except psycopg.Error as err:
                self._listening.clear()
                self._failed(err)
                self._clock.wait(self._stop, self._retrying.next_delay_s())

    def _listen(self, conn: psycopg.Connection[Any]) -> None:
        """Until stopped (returns) or the connection fails (raises psycopg.Error)."""
        # A selector (epoll), not select(): a CA holding thousands of agents' streams has
        # descriptors past the 1,024 that select() takes.
        with selectors.DefaultSelector() as selector:
            selector.register(conn.fileno(), selectors.EVENT_READ)
            selector.register(self._wake_read, selectors.EVENT_READ)
            while not self._stop.is_set():
                ready = {key.fd for key, _ in selector.select(self._health_interval_s)}
                if self._wake_read in ready:
                    return
                if ready:
                    for _ in conn.notifies(timeout=0):
                        pass  # several notifications, one look at the marker
                # Heard something, or a quiet interval: read the marker, which also proves the
                # connection (a closed one is readable too, and fails here).
                self._seen(_marker(conn))


def _marker(conn: psycopg.Connection[Any]) -> int:
    import psycopg

    row = conn.execute(_MARKER_SQL).fetchone()
    if row is None:
        raise psycopg.DataError("the rotation change marker row is missing; is the ledger schema current?")
    return int(row[0])
