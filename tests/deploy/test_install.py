"""deploy/ on the real API server (v1.24, ../shared/kube): every overlay, component and example is
accepted by a server-side dry run; an overlay installed for real gives `meshca serve`, run as its
Deployment runs it with a token of the CA's own ServiceAccount, every call it makes: at start, as
leader, at ledger checkpoints, for an issuance (local token check, pod check) and at a CA keyring
transition (`meshca ca rotate --prepare --new-root`, which rewrites the CA Secret). Its log must
hold no 403."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ca.kube import client as kube
from ca.kube.root_configmap import CONFIGMAP_NAME, ROOT_CERT_KEY
from ca.ledger import queries
from ca.ledger.reader import open_reader
from tests.deploy.install import (
    CA_NAMESPACE,
    DEPLOY,
    OVERLAYS,
    ca_container,
    container_environment,
    install,
    kubectl,
    overlay,
    render,
    service_account_kubeconfig,
)
from tests.support.kube_apiserver import real_apiserver
from tests.support.ledger import MESHCA, _server_env, postgres_database
from tests.support.ports import read_ports_file

CA_USER = "system:serviceaccount:istio-system:meshca"
WAIT_S = 15.0


def eventually(check: Callable[[], bool], what: str, log: Path, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"not within {timeout_s}s: {what}\n{log.read_text(errors='replace')[-6000:]}"
            )
        time.sleep(0.05)


def config_map(core: client.CoreV1Api, namespace: str, name: str) -> dict[str, str] | None:
    try:
        return dict(core.read_namespaced_config_map(name, namespace).data or {})
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def test_every_overlay_component_and_example_passes_a_server_side_dry_run(tmp_path: Path) -> None:
    with_component = tmp_path / "with-restarts"
    with_component.mkdir()
    (with_component / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {os.path.relpath(overlay('single'), with_component)}\n"
        f"components:\n  - {os.path.relpath(DEPLOY / 'components' / 'workload-restarts', with_component)}\n"
    )
    with real_apiserver(tmp_path / "kube") as admin:
        # A dry run creates no namespace: the one the CA's objects go in exists beforehand, as
        # it does in a cluster with Istio.
        kubectl("create", "namespace", CA_NAMESPACE, kubeconfig=admin)
        for directory in [*(overlay(name) for name in OVERLAYS), with_component]:
            out = kubectl("apply", "--dry-run=server", "-k", directory, kubeconfig=admin)
            assert "deployment.apps/meshca created (server dry run)" in out, out
        assert "meshca-workload-restarts created (server dry run)" in out
        # The examples are applied for real (they create their own namespace), over an installed base.
        install(overlay("single"), admin)
        for example in sorted((DEPLOY / "examples").glob("*.yaml")):
            kubectl("apply", "--server-side", "-f", example, kubeconfig=admin)
        stored = json.loads(kubectl("-n", "shop", "get", "deployment", "web", "-o", "json", kubeconfig=admin))
        volumes = stored["spec"]["template"]["spec"]["volumes"]
        assert [v["configMap"]["name"] for v in volumes if "configMap" in v] == [CONFIGMAP_NAME]


def ledger_identities(url: str) -> set[str]:
    reader = open_reader(url)
    try:
        return {str(e.get("spiffe_id")) for e in queries.export(reader, queries.AuditFilter(), batch=50)}
    finally:
        reader.dispose()


def can(admin: Path, verb: str, what: str, namespace: str) -> bool:
    answer = kubectl(
        "auth", "can-i", verb, what, "-n", namespace, f"--as={CA_USER}", kubeconfig=admin, check=False
    )
    return answer.strip() == "yes"


@dataclass
class Serve:
    proc: subprocess.Popen[bytes]
    state_dir: Path
    log: Path
    ports: dict[str, int]

    @property
    def identity(self) -> str:
        return f"{socket.gethostname()}_{self.proc.pid}"


@contextlib.contextmanager
def serve_as_deployed(
    name: str, admin_kubeconfig: Path, api: client.ApiClient, workdir: Path
) -> Iterator[Serve]:
    """`meshca serve` with the rendered Deployment's args and environment, as its ServiceAccount;
    only the places differ: loopback ports, a state directory here, short timings."""
    container = ca_container(render(overlay(name)))
    kubeconfig = service_account_kubeconfig(admin_kubeconfig, api, workdir / "meshca.kubeconfig")
    state, log, ports_file = workdir / "state", workdir / "serve.log", workdir / "serve.ports"
    argv = [
        *MESHCA,
        *container["args"],
        *("--kubeconfig", str(kubeconfig), "--state-dir", str(state), "--ports-file", str(ports_file)),
        *("--listen", "127.0.0.1:0", "--renew-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"),
        *("--webhook-listen", "127.0.0.1:0"),
        *("--ledger-checkpoint-interval", "200ms"),
    ]
    env = {**_server_env(), **container_environment(container, api, CA_NAMESPACE)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield Serve(proc, state, log, read_ports_file(ports_file, proc, timeout=60, log=log))
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def issue_for_a_pod(api: client.ApiClient, serve: Serve, workdir: Path) -> None:
    """An agent gets a certificate with the token of a pod (local JWKS check, the pod cache)."""
    core = client.CoreV1Api(api)
    core.create_namespaced_service_account(
        "default", client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="cart"))
    )
    pod = core.create_namespaced_pod(
        "default",
        client.V1Pod(
            metadata=client.V1ObjectMeta(name="cart-0"),
            spec=client.V1PodSpec(
                service_account_name="cart",
                automount_service_account_token=False,
                containers=[client.V1Container(name="app", image="example.com/cart:1")],
            ),
        ),
    )
    assert pod.metadata is not None
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(
            audiences=["istio-ca"],
            expiration_seconds=3600,
            bound_object_ref=client.V1BoundObjectReference(kind="Pod", name="cart-0", uid=pod.metadata.uid),
        )
    )
    answer = core.create_namespaced_service_account_token("cart", "default", request)
    assert answer.status is not None
    (workdir / "token").write_text(str(answer.status.token))
    agent = subprocess.run(
        [
            *MESHCA,
            "agent",
            *("--once", "on", "--ca-addr", f"127.0.0.1:{serve.ports['grpc']}"),
            *(
                "--ca-server-name",
                "meshca.istio-system.svc",
                "--ca-root",
                str(serve.state_dir / "root-cert.pem"),
            ),
            *("--token-file", str(workdir / "token"), "--output-dir", str(workdir / "certs")),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=_server_env(),
    )
    assert agent.returncode == 0, agent.stdout + agent.stderr + serve.log.read_text(errors="replace")[-4000:]
    assert (workdir / "certs" / "cert-chain.pem").is_file()


@pytest.mark.parametrize("name", OVERLAYS)
def test_an_installed_overlay_lets_meshca_make_every_call_it_makes(name: str, tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        admin = stack.enter_context(real_apiserver(tmp_path / "kube"))
        api = kube.api_client(admin, in_cluster=False)
        core, coordination = client.CoreV1Api(api), client.CoordinationV1Api(api)
        install(overlay(name), admin)
        if name == "ha":
            url = stack.enter_context(postgres_database("meshca_deploy"))
            kubectl(
                "-n",
                CA_NAMESPACE,
                "create",
                "secret",
                "generic",
                "meshca-ledger",
                f"--from-literal=url={url}",
                kubeconfig=admin,
            )
        # Least privilege, as the API server sees it: the CA's own objects, nothing beside them.
        assert can(admin, "update", "secret/istio-ca-secret", CA_NAMESPACE)
        assert can(admin, "update", "configmap/meshca-ledger-head", CA_NAMESPACE)
        assert can(admin, "update", f"configmap/{CONFIGMAP_NAME}", "default")
        assert not can(admin, "get", "secret/meshca-ledger", CA_NAMESPACE)
        assert not can(admin, "list", "secrets", CA_NAMESPACE)
        assert not can(admin, "get", "secret/istio-ca-secret", "default")
        assert not can(admin, "update", "configmap/kube-root-ca.crt", "default")
        assert not can(admin, "patch", "deployments", "default")  # restarts: the optional component

        serve = stack.enter_context(serve_as_deployed(name, admin, api, tmp_path))
        log = serve.log

        def leads() -> bool:
            try:
                lease = coordination.read_namespaced_lease("meshca-leader", CA_NAMESPACE)
            except ApiException:
                return False
            return lease.spec is not None and lease.spec.holder_identity == serve.identity

        eventually(leads, "the Lease meshca-leader held", log)
        eventually(
            lambda: config_map(core, CA_NAMESPACE, "meshca-ledger-head") is not None, "a ledger head", log
        )
        bundle = (serve.state_dir / "root-cert.pem").read_text()
        eventually(
            lambda: (config_map(core, "default", CONFIGMAP_NAME) or {}).get(ROOT_CERT_KEY) == bundle,
            "istio-ca-root-cert in default",
            log,
        )
        issue_for_a_pod(api, serve, tmp_path)

        # A CA keyring transition: the CA Secret is rewritten, then published everywhere. The head
        # is read first: a checkpoint may take in the transition's record before the command returns.
        head = config_map(core, CA_NAMESPACE, "meshca-ledger-head")
        rotate = subprocess.run(
            [*MESHCA, "ca", "rotate", "--state-dir", str(serve.state_dir), "--prepare", "--new-root"],
            capture_output=True,
            text=True,
            timeout=60,
            env=_server_env(),
        )
        assert rotate.returncode == 0, rotate.stdout + rotate.stderr + log.read_text(errors="replace")
        eventually(
            lambda: (
                (config_map(core, "default", CONFIGMAP_NAME) or {}).get(ROOT_CERT_KEY, "").count("BEGIN") == 2
            ),
            "both roots in istio-ca-root-cert",
            log,
        )
        eventually(
            lambda: config_map(core, CA_NAMESPACE, "meshca-ledger-head") != head, "a later checkpoint", log
        )
        serve.proc.terminate()
        assert serve.proc.wait(timeout=20) == 0, log.read_text(errors="replace")[-4000:]
        if name == "ha":  # the ledger is the database the Secret names
            assert "spiffe://cluster.local/ns/default/sa/cart" in ledger_identities(url)

    text = log.read_text(errors="replace")
    assert "issued certificate" in text and "CA slot transition" in text  # the log is the one looked for
    # Not after a '.': a log time's milliseconds can read 403 (16:29:21.403).
    assert not re.search(r"(?<!\.)\b403\b|forbidden", text, re.I), text[-6000:]
