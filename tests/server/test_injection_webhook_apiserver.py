"""The injection webhook called by the real API server (v1.24): a meshca CA in-process serves
--webhook-listen on loopback, deploy/base's MutatingWebhookConfiguration points at it by URL, and
the caBundle in it is the one meshca's leader keeps. A Pod created in a labelled namespace is
stored injected; one in an unlabelled namespace, or opted out, is stored as sent; after a CA key
transition (a new root) pods are still injected; with the webhook stopped, creation is refused as
failurePolicy Fail says."""

from __future__ import annotations

import base64
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ca.cli.main import build_parser
from ca.common.clock import SystemClock
from ca.inject import settings as names
from ca.kube import client as kube
from ca.server.settings import serve_config
from ca.server.wiring import CaServer, build_server
from tests.kube.test_webhook_config import deployed_configuration
from tests.support.ca_server import serve_args
from tests.support.kube_apiserver import real_apiserver

CONFIGURATION = "meshca-sidecar-injector"
TIMED_PODS = 20


def eventually(check: Callable[[], bool], timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def _namespace(core: client.CoreV1Api, name: str, labels: dict[str, str] | None = None) -> None:
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels)))
    # No controller-manager runs: the ServiceAccount admission plugin needs the default account.
    core.create_namespaced_service_account(
        name, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="default"))
    )


def _pod(name: str, annotations: dict[str, str] | None = None) -> Any:
    """A Pod as the API client sends a dict (typed loosely: the client takes it as a V1Pod)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "web"}, "annotations": annotations or {}},
        "spec": {"containers": [{"name": "app", "image": "example.com/web:1"}]},
    }


def _containers(pod: client.V1Pod) -> tuple[list[str], list[str]]:
    assert pod.spec is not None
    return [c.name for c in pod.spec.init_containers or []], [c.name for c in pod.spec.containers]


def _injected(pod: client.V1Pod) -> bool:
    init, containers = _containers(pod)
    return init[:1] == [names.AGENT_INIT] and containers == ["app", names.AGENT]


def _ca_bundle(admission: client.AdmissionregistrationV1Api) -> str:
    found = admission.read_mutating_webhook_configuration(CONFIGURATION)
    assert found.webhooks is not None
    return base64.b64decode(found.webhooks[0].client_config.ca_bundle or b"").decode()


def _start(state: Path, kubeconfig: Path) -> CaServer:
    args = build_parser({}).parse_args(
        serve_args(
            state,
            *("--kubeconfig", str(kubeconfig), "--ca-store", "dir", "--ledger", "off", "--pod-check", "off"),
            *("--webhook-listen", "127.0.0.1:0", "--webhook-dns-names", "127.0.0.1"),
            *("--inject-image", "example.com/meshca:1"),
        )
    )
    server = build_server(serve_config(args, {}), clock=SystemClock())
    server.start()
    return server


@pytest.mark.slow
def test_the_api_server_calls_the_webhook_and_stores_injected_pods(tmp_path: Path) -> None:
    with real_apiserver(tmp_path / "kube") as kubeconfig:
        api = kube.api_client(kubeconfig, in_cluster=False)
        core, admission = client.CoreV1Api(api), client.AdmissionregistrationV1Api(api)
        _namespace(core, "istio-system")
        _namespace(core, "shop", {"meshca-injection": "enabled"})
        _namespace(core, "plain")
        server = _start(tmp_path / "state", kubeconfig)
        try:
            assert server.keys is not None
            configuration = deployed_configuration()
            url = f"https://127.0.0.1:{server.ports['webhook']}/inject"
            configuration["webhooks"][0]["clientConfig"] = {"url": url}
            admission.create_mutating_webhook_configuration(configuration)
            assert eventually(lambda: _ca_bundle(admission) == server.authority.trust_bundle_pem())

            timings = []
            for i in range(TIMED_PODS):
                started = time.perf_counter()
                stored = core.create_namespaced_pod("shop", _pod(f"web-{i}"))
                timings.append(time.perf_counter() - started)
                assert _injected(stored), _containers(stored)
            assert _injected(core.read_namespaced_pod("web-0", "shop"))
            assert stored.spec is not None and stored.spec.init_containers is not None
            assert stored.spec.init_containers[0].image == "example.com/meshca:1"

            plain_timings = []
            for i in range(TIMED_PODS):
                started = time.perf_counter()
                untouched = core.create_namespaced_pod("plain", _pod(f"web-{i}"))
                plain_timings.append(time.perf_counter() - started)
                assert _containers(untouched) == ([], ["app"])
            opted_out = core.create_namespaced_pod("shop", _pod("batch", {"meshca.io/inject": "false"}))
            assert _containers(opted_out) == ([], ["app"])

            # A new root: the caBundle holds it before it signs; then the webhook's certificate
            # comes from it, and the API server still accepts the webhook.
            server.keys.request("prepare", new_root=True, requested_by="test")
            two_roots = server.keys.keyring.signing_authority().trust_bundle_pem()
            assert two_roots.count("BEGIN CERTIFICATE") == 2
            assert eventually(lambda: _ca_bundle(admission) == two_roots)
            server.keys.request("activate", force=True, requested_by="test")
            assert server.webhook_serving is not None
            assert server.webhook_serving.current.chain_pem.count(b"BEGIN CERTIFICATE") >= 1
            assert _injected(core.create_namespaced_pod("shop", _pod("after-rotation")))

            # The webhook stopped: failurePolicy Fail refuses the pod; other namespaces go on.
            server.stop(grace_s=0)
            with pytest.raises(ApiException) as refused:
                core.create_namespaced_pod("shop", _pod("while-down"))
            assert refused.value.status == 500 and "inject.meshca.io" in str(refused.value.body)
            assert _containers(core.create_namespaced_pod("plain", _pod("while-down"))) == ([], ["app"])
        finally:
            server.stop(grace_s=0)
        print(
            f"\npod create through the injection webhook: median "
            f"{statistics.median(timings) * 1000:.1f} ms, max {max(timings) * 1000:.1f} ms "
            f"over {TIMED_PODS}; "
            f"without (unlabelled namespace): median {statistics.median(plain_timings) * 1000:.1f} ms"
        )
