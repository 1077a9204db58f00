"""Refusal logs (rate-limited) and the register of open connections."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("meshca.enforce")


class LogLimiter:
    """A token bucket: `rate` lines per second, bursts up to `burst`; counts what it suppressed."""

    def __init__(self, monotonic: Callable[[], float], *, rate: float = 20.0, burst: float = 50.0) -> None:
        self._monotonic = monotonic
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._last = monotonic()
        self.suppressed = 0

    def allow(self) -> int | None:
        """None if this line is to be dropped; else how many were dropped since the last one allowed."""
        now = self._monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens < 1.0:
            self.suppressed += 1
            return None
        self._tokens -= 1.0
        dropped, self.suppressed = self.suppressed, 0
        return dropped


class RefusalLog:
    """One JSON line per refused connection, with reason and peer address, at most `rate` per second."""

    def __init__(self, limiter: LogLimiter) -> None:
        self._limiter = limiter

    def refused(self, message: str, **fields: object) -> None:
        dropped = self._limiter.allow()
        if dropped is None:
            return
        if dropped:
            fields["suppressed_since_last"] = dropped
        log.warning(message, extra=fields)


class Closable(Protocol):
    def abort(self) -> None: ...


class OpenConnections:
    """Connections open now, by port label: for the active-connections gauge and for shutdown."""

    def __init__(self) -> None:
        self._open: dict[Closable, str] = {}
        self._counts: dict[str, int] = {}

    def register_port(self, port: str) -> None:
        """Ports are registered up front, so the metrics thread never sees the dict grow."""
        self._counts.setdefault(port, 0)

    def opened(self, connection: Closable, port: str) -> None:
        self._open[connection] = port
        self._counts[port] = self._counts.get(port, 0) + 1

    def closed(self, connection: Closable) -> None:
        port = self._open.pop(connection, None)
        if port is not None:
            self._counts[port] -= 1

    def snapshot(self) -> list[Closable]:
        return list(self._open)

    def counts(self) -> dict[str, int]:
        return dict(self._counts)

    def __len__(self) -> int:
        return len(self._open)

    def abort_all(self) -> None:
        for connection in list(self._open):
            connection.abort()
