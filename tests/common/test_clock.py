"""The real clock's waits, and the fake clock's: blocked until the test moves time."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from ca.common.clock import SystemClock
from tests.support.clock import FakeClock


def test_system_clock_wait_returns_at_once_when_the_event_is_set() -> None:
    clock, event = SystemClock(), threading.Event()
    assert clock.wait(event, 0.0) is False
    event.set()
    started = clock.monotonic()
    assert clock.wait(event, 60.0) is True
    assert clock.monotonic() - started < 5.0


def test_fake_sleep_ends_when_the_test_advances_time_far_enough() -> None:
    clock = FakeClock()
    with ThreadPoolExecutor(1) as pool:
        sleeping = pool.submit(clock.sleep, 2.0)
        assert clock.waits(1) == [2.0]
        clock.advance_s(1.999)
        assert not sleeping.done()
        clock.advance(timedelta(milliseconds=1))
        sleeping.result(timeout=5)
    assert clock.monotonic() == 1002.0


def test_fake_wait_ends_early_when_the_event_is_set() -> None:
    clock, event = FakeClock(), threading.Event()
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(clock.wait, event, 30.0)
        clock.waits(1)
        event.set()
        assert waiting.result(timeout=5) is True
    assert clock.wait(threading.Event(), 0.0) is False


def test_setting_the_wall_time_does_not_move_monotonic_time() -> None:
    clock = FakeClock()
    before = clock.monotonic()
    clock.set(clock.now() - timedelta(hours=1))
    assert clock.monotonic() == before


def test_fake_timers_run_on_their_loop_in_order_once_time_reaches_them() -> None:
    clock, ran = FakeClock(), []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        clock.call_later(loop, 1.0, lambda: ran.append("later"))
        clock.call_later(loop, 0.5, lambda: ran.append("sooner"))
        clock.call_later(loop, 0.5, lambda: ran.append("cancelled")).cancel()
        clock.call_later(loop, 0.0, lambda: ran.append("at once"))
        assert clock.timers() == [0.5, 1.0]
        await asyncio.sleep(0)
        assert ran == ["at once"]
        clock.advance_s(0.499999)
        await asyncio.sleep(0)
        assert ran == ["at once"] and clock.timers() == [0.000001, 0.500001]
        clock.advance(timedelta(microseconds=1))
        await asyncio.sleep(0)
        assert ran == ["at once", "sooner"]
        clock.advance_s(10)
        await asyncio.sleep(0)
        assert ran == ["at once", "sooner", "later"] and clock.timers() == []

    asyncio.run(scenario())


def test_system_clock_timers_are_the_loops_own() -> None:
    ran: list[str] = []

    async def scenario() -> None:
        loop, clock = asyncio.get_running_loop(), SystemClock()
        done = loop.create_future()
        clock.call_later(loop, 60.0, lambda: ran.append("cancelled")).cancel()
        clock.call_later(loop, 0.001, lambda: done.set_result(None))
        await asyncio.wait_for(done, 10)

    asyncio.run(scenario())
    assert ran == []
