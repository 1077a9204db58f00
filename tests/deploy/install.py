"""deploy/ as an operator uses it: `kubectl kustomize` renders an overlay, `kubectl apply` installs it
on a real API server, and a `meshca serve` runs locally the way the rendered Deployment runs it in a
pod (its args and MESHCA_* environment, Secret references resolved), with a token of the CA's own
ServiceAccount.

Shared by tests/deploy and tests/server/test_replicas.py.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OVERLAYS = ("single", "ha")
CA_NAMESPACE = "istio-system"
CA_SERVICE_ACCOUNT = "meshca"
KUBECTL_TIMEOUT_S = 60

Manifest = dict[str, Any]


def require_kubectl() -> str:
    """kubectl's path; skips (fails under CI) without it."""
    found = shutil.which("kubectl")
    if found is not None:
        return found
    problem = "kubectl is not installed (apt-get install -y kubectl)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"kubectl is required under CI: {problem}")
    pytest.skip(problem)


def kubectl(*args: str | Path, kubeconfig: Path | None = None, check: bool = True) -> str:
    """Runs kubectl; its stdout. A failure (when `check`) fails the test with kubectl's words."""
    argv = [require_kubectl(), *(["--kubeconfig", str(kubeconfig)] if kubeconfig else []), *map(str, args)]
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=KUBECTL_TIMEOUT_S, env=env, check=False
    )
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(argv[1:])} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def render(directory: Path) -> list[Manifest]:
    """`kubectl kustomize DIR` as a list of objects."""
    return [doc for doc in yaml.safe_load_all(kubectl("kustomize", directory)) if doc]


def overlay(name: str) -> Path:
    return DEPLOY / "overlays" / name


def install(directory: Path, kubeconfig: Path) -> None:
    """`kubectl apply --server-side -k DIR`: stored as in a cluster (no pods run: there are no nodes)."""
    kubectl(
        "apply", "--server-side", "--field-manager=meshca-install", "-k", directory, kubeconfig=kubeconfig
    )


def find(manifests: Sequence[Manifest], kind: str, name: str) -> Manifest:
    found = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} named {name} in {[m['kind'] for m in manifests]}"
    return found[0]


def ca_container(manifests: Sequence[Manifest]) -> Manifest:
    deployment = find(manifests, "Deployment", "meshca")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    container: Manifest = next(c for c in containers if c["name"] == "meshca")
    return container


def service_account_kubeconfig(
    admin_kubeconfig: Path,
    api: client.ApiClient,
    path: Path,
    *,
    namespace: str = CA_NAMESPACE,
    name: str = CA_SERVICE_ACCOUNT,
) -> Path:
    """A kubeconfig with a token of ServiceAccount namespace/name (a TokenRequest), as its pod holds."""
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[]))
    answer = client.CoreV1Api(api).create_namespaced_service_account_token(name, namespace, request)
    assert answer.status is not None
    config = yaml.safe_load(admin_kubeconfig.read_text())
    config["users"] = [{"name": config["users"][0]["name"], "user": {"token": answer.status.token}}]
    path.write_text(yaml.safe_dump(config))
    return path


def container_environment(
    container: Mapping[str, Any], api: client.ApiClient, namespace: str
) -> dict[str, str]:
    """The container's environment as the kubelet gives it: values, and Secret keys read from the API
    server (a missing Secret fails, as the pod would not start)."""
    environment: dict[str, str] = {}
    core = client.CoreV1Api(api)
    for item in container.get("env") or ():
        if "value" in item:
            environment[item["name"]] = str(item["value"])
            continue
        ref = (item.get("valueFrom") or {}).get("secretKeyRef")
        assert ref is not None, f"{item['name']}: only values and secretKeyRef are resolved here"
        secret = core.read_namespaced_secret(ref["name"], namespace)
        environment[item["name"]] = base64.b64decode((secret.data or {})[ref["key"]]).decode()
    return environment
