"""Reading the sandbox's state: certificates from the agents' files, counts from the demo apps'
`/status` and the enforcers' `/metrics`, modes from the policy files (resolved as the enforcers
resolve them). One `Poller.snapshot()` reads everything once; a process that does not answer
leaves what it said last in place."""

from __future__ import annotations

import http.client
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from ca.common.clock import Clock
from ca.errors import MeshcaError
from ca.issuance.cert_dir import CERT_CHAIN
from ca.issuance.svid_id import svid_spiffe_id
from ca.policy.model import Workload
from ca.policy.resolve import resolve_workload
from ca.policy.yaml_source import read_policies_once
from ca.sandbox.plan import LOOPBACK, NAMESPACE, Plan
from ca.sandbox.view_model import (
    Calls,
    Certificate,
    EnforcerCounts,
    PolicyMode,
    Sample,
    Snapshot,
    WorkloadState,
    calls_from_status,
    enforcer_counts,
)

HTTP_TIMEOUT_S = 1.0


@dataclass(frozen=True, kw_only=True)
class Endpoints:
    """Where to ask: each demo app's HTTP port and each enforcer's metrics port, by workload."""

    apps: Mapping[str, int]
    enforcer_metrics: Mapping[str, int]


def http_get(port: int, path: str) -> bytes | None:
    """The body of GET http://127.0.0.1:port/path, or None if it does not answer 200."""
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=HTTP_TIMEOUT_S)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        return body if response.status == 200 else None
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def read_certificate(cert_dir: Path) -> Certificate | None:
    """The leaf of the agent's cert-chain.pem, or None before the first one is written."""
    try:
        leaf = x509.load_pem_x509_certificate((cert_dir / CERT_CHAIN).read_bytes())
        spiffe_id = str(svid_spiffe_id(leaf))
    except (OSError, ValueError, MeshcaError):
        return None
    return Certificate(
        spiffe_id=spiffe_id, serial=format(leaf.serial_number, "x"), not_after=leaf.not_valid_after_utc
    )


def metric_samples(text: str) -> list[Sample]:
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


class Poller:
    def __init__(self, plan: Plan, endpoints: Endpoints, clock: Clock) -> None:
        self._plan = plan
        self._endpoints = endpoints
        self._clock = clock
        self._calls: dict[str, Mapping[str, Calls]] = {}
        self._enforcers: dict[str, EnforcerCounts] = {}
        self._modes: dict[str, PolicyMode] = {}

    def snapshot(self) -> Snapshot:
        problem = self._read_policies()
        states = []
        for workload in self._plan.workloads:
            name = workload.name
            self._read_app(name)
            if workload.meshed:
                self._read_enforcer(name)
            states.append(
                WorkloadState(
                    name=name,
                    meshed=workload.meshed,
                    certificate=read_certificate(self._plan.layout.certs(name)) if workload.meshed else None,
                    policy=self._modes.get(name),
                    calls=self._calls.get(name, {}),
                    enforcer=self._enforcers.get(name),
                )
            )
        return Snapshot(at=self._clock.now(), workloads=tuple(states), policy_problem=problem)

    def _read_app(self, name: str) -> None:
        port = self._endpoints.apps.get(name)
        body = http_get(port, "/status") if port is not None else None
        if body is None:
            return
        try:
            document: Any = json.loads(body)
        except ValueError:
            return
        if isinstance(document, dict):
            self._calls[name] = calls_from_status(document)

    def _read_enforcer(self, name: str) -> None:
        port = self._endpoints.enforcer_metrics.get(name)
        body = http_get(port, "/metrics") if port is not None else None
        if body is None:
            return
        try:
            self._enforcers[name] = enforcer_counts(metric_samples(body.decode()))
        except ValueError:
            return

    def _read_policies(self) -> str | None:
        """Each meshed workload's mode from the policy directory; with an invalid file, the modes
        stay as they were (the enforcers keep their last good policies) and the problem is said."""
        try:
            loaded = read_policies_once(self._plan.layout.policies)
        except MeshcaError as err:
            return err.message
        if loaded.invalid:
            return " | ".join(invalid.error for invalid in loaded.invalid)
        for workload in self._plan.workloads:
            if not workload.meshed:
                continue
            decision = resolve_workload(
                loaded.policies, Workload(namespace=NAMESPACE, labels={"app": workload.name})
            ).workload
            decided_by = "default" if decision.decided_by is None else str(decision.decided_by)
            self._modes[workload.name] = PolicyMode(mode=decision.mode.value, decided_by=decided_by)
        return None
