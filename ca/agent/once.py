"""`meshca agent --once on`: one certificate on disk, waiting a bounded time for the CA.

An init container often starts before the CA can be reached, so errors that time can cure
(ErrorKind.UNAVAILABLE: the CA down or busy, see `ca.agent.ca_client.RETRYABLE`, or its
root file not written yet) are retried on the agent's own backoff until `--once-timeout`.
Anything else (the token or request refused, a response the agent will not use, a
--ca-root that does not match the CA) would fail the same way again: it ends the run at
once. The sleeping is passed in, so tests drive the clock.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from ca.agent.agent import Agent
from ca.agent.svid import Svid
from ca.common.clock import Clock
from ca.common.durations import format_duration
from ca.errors import ErrorKind, MeshcaError

Sleep = Callable[[float], None]
"""Waits this many seconds."""


class NoCertificateError(MeshcaError):
    """`--once` ended without a certificate; its kind (so the exit code) is the last error's."""

    def __init__(self, message: str, *, last: MeshcaError) -> None:
        super().__init__(message, reason=last.reason)
        self.kind = last.kind


def retryable(err: MeshcaError) -> bool:
    return err.kind is ErrorKind.UNAVAILABLE


def fetch_once(agent: Agent, *, timeout: timedelta, clock: Clock, sleep: Sleep) -> Svid:
    """Attempt until the agent holds a certificate; NoCertificateError when an error cannot be
    cured by waiting, or when `timeout` has passed. A wait never runs past the deadline: the
    last attempt is made at it."""
    deadline = clock.now() + timeout
    attempts = 0
    while True:
        next_at = agent.attempt()
        attempts += 1
        if agent.current is not None:
            return agent.current
        error = agent.last_error
        assert error is not None, "an attempt without a certificate records its error"
        if not retryable(error):
            raise NoCertificateError(f"no certificate written: {error}", last=error)
        now = clock.now()
        if now >= deadline:
            raise NoCertificateError(
                f"no certificate written after {attempts} attempt{'' if attempts == 1 else 's'} "
                f"in {format_duration(timeout)} (--once-timeout): {error}",
                last=error,
            )
        sleep((min(next_at, deadline) - now).total_seconds())
