"""Finding the workloads behind unpushable pods and restarting them as `kubectl rollout restart`
does, against the in-process API server and, where it is installed, the real one."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from ca.kube import client as kube
from ca.kube import workloads
from ca.ledger.rotation_operations import Workload
from tests.support.fake_apiserver import FakeKubeApiServer, controller_reference
from tests.support.kube_apiserver import real_apiserver

NOW = datetime(2026, 12, 1, 12, 0, 0, 654321, tzinfo=UTC)
STAMP = "2026-12-01T12:00:00Z"


@pytest.fixture
def apiserver() -> Iterator[FakeKubeApiServer]:
    with FakeKubeApiServer() as server:
        yield server


def _cluster(fake: FakeKubeApiServer) -> None:
    """shop: a Deployment through its ReplicaSet, a StatefulSet, a DaemonSet, a bare pod, a pod of
    an ownerless ReplicaSet and one of a Job."""
    deployment = fake.add_workload("deployment", "shop", "cart")
    replica_set = fake.add_workload("replicaset", "shop", "cart-5d4f", owner=deployment)
    fake.add_pod("shop", "cart-5d4f-aaaaa", owner=replica_set)
    fake.add_pod("shop", "cart-5d4f-bbbbb", owner=replica_set)
    fake.add_pod("shop", "db-0", owner=fake.add_workload("statefulset", "shop", "db"))
    fake.add_pod("shop", "node-agent-x", owner=fake.add_workload("daemonset", "shop", "node-agent"))
    debug = fake.add_pod("shop", "debug")
    # An owner that does not control the pod is no workload to restart.
    debug["metadata"]["ownerReferences"] = [{**controller_reference(deployment), "controller": False}]
    fake.put_object("pods", "shop", debug)
    fake.add_pod("shop", "orphan-1", owner=fake.add_workload("replicaset", "shop", "orphan"))
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "migrate", "uid": "job-uid"}}
    fake.add_pod("shop", "migrate-1", owner=job)


PODS = [
    ("shop", "cart-5d4f-aaaaa"),
    ("shop", "cart-5d4f-bbbbb"),
    ("shop", "db-0"),
    ("shop", "node-agent-x"),
    ("shop", "debug"),
    ("shop", "orphan-1"),
    ("shop", "migrate-1"),
    ("shop", "gone-1"),
]


def _annotation(fake: FakeKubeApiServer, kind: str, name: str) -> str | None:
    stored = fake.get_object(kind, "shop", name)
    assert stored is not None
    annotations: dict[str, str] = stored["spec"]["template"]["metadata"].get("annotations") or {}
    return annotations.get(workloads.RESTARTED_AT)


def test_owners_follow_the_controller_references(apiserver: FakeKubeApiServer) -> None:
    _cluster(apiserver)
    found = {(w.kind, w.name): w for w in workloads.owners(apiserver.api_client(), PODS)}
    assert found[("Deployment", "cart")].pods == ("cart-5d4f-aaaaa", "cart-5d4f-bbbbb")
    assert found[("StatefulSet", "db")].pods == ("db-0",)
    assert found[("DaemonSet", "node-agent")].pods == ("node-agent-x",)
    assert all(found[k].problem is None for k in [("Deployment", "cart"), ("StatefulSet", "db")])
    problems = {name: w.problem or "" for (kind, name), w in found.items() if kind == "Pod"}
    assert "delete it" in problems["debug"]
    assert "ReplicaSet orphan has no Deployment" in problems["orphan-1"]
    assert "owned by Job migrate" in problems["migrate-1"]
    assert "no longer exists" in problems["gone-1"]
    # Two list calls for the namespace, however many pods: no GET per pod.
    assert apiserver.request_count("pods", "list") == 1 and apiserver.request_count("pods", "get") == 0
    assert apiserver.request_count("replicasets", "list") == 1


def test_restart_sets_the_pod_template_annotation(apiserver: FakeKubeApiServer) -> None:
    _cluster(apiserver)
    api = apiserver.api_client()
    done = workloads.finder(api, NOW)(PODS, True)
    restarted = sorted((w.kind, w.name) for w in done if w.restarted)
    assert restarted == [("DaemonSet", "node-agent"), ("Deployment", "cart"), ("StatefulSet", "db")]
    for kind, name in restarted:
        assert _annotation(apiserver, kind, name) == STAMP
    assert _annotation(apiserver, "replicaset", "cart-5d4f") is None  # the Deployment rolls it
    assert all(w.problem for w in done if not w.restarted)


def test_a_lookup_only_changes_nothing(apiserver: FakeKubeApiServer) -> None:
    _cluster(apiserver)
    found = workloads.finder(apiserver.api_client(), NOW)(PODS, False)
    assert not any(w.restarted for w in found)
    assert _annotation(apiserver, "deployment", "cart") is None
    assert apiserver.request_count("deployments", "patch") == 0


def test_a_refused_patch_is_reported_and_the_others_go_on(apiserver: FakeKubeApiServer) -> None:
    _cluster(apiserver)
    apiserver.fail_next("deployments", code=403, verbs=["patch"], message="forbidden")
    done = {w.name: w for w in workloads.finder(apiserver.api_client(), NOW)(PODS, True)}
    assert not done["cart"].restarted and "HTTP 403" in (done["cart"].problem or "")
    assert done["db"].restarted and _annotation(apiserver, "statefulset", "db") == STAMP


def test_a_failed_lookup_is_a_problem_of_each_pod(apiserver: FakeKubeApiServer) -> None:
    _cluster(apiserver)
    apiserver.fail_next("pods", code=500, verbs=["list"])
    found = workloads.owners(apiserver.api_client(), [("shop", "db-0"), ("shop", "debug")])
    assert [(w.kind, w.name) for w in found] == [("Pod", "db-0"), ("Pod", "debug")]
    assert all("looking up the owners of pods in namespace shop failed" in (w.problem or "") for w in found)


def test_restart_leaves_workloads_with_problems_alone(apiserver: FakeKubeApiServer) -> None:
    given = [Workload(namespace="shop", kind="Deployment", name="cart", pods=("p",), problem="earlier")]
    assert workloads.restart(apiserver.api_client(), given, NOW) == given
    assert apiserver.request_count("deployments", "patch") == 0


def test_the_annotation_is_rfc_3339_in_utc() -> None:
    from datetime import timedelta, timezone

    assert workloads.restarted_at_text(
        datetime(2026, 1, 2, 5, 4, 3, tzinfo=timezone(timedelta(hours=2)))
    ) == ("2026-01-02T03:04:03Z")


# --------------------------------------------------------------------------- the real API server


def _meta(name: str, owner: Any | None = None, labels: dict[str, str] | None = None) -> client.V1ObjectMeta:
    references = None
    if owner is not None:
        references = [
            client.V1OwnerReference(
                api_version="apps/v1",
                kind=owner.kind,
                name=owner.metadata.name,
                uid=owner.metadata.uid,
                controller=True,
            )
        ]
    return client.V1ObjectMeta(name=name, owner_references=references, labels=labels)


def _template(app: str) -> tuple[client.V1LabelSelector, client.V1PodTemplateSpec]:
    return (
        client.V1LabelSelector(match_labels={"app": app}),
        client.V1PodTemplateSpec(
            metadata=client.V1ObjectMeta(labels={"app": app}),
            spec=client.V1PodSpec(containers=[client.V1Container(name="app", image="pause")]),
        ),
    )


def _pod(core: client.CoreV1Api, name: str, owner: Any | None) -> None:
    spec = client.V1PodSpec(
        containers=[client.V1Container(name="app", image="pause")], automount_service_account_token=False
    )
    core.create_namespaced_pod("shop", client.V1Pod(metadata=_meta(name, owner), spec=spec))


@pytest.mark.slow
def test_restart_against_the_real_api_server(tmp_path: Path) -> None:
    with real_apiserver(tmp_path / "kube") as kubeconfig:
        api = kube.api_client(kubeconfig, in_cluster=False)
        core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="shop")))
        core.create_namespaced_service_account("shop", client.V1ServiceAccount(metadata=_meta("default")))
        selector, template = _template("cart")
        deployment = apps.create_namespaced_deployment(
            "shop",
            client.V1Deployment(
                metadata=_meta("cart"), spec=client.V1DeploymentSpec(selector=selector, template=template)
            ),
        )
        deployment.kind = "Deployment"
        replica_set = apps.create_namespaced_replica_set(
            "shop",
            client.V1ReplicaSet(
                metadata=_meta("cart-5d4f", deployment, {"app": "cart"}),
                spec=client.V1ReplicaSetSpec(selector=selector, template=template),
            ),
        )
        replica_set.kind = "ReplicaSet"
        selector, template = _template("db")
        stateful_set = apps.create_namespaced_stateful_set(
            "shop",
            client.V1StatefulSet(
                metadata=_meta("db"),
                spec=client.V1StatefulSetSpec(selector=selector, template=template, service_name="db"),
            ),
        )
        stateful_set.kind = "StatefulSet"
        _pod(core, "cart-5d4f-aaaaa", replica_set)
        _pod(core, "db-0", stateful_set)
        _pod(core, "debug", None)

        done = workloads.finder(api, NOW)(
            [("shop", "cart-5d4f-aaaaa"), ("shop", "db-0"), ("shop", "debug")], True
        )

        assert sorted((w.kind, w.name, w.restarted) for w in done) == [
            ("Deployment", "cart", True),
            ("Pod", "debug", False),
            ("StatefulSet", "db", True),
        ]
        for read in (
            apps.read_namespaced_deployment("cart", "shop"),
            apps.read_namespaced_stateful_set("db", "shop"),
        ):
            assert read.spec is not None and read.spec.template.metadata is not None
            annotations = read.spec.template.metadata.annotations or {}
            assert annotations.get(workloads.RESTARTED_AT) == STAMP
            assert read.metadata is not None and read.metadata.generation == 2  # a new template: a rollout
