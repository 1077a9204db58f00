"""Keeps the `caBundle` of a MutatingWebhookConfiguration equal to the CA's trust bundle, so that
the API server trusts the injection webhook's certificate (issued by meshca's own CA) through
every CA key transition.

A watch (`ca.kube.watch`) follows the one configuration by name (a field selector, so RBAC can
hold the CA to that name); every change to it, and every new trust bundle, wakes one worker
thread, which compares each webhook's `clientConfig.caBundle` with the bundle and sends a JSON
Patch for those that differ. Each replaced value is preceded by a `test` of that webhook's name,
so a patch computed from a stale view (webhooks reordered meanwhile) is refused by the API server
and redone once the watch has caught up. A configuration edited by hand is repaired when its
watch event arrives; a configuration that does not exist yet gets its caBundle once it is
created. A failed patch is retried on a backoff.

The leader runs it (`ca.server.leadership`), beside the trust bundle ConfigMaps.
"""

from __future__ import annotations

import base64
import json
import logging
import random as _random
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ca.common.backoff import Backoff, Retrying, UniformRandom
from ca.common.clock import Clock, SystemClock
from ca.kube.client import TRANSPORT_ERRORS, transport_error_text
from ca.kube.names import WEBHOOK_CONFIGURATION
from ca.kube.watch import RETRY_BACKOFF, CustomResource, CustomResourceWatch, KubeObject, core_call

log = logging.getLogger(__name__)

MUTATING_WEBHOOK_CONFIGURATIONS = CustomResource(
    group="admissionregistration.k8s.io",
    plural="mutatingwebhookconfigurations",
    versions=("v1",),
    kind="MutatingWebhookConfiguration",
)
DEFAULT_CONFIGURATION = WEBHOOK_CONFIGURATION
PATCH_BACKOFF = Backoff(initial_s=0.5, maximum_s=60.0)
IDLE_WAIT_S = 3600.0

Operation = dict[str, Any]


def ca_bundle_value(bundle_pem: str) -> str:
    """The bundle as `clientConfig.caBundle` holds it: the PEM, base64."""
    return base64.b64encode(bundle_pem.encode()).decode()


def _resource_version(obj: KubeObject | None) -> int:
    text = str(((obj or {}).get("metadata") or {}).get("resourceVersion") or "")
    return int(text) if text.isdigit() else -1


def ca_bundle_patch(observed: KubeObject, bundle_pem: str) -> list[Operation]:
    """The JSON Patch that gives every webhook of `observed` the bundle as its caBundle (pure);
    empty when each already has it."""
    wanted = ca_bundle_value(bundle_pem)
    operations: list[Operation] = []
    webhooks = observed.get("webhooks")
    for index, webhook in enumerate(webhooks if isinstance(webhooks, list) else []):
        if not isinstance(webhook, Mapping):
            continue
        config = webhook.get("clientConfig")
        if isinstance(config, Mapping) and config.get("caBundle") == wanted:
            continue
        operations.append({"op": "test", "path": f"/webhooks/{index}/name", "value": webhook.get("name")})
        if isinstance(config, Mapping):
            op = "replace" if "caBundle" in config else "add"
            operations.append({"op": op, "path": f"/webhooks/{index}/clientConfig/caBundle", "value": wanted})
        else:
            operations.append(
                {"op": "add", "path": f"/webhooks/{index}/clientConfig", "value": {"caBundle": wanted}}
            )
    return operations


class CaBundlePatcher:
    """Keeps the caBundle of every webhook of the MutatingWebhookConfiguration `name` equal to the
    trust bundle (see the module's description).

    Runs as a trust bundle publisher of `ca.server.leadership`: `start()` returns once the watch
    has listed (UnavailableError if that takes longer than `wait_s`), `set_bundle()` publishes a
    new bundle, `stop()` ends the watch and the worker. One instance runs once.
    """

    def __init__(
        self,
        api: client.ApiClient,
        bundle_pem: str,
        *,
        name: str = DEFAULT_CONFIGURATION,
        clock: Clock | None = None,
        backoff: Backoff = PATCH_BACKOFF,
        random: UniformRandom = _random.random,
        watch_backoff: Backoff = RETRY_BACKOFF,
        watch_timeout_s: int = 240,
        request_timeout_s: float = 30.0,
    ) -> None:
        self.name = name
        self._admission = client.AdmissionregistrationV1Api(api)
        self._clock = clock or SystemClock()
        self._bundle = bundle_pem
        self._request_timeout_s = request_timeout_s
        self._retrying = Retrying(backoff, random)
        self._lock = threading.Lock()
        self._observed: KubeObject | None = None
        self._listed = False
        self._missing_logged = False
        self._due: float | None = None  # monotonic time of the next reconcile; None: nothing to do
        self._patches = 0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._watch = CustomResourceWatch(
            api,
            MUTATING_WEBHOOK_CONFIGURATIONS,
            on_list=self._listed_items,
            on_event=self._event,
            call=core_call(
                self._admission.list_mutating_webhook_configuration, field_selector=f"metadata.name={name}"
            ),
            watch_timeout_s=watch_timeout_s,
            request_timeout_s=request_timeout_s,
            backoff=watch_backoff,
            random=random,
            clock=self._clock,
        )
        self._worker = threading.Thread(target=self._run, name="webhook-cabundle", daemon=True)

    def start(self, wait_s: float = 10.0) -> None:
        self._watch.start(wait_s)
        self._worker.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._watch.stop()
        if self._worker.is_alive():
            self._worker.join(timeout=5)

    def set_bundle(self, bundle_pem: str) -> None:
        with self._lock:
            if bundle_pem == self._bundle:
                return
            self._bundle = bundle_pem
            self._queue_now()
        self._wake.set()

    def patches(self) -> int:
        """How many patches this patcher has had accepted."""
        with self._lock:
            return self._patches

    # What the watch delivers.

    def _listed_items(self, items: list[KubeObject], _list_rv: str | None) -> None:
        found = [obj for obj in items if (obj.get("metadata") or {}).get("name") == self.name]
        with self._lock:
            self._observed = found[0] if found else None
            self._listed = True
            self._queue_now()
        self._wake.set()

    def _event(self, kind: str, obj: KubeObject) -> None:
        if (
            kind not in ("ADDED", "MODIFIED", "DELETED")
            or (obj.get("metadata") or {}).get("name") != self.name
        ):
            return
        with self._lock:
            if kind != "DELETED" and _resource_version(obj) < _resource_version(self._observed):
                return  # older than what a patch of ours already answered
            self._observed = None if kind == "DELETED" else obj
            self._queue_now()
        self._wake.set()

    def _queue_now(self) -> None:
        self._due = self._clock.monotonic()

    # The worker.

    def _run(self) -> None:
        while True:
            self._wake.clear()
            if self._stopping.is_set():
                return
            with self._lock:
                now = self._clock.monotonic()
                due = self._due is not None and self._due <= now
                wait_s = IDLE_WAIT_S if self._due is None else max(0.0, self._due - now)
                if due:
                    self._due = None
            if due:
                self._reconcile()
                continue
            self._clock.wait(self._wake, wait_s)

    def _reconcile(self) -> None:
        with self._lock:
            observed, bundle = self._observed, self._bundle
        if observed is None:
            if not self._missing_logged:
                self._missing_logged = True
                log.warning(
                    "no MutatingWebhookConfiguration of this name yet: its caBundle is set when it is "
                    "created. Apply deploy/ (it holds the configuration) or name yours with "
                    "--webhook-configuration",
                    extra={"configuration": self.name},
                )
            return
        self._missing_logged = False
        operations = ca_bundle_patch(observed, bundle)
        if not operations:
            self._retrying.reset()
            return
        try:
            written = self._patch(operations)
        except TRANSPORT_ERRORS as err:
            self._failed(err)
            return
        self._retrying.reset()
        webhooks = sum(1 for op in operations if op["op"] != "test")
        with self._lock:
            self._patches += 1
            if written is not None and _resource_version(written) > _resource_version(self._observed):
                self._observed = written
        log.info(
            "set the caBundle of the injection webhook configuration to the trust bundle",
            extra={"configuration": self.name, "webhooks": webhooks},
        )

    def _patch(self, operations: Sequence[Operation]) -> KubeObject | None:
        try:
            response: Any = self._admission.patch_mutating_webhook_configuration(
                self.name,
                list(operations),
                field_manager="meshca",
                _content_type="application/json-patch+json",
                _preload_content=False,
                _request_timeout=self._request_timeout_s,
            )
        except ApiException as err:
            if err.status == 404:  # deleted meanwhile: its watch event says so
                return None
            raise
        try:
            obj = json.loads(response.data)
        except (TypeError, ValueError):
            return None
        return obj if isinstance(obj, Mapping) else None

    def _failed(self, err: BaseException) -> None:
        first = self._retrying.attempt == 0
        delay_s = self._retrying.next_delay_s()
        with self._lock:
            self._due = self._clock.monotonic() + delay_s
        # 422: a test of a webhook's name failed on a stale view, which the watch is about to refresh.
        stale = isinstance(err, ApiException) and err.status in (409, 422)
        if isinstance(err, ApiException) and err.status in (401, 403):
            message = (
                "the API server refused to patch the injection webhook configuration; retrying. Grant "
                "meshca's service account get, list, watch and patch on mutatingwebhookconfigurations "
                "of that name"
            )
        else:
            message = "could not patch the caBundle of the injection webhook configuration; retrying"
        log.log(
            logging.DEBUG if stale or not first else logging.WARNING,
            message,
            extra={
                "configuration": self.name,
                "detail": transport_error_text(err),
                "retry_in_s": round(delay_s, 3),
            },
        )
