"""Parsing and validating PeerAuthentication manifests."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from ca.errors import PolicyError
from ca.policy.manifest import (
    NO_CREATION_TIME,
    load_json_manifests,
    load_manifests,
    parse_peer_authentication,
)
from ca.policy.model import MtlsMode, PolicyRef


def obj(spec: Any = None, *, version: str = "v1", **metadata: Any) -> dict[str, Any]:
    meta = {"name": "web", "namespace": "shop", **metadata}
    body: dict[str, Any] = {
        "apiVersion": f"security.istio.io/{version}",
        "kind": "PeerAuthentication",
        "metadata": meta,
    }
    if spec is not None:
        body["spec"] = spec
    return body


@pytest.mark.parametrize("version", ["v1", "v1beta1"])
def test_full_object_in_both_versions(version: str) -> None:
    policy = parse_peer_authentication(
        obj(
            {
                "selector": {"matchLabels": {"app": "web"}},
                "mtls": {"mode": "STRICT"},
                "portLevelMtls": {"8080": {"mode": "DISABLE"}, 9090: {"mode": "UNSET"}, "9091": {}},
            },
            version=version,
            creationTimestamp="2024-05-01T12:00:00Z",
        )
    )
    assert policy.ref == PolicyRef("shop", "web")
    assert policy.created == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert policy.selector == {"app": "web"}
    assert policy.mode is MtlsMode.STRICT
    assert policy.port_modes == {8080: MtlsMode.DISABLE, 9090: MtlsMode.UNSET, 9091: MtlsMode.UNSET}


@pytest.mark.parametrize(
    "spec",
    [None, {}, {"mtls": None}, {"mtls": {}}, {"mtls": {"mode": None}}, {"mtls": {"mode": "UNSET"}}],
)
def test_missing_mode_is_unset(spec: Any) -> None:
    assert parse_peer_authentication(obj(spec)).mode is MtlsMode.UNSET


@pytest.mark.parametrize("selector", [{}, {"matchLabels": {}}, {"matchLabels": None}])
def test_empty_selector_is_no_selector(selector: Any) -> None:
    assert parse_peer_authentication(obj({"selector": selector})).selector is None


def test_missing_creation_time_ties_at_the_epoch() -> None:
    assert parse_peer_authentication(obj({})).created == NO_CREATION_TIME


def test_creation_time_with_offset_and_fraction() -> None:
    policy = parse_peer_authentication(obj({}, creationTimestamp="2024-05-01T14:00:00.5+02:00"))
    assert policy.created == datetime(2024, 5, 1, 12, 0, 0, 500000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        (
            obj({"portLevelMtls": {"8080": {"mode": "STRICT"}}}),
            ["shop/web", "spec.portLevelMtls", "selector"],
        ),
        (
            obj({"selector": {"matchLabels": {}}, "portLevelMtls": {"80": {"mode": "STRICT"}}}),
            ["shop/web", "spec.portLevelMtls", "selector"],
        ),
        (obj({"selector": {"matchLabels": {"a": "b"}}, "portLevelMtls": {"0": {}}}), ["'0'", "1 to 65535"]),
        (obj({"selector": {"matchLabels": {"a": "b"}}, "portLevelMtls": {"70000": {}}}), ["'70000'"]),
        (obj({"selector": {"matchLabels": {"a": "b"}}, "portLevelMtls": {"abc": {}}}), ["'abc'"]),
        (obj({"selector": {"matchLabels": {"a": "b"}}, "portLevelMtls": {-1: {}}}), ["-1"]),
        (obj({"selector": {"matchLabels": {"a": "b"}}, "portLevelMtls": {True: {}}}), ["True"]),
        (obj({"selector": {"matchLabels": {"a": "b"}}, "portLevelMtls": {}}), ["is empty"]),
        (obj({"selector": {"matchLabels": {"a": "b"}}, "portLevelMtls": {"80": None}}), ["80", "null"]),
        (
            obj({"selector": {"matchLabels": {"a": "b"}}, "portLevelMtls": {"80": {"mode": "NOPE"}}}),
            ["spec.portLevelMtls.80.mode", "UNSET, DISABLE, PERMISSIVE, STRICT"],
        ),
        (obj({"mtls": {"mode": "strict"}}), ["spec.mtls.mode", "'strict'", "STRICT"]),
        (obj({"mtls": {"mode": 1}}), ["spec.mtls.mode"]),
        (obj({"mtls": {"mdoe": "STRICT"}}), ["spec.mtls", "mdoe"]),
        (obj({"mtsl": {"mode": "STRICT"}}), ["spec", "mtsl"]),
        (obj({"selector": {"matchLabels": {"version": 1}}}), ["spec.selector.matchLabels.version", "quote"]),
        (obj({"selector": {"matchLabels": {"app": "*"}}}), ["wildcard"]),
        (obj({"selector": {"labels": {"app": "web"}}}), ["spec.selector", "labels"]),
        (obj({"selector": ["app"]}), ["spec.selector", "mapping"]),
        (obj("STRICT"), ["spec", "mapping"]),
        (obj({}, creationTimestamp="yesterday"), ["metadata.creationTimestamp", "RFC 3339"]),
        (obj({}, creationTimestamp="2024-05-01"), ["metadata.creationTimestamp"]),
        (obj({}, creationTimestamp="2024-05-01T12:00:00"), ["metadata.creationTimestamp"]),
        (obj({}, version="v1alpha1"), ["apiVersion", "v1alpha1", "security.istio.io/v1"]),
        ({**obj({}), "kind": "AuthorizationPolicy"}, ["kind", "AuthorizationPolicy"]),
        (obj({}, namespace=None), ["metadata.namespace"]),
        (obj({}, name=""), ["metadata.name"]),
        ({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication"}, ["metadata"]),
    ],
)
def test_invalid_objects_name_object_and_field(body: dict[str, Any], fragments: list[str]) -> None:
    with pytest.raises(PolicyError) as raised:
        parse_peer_authentication(body)
    for fragment in fragments:
        assert fragment in str(raised.value)


def test_error_suggests_a_fix() -> None:
    with pytest.raises(PolicyError, match="; use one of UNSET, DISABLE, PERMISSIVE, STRICT"):
        parse_peer_authentication(obj({"mtls": {"mode": "ON"}}))


MULTI = """
apiVersion: v1
kind: ConfigMap
metadata: {name: unrelated, namespace: shop}
---
# an empty document
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: istio-system
  creationTimestamp: 2024-01-01T00:00:00Z
spec:
  mtls:
    mode: STRICT
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: web, namespace: shop}
spec:
  selector:
    matchLabels: {app: web}
  portLevelMtls:
    8080: {mode: DISABLE}
    "9090": {mode: PERMISSIVE}
"""


def test_multi_document_yaml_skips_other_kinds_and_empty_documents() -> None:
    policies = load_manifests(MULTI)
    assert [str(p.ref) for p in policies] == ["istio-system/default", "shop/web"]
    assert policies[0].created == datetime(2024, 1, 1, tzinfo=UTC)  # YAML's own timestamp type
    assert policies[1].port_modes == {8080: MtlsMode.DISABLE, 9090: MtlsMode.PERMISSIVE}


def test_list_kinds() -> None:
    text = """
apiVersion: v1
kind: List
items:
- {apiVersion: security.istio.io/v1, kind: PeerAuthentication, metadata: {name: a, namespace: x}}
- {apiVersion: v1, kind: Secret, metadata: {name: s, namespace: x}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthenticationList
metadata: {resourceVersion: "7"}
items:
- metadata: {name: b, namespace: y}
  spec: {mtls: {mode: DISABLE}}
"""
    policies = load_manifests(text)
    assert [str(p.ref) for p in policies] == ["x/a", "y/b"]
    assert policies[1].mode is MtlsMode.DISABLE


def test_invalid_document_is_numbered() -> None:
    text = "kind: Secret\n---\n" + json.dumps(obj({"mtls": {"mode": "BAD"}}))
    with pytest.raises(PolicyError, match=r"^document 2: PeerAuthentication shop/web: spec.mtls.mode"):
        load_manifests(text)


@pytest.mark.parametrize(
    "text",
    ["key: [unclosed", "a: b\n c: d", "\tfoo: bar", "- just\n- a list", "just a string", "{a: 1} {b: 2}"],
)
def test_malformed_yaml_is_a_policy_error(text: str) -> None:
    with pytest.raises(PolicyError, match=r"YAML|not a Kubernetes object"):
        load_manifests(text)


def test_json_manifests() -> None:
    single = json.dumps(obj({"mtls": {"mode": "STRICT"}}))
    assert load_json_manifests(single)[0].mode is MtlsMode.STRICT
    as_array = json.dumps([obj({}), {"kind": "Service", "apiVersion": "v1"}])
    assert len(load_json_manifests(as_array)) == 1
    with pytest.raises(PolicyError, match="not valid JSON"):
        load_json_manifests("{")


# Fuzzing: any input parses or raises PolicyError, never anything else.

JSON_LEAVES = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers(-5, 70000), inner, max_size=4)
    ),
    max_leaves=20,
)
FIELD_NAMES = st.sampled_from(
    ["spec", "mtls", "mode", "selector", "matchLabels", "portLevelMtls", "metadata", "name", "namespace"]
)
MODE_WORDS = st.sampled_from(["STRICT", "PERMISSIVE", "DISABLE", "UNSET", "strict", ""])


@st.composite
def near_valid_objects(draw: st.DrawFn) -> dict[str, Any]:
    body = obj(
        {
            "selector": draw(st.none() | st.fixed_dictionaries({"matchLabels": JSON_VALUES})),
            "mtls": draw(st.none() | st.fixed_dictionaries({"mode": MODE_WORDS | JSON_LEAVES})),
            "portLevelMtls": draw(
                st.none()
                | st.dictionaries(
                    st.integers(-2, 70000) | st.text(max_size=6),
                    st.none() | st.fixed_dictionaries({"mode": MODE_WORDS}),
                    max_size=3,
                )
            ),
        },
        version=draw(st.sampled_from(["v1", "v1beta1", "v2"])),
        creationTimestamp=draw(st.none() | st.text(max_size=25) | st.datetimes()),
    )
    for _ in range(draw(st.integers(0, 2))):
        body["spec"][draw(FIELD_NAMES)] = draw(JSON_VALUES)
    return body


@settings(max_examples=400, deadline=None)
@given(near_valid_objects() | JSON_VALUES)
def test_fuzz_parse_object(body: Any) -> None:
    with contextlib.suppress(PolicyError):
        parse_peer_authentication(body)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=200) | st.builds(lambda b: yaml.safe_dump(b, sort_keys=False), near_valid_objects()))
def test_fuzz_load_manifests(text: str) -> None:
    with contextlib.suppress(PolicyError):
        load_manifests(text)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=":-[]{}!&*|>'\"#%@`\n\t ab1", max_size=80))
def test_fuzz_yaml_syntax(text: str) -> None:
    with contextlib.suppress(PolicyError):
        load_manifests(text)
