"""The policies in effect (`PolicySet`) and a one-off read of a source (`LoadedPolicies`).

Every policy source keeps a `PolicySet` current; the readers of it (the
per-workload decisions, the enforcer, the Envoy configuration) follow its
changes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ca.policy.model import InvalidPolicy, PeerAuthentication, PolicyRef

log = logging.getLogger(__name__)


class PolicySet:
    """The current PeerAuthentications, safe to read and change from any thread.

    `generation` grows by one with every change that alters the set (a write
    that changes nothing keeps it), and subscribers are called after each one.
    """

    def __init__(self, policies: Iterable[PeerAuthentication] = ()) -> None:
        self._lock = threading.Lock()
        self._by_ref: dict[PolicyRef, PeerAuthentication] = {p.ref: p for p in policies}
        self._state: tuple[int, tuple[PeerAuthentication, ...]] = (0, self._ordered())
        self._subscribers: list[Callable[[], None]] = []

    @property
    def generation(self) -> int:
        return self._state[0]

    def snapshot(self) -> tuple[PeerAuthentication, ...]:
        return self._state[1]

    def versioned(self) -> tuple[int, tuple[PeerAuthentication, ...]]:
        """The generation and the policies of that generation, read together."""
        return self._state

    def replace(self, policies: Iterable[PeerAuthentication]) -> bool:
        new = {p.ref: p for p in policies}
        with self._lock:
            if new == self._by_ref:
                return False
            self._by_ref = new
            self._bump()
        self._notify()
        return True

    def upsert(self, policy: PeerAuthentication) -> bool:
        with self._lock:
            if self._by_ref.get(policy.ref) == policy:
                return False
            self._by_ref[policy.ref] = policy
            self._bump()
        self._notify()
        return True

    def delete(self, ref: PolicyRef) -> bool:
        with self._lock:
            if self._by_ref.pop(ref, None) is None:
                return False
            self._bump()
        self._notify()
        return True

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Calls `callback()` after every change; returns a function that unsubscribes."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def _ordered(self) -> tuple[PeerAuthentication, ...]:
        return tuple(self._by_ref[ref] for ref in sorted(self._by_ref))

    def _bump(self) -> None:
        self._state = (self._state[0] + 1, self._ordered())

    def _notify(self) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback()
            except Exception:
                log.exception("a policy change subscriber failed")


@dataclass(frozen=True)
class LoadedPolicies:
    policies: tuple[PeerAuthentication, ...]
    invalid: tuple[InvalidPolicy, ...] = ()  # manifests or objects that failed validation
    notes: tuple[str, ...] = ()  # anything else a reader should know about the source
