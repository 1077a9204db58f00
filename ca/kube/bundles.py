"""Publishes the CA's trust bundle as the ConfigMap `istio-ca-root-cert` in every namespace.

Two watches (`ca.kube.watch`) keep a cache of the Namespaces and of the ConfigMaps of that
name; every change to either queues its namespace, and one worker thread brings each queued
namespace in line with `ca.kube.root_configmap`: it creates a missing ConfigMap, restores an
edited one, and leaves a correct one alone. A namespace created later gets its ConfigMap as soon
as its watch event arrives; one deleted or edited by hand comes back the same way. A failed
write is retried on a backoff of its own namespace; the others go on. Work starts once both
watches have listed in full, so nothing is created from a half-known cluster.

The cache is updated from the watches and from the API's answer to each write; a write based on
a stale view is refused by the API server (409) and retried once the watch has caught up.
"""

from __future__ import annotations

import json
import logging
import random as _random
import threading
from collections.abc import Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ca.common.backoff import Backoff, Retrying, UniformRandom
from ca.common.clock import Clock, SystemClock
from ca.kube.client import TRANSPORT_ERRORS, transport_error_text
from ca.kube.root_configmap import (
    CONFIGMAP_NAME,
    Repair,
    desired_configmap,
    is_published_to,
    namespace_wants_configmap,
    repair_needed,
    repaired,
)
from ca.kube.watch import RETRY_BACKOFF, CustomResource, CustomResourceWatch, KubeObject, core_call

log = logging.getLogger(__name__)

NAMESPACES = CustomResource(group="", plural="namespaces", versions=("v1",), kind="Namespace")
CONFIGMAPS = CustomResource(group="", plural="configmaps", versions=("v1",), kind="ConfigMap")
FIELD_MANAGER = "meshca"
WRITE_BACKOFF = Backoff(initial_s=0.5, maximum_s=60.0)
IDLE_WAIT_S = 3600.0  # nothing queued: the worker sleeps until a change wakes it


def _name(obj: KubeObject) -> str:
    return str((obj.get("metadata") or {}).get("name") or "")


def _namespace_of(obj: KubeObject) -> str:
    return str((obj.get("metadata") or {}).get("namespace") or "")


def _resource_version(obj: KubeObject | None) -> int:
    text = str(((obj or {}).get("metadata") or {}).get("resourceVersion") or "")
    return int(text) if text.isdigit() else -1


def _status(err: ApiException) -> Mapping[str, Any]:
    try:
        body = json.loads(err.body or "{}")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, Mapping) else {}


def _namespace_terminating(err: ApiException) -> bool:
    causes = (_status(err).get("details") or {}).get("causes") or []
    return any(isinstance(c, Mapping) and c.get("reason") == "NamespaceTerminating" for c in causes)


class _DueQueue:
    """Namespaces to bring in line, each with the monotonic time it is due; a namespace is queued
    once, at the earliest time asked for."""

    def __init__(self) -> None:
        self._due: dict[str, float] = {}

    def add(self, namespace: str, at: float) -> None:
        self._due[namespace] = min(at, self._due.get(namespace, at))

    def pop_due(self, now: float) -> str | None:
        if not self._due:
            return None
        namespace = min(self._due, key=self._due.__getitem__)
        if self._due[namespace] > now:
            return None
        del self._due[namespace]
        return namespace

    def wait_s(self, now: float) -> float | None:
        return max(0.0, min(self._due.values()) - now) if self._due else None

    def __len__(self) -> int:
        return len(self._due)


class RootCertPublisher:
    """Keeps `istio-ca-root-cert` (key `root-cert.pem` = the trust bundle PEM) in every namespace.

    `start()` returns once both watches have listed (UnavailableError if that takes longer than
    `wait_s`); `set_bundle()` publishes a new bundle everywhere; `stop()` ends the watches and the
    worker. One instance runs once: after `stop()`, make a new one.
    """

    def __init__(
        self,
        api: client.ApiClient,
        bundle_pem: str,
        *,
        clock: Clock | None = None,
        backoff: Backoff = WRITE_BACKOFF,
        random: UniformRandom = _random.random,
        watch_backoff: Backoff = RETRY_BACKOFF,
        watch_timeout_s: int = 240,
        request_timeout_s: float = 30.0,
    ) -> None:
        self._core = client.CoreV1Api(api)
        self._clock = clock or SystemClock()
        self._bundle = bundle_pem
        self._backoff = backoff
        self._random = random
        self._request_timeout_s = request_timeout_s
        self._lock = threading.Lock()
        self._namespaces: dict[str, KubeObject] = {}
        self._configmaps: dict[str, KubeObject] = {}  # by namespace
        self._queue = _DueQueue()
        self._retrying: dict[str, Retrying] = {}
        self._writes: dict[Repair, int] = {Repair.CREATE: 0, Repair.UPDATE: 0}
        self._wake = threading.Event()
        self._stopping = threading.Event()
        watch_options: dict[str, Any] = {
            "watch_timeout_s": watch_timeout_s,
            "request_timeout_s": request_timeout_s,
            "backoff": watch_backoff,
            "random": random,
            "clock": self._clock,
        }
        self._namespace_watch = CustomResourceWatch(
            api,
            NAMESPACES,
            on_list=self._namespaces_listed,
            on_event=self._namespace_event,
            call=core_call(self._core.list_namespace),
            **watch_options,
        )
        self._configmap_watch = CustomResourceWatch(
            api,
            CONFIGMAPS,
            on_list=self._configmaps_listed,
            on_event=self._configmap_event,
            call=core_call(
                self._core.list_config_map_for_all_namespaces,
                field_selector=f"metadata.name={CONFIGMAP_NAME}",
            ),
            **watch_options,
        )
        self._worker = threading.Thread(target=self._run, name="root-cert-publisher", daemon=True)

    def start(self, wait_s: float = 10.0) -> None:
        self._namespace_watch.start(wait_s)
        try:
            self._configmap_watch.start(wait_s)
        except BaseException:
            self._namespace_watch.stop()
            raise
        self._worker.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._namespace_watch.stop()
        self._configmap_watch.stop()
        if self._worker.is_alive():
            self._worker.join(timeout=5)

    def set_bundle(self, bundle_pem: str) -> None:
        """Publishes `bundle_pem` in place of the bundle before it, in every namespace."""
        with self._lock:
            if bundle_pem == self._bundle:
                return
            self._bundle = bundle_pem
            self._queue_all()
        self._wake.set()

    @property
    def bundle_pem(self) -> str:
        return self._bundle

    def writes(self) -> dict[str, int]:
        """How many ConfigMaps this publisher created and how many it repaired so far."""
        with self._lock:
            return {"created": self._writes[Repair.CREATE], "updated": self._writes[Repair.UPDATE]}

    def pending(self) -> int:
        """Namespaces queued (due or waiting on a retry)."""
        with self._lock:
            return len(self._queue)

    # What the watches deliver (each watch calls one at a time; the lock orders the two).

    def _namespaces_listed(self, items: list[KubeObject], _list_rv: str | None) -> None:
        with self._lock:
            self._namespaces = {_name(obj): obj for obj in items if _name(obj)}
            self._queue_all()
        self._wake.set()

    def _namespace_event(self, kind: str, obj: KubeObject) -> None:
        name = _name(obj)
        if kind not in ("ADDED", "MODIFIED", "DELETED") or not name:
            return
        with self._lock:
            if kind == "DELETED":
                self._namespaces.pop(name, None)
                self._retrying.pop(name, None)
                return
            self._namespaces[name] = obj
            self._queue_now(name)
        self._wake.set()

    def _configmaps_listed(self, items: list[KubeObject], _list_rv: str | None) -> None:
        with self._lock:
            self._configmaps = {_namespace_of(obj): obj for obj in items if _name(obj) == CONFIGMAP_NAME}
            # A relist may follow a gap in the watch: any ConfigMap may have gone meanwhile.
            self._queue_all()
        self._wake.set()

    def _configmap_event(self, kind: str, obj: KubeObject) -> None:
        namespace = _namespace_of(obj)
        if kind not in ("ADDED", "MODIFIED", "DELETED") or _name(obj) != CONFIGMAP_NAME or not namespace:
            return
        with self._lock:
            if _resource_version(obj) < _resource_version(self._configmaps.get(namespace)):
                return  # older than what a write of ours already answered
            if kind == "DELETED":
                self._configmaps.pop(namespace, None)
            else:
                self._configmaps[namespace] = obj
            self._queue_now(namespace)
        self._wake.set()

    def _queue_now(self, namespace: str) -> None:
        if is_published_to(namespace):
            self._queue.add(namespace, self._clock.monotonic())

    def _queue_all(self) -> None:
        for namespace in self._namespaces:
            self._queue_now(namespace)

    # The worker: one namespace at a time, never raises.

    def _run(self) -> None:
        while True:
            self._wake.clear()
            if self._stopping.is_set():
                return
            with self._lock:
                namespace = self._queue.pop_due(self._clock.monotonic())
                wait_s = self._queue.wait_s(self._clock.monotonic()) if namespace is None else 0.0
            if namespace is not None:
                self._reconcile(namespace)
                continue
            self._clock.wait(self._wake, IDLE_WAIT_S if wait_s is None else wait_s)

    def _reconcile(self, namespace: str) -> None:
        with self._lock:
            found = self._namespaces.get(namespace)
            observed = self._configmaps.get(namespace)
            bundle = self._bundle
        if found is None or not namespace_wants_configmap(found):
            self._done(namespace)
            return
        action = repair_needed(observed, bundle)
        try:
            if action is Repair.CREATE:
                written = self._create(namespace, desired_configmap(namespace, bundle))
            elif action is Repair.UPDATE:
                assert observed is not None
                written = self._replace(namespace, repaired(observed, bundle))
            else:
                self._done(namespace)
                return
        except TRANSPORT_ERRORS as err:
            self._failed(namespace, action, err)
            return
        self._written(namespace, action, written)

    def _create(self, namespace: str, body: Mapping[str, Any]) -> KubeObject | None:
        try:
            response = self._core.create_namespaced_config_map(
                namespace,
                _model(body),
                field_manager=FIELD_MANAGER,
                _preload_content=False,
                _request_timeout=self._request_timeout_s,
            )
        except ApiException as err:
            # Already there (the watch brings it); or the namespace is gone or going: nothing to do.
            if err.status == 409 or err.status == 404 or (err.status == 403 and _namespace_terminating(err)):
                return None
            raise
        return _parsed(response)

    def _replace(self, namespace: str, body: Mapping[str, Any]) -> KubeObject | None:
        try:
            response = self._core.replace_namespaced_config_map(
                CONFIGMAP_NAME,
                namespace,
                _model(body),
                field_manager=FIELD_MANAGER,
                _preload_content=False,
                _request_timeout=self._request_timeout_s,
            )
        except ApiException as err:
            if err.status == 404:  # deleted meanwhile: its watch event queues a create
                return None
            raise
        return _parsed(response)

    def _written(self, namespace: str, action: Repair, written: KubeObject | None) -> None:
        with self._lock:
            self._retrying.pop(namespace, None)
            if written is None:
                return
            self._writes[action] += 1
            if _resource_version(written) > _resource_version(self._configmaps.get(namespace)):
                self._configmaps[namespace] = written
        log.info(
            "wrote the trust bundle ConfigMap",
            extra={
                "namespace": namespace,
                "configmap": CONFIGMAP_NAME,
                "action": "created" if action is Repair.CREATE else "restored",
            },
        )

    def _done(self, namespace: str) -> None:
        with self._lock:
            self._retrying.pop(namespace, None)

    def _failed(self, namespace: str, action: Repair, err: BaseException) -> None:
        with self._lock:
            retrying = self._retrying.setdefault(namespace, Retrying(self._backoff, self._random))
            first = retrying.attempt == 0
            delay_s = retrying.next_delay_s()
            self._queue.add(namespace, self._clock.monotonic() + delay_s)
        # A conflict is a stale cache that the watch is about to refresh: nobody needs to hear of it.
        conflict = isinstance(err, ApiException) and err.status == 409
        log.log(
            logging.DEBUG if conflict or not first else logging.WARNING,
            _failure_message(err),
            extra={
                "namespace": namespace,
                "action": action.value,
                "detail": transport_error_text(err),
                "retry_in_s": round(delay_s, 3),
            },
        )


def _failure_message(err: BaseException) -> str:
    if isinstance(err, ApiException) and err.status in (401, 403):
        return (
            "the API server refused to write the trust bundle ConfigMap; retrying. Grant meshca's "
            "service account create, update, list and watch on configmaps and list and watch on "
            "namespaces cluster-wide"
        )
    return "could not write the trust bundle ConfigMap; retrying"


def _model(body: Mapping[str, Any]) -> client.V1ConfigMap:
    model = client.V1ConfigMap.from_dict(dict(body))
    assert model is not None  # from_dict answers None only for None
    return model


def _parsed(response: Any) -> KubeObject | None:
    try:
        obj = json.loads(response.data)
    except (TypeError, ValueError):
        return None
    return obj if isinstance(obj, Mapping) else None
