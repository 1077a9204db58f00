"""The answer to an AdmissionReview (admission.k8s.io/v1) for a Pod (pure): what the injection
webhook sends back to the API server.

A review of a Pod being created answers `allowed: true` with the same uid and, when injection
changed the pod, a JSONPatch (RFC 6902, base64) from the pod as sent to the injected pod; the
injection's warnings go in `warnings`, which the API server hands to the client (kubectl prints
them). A pod whose enforce annotation is not a list of ports is refused (`allowed: false`, code
400, the reason in the message): letting it run without the enforcer it asked for would leave
those ports open. Anything the webhook is not made for (another resource, an UPDATE) is allowed
unchanged, with a warning for another resource, so that a configuration that sends too much
never blocks it.

A body that is not an AdmissionReview v1 with a request and its uid is an InvalidRequestError of
reason `malformed_admission_review`: there is no uid to answer, so the HTTP edge answers 400
with its message.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ca.errors import ConfigError, InvalidRequestError
from ca.inject.patch import json_patch
from ca.inject.pod import inject_pod
from ca.inject.settings import InjectSettings

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"
MAX_WARNING_CHARS = 256  # the API server may cut longer warnings


MALFORMED = "malformed_admission_review"


def _malformed(message: str) -> InvalidRequestError:
    return InvalidRequestError(message, reason=MALFORMED)


@dataclass(frozen=True, kw_only=True)
class ReviewAnswer:
    """What was decided, for the log, and the AdmissionReview to send."""

    uid: str
    pod: str  # namespace/name (or generateName) of the pod, for the log
    allowed: bool
    patched: int  # JSON Patch operations sent (0: the pod is unchanged)
    warnings: list[str] = field(default_factory=list)
    refusal: str | None = None
    review: dict[str, Any] = field(default_factory=dict)

    def body(self) -> bytes:
        return json.dumps(self.review, separators=(",", ":")).encode()


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def parse_review(body: bytes) -> Mapping[str, Any]:
    """The review's `request`; InvalidRequestError (reason malformed_admission_review) for anything else."""
    try:
        review = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise _malformed(f"the body is not JSON ({err}); send an AdmissionReview ({API_VERSION})") from err
    if not isinstance(review, Mapping):
        raise _malformed(f"the body is JSON but not an object; send an AdmissionReview ({API_VERSION})")
    if review.get("kind") != KIND or review.get("apiVersion") != API_VERSION:
        raise _malformed(
            f"the body is a {review.get('kind')!s} of apiVersion {review.get('apiVersion')!s}, not an "
            f"{KIND} of {API_VERSION}; list only v1 in the webhook's admissionReviewVersions"
        )
    request = review.get("request")
    if not isinstance(request, Mapping):
        raise _malformed(f"the {KIND} has no request object")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise _malformed(f"the {KIND}'s request has no uid; the answer must carry the request's uid")
    return request


def _pod_name(request: Mapping[str, Any], pod: Mapping[str, Any]) -> str:
    metadata = _mapping(pod.get("metadata"))
    namespace = request.get("namespace") or metadata.get("namespace") or ""
    name = request.get("name") or metadata.get("name") or f"{metadata.get('generateName') or ''}*"
    return f"{namespace}/{name}"


def _short(text: str) -> str:
    return text if len(text) <= MAX_WARNING_CHARS else text[: MAX_WARNING_CHARS - 3] + "..."


def _answer(
    uid: str,
    pod: str,
    *,
    patch: list[dict[str, Any]] | None = None,
    warnings: list[str] | None = None,
    refusal: str | None = None,
) -> ReviewAnswer:
    response: dict[str, Any] = {"uid": uid, "allowed": refusal is None}
    if refusal is not None:
        response["status"] = {"code": 400, "reason": "BadRequest", "message": refusal}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch, separators=(",", ":")).encode()).decode()
    if warnings:
        response["warnings"] = [_short(w) for w in warnings]
    return ReviewAnswer(
        uid=uid,
        pod=pod,
        allowed=refusal is None,
        patched=len(patch or []),
        warnings=list(warnings or []),
        refusal=refusal,
        review={"apiVersion": API_VERSION, "kind": KIND, "response": response},
    )


def answer_review(body: bytes, settings: InjectSettings) -> ReviewAnswer:
    """The answer to one AdmissionReview (see the module's description); an InvalidRequestError when
    the body is not one."""
    request = parse_review(body)
    uid = str(request["uid"])
    kind = _mapping(request.get("kind"))
    pod = request.get("object")
    if kind.get("group", "") != "" or kind.get("kind") != "Pod" or not isinstance(pod, Mapping):
        what = (
            f"{kind.get('kind') or 'an object'}" if isinstance(pod, Mapping) else "a review without an object"
        )
        return _answer(
            uid,
            str(request.get("namespace") or "") + "/" + str(request.get("name") or ""),
            warnings=[
                f"meshca's injection webhook was sent {what}; it injects only Pods, so it left this "
                "alone. Limit the webhook's rules to pods"
            ],
        )
    name = _pod_name(request, pod)
    if request.get("operation", "CREATE") != "CREATE":
        return _answer(uid, name)
    try:
        injection = inject_pod(pod, settings, where=f"pod {name}")
    except ConfigError as err:
        return _answer(uid, name, refusal=f"meshca cannot inject pod {name}: {err.message}")
    patch = json_patch(dict(pod), injection.pod) if injection.changed else []
    return _answer(uid, name, patch=patch, warnings=injection.warnings)
