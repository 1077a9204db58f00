"""PeerAuthentications from the Kubernetes API: list + watch of security.istio.io v1 and v1beta1.

Both versions are served from one stored object, so the two streams report the
same objects under the same resourceVersions. They feed one map keyed by
namespace/name in which the newest resourceVersion of an object wins, whichever
version delivered it (their specs are identical, so it does not matter which).
A deletion leaves a tombstone with its resourceVersion, so a lagging stream
cannot bring a deleted object back; tombstones are dropped once every stream
has moved past them. (resourceVersions are compared as integers, which holds
for etcd-backed resources; should a server hand out non-numeric ones, the last
event wins.)

Each stream lists, then watches from the list's resourceVersion, resumes from
the last one seen after a disconnect, and relists on 410 Gone. A version the
server does not serve (404) is retried slowly without affecting the other.
The API being down is logged and retried with backoff; the last known policies
stay in effect meanwhile.

An invalid object is logged, counted and skipped; if it was valid before, its
last valid spec stays in effect (the same rule as for files).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines
from urllib3.exceptions import HTTPError

from ca.errors import PolicyError, UnavailableError
from ca.kube.client import transport_error_text
from ca.policy.manifest import GROUP, parse_peer_authentication
from ca.policy.metrics import INVALID_POLICIES, POLICIES_LOADED, WATCH_RESTARTS
from ca.policy.model import InvalidPolicy, PeerAuthentication, PolicyRef
from ca.policy.source import LoadedPolicies, PolicySet

log = logging.getLogger(__name__)

PLURAL = "peerauthentications"
VERSIONS = ("v1", "v1beta1")
SOURCE_LABEL = "kube"
PAGE_SIZE = 500
MIN_BACKOFF_S = 0.2


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


class _Stream:
    """One API version's list + watch state."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.cursor: str | None = None  # resourceVersion to resume the watch from
        self.listed = False
        self.unserved = False
        self.established = False  # the current watch got its response headers
        self.response: Any = None


class KubePolicySource:
    def __init__(
        self,
        api: client.ApiClient,
        policy_set: PolicySet,
        *,
        versions: tuple[str, ...] = VERSIONS,
        watch_timeout_s: int = 240,
        request_timeout_s: float = 30.0,
        unserved_retry_s: float = 30.0,
        max_backoff_s: float = 30.0,
    ) -> None:
        self._custom = client.CustomObjectsApi(api)
        self._policy_set = policy_set
        self._streams = [_Stream(v) for v in versions]
        self._watch_timeout_s = watch_timeout_s
        self._request_timeout_s = request_timeout_s
        self._unserved_retry_s = unserved_retry_s
        self._max_backoff_s = max_backoff_s
        self._lock = threading.Lock()
        self._objects = ObjectMap(self._invalid)
        self._synced = threading.Event()
        self._stopping = threading.Event()
        self._last_error = "no answer yet"
        self._threads = [
            threading.Thread(target=self._run, args=(s,), name=f"policy-watch-{s.version}", daemon=True)
            for s in self._streams
        ]

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def invalid_policies(self) -> tuple[InvalidPolicy, ...]:
        with self._lock:
            return tuple(self._objects.invalid())

    def start(self, wait_s: float = 10.0) -> None:
        """Starts both streams; returns once one version has been listed in full."""
        for thread in self._threads:
            thread.start()
        if not self._synced.wait(wait_s):
            self.stop()
            raise UnavailableError(
                f"could not list PeerAuthentications from the Kubernetes API within {wait_s:g}s "
                f"({self._last_error}); check the API server address, credentials and RBAC "
                f"(list and watch on {PLURAL}.{GROUP})",
                reason="kubernetes_unavailable",
            )

    def stop(self) -> None:
        self._stopping.set()
        for stream in self._streams:
            _interrupt(stream.response)
        for thread in self._threads:
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(timeout=5)

    # The loop of one stream: list, watch, resume, relist, back off; never raises.

    def _run(self, stream: _Stream) -> None:
        backoff_s = MIN_BACKOFF_S
        while not self._stopping.is_set():
            stream.established = False
            try:
                if stream.cursor is None:
                    self._relist(stream)
                self._watch(stream)
                backoff_s = MIN_BACKOFF_S
                continue
            except Exception as err:
                if self._stopping.is_set():
                    return
                if stream.established:  # the watch worked for a while: retry at once, not slower
                    backoff_s = MIN_BACKOFF_S
                wait_s = self._failure(stream, err, backoff_s)
            if self._stopping.wait(wait_s):
                return
            backoff_s = min(backoff_s * 2, self._max_backoff_s)

    def _failure(self, stream: _Stream, err: Exception, backoff_s: float) -> float:
        """Logs and counts one failed list/watch; returns how long to wait before the next try."""
        if isinstance(err, ApiException):
            return self._api_failure(stream, err, backoff_s)
        if isinstance(err, HTTPError | OSError | ValueError):
            self._record_failure(stream, transport_error_text(err), "disconnected")
        else:
            log.error(
                "PeerAuthentication watch failed unexpectedly",
                exc_info=err,
                extra={"version": stream.version},
            )
            self._record_failure(stream, f"{type(err).__name__}: {err}", "error")
        return backoff_s

    def _api_failure(self, stream: _Stream, err: ApiException, backoff_s: float) -> float:
        if err.status == 410:
            stream.cursor = None
            WATCH_RESTARTS.labels(stream.version, "expired").inc()
            log.info("PeerAuthentication watch expired; relisting", extra={"version": stream.version})
            return 0.0
        if err.status == 404:
            self._unserved(stream)
            return self._unserved_retry_s
        self._record_failure(stream, f"HTTP {err.status} {err.reason}", "error")
        return backoff_s

    def _unserved(self, stream: _Stream) -> None:
        if not stream.unserved:
            log.info(
                "the API server does not serve this PeerAuthentication version; using the others",
                extra={"version": f"{GROUP}/{stream.version}"},
            )
        stream.unserved, stream.cursor = True, None
        with self._lock:
            if all(s.unserved for s in self._streams) and not self._synced.is_set():
                log.warning(
                    "no PeerAuthentication API is served (Istio CRDs not installed); no policies apply"
                )
                self._synced.set()

    def _record_failure(self, stream: _Stream, detail: str, cause: str) -> None:
        if self._stopping.is_set():
            return
        self._last_error = f"{GROUP}/{stream.version}: {detail}"
        WATCH_RESTARTS.labels(stream.version, cause).inc()
        log.warning(
            "PeerAuthentication list/watch failed; retrying",
            extra={"version": stream.version, "error": detail, "resume_from": stream.cursor},
        )

    def _relist(self, stream: _Stream) -> None:
        items, list_rv = self._list_all(stream.version)
        with self._lock:
            changed = self._objects.relisted(items, _int_rv(list_rv))
            stream.cursor, stream.listed, stream.unserved = list_rv, True, False
            self._publish(changed)
            self._synced.set()

    def _list_all(self, version: str) -> tuple[list[Mapping[str, Any]], str | None]:
        items: list[Mapping[str, Any]] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": PAGE_SIZE, "_request_timeout": self._request_timeout_s}
            if token:
                kwargs["_continue"] = token
            page: Any = self._custom.list_cluster_custom_object(GROUP, version, PLURAL, **kwargs)
            items.extend(page.get("items") or [])
            metadata = page.get("metadata") or {}
            token = metadata.get("continue")
            if not token:
                return items, metadata.get("resourceVersion")

    def _watch(self, stream: _Stream) -> None:
        response: Any = self._custom.list_cluster_custom_object(
            GROUP,
            stream.version,
            PLURAL,
            watch=True,
            resource_version=stream.cursor,
            allow_watch_bookmarks=True,
            timeout_seconds=self._watch_timeout_s,
            _preload_content=False,
            _request_timeout=(self._request_timeout_s, self._watch_timeout_s + self._request_timeout_s),
        )
        stream.response = response
        try:
            if self._stopping.is_set():  # stop() ran while this watch was opening
                return
            if not 200 <= response.status < 300:
                raise ApiException(status=response.status, reason=response.reason)
            stream.established = True
            for event in _events(response):
                if self._stopping.is_set():
                    return
                self._apply(stream, event)
        finally:
            stream.response = None
            _close(response)

    def _apply(self, stream: _Stream, event: Mapping[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            raise ApiException(status=int(obj.get("code") or 500), reason=str(obj.get("message")))
        with self._lock:
            if kind == "DELETED":
                changed = self._objects.remove(obj)
            elif kind in ("ADDED", "MODIFIED"):
                changed = self._objects.put(obj)
            else:
                changed = False
            stream.cursor = (obj.get("metadata") or {}).get("resourceVersion") or stream.cursor
            self._publish(changed)

    def _publish(self, changed: bool) -> None:
        cursors = [_int_rv(s.cursor) for s in self._streams if s.cursor is not None and not s.unserved]
        known = [c for c in cursors if c is not None]
        self._objects.prune_tombstones(min(known) if known else None)
        if changed:
            policies = self._objects.policies()
            self._policy_set.replace(policies)
            POLICIES_LOADED.labels(SOURCE_LABEL).set(len(policies))

    def _invalid(self, ref: PolicyRef, err: PolicyError, kept_previous: bool) -> None:
        INVALID_POLICIES.labels(SOURCE_LABEL).inc()
        log.error(
            "invalid PeerAuthentication skipped" + ("; its last valid spec stays" if kept_previous else ""),
            extra={"policy": str(ref), "error": err.message},
        )


def _events(response: Any) -> Iterator[Mapping[str, Any]]:
    for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
        if not line:
            continue
        event = json.loads(line)
        if isinstance(event, Mapping):
            yield event


def _close(response: Any) -> None:
    if response is None:
        return
    try:
        response.close()
        response.release_conn()
    except Exception:  # already closed or half-torn-down: nothing left to release
        log.debug("closing a watch response failed", exc_info=True)


def _interrupt(response: Any) -> None:
    """Ends a watch blocked in a read from another thread.

    Closing the response there would wait for the reader's lock; shutting the
    socket down makes the blocked read return, and the reader closes the rest.
    """
    connection = getattr(response, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        log.debug("interrupting a watch failed; it ends at its timeout", exc_info=True)


def _int_rv(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


def list_policies_once(api: client.ApiClient, *, timeout_s: float = 10.0) -> LoadedPolicies:
    """A one-off read for `explain`: the first served version's objects; invalid ones reported."""
    custom = client.CustomObjectsApi(api)
    failures: list[str] = []
    for version in VERSIONS:
        try:
            page: Any = custom.list_cluster_custom_object(GROUP, version, PLURAL, _request_timeout=timeout_s)
        except ApiException as err:
            failures.append(f"{GROUP}/{version}: HTTP {err.status} {err.reason}")
            continue
        except (HTTPError, OSError) as err:
            raise UnavailableError(
                f"cannot reach the Kubernetes API ({transport_error_text(err)}); check --kubeconfig and "
                "the API server",
                reason="kubernetes_unavailable",
            ) from err
        policies: list[PeerAuthentication] = []
        invalid: list[InvalidPolicy] = []
        for obj in page.get("items") or []:
            try:
                policies.append(parse_peer_authentication(obj))
            except PolicyError as err:
                ref = object_ref(obj)
                namespaces = None if ref is None else frozenset({ref.namespace})
                invalid.append(InvalidPolicy(err.message, namespaces))
        return LoadedPolicies(tuple(policies), invalid=tuple(invalid))
    if all("HTTP 404" in f for f in failures):
        return LoadedPolicies((), notes=("no PeerAuthentication API is served (Istio CRDs not installed)",))
    raise UnavailableError(
        f"cannot list PeerAuthentications ({'; '.join(failures)}); check RBAC for list on {PLURAL}.{GROUP}",
        reason="kubernetes_unavailable",
    )
