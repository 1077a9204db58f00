"""Istio's PeerAuthentication resolution for one workload and port (pure).

The rules, as istiod applies them (pilot/pkg/model/authentication.go
`getConfigsForWorkload`, `sortConfigByCreationTime`, and
pilot/pkg/security/authn/policy_applier.go `ComposePeerAuthentication`):

- Only policies in the workload's namespace and in the root namespace are
  considered; a selector policy must match (its matchLabels a subset of the
  workload's labels).
- Scope: no selector (or an empty one) in the root namespace is mesh-wide; no
  selector in any other namespace is namespace-wide; a selector policy outside
  the root namespace is workload-level. A selector policy in the root namespace
  is ignored, also for workloads that run in the root namespace themselves
  (their namespace-wide policy is then the mesh-wide one).
- Within a scope the policy created first wins, then the smaller name, then
  the smaller namespace. The winner counts even when its mode is UNSET: it
  then inherits; a later policy in the same scope is not consulted.
- Mesh -> namespace -> workload: each level's UNSET inherits from the one
  above; with nothing set the mode is PERMISSIVE.
- Port level comes only from the winning workload policy; an UNSET port
  inherits the workload's resolved mode (and so reports the level that set it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal

from ca.policy.model import (
    DEFAULT_ROOT_NAMESPACE,
    Decision,
    MtlsMode,
    PeerAuthentication,
    Workload,
)

Scope = Literal["mesh", "namespace", "workload"]
SCOPES: tuple[Scope, ...] = ("mesh", "namespace", "workload")


@dataclass(frozen=True, kw_only=True)
class Candidates:
    """The policies that apply to a workload, per scope, oldest (the winner) first."""

    mesh: tuple[PeerAuthentication, ...] = ()
    namespace: tuple[PeerAuthentication, ...] = ()
    workload: tuple[PeerAuthentication, ...] = ()
    # Selector policies in the root namespace whose labels match: Istio ignores them.
    ignored: tuple[PeerAuthentication, ...] = ()

    def winner(self, scope: Scope) -> PeerAuthentication | None:
        policies: tuple[PeerAuthentication, ...] = getattr(self, scope, ())
        return policies[0] if policies else None


@dataclass(frozen=True, kw_only=True)
class Resolution:
    """Everything resolved for one workload: the mode for "any other port" and per-port overrides."""

    workload: Decision  # port None: the mode of every port without a port-level entry
    ports: Mapping[int, Decision] = field(default_factory=dict)
    candidates: Candidates = field(default_factory=Candidates)

    def decision_for(self, port: int | None) -> Decision:
        if port is None:
            return self.workload
        explicit = self.ports.get(port)
        return explicit if explicit is not None else replace(self.workload, port=port)


def order_key(policy: PeerAuthentication) -> tuple[datetime, str, str]:
    """Istio's precedence within a scope: oldest first, then name, then namespace."""
    return (policy.created, policy.ref.name, policy.ref.namespace)


def selector_matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def candidates(
    policies: Iterable[PeerAuthentication],
    workload: Workload,
    *,
    root_namespace: str = DEFAULT_ROOT_NAMESPACE,
) -> Candidates:
    mesh: list[PeerAuthentication] = []
    namespace: list[PeerAuthentication] = []
    selected: list[PeerAuthentication] = []
    ignored: list[PeerAuthentication] = []
    for policy in policies:
        policy_namespace = policy.ref.namespace
        if policy_namespace not in (root_namespace, workload.namespace):
            continue
        if policy.selector is None:
            (mesh if policy_namespace == root_namespace else namespace).append(policy)
        elif selector_matches(policy.selector, workload.labels):
            (ignored if policy_namespace == root_namespace else selected).append(policy)
    return Candidates(
        mesh=tuple(sorted(mesh, key=order_key)),
        namespace=tuple(sorted(namespace, key=order_key)),
        workload=tuple(sorted(selected, key=order_key)),
        ignored=tuple(sorted(ignored, key=order_key)),
    )


def resolve_workload(
    policies: Iterable[PeerAuthentication],
    workload: Workload,
    *,
    root_namespace: str = DEFAULT_ROOT_NAMESPACE,
) -> Resolution:
    found = candidates(policies, workload, root_namespace=root_namespace)
    decision = Decision(port=None, mode=MtlsMode.PERMISSIVE, level="default", decided_by=None)
    for scope in SCOPES:
        winner = found.winner(scope)
        if winner is not None and winner.mode is not MtlsMode.UNSET:
            decision = Decision(port=None, mode=winner.mode, level=scope, decided_by=winner.ref)
    chosen = found.winner("workload")
    ports = {} if chosen is None else _port_decisions(chosen, decision)
    return Resolution(workload=decision, ports=ports, candidates=found)


def _port_decisions(policy: PeerAuthentication, inherited: Decision) -> dict[int, Decision]:
    decisions: dict[int, Decision] = {}
    for port, mode in policy.port_modes.items():
        if mode is MtlsMode.UNSET:
            decisions[port] = replace(inherited, port=port)
        else:
            decisions[port] = Decision(port=port, mode=mode, level="port", decided_by=policy.ref)
    return decisions


def resolve(
    policies: Iterable[PeerAuthentication],
    workload: Workload,
    port: int | None,
    *,
    root_namespace: str = DEFAULT_ROOT_NAMESPACE,
) -> Decision:
    """The effective mode for `port` of `workload` (None: any port without a port-level entry)."""
    return resolve_workload(policies, workload, root_namespace=root_namespace).decision_for(port)


def resolve_ports(
    policies: Iterable[PeerAuthentication],
    workload: Workload,
    ports: Iterable[int],
    *,
    root_namespace: str = DEFAULT_ROOT_NAMESPACE,
) -> dict[int, Decision]:
    resolution = resolve_workload(policies, workload, root_namespace=root_namespace)
    return {port: resolution.decision_for(port) for port in ports}
