"""Keeping a thread busy for a measured stretch of its own CPU time."""

from __future__ import annotations

import time


def spin(seconds: float) -> None:
    """Work (not sleep) for `seconds` of the calling thread's CPU time."""
    started = time.thread_time()
    while time.thread_time() - started < seconds:
        pass
