"""The injection webhook's answer to an AdmissionReview: the uid echoed, the patch that gives the
injected pod, warnings passed on, and a clear refusal of what is not a review."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from ca.errors import InvalidRequestError
from ca.inject import settings as names
from ca.inject.pod import inject_pod
from ca.inject.review import MALFORMED, MAX_WARNING_CHARS, answer_review
from ca.inject.settings import InjectSettings
from tests.inject.test_patch import apply_patch

SETTINGS = InjectSettings(image="example.com/meshca:1")


def _pod(annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"generateName": "web-", "labels": {"app": "web"}}
    if annotations:
        metadata["annotations"] = annotations
    body = {"containers": [{"name": "app", "image": "example.com/web:1", "ports": [{"containerPort": 8080}]}]}
    body.update(spec)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": body}


def _review(obj: Any, *, uid: str = "0b6e2c1e-1", kind: str = "Pod", operation: str = "CREATE") -> bytes:
    return json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": uid,
                "kind": {"group": "", "version": "v1", "kind": kind},
                "resource": {"group": "", "version": "v1", "resource": kind.lower() + "s"},
                "namespace": "shop",
                "operation": operation,
                "object": obj,
            },
        }
    ).encode()


def _response(body: bytes) -> dict[str, Any]:
    review = json.loads(body)
    assert review["apiVersion"] == "admission.k8s.io/v1" and review["kind"] == "AdmissionReview"
    response: dict[str, Any] = review["response"]
    return response


def test_a_pod_is_answered_with_its_uid_and_the_patch_that_injects_it() -> None:
    pod = _pod()
    answer = answer_review(_review(pod, uid="abc-123"), SETTINGS)
    response = _response(answer.body())
    assert response["uid"] == "abc-123" and response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    patch = json.loads(base64.b64decode(response["patch"]))
    assert apply_patch(pod, patch) == inject_pod(pod, SETTINGS).pod
    injected = apply_patch(pod, patch)
    assert names.AGENT in [c["name"] for c in injected["spec"]["containers"]]
    assert injected["spec"]["initContainers"][0]["image"] == "example.com/meshca:1"
    assert answer.pod == "shop/web-*" and answer.patched == len(patch) and "warnings" not in response


def test_an_injected_or_opted_out_pod_gets_no_patch() -> None:
    injected = inject_pod(_pod(), SETTINGS).pod
    opted_out = _pod({"meshca.io/inject": "false"})
    for pod in (injected, opted_out):
        response = _response(answer_review(_review(pod), SETTINGS).body())
        assert response == {"uid": "0b6e2c1e-1", "allowed": True}


def test_the_injections_warnings_go_to_the_pods_creator() -> None:
    istio = _pod(containers=[{"name": "app", "image": "a"}, {"name": "istio-proxy", "image": "b"}])
    response = _response(answer_review(_review(istio), SETTINGS).body())
    assert response["allowed"] is True and "patch" not in response
    assert len(response["warnings"]) == 1 and "Istio's sidecar" in response["warnings"][0]
    enforced = _pod({"meshca.io/enforce-ports": "8080/http"})
    response = _response(answer_review(_review(enforced), SETTINGS).body())
    assert "patch" in response and any("meshca enforce listens" in w for w in response["warnings"])
    assert all(len(w) <= MAX_WARNING_CHARS for w in response["warnings"])


def test_a_bad_enforce_annotation_refuses_the_pod_with_the_reason() -> None:
    answer = answer_review(_review(_pod({"meshca.io/enforce-ports": "http"})), SETTINGS)
    response = _response(answer.body())
    assert response["allowed"] is False and "patch" not in response
    assert response["status"]["code"] == 400
    assert "meshca.io/enforce-ports" in response["status"]["message"]
    assert answer.refusal == response["status"]["message"]


def test_other_kinds_and_updates_are_allowed_unchanged() -> None:
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {}}
    response = _response(answer_review(_review(deployment, kind="Deployment"), SETTINGS).body())
    assert response["allowed"] is True and "patch" not in response
    assert "injects only Pods" in response["warnings"][0]
    response = _response(answer_review(_review(_pod(), operation="UPDATE"), SETTINGS).body())
    assert response == {"uid": "0b6e2c1e-1", "allowed": True}


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not an object"),
        (json.dumps({"apiVersion": "v1", "kind": "Pod"}).encode(), "not an AdmissionReview"),
        (
            json.dumps(
                {"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {}}
            ).encode(),
            "admissionReviewVersions",
        ),
        (json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).encode(), "no request"),
        (
            json.dumps(
                {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"object": {}}}
            ).encode(),
            "no uid",
        ),
    ],
)
def test_what_is_not_a_review_is_an_invalid_request_saying_why(body: bytes, says: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        answer_review(body, SETTINGS)
    assert caught.value.reason == MALFORMED
    assert says in caught.value.message
