"""The current SVID, handed to every open stream when it changes.

Each stream registers a queue and blocks on it, so an idle agent wakes for
nothing: no polling.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

from ca.agent.svid import Svid

Event = tuple[str, Any]


class SvidBroadcast:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._svid: Svid | None = None
        self._version = 0
        self._listeners: set[queue.SimpleQueue[Event]] = set()

    @property
    def current(self) -> tuple[int, Svid | None]:
        with self._lock:
            return self._version, self._svid

    def publish(self, svid: Svid) -> None:
        with self._lock:
            self._svid = svid
            self._version += 1
            listeners = list(self._listeners)
        for listener in listeners:
            listener.put(("svid", self._version))

    def listen(self) -> queue.SimpleQueue[Event]:
        events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        with self._lock:
            self._listeners.add(events)
        return events

    def forget(self, events: queue.SimpleQueue[Event]) -> None:
        with self._lock:
            self._listeners.discard(events)

    @property
    def listener_count(self) -> int:
        with self._lock:
            return len(self._listeners)
