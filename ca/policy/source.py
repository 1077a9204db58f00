"""The policies in effect (`PolicySet`), per-workload decisions on them, and their sources.

A source (a YAML directory or the Kubernetes API) keeps a `PolicySet` current;
a `WorkloadPolicy` answers "which mode for this port" per connection from a
resolution cached until the set changes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from apscheduler.schedulers.base import BaseScheduler

from ca.errors import PolicyError
from ca.policy.model import (
    DEFAULT_ROOT_NAMESPACE,
    Decision,
    InvalidPolicy,
    PeerAuthentication,
    PolicyRef,
    Workload,
)
from ca.policy.resolve import Resolution, resolve_workload

log = logging.getLogger(__name__)

KUBE_SPEC = "kube"


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


@dataclass
class _Cached:
    generation: int
    resolution: Resolution
    by_port: dict[int, Decision] = field(default_factory=dict)


class WorkloadPolicy:
    """The effective mode per port for one workload, following a `PolicySet`.

    `decide` is meant to be called for every connection: it resolves once per
    generation of the set and then answers from a per-port cache.
    """

    def __init__(
        self, policy_set: PolicySet, workload: Workload, *, root_namespace: str = DEFAULT_ROOT_NAMESPACE
    ) -> None:
        self.policy_set = policy_set
        self.workload = workload
        self.root_namespace = root_namespace
        self._cached = self._resolve()

    def decide(self, port: int) -> Decision:
        cached = self._cached
        if cached.generation != self.policy_set.generation:
            cached = self._cached = self._resolve()
        decision = cached.by_port.get(port)
        if decision is None:
            decision = cached.by_port[port] = cached.resolution.decision_for(port)
        return decision

    def resolution(self) -> Resolution:
        cached = self._cached
        if cached.generation != self.policy_set.generation:
            cached = self._cached = self._resolve()
        return cached.resolution

    def _resolve(self) -> _Cached:
        generation, policies = self.policy_set.versioned()
        resolution = resolve_workload(policies, self.workload, root_namespace=self.root_namespace)
        return _Cached(generation, resolution)


class PolicySource(Protocol):
    """Keeps a PolicySet current from somewhere (files, the Kubernetes API)."""

    def start(self, wait_s: float = 10.0) -> None:
        """Loads everything once (raising a ConfigError if it cannot), then follows changes."""
        ...

    def stop(self) -> None: ...

    @property
    def synced(self) -> bool: ...

    def invalid_policies(self) -> tuple[InvalidPolicy, ...]:
        """The files or objects whose current content failed validation (and so is not in effect)."""
        ...


def refuse_invalid_in_scope(
    invalid: Iterable[InvalidPolicy], workload: Workload, *, root_namespace: str
) -> None:
    """PolicyError if an invalid policy could apply to `workload`: its mode is then unknown, and
    resolving without that policy could report less protection than the one intended."""
    in_scope = [policy for policy in invalid if policy.could_apply_to(workload, root_namespace)]
    if in_scope:
        raise PolicyError(
            f"the mTLS mode of namespace {workload.namespace} is unknown: a PeerAuthentication that "
            f"could apply to it is invalid: {' | '.join(policy.error for policy in in_scope)}; "
            "fix or remove it",
            reason="invalid_policy_in_scope",
        )


def open_policy_source(
    spec: str,
    *,
    policy_set: PolicySet,
    kubeconfig: Path | None = None,
    in_cluster: bool = False,
    scheduler: BaseScheduler | None = None,
) -> PolicySource:
    """`kube` for the Kubernetes API, otherwise a YAML/JSON file or a directory of them."""
    if spec == KUBE_SPEC:
        from ca.kube.client import api_client
        from ca.kube.policy_watch import KubePolicySource

        return KubePolicySource(api_client(kubeconfig, in_cluster), policy_set)
    from ca.policy.yaml_source import YamlPolicySource

    return YamlPolicySource(Path(spec), policy_set, scheduler=scheduler)


@dataclass(frozen=True)
class LoadedPolicies:
    policies: tuple[PeerAuthentication, ...]
    invalid: tuple[InvalidPolicy, ...] = ()  # manifests or objects that failed validation
    notes: tuple[str, ...] = ()  # anything else a reader should know about the source


def load_policies_once(
    spec: str, *, kubeconfig: Path | None = None, in_cluster: bool = False, wait_s: float = 10.0
) -> LoadedPolicies:
    """Reads the policies once (for `meshca policy explain`); invalid ones are collected, not fatal."""
    if spec == KUBE_SPEC:
        from ca.kube.client import api_client
        from ca.kube.policy_watch import list_policies_once

        return list_policies_once(api_client(kubeconfig, in_cluster), timeout_s=wait_s)
    from ca.policy.yaml_source import read_policies_once

    return read_policies_once(Path(spec))
