"""Which replica does the singleton work: leader election over a Kubernetes Lease.

`LeaseElector` runs the election on a thread of its own: every retry period it reads the
Lease (coordination.k8s.io/v1) and acquires, renews or waits as `ca.kube.election` decides;
each write names the resourceVersion it read, so of two replicas writing at once one wins
and the other sees a conflict and waits. A leader that cannot renew within the renew
deadline gives leadership up; one stopped cleanly releases the lease so that another replica
takes over at its next try.

`SoleElector` (`ca.kube.election`, beside the `Elector` interface both meet) is the same
interface without a cluster: the single process leads, and the Kubernetes client is not imported.

The callbacks run on the election's thread and must return quickly (start or stop the work
elsewhere); while they run, the lease is not renewed.
"""

from __future__ import annotations

import json
import logging
import random as _random
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from kubernetes import client

from ca.common.backoff import UniformRandom
from ca.common.clock import Clock, SystemClock
from ca.errors import MeshcaError, UnavailableError
from ca.kube.client import TRANSPORT_ERRORS, transport_error_text
from ca.kube.election import (
    ElectionTimings,
    LeaseRecord,
    Move,
    Sighting,
    VersionedLease,
    candidate_wait_s,
    claimed,
    decide,
    leader_wait_s,
    record_from_spec,
    released,
    renewal_overdue,
    sight,
    spec_json,
)

log = logging.getLogger(__name__)

LEASE_API = "/apis/coordination.k8s.io/v1"
MIN_REQUEST_TIMEOUT_S = 1.0
STOP_JOIN_S = 10.0


def _nothing() -> None:
    return None


class LeaseLock(Protocol):
    """Where the lease record lives. Each write fails (None) if the object is not as expected:
    it exists already (create) or has changed since `resource_version` (update)."""

    @property
    def where(self) -> str: ...

    def read(self) -> VersionedLease | None:
        """The record, or None if there is no lease object."""
        ...

    def create(self, record: LeaseRecord) -> VersionedLease | None: ...

    def update(self, record: LeaseRecord, resource_version: str) -> VersionedLease | None: ...


class KubeLease:
    """A Lease object through the official client. Times are sent as the API's MicroTime text
    (the client's own datetime encoding drops a zero fraction, which the API refuses)."""

    def __init__(self, api: client.ApiClient, *, namespace: str, name: str, request_timeout_s: float) -> None:
        self._api = api
        self._namespace = namespace
        self._name = name
        self._timeout_s = request_timeout_s

    @property
    def where(self) -> str:
        return f"Lease {self._namespace}/{self._name}"

    def read(self) -> VersionedLease | None:
        status, body = self._call("GET", self._path(self._name))
        if status == 404:
            return None
        return self._versioned("reading", status, body)

    def create(self, record: LeaseRecord) -> VersionedLease | None:
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self._name, "namespace": self._namespace},
            "spec": spec_json(record),
        }
        status, body = self._call("POST", self._path(), lease)
        if status == 409:
            return None
        return self._versioned("creating", status, body)

    def update(self, record: LeaseRecord, resource_version: str) -> VersionedLease | None:
        # A merge patch naming a resourceVersion is applied only to that version (409 otherwise),
        # and leaves the object's other fields (labels, annotations) as they are.
        spec = {"acquireTime": None, "renewTime": None, **spec_json(record)}  # null: absent times removed
        patch = {"metadata": {"resourceVersion": resource_version}, "spec": spec}
        status, body = self._call("PATCH", self._path(self._name), patch, "application/merge-patch+json")
        if status in (404, 409):
            return None
        return self._versioned("updating", status, body)

    def _path(self, name: str = "") -> str:
        base = f"{LEASE_API}/namespaces/{self._namespace}/leases"
        return f"{base}/{name}" if name else base

    def _call(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, Mapping[str, Any]]:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        try:
            method, url, headers, payload, _ = self._api.param_serialize(
                method, path, header_params=headers, body=body, auth_settings=["BearerToken"]
            )
            response = self._api.call_api(
                method, url, header_params=headers, body=payload, _request_timeout=self._timeout_s
            )
            raw = response.read()  # type: ignore[no-untyped-call]
        except TRANSPORT_ERRORS as err:
            raise UnavailableError(
                f"{method} {self.where} failed ({transport_error_text(err)}); the election retries",
                reason="kubernetes_unavailable",
            ) from err
        try:
            decoded = json.loads(raw) if raw else {}
        except ValueError:
            decoded = {}
        return int(response.status), decoded if isinstance(decoded, Mapping) else {}

    def _versioned(self, doing: str, status: int, body: Mapping[str, Any]) -> VersionedLease:
        if not 200 <= status < 300:
            message = body.get("message") or "no message"
            hint = (
                "check meshca's RBAC for leases in that namespace (get, create, patch)"
                if status in (401, 403)
                else "the election retries"
            )
            raise UnavailableError(
                f"{doing} {self.where} failed: HTTP {status}: {message}; {hint}",
                reason="kubernetes_unavailable",
            )
        metadata = body.get("metadata") or {}
        try:
            record = record_from_spec(body.get("spec") or {})
        except (TypeError, ValueError) as err:
            raise UnavailableError(
                f"{self.where} holds an unreadable record ({err}); fix or delete the Lease",
                reason="lease_unreadable",
            ) from err
        return VersionedLease(record=record, resource_version=str(metadata.get("resourceVersion") or ""))


class LeaseElector:
    """One replica's part in the election; see the module's description."""

    def __init__(
        self,
        lock: LeaseLock,
        *,
        identity: str,
        timings: ElectionTimings | None = None,
        clock: Clock | None = None,
        random: UniformRandom = _random.random,
        on_started_leading: Callable[[], None] = _nothing,
        on_stopped_leading: Callable[[], None] = _nothing,
    ) -> None:
        self._lock = lock
        self._identity = identity
        self._timings = timings or ElectionTimings()
        self._clock = clock or SystemClock()
        self._random = random
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._sighting: Sighting | None = None
        self._written: VersionedLease | None = None  # the last record this replica wrote
        self._state = threading.Lock()
        self._leading = False
        self._renewed_at = 0.0  # monotonic start of the last successful acquire or renewal
        self._failures = 0
        self._stopping = threading.Event()
        self._release_on_stop = True
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def is_leader(self) -> bool:
        """True from a successful acquire until leadership is given up, and never past the renew
        deadline after the last successful renewal, even while a request hangs."""
        with self._state:
            return self._leading and not renewal_overdue(
                self._renewed_at, self._clock.monotonic(), self._timings
            )

    def start(self) -> None:
        self._thread.start()

    def stop(self, *, release: bool = True) -> None:
        self._release_on_stop = release
        self._stopping.set()
        # Not joined from a callback, which runs on the election's own thread.
        if self._thread.ident is not None and self._thread is not threading.current_thread():
            self._thread.join(STOP_JOIN_S)

    def attempt(self) -> float:
        """One try to acquire or renew the lease (the election thread's step); returns the seconds
        to wait before the next try."""
        now = self._clock.monotonic()
        if self._leading and renewal_overdue(self._renewed_at, now, self._timings):
            self._give_up(
                f"no renewal succeeded within the renew deadline ({self._timings.renew_deadline_s}s)"
            )
            return candidate_wait_s(self._timings, self._random)
        try:
            written = self._try()
        except MeshcaError as err:
            self._note_failure(err)
            written = None
        if written is not None:
            self._succeeded(written, started=now)
        return self._next_wait_s()

    def _try(self) -> VersionedLease | None:
        current = self._lock.read()
        self._note_recovery()
        seen_at = self._clock.monotonic()
        self._sighting = sight(self._sighting, current.record if current else None, seen_at)
        move = decide(self._sighting, identity=self._identity, leading=self._leading, now=seen_at)
        if move is Move.WAIT:
            return None
        if move is Move.LOST:
            holder = current.record.holder if current else ""
            self._give_up(f"the lease is now held by {holder or 'nobody'}")
            return None
        record = claimed(
            current.record if current else None,
            identity=self._identity,
            now=self._clock.now(),
            timings=self._timings,
        )
        if current is None:
            return self._lock.create(record)
        return self._lock.update(record, current.resource_version)

    def _succeeded(self, written: VersionedLease, *, started: float) -> None:
        self._written = written
        self._sighting = Sighting(written.record, started)
        with self._state:
            self._renewed_at = started
            newly = not self._leading
            self._leading = True
        if newly:
            log.info(
                "%s: %s leads (acquired; %d transitions so far)",
                self._lock.where,
                self._identity,
                written.record.transitions,
            )
            self._call(self._on_started, "on_started_leading")

    def _give_up(self, why: str, level: int = logging.WARNING) -> None:
        with self._state:
            if not self._leading:
                return
            self._leading = False
        log.log(level, "%s: %s no longer leads: %s", self._lock.where, self._identity, why)
        self._call(self._on_stopped, "on_stopped_leading")

    def _next_wait_s(self) -> float:
        if self._leading:
            return leader_wait_s(self._renewed_at, self._clock.monotonic(), self._timings)
        return candidate_wait_s(self._timings, self._random)

    def _note_failure(self, err: MeshcaError) -> None:
        self._failures += 1
        if self._failures == 1:  # once per run of failures; the recovery is logged too
            log.warning("%s: election try failed: %s", self._lock.where, err)

    def _note_recovery(self) -> None:
        if self._failures:
            log.info("%s: reachable again after %d failed tries", self._lock.where, self._failures)
            self._failures = 0

    def _call(self, callback: Callable[[], None], name: str) -> None:
        try:
            callback()
        except Exception:
            log.exception("%s: %s failed", self._lock.where, name)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                wait_s = self.attempt()
            except Exception:  # a bug must not end the election for good: is_leader lapses meanwhile
                log.exception("%s: election try failed unexpectedly", self._lock.where)
                wait_s = candidate_wait_s(self._timings, self._random)
            self._clock.wait(self._stopping, wait_s)
        if self._release_on_stop:
            self._release()
        self._give_up("the election was stopped", logging.INFO)

    def _release(self) -> None:
        written = self._written
        if not self._leading or written is None or written.record.holder != self._identity:
            return
        record = released(written.record, now=self._clock.now())
        try:
            done = self._lock.update(record, written.resource_version)
        except MeshcaError as err:
            log.warning("%s: could not release the lease (%s); it expires on its own", self._lock.where, err)
            return
        if done is None:
            log.info("%s: not released: it changed since this replica last renewed it", self._lock.where)
        else:
            log.info("%s: %s released the lease", self._lock.where, self._identity)


def kube_lease_elector(
    api: client.ApiClient,
    *,
    namespace: str,
    name: str,
    identity: str,
    timings: ElectionTimings | None = None,
    clock: Clock | None = None,
    random: UniformRandom = _random.random,
    on_started_leading: Callable[[], None] = _nothing,
    on_stopped_leading: Callable[[], None] = _nothing,
) -> LeaseElector:
    """An elector over the Lease `namespace/name`; each request to the API server is bounded by
    the retry period (at least a second)."""
    timings = timings or ElectionTimings()
    lock = KubeLease(
        api,
        namespace=namespace,
        name=name,
        request_timeout_s=max(MIN_REQUEST_TIMEOUT_S, timings.retry_period_s),
    )
    return LeaseElector(
        lock,
        identity=identity,
        timings=timings,
        clock=clock,
        random=random,
        on_started_leading=on_started_leading,
        on_stopped_leading=on_stopped_leading,
    )
