"""List + watch of a resource cluster-wide, through each of the API versions it may be served at.

One stream per version: it lists (in pages), then watches from the list's
resourceVersion, resumes from the last resourceVersion seen after a disconnect,
and relists on 410 Gone. A version the server does not serve (404) is retried
slowly without affecting the others. Any other failure is retried with backoff,
reset once a watch has been established. What the streams deliver goes to the
caller's callbacks, one call at a time across all streams; what the caller built
from it stays as it was while the API is unreachable.

Custom resources are listed through the custom-object API; a core resource (a
Namespace, ConfigMaps of one name) through its typed CoreV1Api list method made
into a `ListCall` by `core_call`.
"""

from __future__ import annotations

import json
import logging
import random as _random
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines
from urllib3.exceptions import HTTPError

from ca.common.backoff import Backoff, Retrying, UniformRandom
from ca.common.clock import Clock, SystemClock
from ca.errors import UnavailableError
from ca.kube.client import transport_error_text

log = logging.getLogger(__name__)

ApiClient = client.ApiClient
KubeObject = Mapping[str, Any]

PAGE_SIZE = 500
RETRY_BACKOFF = Backoff(initial_s=0.2, maximum_s=30.0)


@dataclass(frozen=True)
class CustomResource:
    group: str
    plural: str
    versions: tuple[str, ...]
    kind: str  # for messages

    @property
    def name(self) -> str:
        """As RBAC rules and `kubectl` name it, e.g. `peerauthentications.security.istio.io`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def api_version(self, version: str) -> str:
        return f"{self.group}/{version}" if self.group else version


@dataclass(frozen=True)
class WatchFailure:
    """One failed list or watch of one version, reported before the stream retries."""

    version: str
    cause: str  # "expired" (410: relisting now), "disconnected" (transport), "error" (any other)
    detail: str  # what went wrong, in words
    resume_from: str | None  # the resourceVersion the stream resumes from; None: it relists


ListCallback = Callable[[list[KubeObject], str | None], None]
"""A full list of one version: its items and the list's resourceVersion."""
EventCallback = Callable[[str, KubeObject], None]
"""A watch event: its type (ADDED, MODIFIED, DELETED, BOOKMARK) and object."""
ListCall = Callable[..., Any]
"""One list or watch request of one API version, as `call(version, **arguments)` with a list call's
keyword arguments: a list returns its page as parsed JSON; a watch (`watch=True`,
`_preload_content=False`) returns the open response."""


def custom_object_call(api: ApiClient, resource: CustomResource) -> ListCall:
    custom = client.CustomObjectsApi(api)

    def call(version: str, **arguments: Any) -> Any:
        return custom.list_cluster_custom_object(resource.group, version, resource.plural, **arguments)

    return call


def core_call(list_method: Callable[..., Any], **fixed: Any) -> ListCall:
    """A typed list method of the core API (e.g. `CoreV1Api.list_namespace`) as a ListCall whose pages
    are parsed JSON, as custom objects' are. `fixed` arguments (e.g. `field_selector`) go with every
    request. The core API has the one version, v1."""

    def call(version: str, **arguments: Any) -> Any:
        if arguments.get("watch"):
            return list_method(**fixed, **arguments)
        response = list_method(**fixed, **arguments, _preload_content=False)
        if not 200 <= response.status < 300:
            raise ApiException(status=response.status, reason=response.reason)
        return json.loads(response.data)

    return call


class _Stream:
    """One API version's list + watch state."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.cursor: str | None = None  # resourceVersion to resume the watch from; None: relist
        self.unserved = False
        self.established = False  # the current watch got its response headers
        self.response: Any = None


class CustomResourceWatch:
    """Follows one resource through all its versions, each on a thread of its own: a custom resource,
    or a core one when `call` is given (see `core_call`).

    `on_list` and `on_event` are called with the stream's resume point already
    advanced past what they deliver, never two at a time, so they may read
    `oldest_resource_version` and share state without a lock of their own.
    """

    def __init__(
        self,
        api: ApiClient,
        resource: CustomResource,
        *,
        on_list: ListCallback,
        on_event: EventCallback,
        on_failure: Callable[[WatchFailure], None] | None = None,
        on_none_served: Callable[[], None] | None = None,
        watch_timeout_s: int = 240,
        request_timeout_s: float = 30.0,
        unserved_retry_s: float = 30.0,
        backoff: Backoff = RETRY_BACKOFF,
        random: UniformRandom = _random.random,
        clock: Clock | None = None,
        call: ListCall | None = None,
    ) -> None:
        self._call = call or custom_object_call(api, resource)
        self._clock = clock or SystemClock()
        self.resource = resource
        self._on_list = on_list
        self._on_event = on_event
        self._on_failure = on_failure
        self._on_none_served = on_none_served
        self._watch_timeout_s = watch_timeout_s
        self._request_timeout_s = request_timeout_s
        self._unserved_retry_s = unserved_retry_s
        self._backoff = backoff
        self._random = random
        self._streams = [_Stream(v) for v in resource.versions]
        self._lock = threading.Lock()
        self._synced = threading.Event()
        self._stopping = threading.Event()
        self._last_error = "no answer yet"
        self._threads = [
            threading.Thread(
                target=self._run, args=(s,), name=f"watch-{resource.plural}-{s.version}", daemon=True
            )
            for s in self._streams
        ]

    @property
    def synced(self) -> bool:
        """One version has been listed in full, or none is served."""
        return self._synced.is_set()

    @property
    def oldest_resource_version(self) -> int | None:
        """The oldest resourceVersion a served stream resumes from (None if none is known): no stream
        can still deliver an event at or before it. Read it from a callback."""
        cursors = [_int_rv(s.cursor) for s in self._streams if s.cursor is not None and not s.unserved]
        known = [c for c in cursors if c is not None]
        return min(known) if known else None

    def start(self, wait_s: float = 10.0) -> None:
        """Starts every version's stream; returns once one has been listed in full (or none is served)."""
        for thread in self._threads:
            thread.start()
        if not self._synced.wait(wait_s):
            self.stop()
            raise UnavailableError(
                f"could not list {self.resource.kind} objects from the Kubernetes API within {wait_s:g}s "
                f"({self._last_error}); check the API server address, credentials and RBAC "
                f"(list and watch on {self.resource.name})",
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
        retrying = Retrying(self._backoff, self._random)
        while not self._stopping.is_set():
            stream.established = False
            try:
                if stream.cursor is None:
                    self._relist(stream)
                self._watch(stream)
                retrying.reset()
                continue
            except Exception as err:
                if self._stopping.is_set():
                    return
                if stream.established:  # the watch worked for a while: retry at once, not slower
                    retrying.reset()
                wait_s = self._failure(stream, err, retrying)
            if self._clock.wait(self._stopping, wait_s):
                return

    def _failure(self, stream: _Stream, err: Exception, retrying: Retrying) -> float:
        """Reports one failed list/watch; returns how long to wait before the next try."""
        if isinstance(err, ApiException) and err.status == 410:
            stream.cursor = None
            self._report(stream, "expired", "the resourceVersion to resume from is too old")
            return 0.0
        if isinstance(err, ApiException) and err.status == 404:
            self._unserved(stream)
            return self._unserved_retry_s
        if isinstance(err, ApiException | HTTPError | OSError | ValueError):
            cause = "error" if isinstance(err, ApiException) else "disconnected"
            detail = transport_error_text(err)
        else:
            log.error(
                "list/watch of a custom resource failed unexpectedly",
                exc_info=err,
                extra={"resource": self.resource.name, "version": stream.version},
            )
            cause, detail = "error", f"{type(err).__name__}: {err}"
        self._last_error = f"{self.resource.api_version(stream.version)}: {detail}"
        self._report(stream, cause, detail)
        return retrying.next_delay_s()

    def _report(self, stream: _Stream, cause: str, detail: str) -> None:
        if self._on_failure is not None:
            self._on_failure(WatchFailure(stream.version, cause, detail, stream.cursor))

    def _unserved(self, stream: _Stream) -> None:
        if not stream.unserved:
            log.info(
                "the API server does not serve this version of a custom resource; using the others",
                extra={"resource": self.resource.name, "version": self.resource.api_version(stream.version)},
            )
        stream.unserved, stream.cursor = True, None
        with self._lock:
            if all(s.unserved for s in self._streams) and not self._synced.is_set():
                if self._on_none_served is not None:
                    self._on_none_served()
                self._synced.set()

    def _relist(self, stream: _Stream) -> None:
        items, list_rv = list_all(self._call, stream.version, self._request_timeout_s)
        with self._lock:
            stream.cursor, stream.unserved = list_rv, False
            self._on_list(items, list_rv)
            self._synced.set()

    def _watch(self, stream: _Stream) -> None:
        response: Any = self._call(
            stream.version,
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
            stream.cursor = (obj.get("metadata") or {}).get("resourceVersion") or stream.cursor
            self._on_event(str(kind), obj)


def list_all(call: ListCall, version: str, timeout_s: float) -> tuple[list[KubeObject], str | None]:
    """Every object of one version, page by page; and the list's resourceVersion."""
    items: list[KubeObject] = []
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"limit": PAGE_SIZE, "_request_timeout": timeout_s}
        if token:
            kwargs["_continue"] = token
        page: Any = call(version, **kwargs)
        items.extend(page.get("items") or [])
        metadata = page.get("metadata") or {}
        token = metadata.get("continue")
        if not token:
            return items, metadata.get("resourceVersion")


def list_once(
    api: ApiClient, resource: CustomResource, *, timeout_s: float = 10.0
) -> list[KubeObject] | None:
    """A one-off read: the objects of the first version served; None if no version is served."""
    call = custom_object_call(api, resource)
    failures: list[ApiException] = []
    for version in resource.versions:
        try:
            items, _ = list_all(call, version, timeout_s)
        except ApiException as err:
            failures.append(err)
            continue
        except (HTTPError, OSError) as err:
            raise UnavailableError(
                f"cannot reach the Kubernetes API ({transport_error_text(err)}); check --kubeconfig and "
                "the API server",
                reason="kubernetes_unavailable",
            ) from err
        return items
    if all(err.status == 404 for err in failures):
        return None
    reasons = "; ".join(
        f"{resource.api_version(version)}: HTTP {err.status} {err.reason}"
        for version, err in zip(resource.versions, failures, strict=True)
    )
    raise UnavailableError(
        f"cannot list {resource.kind} objects ({reasons}); check RBAC for list on {resource.name}",
        reason="kubernetes_unavailable",
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
