"""When the agent's attempts run: the timetable on a fake clock, and stopping against the
scheduler's own thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_RUNNING

from ca.agent.agent import Agent, AgentSettings
from ca.agent.attempts import ATTEMPT_JOB, AttemptScheduler
from ca.agent.schedule import AGENT_BACKOFF, RenewalPolicy
from ca.agent.svid import Svid
from ca.errors import UnavailableError
from ca.issuance.keys import KeyAlgorithm, generate_private_key
from tests.support.clock import FakeClock
from tests.support.svids import CART, FakeCa

MICROSECOND = timedelta(microseconds=1)


class RecordingSink:
    def __init__(self) -> None:
        self.published: list[Svid] = []

    def publish(self, svid: Svid) -> None:
        self.published.append(svid)


def _agent(clock: FakeClock, ca: FakeCa, sink: RecordingSink) -> Agent:
    settings = AgentSettings(
        trust_domain="cluster.local",
        key_type=KeyAlgorithm.EC_P256,
        ttl=timedelta(hours=1),
        renewal=RenewalPolicy(ratio=0.5, jitter=0.0),
        backoff=AGENT_BACKOFF,
        expected_identity=lambda: CART,
    )
    # random() 1.0: each retry waits its backoff step in full.
    return Agent(
        settings=settings,
        source=ca,
        sinks=[sink],
        clock=clock,
        random=lambda: 1.0,
        generate_key=generate_private_key,
    )


@pytest.fixture
def paused() -> Iterator[BackgroundScheduler]:
    """A scheduler that takes jobs but runs none: the test calls run_due itself."""
    scheduler = BackgroundScheduler(timezone="UTC")
    scheduler.start(paused=True)
    yield scheduler
    if scheduler.running:
        scheduler.shutdown(wait=False)


def _wake_in_s(scheduler: BackgroundScheduler) -> float:
    """How long until the scheduler calls run_due, by the system's time."""
    job = scheduler.get_job(ATTEMPT_JOB)
    assert job is not None, "no wake-up scheduled"
    return float((job.next_run_time - datetime.now(UTC)).total_seconds())


def test_attempts_run_when_the_agents_clock_says_through_backoff_and_rotation(
    paused: BackgroundScheduler,
) -> None:
    clock, sink = FakeClock(), RecordingSink()
    ca = FakeCa(clock)
    ca.fail_with = UnavailableError("the CA is down", reason="unavailable")
    attempts = AttemptScheduler(_agent(clock, ca, sink).attempt, clock, paused)

    def advance(delta: timedelta) -> int:
        """Move the clock, run what is due, and say how many CA calls were made so far."""
        clock.advance(delta)
        attempts.run_due()
        return len(ca.calls)

    attempts.start()
    assert attempts.due_at == clock.now() and _wake_in_s(paused) <= 0
    # Failures: the next attempt 0.5 s, then 1 s, then 2 s later, and not a microsecond sooner.
    assert advance(timedelta(0)) == 1
    for step in (0.5, 1.0, 2.0):
        assert attempts.due_at == clock.now() + timedelta(seconds=step)
        assert step - 1 < _wake_in_s(paused) <= step
        assert advance(timedelta(seconds=step) - MICROSECOND) == len(ca.calls)
        calls = len(ca.calls)
        if step == 2.0:
            ca.fail_with = None
        assert advance(MICROSECOND) == calls + 1
    # A certificate for an hour: renewed at half its remaining life, not a microsecond sooner.
    [svid] = sink.published
    half_life = (svid.not_after - clock.now()) / 2  # NotAfter is in whole seconds
    assert timedelta(minutes=29, seconds=59) < half_life <= timedelta(minutes=30)
    assert attempts.due_at == clock.now() + half_life
    assert half_life.total_seconds() - 1 < _wake_in_s(paused) <= half_life.total_seconds()
    assert advance(half_life - MICROSECOND) == 4
    assert _wake_in_s(paused) <= 0.001  # woken early: the scheduler is asked again for the rest
    assert advance(MICROSECOND) == 5
    assert len(sink.published) == 2 and sink.published[1].leaf.serial_number != svid.leaf.serial_number


def test_retry_now_makes_the_next_attempt_due_at_once(paused: BackgroundScheduler) -> None:
    clock, sink = FakeClock(), RecordingSink()
    ca = FakeCa(clock)
    attempts = AttemptScheduler(_agent(clock, ca, sink).attempt, clock, paused)
    attempts.start()
    attempts.run_due()
    assert attempts.due_at == clock.now() + timedelta(minutes=30)
    attempts.retry_now()
    assert attempts.due_at == clock.now() and _wake_in_s(paused) <= 0
    attempts.run_due()
    assert len(ca.calls) == 2 and len(sink.published) == 2


def test_a_clock_set_back_waits_instead_of_attempting(paused: BackgroundScheduler) -> None:
    clock, sink = FakeClock(), RecordingSink()
    ca = FakeCa(clock)
    attempts = AttemptScheduler(_agent(clock, ca, sink).attempt, clock, paused)
    attempts.start()
    attempts.run_due()
    due_at = attempts.due_at
    assert due_at is not None
    clock.set(due_at - timedelta(minutes=5))  # the scheduler woke at the time it was given
    attempts.run_due()
    assert len(ca.calls) == 1 and attempts.due_at == due_at
    assert 299 < _wake_in_s(paused) <= 300


def test_nothing_is_scheduled_once_stopped(paused: BackgroundScheduler) -> None:
    clock = FakeClock()
    ca = FakeCa(clock)
    attempts = AttemptScheduler(_agent(clock, ca, RecordingSink()).attempt, clock, paused)
    attempts.start()
    attempts.stop()
    attempts.retry_now()
    attempts.run_due()
    assert attempts.due_at is None and ca.calls == []
    assert not paused.running and paused.get_jobs() == []


class _SubmittingWhileStopping(ThreadPoolExecutor):  # type: ignore[misc]
    """Hands a due job on only once the scheduler has begun to stop, as when the agent is
    stopped just as its attempt falls due; it says when it is holding one."""

    def __init__(self) -> None:
        super().__init__()
        self.holding = threading.Event()

    def submit_job(self, job: Any, run_times: Any) -> None:
        self.holding.set()
        deadline = time.monotonic() + 10
        while self._scheduler.state == STATE_RUNNING and time.monotonic() < deadline:
            time.sleep(0.005)  # polls the scheduler's state, which nothing signals
        super().submit_job(job, run_times)


def test_stopping_as_the_attempt_falls_due_leaves_the_scheduler_thread_alive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    died: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda hook: died.append(hook.exc_value))
    clock = FakeClock()
    attempted = threading.Event()

    def attempt() -> datetime:
        attempted.set()
        return clock.now() + timedelta(minutes=30)

    executor = _SubmittingWhileStopping()
    scheduler = BackgroundScheduler(timezone="UTC", executors={"default": executor})
    attempts = AttemptScheduler(attempt, clock, scheduler)
    attempts.start()  # the first attempt is due at once
    assert executor.holding.wait(10), "the scheduler never handed on the due attempt"
    attempts.stop()  # returns once the scheduler thread has ended
    assert died == [], f"the scheduler thread died: {died!r}"
    assert not attempted.is_set()  # stopped before it began
    assert attempts.due_at is None and scheduler.get_jobs() == []
