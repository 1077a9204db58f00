"""When the agent's attempts run: when its clock says they are due, woken by APScheduler.

Each attempt says when the next is due, by the agent's clock (ca.agent.agent). The
scheduler only wakes `run_due` after the clock's remaining wait; whether an attempt
is due is the clock's answer (ca.agent.schedule), so a wake-up that comes early, or
a clock that was set back, waits out the rest instead of attempting, and a test
drives the timetable by moving a fake clock and calling `run_due`.

Stopping does not race the scheduler's thread. APScheduler's shutdown marks it
stopped before taking its job store lock, so a pass over the jobs that was handing
the due attempt to its executor then failed to remove the spent one-off job, and
the scheduler thread died with JobLookupError. Here no job is added once stopping
has begun, and the scheduler is paused (no pass starts) and emptied (which waits
for a pass under way) before it is shut down.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.background import BackgroundScheduler

from ca.agent.schedule import attempt_due, seconds_until
from ca.common.clock import Clock

ATTEMPT_JOB = "certificate-attempt"

Attempt = Callable[[], datetime]
"""Tries once for a certificate and returns when to try next, by the agent's clock."""


class AttemptScheduler:
    def __init__(self, attempt: Attempt, clock: Clock, scheduler: BackgroundScheduler | None = None) -> None:
        """`scheduler` is this object's to start and shut down; one already started (paused,
        say) is used as it is."""
        self._attempt = attempt
        self._clock = clock
        self._scheduler = scheduler or BackgroundScheduler(timezone="UTC")
        self._lock = threading.Lock()  # orders stop() against every change of the due time
        self._due_at: datetime | None = None
        self._stopping = False

    @property
    def due_at(self) -> datetime | None:
        """When the next attempt is due, by the agent's clock; None before start and once stopped."""
        return self._due_at

    def start(self) -> None:
        """The first attempt is due at once."""
        if not self._scheduler.running:
            self._scheduler.start()
        self._due(self._clock.now())

    def run_due(self) -> None:
        """The attempt, if the clock says it is due, and a wake-up for the next one."""
        with self._lock:
            due_at = self._due_at
            if due_at is None:
                return
            if not attempt_due(due_at, self._clock.now()):
                self._wake_for(due_at)  # woken early: the rest of the wait
                return
        self._due(self._attempt())

    def retry_now(self) -> None:
        """An attempt at once, whenever the next was due."""
        self._due(self._clock.now())

    def stop(self) -> None:
        """No attempt starts after this; one under way finishes on its own thread."""
        with self._lock:
            self._stopping = True
            self._due_at = None
        if not self._scheduler.running:
            return
        self._scheduler.pause()
        self._scheduler.remove_all_jobs()
        self._scheduler.shutdown(wait=False)

    def _due(self, due_at: datetime) -> None:
        with self._lock:
            if self._stopping:
                return
            self._due_at = due_at
            self._wake_for(due_at)

    def _wake_for(self, due_at: datetime) -> None:
        """Has the scheduler call `run_due` once the clock's wait until `due_at` has passed."""
        wait_s = seconds_until(due_at, self._clock.now())
        self._scheduler.add_job(
            self.run_due,
            "date",
            run_date=_scheduler_time_in(wait_s),
            id=ATTEMPT_JOB,
            replace_existing=True,
            misfire_grace_time=None,
        )


def _scheduler_time_in(seconds: float) -> datetime:
    # APScheduler fires by the system's wall time; the wait was measured on the agent's clock.
    return datetime.now(UTC) + timedelta(seconds=seconds)
