"""JSON log lines: one object per line, fields an operator can filter on.

A command's log lines are held while it starts (`held_until_running`). A start that
fails with a MeshcaError is reported by that error alone: the lines it logged on the
way (often the same failure, logged by a part written for a running process) are
dropped, so the user reads one line saying what to fix. Once the command is running
(`running()`), or when it ends any other way, the held lines are written in order and
every later line goes straight out.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator, MutableMapping
from datetime import UTC, datetime
from typing import Any

from ca.errors import MeshcaError

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
MAX_HELD = 10_000
"""Lines a starting command may hold; past this they are written, the hold given up."""


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is when a record is written, not when it was built.

    While `held` is a list, records go there instead; `logging.Handler.handle` calls
    `emit` under the handler's lock, which also guards `held`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.held: list[logging.LogRecord] | None = None

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        if self.held is None:
            super().emit(record)
        elif len(self.held) < MAX_HELD:
            self.held.append(record)
        else:
            self._write_held()
            super().emit(record)

    # Not hold/release: logging.Handler's own release() frees its lock.
    def start_holding(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self.held is None:
                self.held = []

    def write_held(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_held()

    def drop_held(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self.held = None

    def _write_held(self) -> None:
        held, self.held = self.held or [], None
        for record in held:
            super().emit(record)


_handler = _StderrHandler()
_handler.setFormatter(JsonFormatter())


def configure(level: str = "info") -> None:
    root = logging.getLogger()
    root.handlers[:] = [_handler]
    root.setLevel(level.upper())
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    # urllib3 warns of each retry with reprs of its pools; meshca logs the failure itself, in words.
    logging.getLogger("urllib3").setLevel(logging.ERROR)


@contextlib.contextmanager
def held_until_running() -> Iterator[None]:
    """Hold log lines while the command in this block starts; see the module's docstring."""
    _handler.start_holding()
    try:
        yield
    except MeshcaError:
        _handler.drop_held()
        raise
    finally:
        _handler.write_held()


def running() -> None:
    """The command is up (or about to wait on something outside it): write the held lines and
    hold no more."""
    _handler.write_held()


def quiet_grpc_core(environ: MutableMapping[str, str]) -> None:
    """gRPC's C core writes lines of its own to stderr, past `logging` (a failed TLS handshake
    is one, at info level). Keep only its errors unless GRPC_VERBOSITY says otherwise.

    Read when grpc is imported, so call this before that.
    """
    environ.setdefault("GRPC_VERBOSITY", "ERROR")
