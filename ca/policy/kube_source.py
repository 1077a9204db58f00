"""PeerAuthentications from the Kubernetes API: security.istio.io v1 and v1beta1, followed together.

Both versions are served from one stored object, so their streams (a
`CustomResourceWatch` each: list, watch, resume, relist, back off) report the
same objects under the same resourceVersions. They feed one map keyed by
namespace/name in which the newest resourceVersion of an object wins, whichever
version delivered it (their specs are identical, so it does not matter which).
A deletion leaves a tombstone with its resourceVersion, so a lagging stream
cannot bring a deleted object back; tombstones are dropped once every stream
has moved past them. (resourceVersions are compared as integers, which holds
for etcd-backed resources; should a server hand out non-numeric ones, the last
event wins.) While the API is down the last known policies stay in effect.

An invalid object is logged, counted and skipped; if it was valid before, its
last valid spec stays in effect (the same rule as for files).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from ca.errors import PolicyError
from ca.kube.watch import (
    RETRY_BACKOFF,
    ApiClient,
    CustomResource,
    CustomResourceWatch,
    WatchFailure,
    list_once,
)
from ca.policy.manifest import GROUP, parse_peer_authentication
from ca.policy.metrics import INVALID_POLICIES, POLICIES_LOADED, WATCH_RESTARTS
from ca.policy.model import InvalidPolicy, PeerAuthentication, PolicyRef
from ca.policy.policy_set import LoadedPolicies, PolicySet

log = logging.getLogger(__name__)

VERSIONS = ("v1", "v1beta1")
SOURCE_LABEL = "kube"


def peer_authentications(versions: tuple[str, ...] = VERSIONS) -> CustomResource:
    return CustomResource(GROUP, "peerauthentications", versions, kind="PeerAuthentication")


def resource_version(obj: Mapping[str, Any]) -> int | None:
    value = (obj.get("metadata") or {}).get("resourceVersion")
    return int(value) if isinstance(value, str) and value.isdigit() else None


def object_ref(obj: Mapping[str, Any]) -> PolicyRef | None:
    metadata = obj.get("metadata") or {}
    namespace, name = metadata.get("namespace"), metadata.get("name")
    if isinstance(namespace, str) and isinstance(name, str):
        return PolicyRef(namespace, name)
    return None


@dataclass
class _Entry:
    rv: int | None
    policy: PeerAuthentication | None  # the last valid spec; None if never valid
    exists: bool  # False: a tombstone
    error: str | None = None  # why the current spec was refused; None if it is the valid one


def _newer(rv: int | None, than: int | None) -> bool:
    return rv is None or than is None or rv > than


class ObjectMap:
    """Objects seen through any API version; the newest resourceVersion per object wins.

    Not thread-safe by itself; `KubePolicySource` serialises access.
    """

    def __init__(self, on_invalid: Callable[[PolicyRef, PolicyError, bool], None]) -> None:
        self._entries: dict[PolicyRef, _Entry] = {}
        self._on_invalid = on_invalid

    def policies(self) -> list[PeerAuthentication]:
        return [e.policy for e in self._entries.values() if e.exists and e.policy is not None]

    def invalid(self) -> list[InvalidPolicy]:
        """The objects whose current spec was refused, in namespace/name order."""
        return [
            InvalidPolicy(entry.error, frozenset({ref.namespace}))
            for ref, entry in sorted(self._entries.items())
            if entry.exists and entry.error is not None
        ]

    def _incoming(self, obj: Mapping[str, Any]) -> tuple[PolicyRef, int | None, _Entry | None] | None:
        """The object's ref, resourceVersion and current entry; None if it names no object or is
        not newer than what the map holds (a lagging stream)."""
        ref, rv = object_ref(obj), resource_version(obj)
        if ref is None:
            return None
        entry = self._entries.get(ref)
        if entry is not None and not _newer(rv, entry.rv):
            return None
        return ref, rv, entry

    def put(self, obj: Mapping[str, Any]) -> bool:
        """An ADDED/MODIFIED event or a listed object; True if the map changed."""
        incoming = self._incoming(obj)
        if incoming is None:
            return False
        ref, rv, entry = incoming
        previous = entry.policy if entry is not None and entry.exists else None
        error = None
        try:
            policy: PeerAuthentication | None = parse_peer_authentication(obj)
        except PolicyError as err:
            self._on_invalid(ref, err, previous is not None)
            policy, error = previous, err.message
        self._entries[ref] = _Entry(rv, policy, True, error)
        return previous != policy or entry is None or not entry.exists

    def remove(self, obj: Mapping[str, Any]) -> bool:
        """A DELETED event; the entry stays as a tombstone at the deletion's resourceVersion."""
        incoming = self._incoming(obj)
        if incoming is None:
            return False
        ref, rv, entry = incoming
        self._entries[ref] = _Entry(rv, None, False)
        return entry is not None and entry.exists and entry.policy is not None

    def relisted(self, items: list[Mapping[str, Any]], list_rv: int | None) -> bool:
        """A full list at `list_rv`: objects older than it and not in it were deleted meanwhile."""
        changed = False
        listed = set()
        for obj in items:
            changed |= self.put(obj)
            listed.add(object_ref(obj))
        for ref, entry in list(self._entries.items()):
            if ref in listed or not entry.exists:
                continue
            if list_rv is None or entry.rv is None or entry.rv <= list_rv:
                self._entries[ref] = _Entry(list_rv, None, False)
                changed |= entry.policy is not None
        return changed

    def prune_tombstones(self, oldest_cursor: int | None) -> None:
        """Drops tombstones no stream can still contradict (all are past them)."""
        for ref, entry in list(self._entries.items()):
            if not entry.exists and (oldest_cursor is None or entry.rv is None or entry.rv <= oldest_cursor):
                del self._entries[ref]


class KubePolicySource:
    """Keeps a PolicySet equal to the cluster's valid PeerAuthentications."""

    def __init__(
        self,
        api: ApiClient,
        policy_set: PolicySet,
        *,
        versions: tuple[str, ...] = VERSIONS,
        watch_timeout_s: int = 240,
        request_timeout_s: float = 30.0,
        unserved_retry_s: float = 30.0,
        max_backoff_s: float = 30.0,
    ) -> None:
        self._policy_set = policy_set
        self._lock = threading.Lock()  # the watch serialises its callbacks; readers take this too
        self._objects = ObjectMap(self._invalid)
        self._applied_through: int | None = None
        self._watch = CustomResourceWatch(
            api,
            peer_authentications(versions),
            on_list=self._listed,
            on_event=self._event,
            on_failure=self._failed,
            on_none_served=self._none_served,
            watch_timeout_s=watch_timeout_s,
            request_timeout_s=request_timeout_s,
            unserved_retry_s=unserved_retry_s,
            backoff=replace(RETRY_BACKOFF, maximum_s=max_backoff_s),
        )

    @property
    def synced(self) -> bool:
        return self._watch.synced

    @property
    def applied_through(self) -> int | None:
        """A resourceVersion up to which every served version's events are in the policy set
        (None until one is known)."""
        return self._applied_through

    def invalid_policies(self) -> tuple[InvalidPolicy, ...]:
        with self._lock:
            return tuple(self._objects.invalid())

    def start(self, wait_s: float = 10.0) -> None:
        """Starts both versions' streams; returns once one version has been listed in full."""
        self._watch.start(wait_s)

    def stop(self) -> None:
        self._watch.stop()

    # Called by the watch, one at a time.

    def _listed(self, items: list[Mapping[str, Any]], list_rv: str | None) -> None:
        with self._lock:
            changed = self._objects.relisted(items, _int_rv(list_rv))
            self._publish(changed)

    def _event(self, kind: str, obj: Mapping[str, Any]) -> None:
        with self._lock:
            if kind == "DELETED":
                changed = self._objects.remove(obj)
            elif kind in ("ADDED", "MODIFIED"):
                changed = self._objects.put(obj)
            else:  # a BOOKMARK: only the streams' resume points moved
                changed = False
            self._publish(changed)

    def _publish(self, changed: bool) -> None:
        oldest = self._watch.oldest_resource_version
        self._objects.prune_tombstones(oldest)
        if changed:
            policies = self._objects.policies()
            self._policy_set.replace(policies)
            POLICIES_LOADED.labels(SOURCE_LABEL).set(len(policies))
        self._applied_through = oldest

    def _failed(self, failure: WatchFailure) -> None:
        WATCH_RESTARTS.labels(failure.version, failure.cause).inc()
        if failure.cause == "expired":
            log.info("PeerAuthentication watch expired; relisting", extra={"version": failure.version})
            return
        log.warning(
            "PeerAuthentication list/watch failed; retrying",
            extra={"version": failure.version, "error": failure.detail, "resume_from": failure.resume_from},
        )

    def _none_served(self) -> None:
        log.warning("no PeerAuthentication API is served (Istio CRDs not installed); no policies apply")

    def _invalid(self, ref: PolicyRef, err: PolicyError, kept_previous: bool) -> None:
        INVALID_POLICIES.labels(SOURCE_LABEL).inc()
        log.error(
            "invalid PeerAuthentication skipped" + ("; its last valid spec stays" if kept_previous else ""),
            extra={"policy": str(ref), "error": err.message},
        )


def _int_rv(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


def list_policies_once(api: ApiClient, *, timeout_s: float = 10.0) -> LoadedPolicies:
    """A one-off read for `explain`: the first served version's objects; invalid ones reported."""
    items = list_once(api, peer_authentications(), timeout_s=timeout_s)
    if items is None:
        return LoadedPolicies((), notes=("no PeerAuthentication API is served (Istio CRDs not installed)",))
    policies: list[PeerAuthentication] = []
    invalid: list[InvalidPolicy] = []
    for obj in items:
        try:
            policies.append(parse_peer_authentication(obj))
        except PolicyError as err:
            ref = object_ref(obj)
            namespaces = None if ref is None else frozenset({ref.namespace})
            invalid.append(InvalidPolicy(err.message, namespaces))
    return LoadedPolicies(tuple(policies), invalid=tuple(invalid))
