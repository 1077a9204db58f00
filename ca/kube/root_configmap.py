"""The trust bundle ConfigMap of every namespace (pure): which namespaces get one, what it must hold,
and whether one seen in the cluster needs repair.

Sidecars mount the ConfigMap `istio-ca-root-cert` and read the CA's roots from its key
`root-cert.pem`, so every namespace a workload may run in carries it. As with Istio's own
control plane: every namespace but kube-public, kube-node-lease and local-path-storage gets
one (kube-system too, where node proxies run), except while it is being deleted; it is created
with the label `istio.io/config: "true"`; a repair restores the `root-cert.pem` value and keeps
whatever else someone added to the ConfigMap (other keys, labels, annotations).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from enum import Enum
from typing import Any

CONFIGMAP_NAME = "istio-ca-root-cert"
ROOT_CERT_KEY = "root-cert.pem"
CONFIGMAP_LABELS: Mapping[str, str] = {"istio.io/config": "true"}
SKIPPED_NAMESPACES = frozenset({"kube-public", "kube-node-lease", "local-path-storage"})
TERMINATING = "Terminating"

KubeObject = Mapping[str, Any]


class Repair(Enum):
    NONE = "none"  # the ConfigMap holds the bundle
    CREATE = "create"  # there is no ConfigMap
    UPDATE = "update"  # there is one, without the bundle or with another value


def _metadata(obj: KubeObject) -> Mapping[str, Any]:
    metadata = obj.get("metadata")
    return metadata if isinstance(metadata, Mapping) else {}


def is_published_to(name: str) -> bool:
    """Whether the namespace called `name` carries the ConfigMap at all."""
    return name not in SKIPPED_NAMESPACES


def namespace_wants_configmap(namespace: KubeObject) -> bool:
    """A Namespace object as the API serves it: not skipped by name, and not being deleted (a
    Terminating namespace refuses new objects)."""
    metadata = _metadata(namespace)
    status = namespace.get("status")
    phase = status.get("phase") if isinstance(status, Mapping) else None
    name = str(metadata.get("name") or "")
    return (
        bool(name)
        and is_published_to(name)
        and phase != TERMINATING
        and not metadata.get("deletionTimestamp")
    )


def desired_configmap(namespace: str, bundle_pem: str) -> dict[str, Any]:
    """The ConfigMap to create in `namespace`."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": CONFIGMAP_NAME, "namespace": namespace, "labels": dict(CONFIGMAP_LABELS)},
        "data": {ROOT_CERT_KEY: bundle_pem},
    }


def repair_needed(observed: KubeObject | None, bundle_pem: str) -> Repair:
    """What the observed ConfigMap (None: there is none) needs so that sidecars read `bundle_pem`."""
    if observed is None:
        return Repair.CREATE
    data = observed.get("data")
    if isinstance(data, Mapping) and data.get(ROOT_CERT_KEY) == bundle_pem:
        return Repair.NONE
    return Repair.UPDATE


def repaired(observed: KubeObject, bundle_pem: str) -> dict[str, Any]:
    """The observed ConfigMap with the bundle put back under `root-cert.pem`, the rest kept as it was
    (its resourceVersion included, so a write over a newer edit is refused, not lost)."""
    result = copy.deepcopy(dict(observed))
    data = result.get("data")
    result["data"] = {**(data if isinstance(data, Mapping) else {}), ROOT_CERT_KEY: bundle_pem}
    result.setdefault("apiVersion", "v1")
    result.setdefault("kind", "ConfigMap")
    return result
