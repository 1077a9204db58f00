"""The event loop's deadline queue."""

from __future__ import annotations

from ca.enforce.loop import DeadlineQueue


def test_a_deadline_queue_keeps_order_and_delay() -> None:
    now = [10.0]
    queue = DeadlineQueue(0.15, lambda: now[0])
    queue.add(lambda: None)
    now[0] = 10.1
    queue.add(lambda: None)
    assert [round(deadline, 3) for deadline, _ in queue.entries] == [10.15, 10.25]
