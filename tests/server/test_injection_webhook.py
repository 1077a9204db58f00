"""The injection webhook on a real socket over TLS: reviews answered, malformed ones refused with
400 and logged, the server still serving afterwards, and a re-issued certificate (a CA key
transition) served from the next connection on."""

from __future__ import annotations

import base64
import http.client
import json
import logging
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from ca.errors import ConfigError
from ca.issuance.authority import SigningAuthority
from ca.issuance.spiffe_id import SpiffeId
from ca.server.injection_webhook import InjectionWebhook
from ca.server.serving_cert import ServingIdentity
from tests.inject.test_review import SETTINGS, _pod, _review
from tests.support.clock import FakeClock
from tests.support.issuing import TRUST_DOMAIN, make_root

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
WEBHOOK_ID = SpiffeId.for_workload(TRUST_DOMAIN, "istio-system", "meshca")


@dataclass
class Served:
    webhook: InjectionWebhook
    identity: ServingIdentity
    authority: SigningAuthority
    clock: FakeClock


@pytest.fixture
def served() -> Iterator[Served]:
    clock = FakeClock(NOW)
    authority = make_root(clock)
    identity = ServingIdentity(authority=authority, hosts=["127.0.0.1"], spiffe_id=WEBHOOK_ID, clock=clock)
    webhook = InjectionWebhook("127.0.0.1", 0, settings=SETTINGS, certificate=lambda: identity.current)
    webhook.start()
    yield Served(webhook, identity, authority, clock)
    webhook.stop()


def post(
    served: Served,
    body: bytes,
    *,
    path: str = "/inject",
    authority: SigningAuthority | None = None,
    method: str = "POST",
) -> tuple[int, bytes]:
    """As the API server calls a webhook: HTTPS, checking the certificate against the caBundle."""
    context = ssl.create_default_context(cadata=(authority or served.authority).trust_bundle_pem())
    conn = http.client.HTTPSConnection("127.0.0.1", served.webhook.port, context=context, timeout=5)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_a_pod_review_is_answered_with_a_patch(served: Served) -> None:
    status, body = post(served, _review(_pod(), uid="u-1"))
    assert status == 200
    response = json.loads(body)["response"]
    assert response["uid"] == "u-1" and response["allowed"] is True
    assert json.loads(base64.b64decode(response["patch"]))
    assert served.webhook.reviews() == {"injected": 1, "unchanged": 0}
    assert served.webhook.url == f"https://127.0.0.1:{served.webhook.port}/inject"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"{not json", b"not JSON"),
        (json.dumps({"apiVersion": "v1", "kind": "Pod"}).encode(), b"not an AdmissionReview"),
        (
            json.dumps(
                {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}}
            ).encode(),
            b"no uid",
        ),
    ],
)
def test_a_malformed_review_is_a_logged_400_and_the_server_goes_on(
    served: Served, body: bytes, says: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="ca.server.injection_webhook"):
        status, answer = post(served, body)
    assert status == 400 and says in answer and answer.startswith(b"not an admission review")
    assert any(r.getMessage() == "injection webhook: refused a request" for r in caplog.records)
    assert post(served, _review(_pod()))[0] == 200


def test_other_paths_and_methods_are_refused(served: Served) -> None:
    assert post(served, _review(_pod()), path="/mutate")[0] == 404
    assert post(served, b"", method="GET")[0] == 405


def test_a_failure_of_its_own_is_a_500_and_the_server_goes_on(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(_body: bytes, _settings: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("ca.server.injection_webhook.answer_review", broken)
    assert post(served, _review(_pod()))[0] == 500
    monkeypatch.undo()
    assert post(served, _review(_pod()))[0] == 200


def test_a_certificate_of_a_new_ca_serves_from_the_next_connection(served: Served) -> None:
    new_authority = make_root(served.clock)
    served.identity.use_authority(new_authority)
    with pytest.raises(ssl.SSLCertVerificationError):
        post(served, _review(_pod()))  # the old caBundle no longer verifies it
    assert post(served, _review(_pod()), authority=new_authority)[0] == 200


def test_an_address_in_use_names_the_flag(served: Served) -> None:
    with pytest.raises(ConfigError, match="--webhook-listen"):
        InjectionWebhook(
            "127.0.0.1", served.webhook.port, settings=SETTINGS, certificate=lambda: served.identity.current
        )
