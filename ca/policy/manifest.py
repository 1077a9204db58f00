"""PeerAuthentication manifests (Kubernetes objects, YAML or JSON) -> validated model values.

Validation follows Istio's own rules for the resource (its admission webhook and
CRD schema): `portLevelMtls` only with a non-empty selector, port keys 1-65535,
modes UNSET/DISABLE/PERMISSIVE/STRICT (exact spelling), a missing mode is UNSET.
Unknown fields in `spec`, `spec.mtls`, `spec.selector` and the port entries are
refused: a typo such as `mdoe: STRICT` would otherwise silently mean UNSET, that
is, less protection than intended.

Two choices Istio leaves to the config store:
- An empty selector (`selector: {}` or `matchLabels: {}`) is the same as no
  selector, as Istio treats it everywhere (scope, validation): the model holds
  `selector=None`.
- A manifest without `metadata.creationTimestamp` (typical of files) gets
  `NO_CREATION_TIME`, the Unix epoch; such policies tie with each other, so the
  name and then the namespace decide, the same order Istio uses for equal
  timestamps. A file may set `creationTimestamp` to order policies explicitly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import yaml

from ca.errors import PolicyError
from ca.policy.model import MtlsMode, PeerAuthentication, PolicyRef

GROUP = "security.istio.io"
API_VERSIONS = (f"{GROUP}/v1", f"{GROUP}/v1beta1")
KIND = "PeerAuthentication"
LIST_KINDS = ("List", f"{KIND}List")
NO_CREATION_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MODE_NAMES = ", ".join(mode.value for mode in MtlsMode)

_SPEC_FIELDS = frozenset({"selector", "mtls", "portLevelMtls"})
_MTLS_FIELDS = frozenset({"mode"})
_SELECTOR_FIELDS = frozenset({"matchLabels"})
_PORT_KEY = re.compile(r"[0-9]{1,5}")


class _Where:
    """Builds error messages that name the object and the field."""

    def __init__(self, namespace: str, name: str) -> None:
        self.object = f"PeerAuthentication {namespace}/{name}"

    def error(self, field: str, problem: str, fix: str, reason: str = "invalid_policy") -> PolicyError:
        return PolicyError(f"{self.object}: {field} {problem}; {fix}", reason=reason)


def parse_peer_authentication(obj: Mapping[str, Any]) -> PeerAuthentication:
    """A Kubernetes PeerAuthentication object (as a dict) -> a validated `PeerAuthentication`."""
    if not isinstance(obj, Mapping):
        raise PolicyError(f"a PeerAuthentication must be a mapping, not {type(obj).__name__}")
    metadata, namespace, name = _identity(obj)
    where = _Where(namespace, name)
    _check_type(obj, where)
    created = _creation_time(metadata, where)
    spec = obj.get("spec")
    if spec is None:
        spec = {}
    if not isinstance(spec, Mapping):
        raise where.error("spec", "is not a mapping", "write spec as `spec: {mtls: {mode: STRICT}}`")
    _refuse_unknown(spec, _SPEC_FIELDS, "spec", where)
    selector = _selector(spec.get("selector"), where)
    mode = _mtls_mode(spec.get("mtls"), "spec.mtls", where)
    port_modes = _port_modes(spec.get("portLevelMtls"), where)
    if port_modes and selector is None:
        raise where.error(
            "spec.portLevelMtls",
            "is set but the policy has no workload selector",
            "port-level modes apply only to workloads; add spec.selector.matchLabels",
        )
    return PeerAuthentication(
        ref=PolicyRef(namespace, name), created=created, selector=selector, mode=mode, port_modes=port_modes
    )


def load_manifests(text: str) -> list[PeerAuthentication]:
    """Every PeerAuthentication in a multi-document YAML text; other kinds are skipped."""
    return manifests_from_documents(_yaml_documents(text))


def load_json_manifests(text: str) -> list[PeerAuthentication]:
    """PeerAuthentications from a JSON text: one object, a List, or an array of objects."""
    return manifests_from_documents(_json_documents(text))


def _yaml_documents(text: str) -> list[Any]:
    try:
        return list(yaml.safe_load_all(text))
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as err:
        raise PolicyError(f"the manifest is not valid YAML ({_one_line(err)}); fix its syntax") from err


def _json_documents(text: str) -> list[Any]:
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise PolicyError(f"the manifest is not valid JSON ({_one_line(err)}); fix its syntax") from err
    return document if isinstance(document, list) else [document]


def declared_namespaces(text: str, *, json_text: bool = False) -> frozenset[str] | None:
    """The namespaces of the PeerAuthentications a manifest text declares, read without validating
    them; None when that cannot be decided (the text does not parse, or a document or object has
    no readable namespace). Documents of other kinds are never policies and name nothing."""
    try:
        documents = _json_documents(text) if json_text else _yaml_documents(text)
    except PolicyError:
        return None
    namespaces: set[str] = set()
    for document in documents:
        if document is None:
            continue
        found = _document_namespaces(document)
        if found is None:
            return None
        namespaces |= found
    return frozenset(namespaces)


def _document_namespaces(document: Any) -> set[str] | None:
    if not isinstance(document, Mapping):
        return None
    kind = document.get("kind")
    if kind not in LIST_KINDS:
        return _object_namespace(document) if kind == KIND else set()
    items = document.get("items")
    if items is None:
        return set()
    if not isinstance(items, list) or not all(isinstance(item, Mapping) for item in items):
        return None
    namespaces: set[str] = set()
    for item in items:
        if kind == f"{KIND}List" or item.get("kind") == KIND:
            found = _object_namespace(item)
            if found is None:
                return None
            namespaces |= found
    return namespaces


def _object_namespace(obj: Mapping[str, Any]) -> set[str] | None:
    metadata = obj.get("metadata")
    namespace = metadata.get("namespace") if isinstance(metadata, Mapping) else None
    return {namespace} if isinstance(namespace, str) and namespace else None


def manifests_from_documents(documents: Iterable[Any]) -> list[PeerAuthentication]:
    policies: list[PeerAuthentication] = []
    for index, document in enumerate(documents, start=1):
        if document is None:
            continue
        if not isinstance(document, Mapping):
            raise PolicyError(
                f"document {index} is a {type(document).__name__}, not a Kubernetes object; "
                "each YAML document must be a mapping with apiVersion and kind"
            )
        try:
            policies.extend(_policies_in(document))
        except PolicyError as err:
            raise PolicyError(f"document {index}: {err.message}", reason=err.reason) from err
    return policies


def _policies_in(document: Mapping[str, Any]) -> Iterator[PeerAuthentication]:
    kind = document.get("kind")
    if kind in LIST_KINDS:
        yield from _list_items(document)
    elif is_peer_authentication(document):
        yield parse_peer_authentication(document)


def is_peer_authentication(document: Mapping[str, Any]) -> bool:
    """True for kind PeerAuthentication in Istio's security group, whatever the version."""
    api_version = document.get("apiVersion")
    return (
        document.get("kind") == KIND and isinstance(api_version, str) and api_version.startswith(f"{GROUP}/")
    )


def _list_items(document: Mapping[str, Any]) -> Iterator[PeerAuthentication]:
    items = document.get("items")
    if items is None:
        return
    if not isinstance(items, list):
        raise PolicyError(f"{document.get('kind')}.items is not a list; write items as a YAML sequence")
    typed_list = document.get("kind") == f"{KIND}List"
    for position, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise PolicyError(f"items[{position}] is not a Kubernetes object (a mapping)")
        if typed_list:
            # Items of a typed list may leave their kind and apiVersion to the list.
            item = {"kind": KIND, "apiVersion": document.get("apiVersion"), **item}
        if is_peer_authentication(item):
            yield parse_peer_authentication(item)


def _identity(obj: Mapping[str, Any]) -> tuple[Mapping[str, Any], str, str]:
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping):
        raise PolicyError("a PeerAuthentication has no metadata; give metadata.name and metadata.namespace")
    name, namespace = metadata.get("name"), metadata.get("namespace")
    if not isinstance(name, str) or not name:
        raise PolicyError(f"a PeerAuthentication in namespace {namespace!r} has no metadata.name; give one")
    if not isinstance(namespace, str) or not namespace:
        raise PolicyError(
            f"PeerAuthentication {name}: metadata.namespace is missing; give the namespace explicitly "
            "(meshca applies manifests itself, so there is no kubectl context namespace to fall back on)"
        )
    return metadata, namespace, name


def _check_type(obj: Mapping[str, Any], where: _Where) -> None:
    if obj.get("kind") != KIND:
        raise where.error("kind", f"is {obj.get('kind')!r}", f"only kind {KIND} is read here")
    if obj.get("apiVersion") not in API_VERSIONS:
        raise where.error(
            "apiVersion",
            f"{obj.get('apiVersion')!r} is not supported",
            f"use {' or '.join(API_VERSIONS)}",
            reason="unsupported_api_version",
        )


def _creation_time(metadata: Mapping[str, Any], where: _Where) -> datetime:
    value = metadata.get("creationTimestamp")
    if value is None:
        return NO_CREATION_TIME
    if isinstance(value, datetime):  # YAML turns an unquoted timestamp into a datetime
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, str):
        parsed = _parse_rfc3339(value)
        if parsed is not None:
            return parsed
    raise where.error(
        "metadata.creationTimestamp",
        f"{value!r} is not an RFC 3339 time",
        "write it like 2024-05-01T12:00:00Z or leave it out",
    )


def _parse_rfc3339(text: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None or "T" not in text.upper():
        return None
    return parsed.astimezone(UTC)


def _refuse_unknown(section: Mapping[str, Any], known: frozenset[str], field: str, where: _Where) -> None:
    unknown = sorted(str(key) for key in section if key not in known)
    if unknown:
        raise where.error(
            field,
            f"has unknown field(s) {', '.join(unknown)}",
            f"the fields allowed there are {', '.join(sorted(known))}",
        )


def _selector(value: Any, where: _Where) -> Mapping[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise where.error(
            "spec.selector", "is not a mapping", "write it as `selector: {matchLabels: {k: v}}`"
        )
    _refuse_unknown(value, _SELECTOR_FIELDS, "spec.selector", where)
    labels = value.get("matchLabels")
    if labels is None:
        return None
    if not isinstance(labels, Mapping):
        raise where.error(
            "spec.selector.matchLabels", "is not a mapping", "write it as `matchLabels: {k: v}`"
        )
    selector: dict[str, str] = {}
    for key, label_value in labels.items():
        if not isinstance(key, str) or not key or "*" in key:
            raise where.error(
                "spec.selector.matchLabels", f"has the invalid key {key!r}", "keys are non-empty label names"
            )
        if not isinstance(label_value, str) or "*" in label_value:
            raise where.error(
                f"spec.selector.matchLabels.{key}",
                f"is {label_value!r}, not a plain string",
                'quote it, e.g. `version: "1"`; wildcards are not supported',
            )
        selector[key] = label_value
    # An empty selector selects like no selector at all (Istio: mesh/namespace scope).
    return selector or None


def _mtls_mode(value: Any, field: str, where: _Where) -> MtlsMode:
    if value is None:
        return MtlsMode.UNSET
    if not isinstance(value, Mapping):
        raise where.error(field, "is not a mapping", "write it as `mtls: {mode: STRICT}`")
    _refuse_unknown(value, _MTLS_FIELDS, field, where)
    mode = value.get("mode")
    if mode is None:
        return MtlsMode.UNSET
    if isinstance(mode, str) and mode in MtlsMode.__members__:
        return MtlsMode[mode]
    raise where.error(f"{field}.mode", f"{mode!r} is not a mode", f"use one of {MODE_NAMES}")


def _port_modes(value: Any, where: _Where) -> dict[int, MtlsMode]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise where.error(
            "spec.portLevelMtls", "is not a mapping", "write it as `portLevelMtls: {8080: {mode: STRICT}}`"
        )
    if not value:
        raise where.error("spec.portLevelMtls", "is empty", "list at least one port or remove the field")
    modes: dict[int, MtlsMode] = {}
    for key, entry in value.items():
        port = _port_key(key, where)
        if port in modes:
            raise where.error(f"spec.portLevelMtls.{key}", "repeats a port", "give each port once")
        if entry is None:
            raise where.error(f"spec.portLevelMtls.{port}", "is null", "write it as `{mode: STRICT}`")
        modes[port] = _mtls_mode(entry, f"spec.portLevelMtls.{port}", where)
    return modes


def _port_key(key: Any, where: _Where) -> int:
    # YAML gives int keys for `8080:` and str keys for `"8080":`; JSON always gives strings.
    if isinstance(key, int) and not isinstance(key, bool):
        port: int | None = key
    elif isinstance(key, str) and _PORT_KEY.fullmatch(key):
        port = int(key)
    else:
        port = None
    if port is None or not 1 <= port <= 65535:
        raise where.error(
            "spec.portLevelMtls", f"has the port key {key!r}", "ports are whole numbers from 1 to 65535"
        )
    return port


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
