"""Leadership among the worker processes of `meshca serve --processes N` without a cluster: an
exclusive lock on `<state-dir>/leader.lock`.

The worker holding the lock (`fcntl.flock`) leads; the others try again every retry period. The
kernel releases the lock when its holder's file is closed, which includes the holder's death by
any signal, so a surviving worker takes over at its next try. A lock belongs to one open file,
not to a process: two electors in one process exclude each other as two processes do, and the
processes a worker starts (the ledger process) do not inherit it (Python opens files
non-inheritable).

Meets `ca.kube.election.Elector`, as `SoleElector` and the Lease elector do. The callbacks run on
the caller's thread at `start` (the first try) or on the elector's thread (a later one).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

from ca.common.clock import Clock

LEADER_LOCK = "leader.lock"
RETRY_S = 0.5  # how long a killed leader's work waits for a new leader, at most


def _nothing() -> None:
    return None


class FileLockElector:
    """Leads while it holds an exclusive lock on `path`; see the module's description."""

    def __init__(
        self,
        path: Path,
        identity: str,
        *,
        clock: Clock,
        retry_s: float = RETRY_S,
        on_started_leading: Callable[[], None] = _nothing,
        on_stopped_leading: Callable[[], None] = _nothing,
    ) -> None:
        self._path = path
        self._identity = identity
        self._clock = clock
        self._retry_s = retry_s
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._held: IO[bytes] | None = None
        self._state = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leader-lock", daemon=True)

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def is_leader(self) -> bool:
        with self._state:
            return self._held is not None

    def start(self) -> None:
        """Tries at once (a lone worker leads from here on), then keeps trying on a thread."""
        if not self._try_acquire():
            self._thread.start()

    def stop(self, *, release: bool = True) -> None:
        """Stops trying and gives the lock up. `release` is moot: a lock left held would outlive
        nothing, since the kernel releases it with the file."""
        self._stopping.set()
        if self._thread.ident is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._state:
            held, self._held = self._held, None
        if held is None:
            return
        held.close()  # releases the lock
        self._on_stopped()

    def _run(self) -> None:
        while not self._clock.wait(self._stopping, self._retry_s):
            if self._try_acquire():
                return

    def _try_acquire(self) -> bool:
        handle = _open_lock_file(self._path)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        with self._state:
            if self._stopping.is_set():
                handle.close()
                return False
            self._held = handle
        _write_holder(handle, self._identity)
        self._on_started()
        return True


def _open_lock_file(path: Path) -> IO[bytes]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    return os.fdopen(fd, "r+b")


def _write_holder(handle: IO[bytes], identity: str) -> None:
    """The holder's name in the file, for whoever looks (the lock itself is what counts)."""
    with contextlib.suppress(OSError):
        handle.seek(0)
        handle.truncate()
        handle.write(f"{identity}\n".encode())
        handle.flush()
