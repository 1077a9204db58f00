"""The file-lock elector of `meshca serve --processes N`: one holder of `<state-dir>/leader.lock`
leads, another takes over once the lock is free (at its next try), and a dead holder's lock is
freed by the kernel."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ca.server.leader_lock import LEADER_LOCK, RETRY_S, FileLockElector
from tests.support.clock import FakeClock


def eventually(check: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout_s}s: {what}"
        time.sleep(0.005)


class Events:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def elector(self, path: Path, name: str, clock: FakeClock) -> FileLockElector:
        return FileLockElector(
            path,
            name,
            clock=clock,
            on_started_leading=lambda: self.seen.append(f"{name} leads"),
            on_stopped_leading=lambda: self.seen.append(f"{name} stops"),
        )


def test_the_first_to_start_leads_at_once_and_the_other_waits(tmp_path: Path) -> None:
    clock, events = FakeClock(), Events()
    first = events.elector(tmp_path / LEADER_LOCK, "first", clock)
    second = events.elector(tmp_path / LEADER_LOCK, "second", clock)
    first.start()
    second.start()
    try:
        assert first.is_leader and not second.is_leader
        clock.advance_s(RETRY_S * 3)
        assert not second.is_leader
        assert events.seen == ["first leads"]
        assert (tmp_path / LEADER_LOCK).read_text() == "first\n"
    finally:
        second.stop()
        first.stop()
    assert events.seen == ["first leads", "first stops"]


def test_a_stopped_leader_hands_over_at_the_others_next_try(tmp_path: Path) -> None:
    clock, events = FakeClock(), Events()
    first = events.elector(tmp_path / LEADER_LOCK, "first", clock)
    second = events.elector(tmp_path / LEADER_LOCK, "second", clock)
    first.start()
    second.start()
    try:
        first.stop()
        assert not first.is_leader
        assert not second.is_leader  # it has not tried again yet: the clock has not moved
        clock.advance_s(RETRY_S)
        eventually(lambda: second.is_leader, "the second elector leads")
    finally:
        second.stop()
    assert events.seen == ["first leads", "first stops", "second leads", "second stops"]


def test_the_lock_of_a_killed_holder_is_free(tmp_path: Path) -> None:
    lock = tmp_path / LEADER_LOCK
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
            "print('held', flush=True); sys.stdin.read()",
            str(lock),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    clock = FakeClock()
    elector = FileLockElector(lock, "survivor", clock=clock)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        elector.start()
        assert not elector.is_leader
        holder.kill()
        holder.wait(timeout=10)
        clock.advance_s(RETRY_S)
        eventually(lambda: elector.is_leader, "the survivor leads")
    finally:
        elector.stop()
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=10)


def test_stop_before_leading_ends_the_tries(tmp_path: Path) -> None:
    clock, events = FakeClock(), Events()
    first = events.elector(tmp_path / LEADER_LOCK, "first", clock)
    second = events.elector(tmp_path / LEADER_LOCK, "second", clock)
    first.start()
    second.start()
    second.stop()
    first.stop()
    clock.advance_s(RETRY_S * 2)
    assert not second.is_leader
    assert events.seen == ["first leads", "first stops"]
