"""The caBundle of the injection webhook's configuration: the patch (pure), and on the real API
server set at start, repaired after an edit, replaced by a new bundle, and set on a configuration
created later."""

from __future__ import annotations

import base64
import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from ca.kube import client as kube
from ca.kube.webhook_config import CaBundlePatcher, ca_bundle_patch, ca_bundle_value
from tests.inject.test_patch import apply_patch
from tests.support.kube_apiserver import real_apiserver
from tests.support.pki import make_hierarchy, pem

REPO = Path(__file__).resolve().parents[2]
BUNDLE = pem(make_hierarchy().root).decode()
NEXT_BUNDLE = BUNDLE + pem(make_hierarchy().root).decode()


def deployed_configuration() -> Any:
    """deploy/base's MutatingWebhookConfiguration, as a dict (the API client takes it as its model)."""
    return yaml.safe_load((REPO / "deploy/base/injection-webhook.yaml").read_text())


def eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def test_the_patch_sets_every_webhook_that_lacks_the_bundle_and_tests_its_name() -> None:
    observed = {
        "webhooks": [
            {"name": "a.meshca.io", "clientConfig": {"url": "https://x/inject"}},
            {
                "name": "b.meshca.io",
                "clientConfig": {"url": "https://x/inject", "caBundle": ca_bundle_value(BUNDLE)},
            },
            {"name": "c.meshca.io", "clientConfig": {"url": "https://x/inject", "caBundle": "b2xk"}},
        ]
    }
    operations = ca_bundle_patch(observed, BUNDLE)
    assert [op["op"] for op in operations] == ["test", "add", "test", "replace"]
    tests = [op for op in operations if op["op"] == "test"]
    assert tests == [
        {"op": "test", "path": "/webhooks/0/name", "value": "a.meshca.io"},
        {"op": "test", "path": "/webhooks/2/name", "value": "c.meshca.io"},
    ]
    patched = apply_patch(copy.deepcopy(observed), [op for op in operations if op["op"] != "test"])
    assert all(
        base64.b64decode(w["clientConfig"]["caBundle"]).decode() == BUNDLE for w in patched["webhooks"]
    )
    assert ca_bundle_patch(patched, BUNDLE) == []
    assert ca_bundle_patch({"metadata": {"name": "empty"}}, BUNDLE) == []


def _ca_bundles(admission: client.AdmissionregistrationV1Api, name: str) -> list[str]:
    found = admission.read_mutating_webhook_configuration(name)
    return [base64.b64decode(w.client_config.ca_bundle or b"").decode() for w in found.webhooks or []]


@pytest.mark.slow
def test_the_cabundle_is_kept_equal_to_the_trust_bundle_on_a_real_api_server(tmp_path: Path) -> None:
    with real_apiserver(tmp_path / "kube") as kubeconfig:
        api = kube.api_client(kubeconfig, in_cluster=False)
        admission = client.AdmissionregistrationV1Api(api)
        body = deployed_configuration()
        second = copy.deepcopy(body["webhooks"][0])
        second["name"] = "inject-too.meshca.io"
        body["webhooks"].append(second)
        admission.create_mutating_webhook_configuration(body)
        name = body["metadata"]["name"]

        patcher = CaBundlePatcher(api, BUNDLE, name=name, random=lambda: 1.0)
        patcher.start()
        try:
            assert eventually(lambda: _ca_bundles(admission, name) == [BUNDLE, BUNDLE])

            # An edit by hand is repaired; the rest of the configuration is kept.
            edited = admission.read_mutating_webhook_configuration(name)
            assert edited.webhooks is not None
            edited.webhooks[1].client_config.ca_bundle = base64.b64encode(b"not meshca's").decode()
            edited.webhooks[1].timeout_seconds = 7
            admission.replace_mutating_webhook_configuration(name, edited)
            assert eventually(lambda: _ca_bundles(admission, name) == [BUNDLE, BUNDLE])
            stored = admission.read_mutating_webhook_configuration(name)
            assert stored.webhooks is not None and stored.webhooks[1].timeout_seconds == 7

            # A new trust bundle (a root prepared) reaches every webhook.
            patcher.set_bundle(NEXT_BUNDLE)
            assert eventually(lambda: _ca_bundles(admission, name) == [NEXT_BUNDLE, NEXT_BUNDLE])

            # Deleted and created again: set again.
            admission.delete_mutating_webhook_configuration(name)
            admission.create_mutating_webhook_configuration(deployed_configuration())
            assert eventually(lambda: _ca_bundles(admission, name) == [NEXT_BUNDLE])
            # The patcher counts a patch once the API server has answered it, which may be after a
            # reader already sees the patched object.
            assert eventually(lambda: patcher.patches() == 4)
        finally:
            patcher.stop()
