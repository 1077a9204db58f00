"""The workloads behind pods that a rotation cannot push, and restarting them as
`kubectl rollout restart` does.

A pod's controller is followed up one or two owner references: Pod -> ReplicaSet ->
Deployment, or Pod -> StatefulSet, or Pod -> DaemonSet. A restart sets the pod template's
`kubectl.kubernetes.io/restartedAt` annotation to the time (RFC 3339) with a strategic merge
patch, so the controller rolls out new pods, which get new certificates. A pod with no such
owner (a bare pod, a Job's, a ReplicaSet of its own) is listed as a Pod with the reason it
cannot be restarted. Problems are reported per workload, never raised, so one forbidden
patch does not stop the others.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from kubernetes import client

from ca.kube.client import TRANSPORT_ERRORS, transport_error_text
from ca.ledger.rotation_operations import PodRef, Workload, WorkloadFinder

log = logging.getLogger(__name__)

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
RESTARTABLE = ("Deployment", "StatefulSet", "DaemonSet")
FIELD_MANAGER = "meshca"
_STRATEGIC_MERGE = "application/strategic-merge-patch+json"


def restarted_at_text(now: datetime) -> str:
    """RFC 3339 in UTC to the second, as the annotation's value."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def restart_patch(now: datetime) -> dict[str, Any]:
    return {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: restarted_at_text(now)}}}}}


def _controller(metadata: Any) -> tuple[str, str] | None:
    """(kind, name) of the object's controlling owner."""
    for owner in getattr(metadata, "owner_references", None) or ():
        if owner.controller:
            return str(owner.kind), str(owner.name)
    return None


def _by_name(items: Iterable[Any]) -> dict[str, tuple[str, str] | None]:
    return {item.metadata.name: _controller(item.metadata) for item in items}


def _failure(what: str, err: BaseException) -> str:
    return f"{what} failed ({transport_error_text(err)})"


def _owner_of(
    pod: str, pods: Mapping[str, tuple[str, str] | None], replica_sets: Mapping[str, tuple[str, str] | None]
) -> tuple[str, str, str | None]:
    """(kind, name, problem) of the workload to restart for `pod`."""
    if pod not in pods:
        return "Pod", pod, "the pod no longer exists; its certificate is revoked when the order's grace ends"
    owner = pods[pod]
    if owner is None:
        return "Pod", pod, "no Deployment, StatefulSet or DaemonSet owns this pod; delete it to replace it"
    kind, name = owner
    if kind == "ReplicaSet":
        if name not in replica_sets:
            return "Pod", pod, f"its ReplicaSet {name} was not found"
        parent = replica_sets[name]
        if parent is None or parent[0] != "Deployment":
            return "Pod", pod, f"its ReplicaSet {name} has no Deployment; delete the pod to replace it"
        kind, name = parent
    if kind not in RESTARTABLE:
        return "Pod", pod, f"it is owned by {kind} {name}, which cannot be restarted; delete the pod"
    return kind, name, None


def _namespace_owners(api: client.ApiClient, namespace: str, names: Sequence[str]) -> list[Workload]:
    try:
        pods = _by_name(client.CoreV1Api(api).list_namespaced_pod(namespace).items)
        needs_sets = any((pods.get(n) or ("", ""))[0] == "ReplicaSet" for n in names)
        replica_sets = (
            _by_name(client.AppsV1Api(api).list_namespaced_replica_set(namespace).items) if needs_sets else {}
        )
    except TRANSPORT_ERRORS as err:
        problem = _failure(f"looking up the owners of pods in namespace {namespace}", err)
        return [Workload(namespace=namespace, kind="Pod", name=n, pods=(n,), problem=problem) for n in names]
    grouped: dict[tuple[str, str, str | None], list[str]] = {}
    for name in names:
        grouped.setdefault(_owner_of(name, pods, replica_sets), []).append(name)
    return [
        Workload(namespace=namespace, kind=kind, name=owner, pods=tuple(sorted(members)), problem=problem)
        for (kind, owner, problem), members in sorted(grouped.items(), key=lambda item: item[0][:2])
    ]


def owners(api: client.ApiClient, pods: Sequence[PodRef]) -> list[Workload]:
    """The workloads to restart for these pods, by namespace: two list calls per namespace."""
    by_namespace: dict[str, list[str]] = {}
    for namespace, pod in pods:
        by_namespace.setdefault(namespace, []).append(pod)
    found: list[Workload] = []
    for namespace in sorted(by_namespace):
        found.extend(_namespace_owners(api, namespace, sorted(set(by_namespace[namespace]))))
    return found


def _patch(api: client.ApiClient, workload: Workload, body: dict[str, Any]) -> None:
    apps = client.AppsV1Api(api)
    patch = {
        "Deployment": apps.patch_namespaced_deployment,
        "StatefulSet": apps.patch_namespaced_stateful_set,
        "DaemonSet": apps.patch_namespaced_daemon_set,
    }[workload.kind]
    patch(
        workload.name,
        workload.namespace,
        body,
        field_manager=FIELD_MANAGER,
        _content_type=_STRATEGIC_MERGE,
    )


def restart(api: client.ApiClient, workloads: Sequence[Workload], now: datetime) -> list[Workload]:
    """Each restartable workload restarted (or the reason it was not); the others as they were."""
    body = restart_patch(now)
    done: list[Workload] = []
    for workload in workloads:
        if workload.kind not in RESTARTABLE or workload.problem:
            done.append(workload)
            continue
        try:
            _patch(api, workload, body)
        except TRANSPORT_ERRORS as err:
            problem = _failure(f"patching {workload.kind} {workload.namespace}/{workload.name}", err)
            log.warning("could not restart a workload", extra={"detail": problem})
            done.append(replace(workload, problem=problem))
            continue
        log.info(
            "restarted a workload for a rotation",
            extra={"namespace": workload.namespace, "kind": workload.kind, "workload": workload.name},
        )
        done.append(replace(workload, restarted=True))
    return done


def finder(api: client.ApiClient, now: datetime) -> WorkloadFinder:
    """A WorkloadFinder over this API client: owners, restarted when asked."""

    def find(pods: Sequence[PodRef], restart_them: bool) -> list[Workload]:
        found = owners(api, pods)
        return restart(api, found, now) if restart_them else found

    return find
