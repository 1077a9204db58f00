"""PeerAuthentication policies and manifests for the policy source tests, and waiting for them to apply."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from prometheus_client import REGISTRY

from ca.policy.model import MtlsMode, PeerAuthentication, PolicyRef, Workload
from ca.policy.policy_set import PolicySet

WEB = Workload("shop", {"app": "web"})


T0 = datetime(2024, 5, 1, tzinfo=UTC)


def eventually(check: Callable[[], bool], timeout_s: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def policy(namespace: str, name: str, mode: MtlsMode, **kw: Any) -> PeerAuthentication:
    return PeerAuthentication(ref=PolicyRef(namespace, name), created=T0, selector=None, mode=mode, **kw)


def manifest(namespace: str, name: str, mode: str, selector: str | None = None, extra: str = "") -> str:
    lines = [
        "apiVersion: security.istio.io/v1",
        "kind: PeerAuthentication",
        f"metadata: {{name: {name}, namespace: {namespace}}}",
        "spec:",
        f"  mtls: {{mode: {mode}}}",
    ]
    if selector:
        lines.append(f"  selector: {{matchLabels: {{app: {selector}}}}}")
    return "\n".join(lines) + extra + "\n"


def refs(policies: PolicySet) -> set[str]:
    return {str(p.ref) for p in policies.snapshot()}
