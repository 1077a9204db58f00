"""Logs whose volume someone else sets stay bounded: a few lines per key and interval, then one
summary with the count held back. Time is driven by hand."""

from __future__ import annotations

import logging

import pytest

from ca.common.log_limit import LogLimiter, Suppressed
from ca.enforce.events import RefusalLog


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_the_first_five_of_an_interval_are_logged_then_one_summary_counts_the_rest() -> None:
    clock = FakeMonotonic()
    limiter: LogLimiter[str] = LogLimiter(clock, per_interval=5, interval_s=10.0)
    assert [limiter.allow("plaintext") for _ in range(12)] == [True] * 5 + [False] * 7
    clock.advance(9.999)
    assert limiter.allow("plaintext") is False
    assert limiter.ended() == []  # the interval is not over yet
    clock.advance(0.001)
    assert limiter.ended() == [Suppressed("plaintext", 8, 10.0)]
    assert limiter.ended() == []  # reported once


def test_a_new_interval_logs_again() -> None:
    clock = FakeMonotonic()
    limiter: LogLimiter[str] = LogLimiter(clock, per_interval=5, interval_s=10.0)
    for _ in range(7):
        limiter.allow("plaintext")
    clock.advance(10.0)
    # The first event of the next interval closes the old one: its summary is kept, not lost.
    assert [limiter.allow("plaintext") for _ in range(6)] == [True] * 5 + [False]
    assert limiter.ended() == [Suppressed("plaintext", 2, 10.0)]
    clock.advance(10.0)
    assert limiter.ended() == [Suppressed("plaintext", 1, 10.0)]


def test_keys_are_limited_each_on_their_own() -> None:
    clock = FakeMonotonic()
    limiter: LogLimiter[str] = LogLimiter(clock, per_interval=2, interval_s=5.0)
    assert [limiter.allow("plaintext") for _ in range(3)] == [True, True, False]
    assert [limiter.allow("no_client_cert") for _ in range(2)] == [True, True]
    clock.advance(5.0)
    assert limiter.ended() == [Suppressed("plaintext", 1, 5.0)]  # nothing held back: no summary


def refusal_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "meshca.enforce"]


def test_refusal_log_bounds_lines_per_reason_and_summarises_each(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeMonotonic()
    refusals = RefusalLog(LogLimiter(clock, per_interval=5, interval_s=10.0))
    caplog.set_level(logging.WARNING, logger="meshca.enforce")
    for n in range(300):
        refusals.refused("connection refused", peer=f"10.0.0.1:{n}", reason="plaintext", port=8080)
    for _ in range(20):
        refusals.refused("connection refused", reason="handshake_failed", port=8080)
    refusals.refused("cannot accept connections", listen_port=15006, error="Too many open files")
    lines = refusal_lines(caplog)
    assert [(r.getMessage(), getattr(r, "reason", None)) for r in lines] == (
        [("connection refused", "plaintext")] * 5
        + [("connection refused", "handshake_failed")] * 5
        + [("cannot accept connections", None)]
    )
    assert [getattr(r, "peer", None) for r in lines[:5]] == [f"10.0.0.1:{n}" for n in range(5)]

    caplog.clear()
    clock.advance(10.0)
    refusals.flush()
    summaries = {
        getattr(r, "reason", None): (
            r.getMessage(),
            getattr(r, "suppressed", None),
            getattr(r, "interval_s", None),
        )
        for r in refusal_lines(caplog)
    }
    assert summaries == {
        "plaintext": ("connection refused: more not logged", 295, 10.0),
        "handshake_failed": ("connection refused: more not logged", 15, 10.0),
    }

    caplog.clear()
    refusals.refused("connection refused", reason="plaintext", port=8080)
    assert [r.getMessage() for r in refusal_lines(caplog)] == ["connection refused"]  # a new interval


def test_at_shutdown_every_held_back_count_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeMonotonic()
    limiter: LogLimiter[str] = LogLimiter(clock, per_interval=1, interval_s=10.0)
    for key in ("plaintext", "plaintext", "plaintext", "no_client_cert"):
        limiter.allow(key)
    clock.advance(1.0)
    assert limiter.ended() == []
    assert limiter.end_all() == [Suppressed("plaintext", 2, 10.0)]
    assert limiter.end_all() == []

    refusals = RefusalLog(LogLimiter(clock, per_interval=1, interval_s=10.0))
    caplog.set_level(logging.WARNING, logger="meshca.enforce")
    for _ in range(4):
        refusals.refused("connection refused", reason="plaintext")
    refusals.flush(final=True)
    assert [getattr(r, "suppressed", None) for r in refusal_lines(caplog)] == [None, 3]
