"""Sidecar injection into a Kubernetes object (pure): the pod template of each workload kind.

Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController and Job carry theirs at
spec.template, CronJob at spec.jobTemplate.spec.template, a Pod is one; a List is injected item
by item. Any other kind (Services, ConfigMaps, custom resources) passes through untouched.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ca.inject.pod import inject_pod
from ca.inject.settings import InjectSettings

TEMPLATE_PATHS: Mapping[str, tuple[str, ...]] = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
    "Pod": (),
}


@dataclass(frozen=True, kw_only=True)
class ManifestInjection:
    obj: Any  # a new object; the input is never changed
    changed: bool
    warnings: list[str] = field(default_factory=list)


def describe(obj: Mapping[str, Any]) -> str:
    """`Deployment shop/web`, for messages."""
    metadata = obj.get("metadata")
    metadata = metadata if isinstance(metadata, Mapping) else {}
    name = metadata.get("name") or metadata.get("generateName") or "(unnamed)"
    namespace = metadata.get("namespace")
    return f"{obj.get('kind')} {namespace + '/' if namespace else ''}{name}"


def inject_manifest(obj: Any, settings: InjectSettings | None = None) -> ManifestInjection:
    """`obj` with every pod template in it injected; anything else unchanged. Raises ConfigError
    for a pod whose enforce annotation is not a list of ports."""
    settings = settings or InjectSettings()
    if not isinstance(obj, Mapping):
        return ManifestInjection(obj=copy.deepcopy(obj), changed=False)
    kind = obj.get("kind")
    if kind == "List" and isinstance(obj.get("items"), list):
        out = copy.deepcopy(dict(obj))
        results = [inject_manifest(item, settings) for item in obj["items"]]
        out["items"] = [r.obj for r in results]
        return ManifestInjection(
            obj=out,
            changed=any(r.changed for r in results),
            warnings=[w for r in results for w in r.warnings],
        )
    path = TEMPLATE_PATHS.get(kind) if isinstance(kind, str) else None
    if path is None:
        return ManifestInjection(obj=copy.deepcopy(obj), changed=False)
    out = copy.deepcopy(dict(obj))
    parent: Any = out
    for key in path[:-1]:
        parent = parent.get(key) if isinstance(parent, dict) else None
    template = parent.get(path[-1]) if path and isinstance(parent, dict) else out
    if not isinstance(template, Mapping):
        return ManifestInjection(
            obj=out, changed=False, warnings=[f"{describe(obj)}: no pod template; left alone"]
        )
    result = inject_pod(template, settings, where=describe(obj))
    if not path:
        return ManifestInjection(obj=result.pod, changed=result.changed, warnings=result.warnings)
    parent[path[-1]] = result.pod
    return ManifestInjection(obj=out, changed=result.changed, warnings=result.warnings)
