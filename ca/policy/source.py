"""Per-workload decisions on the policies in effect, and the sources that keep them current.

A source (a YAML directory or the Kubernetes API) keeps a `PolicySet` current;
a `WorkloadPolicy` answers "which mode for this port" per connection from a
resolution cached until the set changes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from apscheduler.schedulers.base import BaseScheduler

from ca.errors import PolicyError
from ca.policy.model import DEFAULT_ROOT_NAMESPACE, Decision, InvalidPolicy, Workload
from ca.policy.policy_set import LoadedPolicies, PolicySet
from ca.policy.resolve import Resolution, resolve_workload

KUBE_SPEC = "kube"


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
        from ca.policy.kube_source import KubePolicySource

        return KubePolicySource(api_client(kubeconfig, in_cluster), policy_set)
    from ca.policy.yaml_source import YamlPolicySource

    return YamlPolicySource(Path(spec), policy_set, scheduler=scheduler)


def load_policies_once(
    spec: str, *, kubeconfig: Path | None = None, in_cluster: bool = False, wait_s: float = 10.0
) -> LoadedPolicies:
    """Reads the policies once (for `meshca policy explain`); invalid ones are collected, not fatal."""
    if spec == KUBE_SPEC:
        from ca.kube.client import api_client
        from ca.policy.kube_source import list_policies_once

        return list_policies_once(api_client(kubeconfig, in_cluster), timeout_s=wait_s)
    from ca.policy.yaml_source import read_policies_once

    return read_policies_once(Path(spec))
