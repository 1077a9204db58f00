"""An in-process stand-in for the Kubernetes API server.

It speaks the JSON wire format of the real API closely enough for the official
``kubernetes`` Python client (typed APIs, ``CustomObjectsApi`` and
``kubernetes.watch.Watch``) to be used against it unchanged. Storage mimics
etcd: one global, monotonically increasing resourceVersion, and a bounded
per-resource event history that backs watches and consistent paginated lists.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import json
import re
import secrets as _secrets
import select
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qsl, unquote, urlsplit

import yaml
from kubernetes import client as k8s_client

JSON = dict[str, Any]
Predicate = Callable[[JSON], bool]

DEFAULT_ADMIN_TOKEN = "test-admin-token"
DEFAULT_API_AUDIENCES = ("https://kubernetes.default.svc.cluster.local",)
_CONFLICT_DETAIL = (
    "the object has been modified; please apply your changes to the latest version and try again"
)
_CONTINUE_TOO_OLD = (
    "The provided continue parameter is too old to display a consistent list result. "
    "You can start a new list without the continue parameter, or use the continue token "
    "in this response to retrieve the remainder of the results. Continuing with the "
    "provided token results in an inconsistent list - objects that were created, modified, "
    "or deleted between the time the first chunk was returned and now may show up in the list."
)
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_NAME_ERROR = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
    "'-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', "
    "regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class ApiError(Exception):
    """An error answered to the client as a ``Status`` object."""

    def __init__(self, status: JSON, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(str(status.get("message", "")))
        self.status = status
        self.code = int(status["code"])
        self.headers = dict(headers or {})


def status_failure(code: int, reason: str, message: str, details: JSON | None = None) -> JSON:
    status: JSON = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
    }
    if reason:
        status["reason"] = reason
    if details is not None:
        status["details"] = details
    status["code"] = code
    return status


def _error(code: int, message: str, reason: str | None = None, details: JSON | None = None) -> ApiError:
    return ApiError(
        status_failure(code, _REASONS.get(code, "") if reason is None else reason, message, details)
    )


def _bad_request(message: str) -> ApiError:
    return _error(400, message)


def _route_not_found() -> ApiError:
    return _error(404, "the server could not find the requested resource", details={})


def _method_not_allowed() -> ApiError:
    return _error(405, "the server does not allow this method on the requested resource", details={})


@dataclass(frozen=True)
class Resource:
    group: str
    versions: tuple[str, ...]
    plural: str
    singular: str
    kind: str
    custom: bool = False
    create_on_update: bool = False
    status_subresource: bool = False
    return_deleted_object: bool = False
    field_labels: tuple[str, ...] = ("metadata.name", "metadata.namespace")
    cluster_scoped: bool = False  # stored under the namespace "" and served without one

    @property
    def qualified(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def storage_version(self) -> str:
        return self.versions[0]

    def api_version(self, version: str) -> str:
        return f"{self.group}/{version}" if self.group else version

    def details(self, name: str, kind: str | None = None, **extra: Any) -> JSON:
        result: JSON = {"name": name}
        if self.group:
            result["group"] = self.group
        result["kind"] = kind or self.plural
        result.update(extra)
        return result

    def not_found(self, name: str) -> ApiError:
        return _error(404, f'{self.qualified} "{name}" not found', details=self.details(name))

    def already_exists(self, name: str) -> ApiError:
        return _error(409, f'{self.qualified} "{name}" already exists', "AlreadyExists", self.details(name))

    def conflict(self, name: str, detail: str = _CONFLICT_DETAIL) -> ApiError:
        return _error(
            409,
            f'Operation cannot be fulfilled on {self.qualified} "{name}": {detail}',
            "Conflict",
            self.details(name),
        )

    def invalid(self, name: str, field_path: str, cause_reason: str, detail: str) -> ApiError:
        details = self.details(
            name, kind=self.kind, causes=[{"reason": cause_reason, "message": detail, "field": field_path}]
        )
        return _error(422, f'{self.kind} "{name}" is invalid: {field_path}: {detail}', details=details)


PODS = Resource(
    "",
    ("v1",),
    "pods",
    "pod",
    "Pod",
    status_subresource=True,
    return_deleted_object=True,
    field_labels=(
        "metadata.name",
        "metadata.namespace",
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    ),
)
SECRETS = Resource(
    "", ("v1",), "secrets", "secret", "Secret", field_labels=("metadata.name", "metadata.namespace", "type")
)
CONFIGMAPS = Resource("", ("v1",), "configmaps", "configmap", "ConfigMap")
# Deleting one marks it Terminating, as without a namespace controller; objects may still be put in
# namespaces that were never created (most tests do), but not in a Terminating one.
NAMESPACES = Resource(
    "",
    ("v1",),
    "namespaces",
    "namespace",
    "Namespace",
    return_deleted_object=True,
    field_labels=("metadata.name", "status.phase"),
    cluster_scoped=True,
)
LEASES = Resource("coordination.k8s.io", ("v1",), "leases", "lease", "Lease", create_on_update=True)
PEER_AUTHENTICATIONS = Resource(
    "security.istio.io",
    ("v1", "v1beta1"),
    "peerauthentications",
    "peerauthentication",
    "PeerAuthentication",
    custom=True,
    status_subresource=True,
)
# The workload controllers a rotation restarts (and the ReplicaSets between Deployments and pods).
# Stored and patched like any object: no controller acts on them.
DEPLOYMENTS = Resource("apps", ("v1",), "deployments", "deployment", "Deployment")
REPLICASETS = Resource("apps", ("v1",), "replicasets", "replicaset", "ReplicaSet")
STATEFULSETS = Resource("apps", ("v1",), "statefulsets", "statefulset", "StatefulSet")
DAEMONSETS = Resource("apps", ("v1",), "daemonsets", "daemonset", "DaemonSet")
RESOURCES: tuple[Resource, ...] = (
    PODS,
    SECRETS,
    CONFIGMAPS,
    NAMESPACES,
    LEASES,
    PEER_AUTHENTICATIONS,
    DEPLOYMENTS,
    REPLICASETS,
    STATEFULSETS,
    DAEMONSETS,
)
TOKENREVIEWS = "tokenreviews"


def _resource_named(name: str) -> Resource:
    wanted = name.lower()
    for rt in RESOURCES:
        if wanted in (rt.plural, rt.singular, rt.kind.lower(), rt.qualified):
            return rt
    raise KeyError(f"unknown resource kind {name!r}")


def controller_reference(owner: JSON) -> JSON:
    """The ownerReference by which `owner` (a rendered object) controls another object."""
    meta = owner["metadata"]
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def format_time(dt: datetime) -> str:
    return _utc(dt).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_micro_time(dt: datetime) -> str:
    return _utc(dt).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(value: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _go_quote_list(values: Sequence[str]) -> str:
    return "[" + " ".join(json.dumps(v) for v in values) + "]"


def _parse_bool(value: str | None) -> bool:
    return value is not None and value in ("1", "t", "T", "true", "TRUE", "True")


def _meta(obj: JSON) -> JSON:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        raise _bad_request("metadata must be an object")
    return meta


def _key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def _object_key(obj: JSON) -> str:
    meta = obj["metadata"]
    return _key(meta.get("namespace", ""), meta["name"])


def _set_namespace(rt: Resource, meta: JSON, namespace: str) -> None:
    if rt.cluster_scoped:
        meta.pop("namespace", None)
    else:
        meta["namespace"] = namespace


def render(rt: Resource, obj: JSON, version: str | None = None, *, typed: bool = True) -> JSON:
    out: JSON = {}
    if typed:
        out["kind"] = rt.kind
        out["apiVersion"] = rt.api_version(version or rt.storage_version)
    for k, v in obj.items():
        if k not in ("kind", "apiVersion"):
            out[k] = copy.deepcopy(v)
    return out


def _field_value(obj: JSON, path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    if isinstance(cur, bool):
        return "true" if cur else "false"
    if cur is None:
        return "false" if path == "spec.hostNetwork" else ""
    return str(cur)


def _split_selector(text: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    parts.append("".join(current).strip())
    return parts


_LABEL_KEY = r"[A-Za-z0-9](?:[-A-Za-z0-9_./]*[A-Za-z0-9])?"
_LABEL_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_LABEL_NOT_EXISTS = re.compile(rf"^!\s*({_LABEL_KEY})$")
_LABEL_EXISTS = re.compile(rf"^({_LABEL_KEY})$")
_LABEL_SET = re.compile(rf"^({_LABEL_KEY})\s+(in|notin)\s+\(([^()]*)\)$")
_LABEL_EQ = re.compile(rf"^({_LABEL_KEY})\s*(==|=|!=)\s*({_LABEL_VALUE})$")
_LABEL_CMP = re.compile(rf"^({_LABEL_KEY})\s*([<>])\s*(-?\d+)$")


def _label_requirement(text: str) -> Callable[[Mapping[str, str]], bool]:
    if m := _LABEL_NOT_EXISTS.match(text):
        key = m.group(1)
        return lambda labels: key not in labels
    if m := _LABEL_EXISTS.match(text):
        key = m.group(1)
        return lambda labels: key in labels
    if m := _LABEL_SET.match(text):
        key, op = m.group(1), m.group(2)
        values = {v.strip() for v in m.group(3).split(",")}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if m := _LABEL_EQ.match(text):
        key, op, value = m.group(1), m.group(2), m.group(3)
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if m := _LABEL_CMP.match(text):
        key, op, bound = m.group(1), m.group(2), int(m.group(3))

        def compare(labels: Mapping[str, str]) -> bool:
            raw = labels.get(key)
            if raw is None or not re.fullmatch(r"-?\d+", raw):
                return False
            return int(raw) > bound if op == ">" else int(raw) < bound

        return compare
    raise _bad_request(
        f"unable to parse requirement: found '{text}', expected: valid label selector requirement"
    )


def parse_label_selector(text: str | None) -> Predicate:
    if not text or not text.strip():
        return lambda obj: True
    requirements = [_label_requirement(part) for part in _split_selector(text)]

    def matches(obj: JSON) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(req(labels) for req in requirements)

    return matches


def parse_field_selector(text: str | None, rt: Resource) -> Predicate:
    if not text or not text.strip():
        return lambda obj: True
    terms: list[tuple[str, bool, str]] = []
    for part in text.split(","):
        m = re.match(r"^\s*([^=!\s]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
        if not m:
            raise _bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        path, op, value = m.group(1), m.group(2), m.group(3)
        if path not in rt.field_labels:
            raise _bad_request(f"field label not supported: {path}")
        terms.append((path, op != "!=", value))
    return lambda obj: all((_field_value(obj, p) == v) == eq for p, eq, v in terms)


class _PatchError(Exception):
    pass


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result: JSON = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise _PatchError(f"invalid JSON pointer: {path!r}")
    if path == "":
        return []
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _list_index(token: str, size: int) -> int:
    if not re.fullmatch(r"0|[1-9][0-9]*", token) or int(token) >= size:
        raise _PatchError(f"invalid array index: {token}")
    return int(token)


def _pointer_get(doc: Any, parts: list[str]) -> Any:
    cur = doc
    for part in parts:
        if isinstance(cur, dict):
            if part not in cur:
                raise _PatchError(f"missing value at /{'/'.join(parts)}")
            cur = cur[part]
        elif isinstance(cur, list):
            cur = cur[_list_index(part, len(cur))]
        else:
            raise _PatchError(f"cannot traverse into /{'/'.join(parts)}")
    return cur


def _pointer_add(doc: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return value
    parent = _pointer_get(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(len(parent) if last == "-" else _list_index(last, len(parent) + 1), value)
    else:
        raise _PatchError(f"cannot add at /{'/'.join(parts)}")
    return doc


def _pointer_remove(doc: Any, parts: list[str]) -> Any:
    if not parts:
        raise _PatchError("cannot remove the document root")
    parent = _pointer_get(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise _PatchError(f"Unable to remove nonexistent key: {last}: missing value")
        return parent.pop(last)
    if isinstance(parent, list):
        return parent.pop(_list_index(last, len(parent)))
    raise _PatchError(f"cannot remove /{'/'.join(parts)}")


def json_patch(doc: Any, operations: Any) -> Any:
    if not isinstance(operations, list):
        raise _bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    result = copy.deepcopy(doc)
    try:
        for op in operations:
            if not isinstance(op, dict):
                raise _PatchError("invalid operation")
            name = op.get("op")
            path = _pointer(op.get("path"))
            if name == "add":
                result = _pointer_add(result, path, copy.deepcopy(op.get("value")))
            elif name == "remove":
                _pointer_remove(result, path)
            elif name == "replace":
                _pointer_get(result, path)
                if path:
                    _pointer_remove(result, path)
                result = _pointer_add(result, path, copy.deepcopy(op.get("value")))
            elif name in ("move", "copy"):
                source = _pointer(op.get("from"))
                value = copy.deepcopy(_pointer_get(result, source))
                if name == "move":
                    _pointer_remove(result, source)
                result = _pointer_add(result, path, value)
            elif name == "test":
                if _pointer_get(result, path) != op.get("value"):
                    raise _PatchError(f"testing value {op.get('path')} failed: test failed")
            else:
                raise _PatchError(f"Unexpected kind: {name}")
    except _PatchError as exc:
        raise _error(422, str(exc)) from None
    return result


@dataclass(frozen=True)
class WatchEvent:
    rv: int
    type: str
    obj: JSON
    prev: JSON | None


@dataclass(frozen=True)
class _TokenInfo:
    namespace: str
    service_account: str
    sa_uid: str
    pod_name: str | None
    pod_uid: str | None
    audiences: tuple[str, ...]
    expires_at: datetime | None
    credential_id: str


@dataclass
class _Failure:
    resource: str
    verbs: frozenset[str] | None
    remaining: int
    code: int
    message: str | None


@dataclass
class _OpenWatch:
    sock: socket.socket
    abort: str | None = None


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: Mapping[str, str]
    resource: str | None
    verb: str | None


@dataclass(frozen=True)
class _Route:
    rt: Resource | None
    version: str
    namespace: str | None
    name: str | None
    subresource: str | None
    legacy_watch: bool = False
    special: str | None = None


class Store:
    """Thread-safe object storage with etcd-like resourceVersions and history."""

    def __init__(self, now: Callable[[], datetime], history_limit: int) -> None:
        if history_limit < 0:
            raise ValueError("history_limit must be >= 0")
        self.cond = threading.Condition(threading.RLock())
        self.now = now
        self.history_limit = history_limit
        self.rv = 0
        self.bookmark_generation = 0
        self.objects: dict[str, dict[str, JSON]] = {rt.plural: {} for rt in RESOURCES}
        self.history: dict[str, deque[WatchEvent]] = {rt.plural: deque() for rt in RESOURCES}
        self.floor: dict[str, int] = {rt.plural: 0 for rt in RESOURCES}

    def commit(self, rt: Resource, event_type: str, obj: JSON | None, prev: JSON | None) -> JSON:
        with self.cond:
            self.rv += 1
            rv = str(self.rv)
            table = self.objects[rt.plural]
            if event_type == "DELETED":
                assert prev is not None
                stored = copy.deepcopy(prev)
                stored["metadata"]["resourceVersion"] = rv
                del table[_object_key(prev)]
            else:
                assert obj is not None
                stored = obj
                stored["metadata"]["resourceVersion"] = rv
                table[_object_key(stored)] = stored
            history = self.history[rt.plural]
            history.append(WatchEvent(self.rv, event_type, stored, prev))
            while len(history) > self.history_limit:
                self.floor[rt.plural] = history.popleft().rv
            self.cond.notify_all()
            return stored

    def compact(self, only: Resource | None = None) -> None:
        with self.cond:
            for rt in RESOURCES if only is None else (only,):
                self.history[rt.plural].clear()
                self.floor[rt.plural] = self.rv
            self.cond.notify_all()

    def get(self, rt: Resource, namespace: str, name: str) -> JSON | None:
        with self.cond:
            return self.objects[rt.plural].get(_key(namespace, name))

    def require(self, rt: Resource, namespace: str, name: str) -> JSON:
        obj = self.get(rt, namespace, name)
        if obj is None:
            raise rt.not_found(name)
        return obj

    def snapshot(self, rt: Resource, rv: int, *, expired_message: str | None = None) -> dict[str, JSON]:
        with self.cond:
            floor = self.floor[rt.plural]
            if rv < floor:
                raise _error(410, expired_message or f"too old resource version: {rv} ({floor})")
            if rv > self.rv:
                raise _too_large(rv, self.rv)
            objects = dict(self.objects[rt.plural])
            for event in reversed(self.history[rt.plural]):
                if event.rv <= rv:
                    break
                key = _object_key(event.obj)
                if event.type == "ADDED":
                    objects.pop(key, None)
                else:
                    assert event.prev is not None
                    objects[key] = event.prev
            return objects

    def events_after(self, rt: Resource, cursor: int) -> tuple[list[WatchEvent], int, bool]:
        with self.cond:
            if cursor < self.floor[rt.plural]:
                return [], cursor, True
            events = [e for e in self.history[rt.plural] if e.rv > cursor]
            return events, self.rv, False

    def check_type(self, rt: Resource, obj: JSON, version: str) -> None:
        api_version = obj.get("apiVersion")
        kind = obj.get("kind")
        if rt.custom and not kind:
            raise _bad_request(f"Object 'Kind' is missing in '{json.dumps(obj)}'")
        if rt.custom and not api_version:
            raise _bad_request(f"Object 'apiVersion' is missing in '{json.dumps(obj)}'")
        expected = rt.api_version(version)
        if api_version and api_version != expected:
            raise _bad_request(_api_version_mismatch(api_version, expected))
        if kind and kind != rt.kind:
            raise _bad_request(
                f'{kind} in version "{version}" cannot be handled as a {rt.kind}: '
                f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})"
            )

    def _validate_name(self, rt: Resource, name: str) -> None:
        if len(name) > 253 or not _NAME_RE.match(name):
            raise rt.invalid(
                name, "metadata.name", "FieldValueInvalid", f'Invalid value: "{name}": {_NAME_ERROR}'
            )

    def _prepare(self, rt: Resource, obj: JSON) -> None:
        if rt is SECRETS:
            _prepare_secret(obj)
        elif rt is LEASES:
            _prepare_lease(obj)

    def create(self, rt: Resource, namespace: str, body: JSON, *, version: str, system: bool = False) -> JSON:
        obj = copy.deepcopy(body)
        if not system:
            self.check_type(rt, obj, version)
        obj.pop("kind", None)
        obj.pop("apiVersion", None)
        obj.setdefault("metadata", {})
        meta = _meta(obj)
        if meta.get("resourceVersion") and not system:
            raise _error(500, "resourceVersion should not be set on objects to be created", reason="")
        if meta.get("namespace") and meta["namespace"] != namespace:
            raise _bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        _set_namespace(rt, meta, namespace)
        with self.cond:
            self._check_namespace_open(rt, namespace, meta.get("name") or "")
            name = meta.get("name") or ""
            if not name:
                prefix = meta.get("generateName") or ""
                if not prefix:
                    raise rt.invalid(
                        "",
                        "metadata.name",
                        "FieldValueRequired",
                        "Required value: name or generateName is required",
                    )
                name = prefix + "".join(_secrets.choice(_GENERATE_ALPHABET) for _ in range(5))
                meta["name"] = name
            self._validate_name(rt, name)
            if self.get(rt, namespace, name) is not None:
                raise rt.already_exists(name)
            if not system or not meta.get("uid"):
                meta["uid"] = str(uuid.uuid4())
            if not system or not meta.get("creationTimestamp"):
                meta["creationTimestamp"] = format_time(self.now())
            if not system:
                for transient in (
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "selfLink",
                    "generation",
                ):
                    meta.pop(transient, None)
                if rt.custom and rt.status_subresource:
                    obj.pop("status", None)
                if rt is PODS:
                    _prepare_new_pod(rt, obj)
                if rt is NAMESPACES:
                    _prepare_new_namespace(obj)
            if rt.custom:
                meta.setdefault("generation", 1)
            self._prepare(rt, obj)
            return self.commit(rt, "ADDED", obj, None)

    def update(
        self,
        rt: Resource,
        namespace: str,
        name: str,
        body: JSON,
        *,
        version: str,
        subresource: str | None = None,
        system: bool = False,
    ) -> tuple[JSON, bool]:
        new = copy.deepcopy(body)
        if not system:
            self.check_type(rt, new, version)
        new.pop("kind", None)
        new.pop("apiVersion", None)
        new.setdefault("metadata", {})
        meta = _meta(new)
        if meta.get("name") != name:
            given = meta.get("name") or ""
            raise _bad_request(
                f"the name of the object ({given}) does not match the name on the URL ({name})"
            )
        if meta.get("namespace") and meta["namespace"] != namespace:
            raise _bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        _set_namespace(rt, meta, namespace)
        given_rv = str(meta.get("resourceVersion") or "")
        with self.cond:
            old = self.get(rt, namespace, name)
            if old is None:
                if system or (rt.create_on_update and subresource is None):
                    if given_rv and not system:
                        raise rt.not_found(name)
                    meta.pop("resourceVersion", None)
                    return self.create(rt, namespace, new, version=version, system=system), True
                raise rt.not_found(name)
            old_meta = old["metadata"]
            if not system:
                if given_rv:
                    if given_rv != old_meta["resourceVersion"]:
                        raise rt.conflict(name)
                elif rt.custom:
                    raise rt.invalid(
                        name,
                        "metadata.resourceVersion",
                        "FieldValueInvalid",
                        "Invalid value: 0x0: must be specified for an update",
                    )
                if meta.get("uid") and meta["uid"] != old_meta["uid"]:
                    raise rt.conflict(name, _uid_precondition_failed(meta["uid"], old_meta["uid"]))
            if subresource == "status":
                prepared = copy.deepcopy(old)
                if new.get("status") is None:
                    prepared.pop("status", None)
                else:
                    prepared["status"] = new["status"]
            else:
                prepared = new
                if not system:
                    for immutable in (
                        "uid",
                        "creationTimestamp",
                        "deletionTimestamp",
                        "deletionGracePeriodSeconds",
                    ):
                        if immutable in old_meta:
                            meta[immutable] = old_meta[immutable]
                        else:
                            meta.pop(immutable, None)
                    if rt.status_subresource:
                        if "status" in old:
                            prepared["status"] = copy.deepcopy(old["status"])
                        else:
                            prepared.pop("status", None)
                else:
                    meta.setdefault("uid", old_meta["uid"])
                    meta.setdefault("creationTimestamp", old_meta["creationTimestamp"])
                self._prepare(rt, prepared)
                meta.pop("generation", None)
                if "generation" in old_meta:
                    changed = _spec_view(prepared) != _spec_view(old)
                    meta["generation"] = old_meta["generation"] + (1 if changed else 0)
            prepared["metadata"]["resourceVersion"] = old_meta["resourceVersion"]
            if prepared == old:
                return old, False
            return self.commit(rt, "MODIFIED", prepared, old), False

    def patch(
        self,
        rt: Resource,
        namespace: str,
        name: str,
        content_type: str,
        raw: bytes,
        *,
        version: str,
        subresource: str | None = None,
    ) -> JSON:
        media = content_type.split(";")[0].strip().lower()
        accepted = ["application/json-patch+json", "application/merge-patch+json"]
        if not rt.custom:
            accepted.append("application/strategic-merge-patch+json")
        if media not in accepted:
            raise _error(
                415,
                "the body of the request was in an unknown format - accepted media types include: "
                + ", ".join([*accepted, "application/apply-patch+yaml"]),
            )
        try:
            patch_doc = json.loads(raw or b"null")
        except ValueError as exc:
            raise _bad_request(f"error decoding patch: {exc}") from None
        with self.cond:
            current = render(rt, self.require(rt, namespace, name), version)
            if media == "application/json-patch+json":
                patched = json_patch(current, patch_doc)
            else:
                if not isinstance(patch_doc, dict):
                    raise _bad_request("error decoding patch: the patch must be a JSON object")
                patched = merge_patch(current, patch_doc)
            if not isinstance(patched, dict):
                raise _bad_request("the patched object is not a JSON object")
            return self.update(rt, namespace, name, patched, version=version, subresource=subresource)[0]

    def delete(self, rt: Resource, namespace: str, name: str, options: JSON | None = None) -> JSON:
        with self.cond:
            old = self.require(rt, namespace, name)
            meta = old["metadata"]
            preconditions = (options or {}).get("preconditions") or {}
            if preconditions.get("uid") and preconditions["uid"] != meta["uid"]:
                raise rt.conflict(name, _uid_precondition_failed(preconditions["uid"], meta["uid"]))
            expected_rv = preconditions.get("resourceVersion")
            if expected_rv and expected_rv != meta["resourceVersion"]:
                raise rt.conflict(
                    name,
                    f"Precondition failed: ResourceVersion in precondition: {expected_rv}, "
                    f"ResourceVersion in object meta: {meta['resourceVersion']}",
                )
            if rt is NAMESPACES:
                return self._terminate_namespace(old)
            return self.commit(rt, "DELETED", None, old)

    def _terminate_namespace(self, old: JSON) -> JSON:
        if old["metadata"].get("deletionTimestamp"):
            return old
        terminating = copy.deepcopy(old)
        terminating["metadata"]["deletionTimestamp"] = format_time(self.now())
        terminating["status"] = {"phase": "Terminating"}
        return self.commit(NAMESPACES, "MODIFIED", terminating, old)

    def _check_namespace_open(self, rt: Resource, namespace: str, name: str) -> None:
        """As the API server's NamespaceLifecycle admission: nothing new in a Terminating namespace."""
        found = None if rt.cluster_scoped else self.get(NAMESPACES, "", namespace)
        if found is None or (found.get("status") or {}).get("phase") != "Terminating":
            return
        message = (
            f'{rt.plural} "{name}" is forbidden: unable to create new content in namespace {namespace} '
            "because it is being terminated"
        )
        cause = {
            "reason": "NamespaceTerminating",
            "message": f"namespace {namespace} is being terminated",
            "field": "metadata.namespace",
        }
        raise _error(403, message, details=rt.details(name, causes=[cause]))

    def list(
        self,
        rt: Resource,
        namespace: str | None,
        predicate: Predicate,
        *,
        resource_version: str | None = None,
        resource_version_match: str | None = None,
        limit: int | None = None,
        continue_token: str | None = None,
        filtered: bool = False,
    ) -> tuple[list[JSON], str, str | None, int | None]:
        start = ""
        with self.cond:
            if continue_token:
                list_rv, start = _decode_continue(continue_token)
                objects = self.snapshot(rt, list_rv, expired_message=_CONTINUE_TOO_OLD)
            elif resource_version_match == "Exact":
                list_rv = _parse_rv(resource_version)
                objects = self.snapshot(rt, list_rv)
            else:
                if resource_version not in (None, "", "0") and _parse_rv(resource_version) > self.rv:
                    raise _too_large(_parse_rv(resource_version), self.rv)
                list_rv = self.rv
                objects = dict(self.objects[rt.plural])
        keys = sorted(
            k for k in objects if (namespace is None or k.split("/", 1)[0] == namespace) and k >= start
        )
        items = [(k, objects[k]) for k in keys if predicate(objects[k])]
        if limit and limit > 0 and len(items) > limit:
            page = items[:limit]
            token = _encode_continue(list_rv, page[-1][0] + "\x00")
            remaining = None if filtered else len(items) - limit
            return [obj for _, obj in page], str(list_rv), token, remaining
        return [obj for _, obj in items], str(list_rv), None, None


def _api_version_mismatch(given: str, expected: str) -> str:
    return f"the API version in the data ({given}) does not match the expected API version ({expected})"


def _uid_precondition_failed(given: str, actual: str) -> str:
    return f"Precondition failed: UID in precondition: {given}, UID in object meta: {actual}"


def _spec_view(obj: JSON) -> JSON:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def _too_large(requested: int, current: int) -> ApiError:
    message = f"Too large resource version: {requested}, current: {current}"
    details = {
        "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
        "retryAfterSeconds": 1,
    }
    return _error(504, message, details=details)


def _parse_rv(value: str | None) -> int:
    try:
        parsed = int(value or "")
    except ValueError:
        raise _bad_request(
            f'resourceVersion: Invalid value: "{value}": strconv.ParseUint: parsing "{value}": invalid syntax'
        ) from None
    if parsed < 0:
        raise _bad_request(f'resourceVersion: Invalid value: "{value}"')
    return parsed


def _encode_continue(rv: int, start: str) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_continue(token: str) -> tuple[int, str]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        return int(data["rv"]), str(data["start"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise _bad_request("continue key is not valid: invalid continue token") from None


def _prepare_secret(obj: JSON) -> None:
    data = obj.get("data") or {}
    if not isinstance(data, dict):
        raise _bad_request('Secret in version "v1" cannot be handled as a Secret: data must be an object')
    normalized: dict[str, str] = {}
    for key, value in data.items():
        value = value or ""
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise _bad_request(
                f'Secret in version "v1" cannot be handled as a Secret: illegal base64 data in key "{key}"'
            ) from None
        normalized[key] = value
    for key, value in (obj.pop("stringData", None) or {}).items():
        normalized[key] = base64.b64encode(str(value).encode()).decode()
    if normalized:
        obj["data"] = normalized
    else:
        obj.pop("data", None)
    obj.setdefault("type", "Opaque")


def _prepare_lease(obj: JSON) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    for name in ("acquireTime", "renewTime"):
        value = spec.get(name)
        if value is None:
            continue
        parsed = _parse_time(value) if isinstance(value, str) else None
        if parsed is None:
            raise _bad_request(
                f'Lease in version "v1" cannot be handled as a Lease: parsing time "{value}" as '
                '"2006-01-02T15:04:05.000000Z07:00": cannot parse "" as "Z07:00"'
            )
        spec[name] = format_micro_time(parsed)


def _prepare_new_namespace(obj: JSON) -> None:
    obj.setdefault("spec", {"finalizers": ["kubernetes"]})
    obj["status"] = {"phase": "Active"}


def _prepare_new_pod(rt: Resource, obj: JSON) -> None:
    spec = obj.get("spec")
    name = obj["metadata"]["name"]
    if not isinstance(spec, dict) or not spec.get("containers"):
        raise rt.invalid(name, "spec.containers", "FieldValueRequired", "Required value")
    spec.setdefault("serviceAccountName", spec.get("serviceAccount") or "default")
    spec.setdefault("serviceAccount", spec["serviceAccountName"])
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}


def watch_event_for(event: WatchEvent, matches: Predicate) -> tuple[str, JSON] | None:
    now_matches = matches(event.obj)
    if event.type in ("ADDED", "DELETED"):
        return (event.type, event.obj) if now_matches else None
    was_matching = event.prev is not None and matches(event.prev)
    if now_matches:
        return ("MODIFIED" if was_matching else "ADDED"), event.obj
    if was_matching:
        assert event.prev is not None
        gone = copy.deepcopy(event.prev)
        gone["metadata"]["resourceVersion"] = str(event.rv)
        return "DELETED", gone
    return None


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeKubeApiServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeKubeApiServer/1.0"
    disable_nagle_algorithm = True
    _streaming = False

    @property
    def fake(self) -> FakeKubeApiServer:
        return cast(_HTTPServer, self.server).fake

    def setup(self) -> None:
        super().setup()
        self.fake._track_connection(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.fake._track_connection(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        try:
            self._dispatch(method)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, OSError):
            self.close_connection = True

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def send_json(self, code: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Audit-Id", str(uuid.uuid4()))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        body = self._read_body()
        fake = self.fake
        route: _Route | None = None
        verb: str | None = None
        try:
            fake._authenticate(self.headers.get("Authorization"))
            route = _parse_route(parts.path)
            if route.rt is not None and route.rt.api_version(route.version) in fake.unserved_versions:
                raise _route_not_found()
            verb = _verb_for(method, route, query)
        except ApiError as exc:
            fake._record(method, parts.path, query, route, verb)
            self.send_json(exc.code, exc.status, exc.headers)
            return
        fake._record(method, parts.path, query, route, verb)
        assert route is not None and verb is not None
        try:
            if route.special == "version":
                self.send_json(200, fake.version_info)
                return
            if route.special == "openid-configuration":
                self.send_json(200, fake.openid_configuration())
                return
            if route.special == "jwks":
                self.send_json(200, fake.service_account_jwks)
                return
            resource = route.rt.plural if route.rt else TOKENREVIEWS
            fake._maybe_fail(resource, verb)
            if route.rt is None:
                self.send_json(201, fake._token_review(_decode_body(body)))
            elif verb == "watch":
                self._serve_watch(route, query)
            else:
                code, payload = fake._serve_resource(
                    method, verb, route, query, body, self.headers.get("Content-Type") or ""
                )
                self.send_json(code, payload)
        except ApiError as exc:
            self.send_json(exc.code, exc.status, exc.headers)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            raise
        except Exception as exc:
            fake._server_error(f"{method} {self.path}: {exc!r}")
            if self._streaming:
                raise
            self.send_json(500, status_failure(500, "InternalError", f"Internal error occurred: {exc!r}"))

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _write_event(self, event_type: str, obj: JSON) -> None:
        self._write_chunk(json.dumps({"type": event_type, "object": obj}).encode() + b"\n")

    def _peer_closed(self) -> bool:
        # poll, not select: select() refuses descriptors past 1,024, which a long test process
        # can reach, and every watch would then end as if its client had gone.
        try:
            poller = select.poll()
            poller.register(self.connection, select.POLLIN)
            readable = poller.poll(0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _serve_watch(self, route: _Route, query: Mapping[str, str]) -> None:
        fake = self.fake
        rt = route.rt
        assert rt is not None
        namespace = route.namespace
        labels = parse_label_selector(query.get("labelSelector"))
        fields = parse_field_selector(query.get("fieldSelector"), rt)
        only_name = route.name if route.legacy_watch else None

        def matches(obj: JSON) -> bool:
            meta = obj["metadata"]
            return (
                (namespace is None or meta["namespace"] == namespace)
                and (only_name is None or meta["name"] == only_name)
                and labels(obj)
                and fields(obj)
            )

        timeout = _parse_timeout(query.get("timeoutSeconds"))
        bookmarks = _parse_bool(query.get("allowWatchBookmarks"))
        requested_rv = query.get("resourceVersion") or ""
        send_initial_param = query.get("sendInitialEvents")
        send_initial = (
            _parse_bool(send_initial_param) if send_initial_param is not None else requested_rv in ("", "0")
        )
        store = fake.store
        initial: list[JSON] = []
        error: JSON | None = None
        open_watch = _OpenWatch(self.connection)
        with store.cond:
            fake._watch_count += 1
            cursor = store.rv
            if not send_initial and requested_rv not in ("", "0"):
                wanted = _parse_rv(requested_rv)
                floor = store.floor[rt.plural]
                if wanted < floor:
                    error = status_failure(410, "Expired", f"too old resource version: {wanted} ({floor})")
                elif wanted > store.rv:
                    error = _too_large(wanted, store.rv).status
                else:
                    cursor = wanted
            if send_initial:
                current = store.objects[rt.plural]
                initial = [current[k] for k in sorted(current) if matches(current[k])]
            last_bookmark_generation = store.bookmark_generation
            fake._open_watches.append(open_watch)
            store.cond.notify_all()
        version = route.version
        try:
            self._streaming = True
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Cache-Control", "no-cache, private")
            self.send_header("Audit-Id", str(uuid.uuid4()))
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if error is not None:
                self._write_event("ERROR", error)
                self._end_stream()
                return
            for obj in initial:
                self._write_event("ADDED", render(rt, obj, version))
            if send_initial and send_initial_param is not None and bookmarks:
                self._write_bookmark(rt, version, cursor, initial_events_end=True)
            started = time.monotonic()
            deadline = started + timeout if timeout is not None else None
            pre_timeout_bookmark = (
                deadline - 2 if deadline is not None and bookmarks and timeout and timeout > 2 else None
            )
            next_periodic = started + fake.bookmark_interval if bookmarks else None
            while True:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    self._end_stream()
                    return
                with store.cond:
                    if open_watch.abort == "abrupt":
                        break
                    if open_watch.abort == "graceful":
                        self._end_stream()
                        return
                    events, new_cursor, overflowed = store.events_after(rt, cursor)
                    generation = store.bookmark_generation
                    due = (pre_timeout_bookmark is not None and now >= pre_timeout_bookmark) or (
                        next_periodic is not None and now >= next_periodic
                    )
                    if not events and not overflowed and generation == last_bookmark_generation and not due:
                        cursor = new_cursor
                        wait = 0.2 if deadline is None else max(0.0, min(0.2, deadline - now))
                        store.cond.wait(wait)
                        idle = True
                    else:
                        idle = False
                if idle:
                    if self._peer_closed():
                        break
                    continue
                if overflowed:
                    self._end_stream()
                    return
                for event in events:
                    converted = watch_event_for(event, matches)
                    if converted is not None:
                        self._write_event(converted[0], render(rt, converted[1], version))
                cursor = new_cursor
                if bookmarks and (generation != last_bookmark_generation or due):
                    self._write_bookmark(rt, version, cursor)
                    if pre_timeout_bookmark is not None and now >= pre_timeout_bookmark:
                        pre_timeout_bookmark = None
                    if next_periodic is not None and now >= next_periodic:
                        next_periodic = now + fake.bookmark_interval
                last_bookmark_generation = generation
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
        finally:
            with store.cond:
                if open_watch in fake._open_watches:
                    fake._open_watches.remove(open_watch)
                store.cond.notify_all()

    def _write_bookmark(
        self, rt: Resource, version: str, rv: int, *, initial_events_end: bool = False
    ) -> None:
        metadata: JSON = {"resourceVersion": str(rv), "creationTimestamp": None}
        if initial_events_end:
            metadata["annotations"] = {"k8s.io/initial-events-end": "true"}
        self._write_event(
            "BOOKMARK", {"kind": rt.kind, "apiVersion": rt.api_version(version), "metadata": metadata}
        )

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")


def _parse_timeout(value: str | None) -> float | None:
    if value in (None, ""):
        return None
    try:
        seconds = int(str(value))
    except ValueError:
        raise _bad_request(f'timeoutSeconds: Invalid value: "{value}"') from None
    return float(seconds) if seconds > 0 else None


def _decode_body(raw: bytes) -> JSON:
    try:
        body = json.loads(raw or b"null")
    except ValueError as exc:
        raise _bad_request(f"error decoding request body: {exc}") from None
    if not isinstance(body, dict):
        raise _bad_request("the request body must be a JSON object")
    return body


def _parse_route(path: str) -> _Route:
    segments = [unquote(s) for s in path.strip("/").split("/")] if path.strip("/") else []
    if segments == ["version"]:
        return _Route(None, "", None, None, None, special="version")
    if segments == [".well-known", "openid-configuration"]:
        return _Route(None, "", None, None, None, special="openid-configuration")
    if segments == ["openid", "v1", "jwks"]:
        return _Route(None, "", None, None, None, special="jwks")
    if segments[:2] == ["api", "v1"]:
        group, version, rest = "", "v1", segments[2:]
    elif len(segments) >= 3 and segments[0] == "apis":
        group, version, rest = segments[1], segments[2], segments[3:]
    else:
        raise _route_not_found()
    legacy_watch = rest[:1] == ["watch"]
    if legacy_watch:
        rest = rest[1:]
    namespace: str | None = None
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3:
        raise _route_not_found()
    plural = rest[0]
    name = rest[1] if len(rest) > 1 else None
    subresource = rest[2] if len(rest) > 2 else None
    if group == "authentication.k8s.io" and version == "v1" and plural == TOKENREVIEWS:
        if namespace is not None or name is not None or legacy_watch:
            raise _route_not_found()
        return _Route(None, version, None, None, None)
    for rt in RESOURCES:
        if rt.group == group and rt.plural == plural and version in rt.versions:
            if rt.cluster_scoped and namespace is not None:
                raise _route_not_found()
            if name is not None and namespace is None and not rt.cluster_scoped:
                raise _route_not_found()
            if subresource is not None and not (subresource == "status" and rt.status_subresource):
                raise _route_not_found()
            return _Route(rt, version, namespace, name, subresource, legacy_watch)
    raise _route_not_found()


def _verb_for(method: str, route: _Route, query: Mapping[str, str]) -> str:
    if route.special is not None:
        if method != "GET":
            raise _method_not_allowed()
        return "get"
    if route.rt is None:
        if method != "POST":
            raise _method_not_allowed()
        return "create"
    collection = route.name is None
    if route.legacy_watch:
        if method != "GET":
            raise _method_not_allowed()
        return "watch"
    if method == "GET":
        if not collection:
            return "get"
        return "watch" if _parse_bool(query.get("watch")) else "list"
    if method == "POST" and collection and (route.namespace is not None or route.rt.cluster_scoped):
        return "create"
    if method == "PUT" and not collection:
        return "update"
    if method == "PATCH" and not collection:
        return "patch"
    if method == "DELETE" and not collection:
        return "delete"
    raise _method_not_allowed()


class FakeKubeApiServer:
    """A faithful-enough Kubernetes API server running in a background thread."""

    def __init__(
        self,
        *,
        admin_token: str = DEFAULT_ADMIN_TOKEN,
        now: Callable[[], datetime] | None = None,
        history_limit: int = 1000,
        api_audiences: Sequence[str] = DEFAULT_API_AUDIENCES,
        bookmark_interval: float = 60.0,
    ) -> None:
        self.admin_token = admin_token
        self.api_audiences: tuple[str, ...] = tuple(api_audiences)
        self.bookmark_interval = bookmark_interval
        self.service_account_issuer = "https://kubernetes.default.svc.cluster.local"
        self.service_account_jwks: JSON = {"keys": []}
        self.version_info: JSON = {
            "major": "1",
            "minor": "33",
            "gitVersion": "v1.33.0-fake",
            "platform": "linux/amd64",
        }
        self._now = now or (lambda: datetime.now(UTC))
        self.store = Store(self._now, history_limit)
        self._tokens: dict[str, _TokenInfo] = {}
        self._failures: list[_Failure] = []
        self._requests: list[RecordedRequest] = []
        self._open_watches: list[_OpenWatch] = []
        self._connections: set[socket.socket] = set()
        self._watch_count = 0
        self.server_errors: list[str] = []
        self._tokenreview_count = 0
        # "group/version" strings answered with 404, as for a CRD version with served: false.
        self.unserved_versions: set[str] = set()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> FakeKubeApiServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> FakeKubeApiServer:
        if self._httpd is not None:
            raise RuntimeError("FakeKubeApiServer already started")
        httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        httpd.fake = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-kube-apiserver",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self.disconnect_watches()
        httpd.shutdown()
        with self.store.cond:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("FakeKubeApiServer is not running")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_service_account_keys(self, jwks: JSON, issuer: str | None = None) -> None:
        """The token signer's public keys, served at /openid/v1/jwks as the real API server does."""
        self.service_account_jwks = jwks
        if issuer is not None:
            self.service_account_issuer = issuer

    def openid_configuration(self) -> JSON:
        return {
            "issuer": self.service_account_issuer,
            "jwks_uri": f"{self.url}/openid/v1/jwks",
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        }

    def write_kubeconfig(
        self, path: str | Path, token: str | None = None, namespace: str = "default"
    ) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [
                {"name": "fake-admin", "user": {"token": self.admin_token if token is None else token}}
            ],
            "contexts": [
                {"name": "fake", "context": {"cluster": "fake", "user": "fake-admin", "namespace": namespace}}
            ],
            "current-context": "fake",
            "preferences": {},
        }
        target = Path(path)
        target.write_text(yaml.safe_dump(config, sort_keys=False))
        return target

    def configuration(self, token: str | None = None) -> k8s_client.Configuration:
        config = k8s_client.Configuration(host=self.url)
        config.api_key = {"authorization": self.admin_token if token is None else token}
        config.api_key_prefix = {"authorization": "Bearer"}
        return config

    def api_client(self, token: str | None = None) -> k8s_client.ApiClient:
        return k8s_client.ApiClient(self.configuration(token))

    @property
    def resource_version(self) -> str:
        with self.store.cond:
            return str(self.store.rv)

    @property
    def watch_count(self) -> int:
        with self.store.cond:
            return self._watch_count

    @property
    def tokenreview_count(self) -> int:
        with self.store.cond:
            return self._tokenreview_count

    @property
    def active_watches(self) -> int:
        with self.store.cond:
            return len(self._open_watches)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self.store.cond:
            return list(self._requests)

    def request_count(self, resource: str | None = None, verb: str | None = None) -> int:
        return sum(
            1
            for r in self.requests
            if (resource is None or r.resource == resource) and (verb is None or r.verb == verb)
        )

    def wait_for_active_watches(self, count: int, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        with self.store.cond:
            while len(self._open_watches) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.store.cond.wait(min(remaining, 0.05))
            return True

    def compact_history(self, kind: str | None = None) -> None:
        """Forgets the event history (of one kind of object, if given): a watch resuming from before
        now gets 410 Gone."""
        self.store.compact(None if kind is None else _resource_named(kind))

    def disconnect_watches(self, graceful: bool = False) -> int:
        with self.store.cond:
            watches = [w for w in self._open_watches if w.abort is None]
            for watch in watches:
                watch.abort = "graceful" if graceful else "abrupt"
                if not graceful:
                    with contextlib.suppress(OSError):
                        watch.sock.shutdown(socket.SHUT_RDWR)
            self.store.cond.notify_all()
            return len(watches)

    def send_bookmarks(self) -> None:
        with self.store.cond:
            self.store.bookmark_generation += 1
            self.store.cond.notify_all()

    def fail_next(
        self,
        resource: str,
        n: int = 1,
        code: int = 500,
        *,
        verbs: Iterable[str] | None = None,
        message: str | None = None,
    ) -> None:
        plural = (
            TOKENREVIEWS
            if resource.lower() in (TOKENREVIEWS, "tokenreview")
            else _resource_named(resource).plural
        )
        with self.store.cond:
            self._failures.append(
                _Failure(plural, frozenset(verbs) if verbs is not None else None, n, code, message)
            )

    def fail_next_tokenreviews(self, n: int = 1, code: int = 500, message: str | None = None) -> None:
        self.fail_next(TOKENREVIEWS, n, code, verbs=("create",), message=message)

    def clear_failures(self) -> None:
        with self.store.cond:
            self._failures.clear()

    def register_token(
        self,
        token: str,
        namespace: str,
        service_account: str,
        sa_uid: str,
        pod_name: str | None = None,
        pod_uid: str | None = None,
        audiences: Sequence[str] = ("istio-ca",),
        expires_at: datetime | None = None,
    ) -> None:
        if pod_name is not None and pod_uid is None:
            pod = self.store.get(PODS, namespace, pod_name)
            pod_uid = pod["metadata"]["uid"] if pod is not None else None
        info = _TokenInfo(
            namespace,
            service_account,
            sa_uid,
            pod_name,
            pod_uid,
            tuple(audiences),
            expires_at,
            str(uuid.uuid4()),
        )
        with self.store.cond:
            self._tokens[token] = info

    def revoke_token(self, token: str) -> None:
        with self.store.cond:
            self._tokens.pop(token, None)

    def get_object(self, kind: str, namespace: str, name: str) -> JSON | None:
        rt = _resource_named(kind)
        obj = self.store.get(rt, namespace, name)
        return None if obj is None else render(rt, obj)

    def list_objects(self, kind: str, namespace: str | None = None) -> list[JSON]:
        rt = _resource_named(kind)
        items, _, _, _ = self.store.list(rt, namespace, lambda obj: True)
        return [render(rt, obj) for obj in items]

    def put_object(self, kind: str, namespace: str, obj: Mapping[str, Any]) -> JSON:
        rt = _resource_named(kind)
        body = copy.deepcopy(dict(obj))
        meta = body.setdefault("metadata", {})
        name = meta.get("name")
        if not name:
            raise ValueError("put_object needs metadata.name")
        _set_namespace(rt, meta, namespace)
        meta.pop("resourceVersion", None)
        stored, _ = self.store.update(rt, namespace, name, body, version=rt.storage_version, system=True)
        return render(rt, stored)

    def delete_object(self, kind: str, namespace: str, name: str) -> JSON:
        rt = _resource_named(kind)
        try:
            return render(rt, self.store.delete(rt, namespace, name))
        except ApiError:
            raise KeyError(f"{rt.plural} {namespace}/{name} not found") from None

    def add_pod(
        self,
        namespace: str,
        name: str,
        uid: str | None = None,
        labels: Mapping[str, str] | None = None,
        service_account: str = "default",
        node_name: str | None = None,
        *,
        annotations: Mapping[str, str] | None = None,
        phase: str = "Running",
        pod_ip: str | None = None,
        owner: JSON | None = None,
    ) -> JSON:
        """`owner`: the stored object that controls the pod (its ownerReference is set)."""
        metadata: JSON = {"name": name, "namespace": namespace, "uid": uid or str(uuid.uuid4())}
        if labels:
            metadata["labels"] = dict(labels)
        if annotations:
            metadata["annotations"] = dict(annotations)
        if owner is not None:
            metadata["ownerReferences"] = [controller_reference(owner)]
        spec: JSON = {
            "containers": [
                {
                    "name": "app",
                    "image": "registry.k8s.io/pause:3.10",
                    "resources": {},
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File",
                    "imagePullPolicy": "IfNotPresent",
                }
            ],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": service_account,
            "serviceAccount": service_account,
            "securityContext": {},
            "schedulerName": "default-scheduler",
        }
        if node_name:
            spec["nodeName"] = node_name
        status: JSON = {"phase": phase, "qosClass": "BestEffort"}
        if pod_ip:
            status["podIP"] = pod_ip
            status["podIPs"] = [{"ip": pod_ip}]
        pod: JSON = {"metadata": metadata, "spec": spec, "status": status}
        try:
            stored = self.store.create(PODS, namespace, pod, version="v1", system=True)
        except ApiError as exc:
            raise ValueError(str(exc)) from None
        return render(PODS, stored)

    def add_workload(
        self,
        kind: str,
        namespace: str,
        name: str,
        *,
        owner: JSON | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> JSON:
        """A Deployment, ReplicaSet, StatefulSet or DaemonSet with the fields the API requires
        (a selector and a pod template), optionally controlled by `owner`."""
        rt = _resource_named(kind)
        match = dict(labels or {"app": name})
        metadata: JSON = {"name": name, "namespace": namespace, "uid": str(uuid.uuid4())}
        if owner is not None:
            metadata["ownerReferences"] = [controller_reference(owner)]
        spec: JSON = {
            "selector": {"matchLabels": match},
            "template": {
                "metadata": {"labels": match},
                "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]},
            },
        }
        if rt is STATEFULSETS:
            spec["serviceName"] = name
        stored = self.store.create(
            rt, namespace, {"metadata": metadata, "spec": spec}, version="v1", system=True
        )
        return render(rt, stored)

    def delete_pod(self, namespace: str, name: str) -> JSON:
        return self.delete_object("pods", namespace, name)

    def apply_peer_authentication(
        self,
        namespace: str,
        name: str,
        spec: Mapping[str, Any],
        creation_timestamp: datetime | str | None = None,
    ) -> JSON:
        metadata: JSON = {"name": name, "namespace": namespace}
        if creation_timestamp is not None:
            metadata["creationTimestamp"] = (
                format_time(creation_timestamp)
                if isinstance(creation_timestamp, datetime)
                else creation_timestamp
            )
        with self.store.cond:
            existing = self.store.get(PEER_AUTHENTICATIONS, namespace, name)
            if existing is not None:
                metadata = {**copy.deepcopy(existing["metadata"]), **metadata}
            body: JSON = {"metadata": metadata, "spec": copy.deepcopy(dict(spec))}
            if existing is not None and "status" in existing:
                body["status"] = copy.deepcopy(existing["status"])
            return self.put_object("peerauthentications", namespace, body)

    def delete_peer_authentication(self, namespace: str, name: str) -> JSON:
        return self.delete_object("peerauthentications", namespace, name)

    def _track_connection(self, conn: socket.socket, opened: bool) -> None:
        with self.store.cond:
            if opened:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _authenticate(self, header: str | None) -> None:
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or token.strip() != self.admin_token:
            raise _error(401, "Unauthorized")

    def _record(
        self, method: str, path: str, query: Mapping[str, str], route: _Route | None, verb: str | None
    ) -> None:
        resource: str | None = None
        if route is not None and route.special is None:
            resource = route.rt.plural if route.rt is not None else TOKENREVIEWS
        with self.store.cond:
            self._requests.append(RecordedRequest(method, path, dict(query), resource, verb))
            if resource == TOKENREVIEWS and verb == "create":
                self._tokenreview_count += 1

    def _server_error(self, description: str) -> None:
        with self.store.cond:
            self.server_errors.append(description)

    def _take_failure(self, resource: str, verb: str) -> _Failure | None:
        with self.store.cond:
            for failure in self._failures:
                if failure.resource == resource and (failure.verbs is None or verb in failure.verbs):
                    failure.remaining -= 1
                    if failure.remaining <= 0:
                        self._failures.remove(failure)
                    return failure
        return None

    def _maybe_fail(self, resource: str, verb: str) -> None:
        failure = self._take_failure(resource, verb)
        if failure is None:
            return
        code = failure.code
        reason = _REASONS.get(code, "")
        message = failure.message or {
            500: "Internal error occurred: injected failure",
            503: "the server is currently unable to handle the request",
            504: (
                "the server was unable to return a response in the time allotted, "
                "but may still be processing the request"
            ),
            429: "the server has received too many requests and has asked us to try again later",
            403: f'{resource} is forbidden: User "system:anonymous" cannot {verb} resource "{resource}"',
        }.get(code, f"injected failure ({code})")
        headers: dict[str, str] = {}
        details: JSON | None = None
        if code in (429, 503, 504):
            headers["Retry-After"] = "1"
            details = {"retryAfterSeconds": 1}
        raise ApiError(status_failure(code, reason, message, details), headers)

    def _token_review(self, body: JSON) -> JSON:
        api_version = body.get("apiVersion")
        if api_version and api_version != "authentication.k8s.io/v1":
            raise _bad_request(_api_version_mismatch(api_version, "authentication.k8s.io/v1"))
        spec = body.get("spec") or {}
        token = spec.get("token") or ""
        if not token:
            raise _bad_request("token is required for TokenReview in authentication")
        requested = [str(a) for a in spec.get("audiences") or []]
        out_spec: JSON = {"token": token}
        if requested:
            out_spec["audiences"] = requested
        return {
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": out_spec,
            "status": self._review(token, requested),
        }

    def _review(self, token: str, requested: list[str]) -> JSON:
        with self.store.cond:
            info = self._tokens.get(token)
        if info is None:
            return {"user": {}, "error": "invalid bearer token"}
        token_audiences = list(info.audiences) or list(self.api_audiences)
        target = requested or list(self.api_audiences)
        audiences = [a for a in token_audiences if a in target]
        if not audiences:
            return _review_failure(
                f"token audiences {_go_quote_list(token_audiences)} "
                f"is invalid for the target audiences {_go_quote_list(target)}"
            )
        if info.expires_at is not None and _utc(self._now()) >= _utc(info.expires_at):
            return _review_failure("service account token has expired")
        extra: dict[str, list[str]] = {
            "authentication.kubernetes.io/credential-id": [f"JTI={info.credential_id}"]
        }
        if info.pod_name is not None:
            pod = self.store.get(PODS, info.namespace, info.pod_name)
            if pod is None:
                return _review_failure("service account token has been invalidated")
            actual_uid = pod["metadata"]["uid"]
            if info.pod_uid is not None and actual_uid != info.pod_uid:
                return _review_failure(
                    f"pod UID ({actual_uid}) does not match service account pod ref claim ({info.pod_uid})"
                )
            extra["authentication.kubernetes.io/pod-name"] = [info.pod_name]
            extra["authentication.kubernetes.io/pod-uid"] = [info.pod_uid or actual_uid]
            node_name = (pod.get("spec") or {}).get("nodeName")
            if node_name:
                extra["authentication.kubernetes.io/node-name"] = [node_name]
        return {
            "authenticated": True,
            "user": {
                "username": f"system:serviceaccount:{info.namespace}:{info.service_account}",
                "uid": info.sa_uid,
                "groups": [
                    "system:serviceaccounts",
                    f"system:serviceaccounts:{info.namespace}",
                    "system:authenticated",
                ],
                "extra": extra,
            },
            "audiences": audiences,
        }

    def _serve_resource(
        self,
        method: str,
        verb: str,
        route: _Route,
        query: Mapping[str, str],
        raw: bytes,
        content_type: str,
    ) -> tuple[int, JSON]:
        rt = route.rt
        assert rt is not None
        store = self.store
        version = route.version
        namespace = route.namespace
        if verb == "list":
            labels = parse_label_selector(query.get("labelSelector"))
            fields = parse_field_selector(query.get("fieldSelector"), rt)
            limit_text = query.get("limit")
            try:
                limit = int(limit_text) if limit_text else None
            except ValueError:
                raise _bad_request(f'limit: Invalid value: "{limit_text}"') from None
            items, list_rv, token, remaining = store.list(
                rt,
                namespace,
                lambda obj: labels(obj) and fields(obj),
                resource_version=query.get("resourceVersion"),
                resource_version_match=query.get("resourceVersionMatch"),
                limit=limit,
                continue_token=query.get("continue"),
                filtered=bool(query.get("labelSelector") or query.get("fieldSelector")),
            )
            metadata: JSON = {"resourceVersion": list_rv}
            if token:
                metadata["continue"] = token
            if remaining is not None:
                metadata["remainingItemCount"] = remaining
            return 200, {
                "kind": f"{rt.kind}List",
                "apiVersion": rt.api_version(version),
                "metadata": metadata,
                "items": [render(rt, obj, version, typed=rt.custom) for obj in items],
            }
        if namespace is None:
            assert rt.cluster_scoped
            namespace = ""
        if verb == "create":
            return 201, render(rt, store.create(rt, namespace, _decode_body(raw), version=version), version)
        name = route.name
        assert name is not None
        if verb == "get":
            return 200, render(rt, store.require(rt, namespace, name), version)
        if verb == "update":
            obj, created = store.update(
                rt, namespace, name, _decode_body(raw), version=version, subresource=route.subresource
            )
            return (201 if created else 200), render(rt, obj, version)
        if verb == "patch":
            return 200, render(
                rt,
                store.patch(
                    rt, namespace, name, content_type, raw, version=version, subresource=route.subresource
                ),
                version,
            )
        if verb == "delete":
            if route.subresource is not None:
                raise _method_not_allowed()
            options = _decode_body(raw) if raw.strip() else None
            deleted = store.delete(rt, namespace, name, options)
            if rt.return_deleted_object:
                return 200, render(rt, deleted, version)
            return 200, {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": rt.details(name, uid=deleted["metadata"]["uid"]),
            }
        raise _method_not_allowed()


def _review_failure(message: str) -> JSON:
    return {"user": {}, "error": f"[invalid bearer token, {message}]"}
