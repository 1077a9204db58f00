"""Refusal logs (bounded per reason) and the register of open connections."""

from __future__ import annotations

import logging
from typing import Protocol

from ca.common.log_limit import LogLimiter

log = logging.getLogger("meshca.enforce")


RefusalKey = tuple[str, str | None]  # the message and the reason


class RefusalLog:
    """One JSON line per refused connection, with reason and peer address, bounded per message and
    reason by `limiter`: the lines it holds back are summarised with their count once its interval
    ends (at the next refusal or the next `flush`). Used on the event loop thread only."""

    def __init__(self, limiter: LogLimiter[RefusalKey]) -> None:
        self._limiter = limiter

    @property
    def interval_s(self) -> float:
        return self._limiter.interval_s

    def refused(self, message: str, **fields: object) -> None:
        self.flush()
        reason = fields.get("reason")
        if self._limiter.allow((message, None if reason is None else str(reason))):
            log.warning(message, extra=fields)

    def flush(self, *, final: bool = False) -> None:
        """Logs the summary of every interval that is over (`final`: of every interval, at
        shutdown) and held lines back."""
        for summary in self._limiter.end_all() if final else self._limiter.ended():
            message, reason = summary.key
            fields: dict[str, object] = {"suppressed": summary.count, "interval_s": summary.interval_s}
            if reason is not None:
                fields["reason"] = reason
            log.warning(f"{message}: more not logged", extra=fields)


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
