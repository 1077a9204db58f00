"""PeerAuthentication as meshca holds it: validated, version-independent values.

`security.istio.io/v1` and `v1beta1` carry the same spec, so one model serves
both. Parsing manifests into these values lives in `ca.policy.manifest`;
resolution in `ca.policy.resolve`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Literal

DEFAULT_ROOT_NAMESPACE = "istio-system"


class MtlsMode(Enum):
    UNSET = "UNSET"
    DISABLE = "DISABLE"
    PERMISSIVE = "PERMISSIVE"
    STRICT = "STRICT"


@dataclass(frozen=True, order=True)
class PolicyRef:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, kw_only=True)
class PeerAuthentication:
    ref: PolicyRef
    created: datetime
    # None: no selector (mesh-wide in the root namespace, namespace-wide elsewhere).
    selector: Mapping[str, str] | None
    mode: MtlsMode
    port_modes: Mapping[int, MtlsMode] = field(default_factory=dict)


@dataclass(frozen=True)
class Workload:
    namespace: str
    labels: Mapping[str, str]


@dataclass(frozen=True)
class InvalidPolicy:
    """A manifest file or API object that failed validation, so its intended policy is unknown."""

    error: str  # names the file or object and what is wrong
    # The namespaces of the policies it declares; None when they cannot be read (it does not
    # parse, or an object has no readable namespace): then it could be in any namespace.
    namespaces: frozenset[str] | None

    def could_apply_to(self, workload: Workload, root_namespace: str) -> bool:
        """Only policies in the workload's namespace and in the root namespace ever apply."""
        if self.namespaces is None:
            return True
        return workload.namespace in self.namespaces or root_namespace in self.namespaces


Level = Literal["default", "mesh", "namespace", "workload", "port"]


@dataclass(frozen=True, kw_only=True)
class Decision:
    """The effective mode for one workload port, and the policy that set it."""

    port: int | None
    mode: MtlsMode  # never UNSET: with nothing set the answer is PERMISSIVE
    level: Level
    decided_by: PolicyRef | None  # None when level is "default"
