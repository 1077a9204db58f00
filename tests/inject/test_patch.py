"""The RFC 6902 patch: applied to `before` it gives `after` exactly."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ca.inject.patch import json_patch, pointer_token
from ca.inject.pod import inject_pod


def _parent(doc: Any, path: str) -> tuple[Any, str]:
    tokens = [t.replace("~1", "/").replace("~0", "~") for t in path.split("/")[1:]]
    for token in tokens[:-1]:
        doc = doc[int(token)] if isinstance(doc, list) else doc[token]
    return doc, tokens[-1]


def apply_patch(doc: Any, operations: list[dict[str, Any]]) -> Any:
    """A plain RFC 6902 applier for add, remove and replace, as the API server applies them."""
    doc = copy.deepcopy(doc)
    for op in operations:
        if op["path"] == "":
            assert op["op"] == "replace"
            doc = copy.deepcopy(op["value"])
            continue
        parent, token = _parent(doc, op["path"])
        if isinstance(parent, list):
            if op["op"] == "add":
                parent.insert(len(parent) if token == "-" else int(token), copy.deepcopy(op["value"]))
            elif op["op"] == "remove":
                del parent[int(token)]
            else:
                parent[int(token)] = copy.deepcopy(op["value"])
        elif op["op"] == "remove":
            del parent[token]
        else:
            assert (token in parent) == (op["op"] == "replace"), op  # add a new key, replace an old one
            parent[token] = copy.deepcopy(op["value"])
    return doc


_keys = st.text(alphabet="ab/~-0", max_size=3)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=3),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys, children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(_json, _json)
def test_the_patch_turns_before_into_after(before: Any, after: Any) -> None:
    # Compared as JSON text: in Python True == 1, in JSON they differ.
    assert json.dumps(apply_patch(before, json_patch(before, after)), sort_keys=True) == json.dumps(
        after, sort_keys=True
    )


def test_equal_documents_give_an_empty_patch() -> None:
    assert json_patch({"a": [1, {"b": 2}]}, {"a": [1, {"b": 2}]}) == []


def test_keys_are_escaped_as_json_pointer_tokens() -> None:
    assert pointer_token("a/b~c") == "a~1b~0c"
    patch = json_patch({"metadata": {}}, {"metadata": {"annotations": {"meshca.io/enforce-ports": "8080"}}})
    assert patch == [
        {"op": "add", "path": "/metadata/annotations", "value": {"meshca.io/enforce-ports": "8080"}}
    ]


def test_appended_list_items_are_added_at_the_end() -> None:
    assert json_patch({"v": [1]}, {"v": [1, 2, 3]}) == [
        {"op": "add", "path": "/v/-", "value": 2},
        {"op": "add", "path": "/v/-", "value": 3},
    ]


def test_a_boolean_is_not_taken_for_a_number() -> None:
    assert json_patch({"x": 1}, {"x": True}) == [{"op": "replace", "path": "/x", "value": True}]


def test_the_patch_of_an_injection_gives_the_injected_pod() -> None:
    pod = {
        "metadata": {"name": "web", "annotations": {"meshca.io/enforce-ports": "8080"}},
        "spec": {"containers": [{"name": "app", "image": "a", "ports": [{"containerPort": 8080}]}]},
    }
    injected = inject_pod(pod).pod
    patch = json_patch(pod, injected)
    assert apply_patch(pod, patch) == injected
    assert {op["op"] for op in patch} == {"add"}  # nothing of the pod's own is replaced
