"""What `meshca inject` writes is what a real API server (v1.24) stores: every field injection
adds survives validation and defaulting, so none is misspelt or unknown to Kubernetes."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from ca.inject.command import run
from ca.inject.settings import add_inject_parser
from ca.kube import client as kube
from tests.inject.test_command import DEPLOYMENT, JOB
from tests.support.kube_apiserver import real_apiserver

MORE = """\
apiVersion: v1
kind: Pod
metadata: {name: debug, namespace: shop, labels: {app: debug}, annotations: {meshca.io/enforce-ports: "9090"}}
spec:
  containers: [{name: shell, image: example.com/debug:1, ports: [{containerPort: 9090}]}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: shop}
spec:
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers:
        - name: db
          image: example.com/db:1
          volumeMounts: [{name: data, mountPath: /data}]
      volumes: [{name: data, emptyDir: {}}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: node-agent, namespace: shop}
spec:
  selector: {matchLabels: {app: node-agent}}
  template:
    metadata: {labels: {app: node-agent}}
    spec:
      initContainers: [{name: setup, image: example.com/setup:1}]
      containers: [{name: agent, image: example.com/agent:1}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: report, namespace: shop}
spec:
  schedule: "0 * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers: [{name: report, image: example.com/report:1}]
"""


def _injected(text: str) -> list[dict[str, Any]]:
    import argparse

    parser = argparse.ArgumentParser()
    add_inject_parser(parser.add_subparsers(), {})
    args = parser.parse_args(
        ["inject", "-f", "-", "--run-as-user", "1337", "--image-pull-policy", "IfNotPresent"]
    )
    out = io.StringIO()
    assert run(args, stdin=io.StringIO(text), stdout=out, stderr=io.StringIO()) == 0
    return list(yaml.safe_load_all(out.getvalue()))


def _missing(sent: Any, stored: Any, path: str = "") -> list[str]:
    """Where `sent` has something `stored` lacks or holds otherwise (stored may add defaults)."""
    if isinstance(sent, dict):
        if not isinstance(stored, dict):
            return [path]
        return [m for k, v in sent.items() for m in _missing(v, stored.get(k), f"{path}.{k}")]
    if isinstance(sent, list) and all(isinstance(item, dict) and "name" in item for item in sent):
        # Named items (containers, volumes, mounts) by name: admission may add its own, as the
        # service-account token volume of a Pod.
        if not isinstance(stored, list):
            return [path]
        by_name = {item.get("name"): item for item in stored if isinstance(item, dict)}
        return [
            m for item in sent for m in _missing(item, by_name.get(item["name"]), f"{path}[{item['name']}]")
        ]
    if isinstance(sent, list):
        if not isinstance(stored, list) or len(stored) != len(sent):
            return [path]
        return [
            m
            for i, (a, b) in enumerate(zip(sent, stored, strict=True))
            for m in _missing(a, b, f"{path}[{i}]")
        ]
    return [] if sent == stored else [f"{path}: sent {sent!r}, stored {stored!r}"]


@pytest.mark.slow
def test_the_real_api_server_stores_every_injected_field(tmp_path: Path) -> None:
    docs = _injected(DEPLOYMENT + "---\n" + JOB + "---\n" + MORE)
    with real_apiserver(tmp_path / "kube") as kubeconfig:
        api = kube.api_client(kubeconfig, in_cluster=False)
        core, apps, batch = client.CoreV1Api(api), client.AppsV1Api(api), client.BatchV1Api(api)
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="shop")))
        core.create_namespaced_service_account(
            "shop", client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="default"))
        )
        create: dict[str, Callable[..., Any]] = {
            "Deployment": apps.create_namespaced_deployment,
            "StatefulSet": apps.create_namespaced_stateful_set,
            "DaemonSet": apps.create_namespaced_daemon_set,
            "Job": batch.create_namespaced_job,
            "CronJob": batch.create_namespaced_cron_job,
            "Pod": core.create_namespaced_pod,
        }
        assert sorted(d["kind"] for d in docs) == sorted(create)
        for doc in docs:
            # First as the brief's server-side dry run, then for real, to read back what is stored.
            create[doc["kind"]]("shop", doc, dry_run="All")
            stored = api.sanitize_for_serialization(create[doc["kind"]]("shop", doc))
            assert _missing(doc["spec"], stored["spec"]) == [], doc["kind"]
            assert _missing(doc["metadata"], stored["metadata"]) == [], doc["kind"]
