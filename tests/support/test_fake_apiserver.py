# mypy: disable-error-code="union-attr,index,operator,arg-type,type-var,misc,return-value,no-untyped-call"
"""Drives FakeKubeApiServer through the official kubernetes client.

The client's models declare every field Optional and ``kubernetes.watch`` is
untyped, hence the file-level mypy relaxations above.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes import client, config, watch
from kubernetes.client import ApiException

from tests.support.clock import FakeClock

from .fake_apiserver import FakeKubeApiServer

PA_GROUP = "security.istio.io"
PA_PLURAL = "peerauthentications"
FIXED_NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(FIXED_NOW)


@pytest.fixture
def server(clock: FakeClock) -> Iterator[FakeKubeApiServer]:
    with FakeKubeApiServer(now=clock.now) as fake:
        yield fake
        assert fake.server_errors == []


@pytest.fixture
def api_client(server: FakeKubeApiServer) -> Iterator[client.ApiClient]:
    with server.api_client() as api:
        yield api


@pytest.fixture
def core(api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


@pytest.fixture
def custom(api_client: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client)


def status_body(exc: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(exc.body or "{}")
    return body


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def peer_authentication(name: str, mode: str, version: str = "v1") -> dict[str, Any]:
    return {
        "apiVersion": f"{PA_GROUP}/{version}",
        "kind": "PeerAuthentication",
        "metadata": {"name": name},
        "spec": {"mtls": {"mode": mode}},
    }


def test_every_request_needs_the_admin_bearer_token(server: FakeKubeApiServer) -> None:
    for configuration in (server.configuration(token="wrong-token"), client.Configuration(host=server.url)):
        with client.ApiClient(configuration) as api, pytest.raises(ApiException) as excinfo:
            client.CoreV1Api(api).list_pod_for_all_namespaces()
        assert excinfo.value.status == 401
        assert status_body(excinfo.value) == {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "Unauthorized",
            "reason": "Unauthorized",
            "code": 401,
        }


def test_unknown_paths_answer_a_not_found_status(server: FakeKubeApiServer) -> None:
    request = urllib.request.Request(
        f"{server.url}/apis/example.com/v1/widgets", headers={"Authorization": f"Bearer {server.admin_token}"}
    )
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        urllib.request.urlopen(request, timeout=5)
    assert excinfo.value.code == 404
    body = json.loads(excinfo.value.read())
    assert (body["kind"], body["reason"], body["code"]) == ("Status", "NotFound", 404)


def test_kubeconfig_points_the_client_at_the_server(server: FakeKubeApiServer, tmp_path: Path) -> None:
    server.add_pod("istio-system", "istiod-1")
    path = server.write_kubeconfig(tmp_path / "kubeconfig")
    with config.new_client_from_config(config_file=str(path)) as api:
        pods = client.CoreV1Api(api).list_namespaced_pod("istio-system")
    assert [p.metadata.name for p in pods.items] == ["istiod-1"]
    bad = server.write_kubeconfig(tmp_path / "bad", token="nope")
    with config.new_client_from_config(config_file=str(bad)) as api, pytest.raises(ApiException) as excinfo:
        client.CoreV1Api(api).list_namespaced_pod("istio-system")
    assert excinfo.value.status == 401


def test_pods_read_list_and_selectors(server: FakeKubeApiServer, core: client.CoreV1Api) -> None:
    server.add_pod(
        "apps", "web-1", uid="uid-web-1", labels={"app": "web", "tier": "front"}, node_name="node-a"
    )
    server.add_pod("apps", "web-2", labels={"app": "web"}, service_account="web-sa")
    server.add_pod("other", "db-1", labels={"app": "db"})

    pod = core.read_namespaced_pod("web-1", "apps")
    assert pod.metadata.uid == "uid-web-1"
    assert pod.metadata.creation_timestamp == FIXED_NOW
    assert pod.spec.node_name == "node-a"
    assert pod.spec.service_account_name == "default"

    raw = server.get_object("pods", "apps", "web-1")
    assert raw is not None
    assert raw["metadata"]["creationTimestamp"] == "2024-05-06T07:08:09Z"
    assert (raw["kind"], raw["apiVersion"]) == ("Pod", "v1")

    with pytest.raises(ApiException) as excinfo:
        core.read_namespaced_pod("missing", "apps")
    assert excinfo.value.status == 404
    assert status_body(excinfo.value)["message"] == 'pods "missing" not found'
    assert status_body(excinfo.value)["details"] == {"name": "missing", "kind": "pods"}

    everything = core.list_pod_for_all_namespaces()
    assert sorted(p.metadata.name for p in everything.items) == ["db-1", "web-1", "web-2"]
    assert everything.metadata.resource_version == server.resource_version == "3"

    def names(**kwargs: Any) -> list[str]:
        return sorted(p.metadata.name for p in core.list_pod_for_all_namespaces(**kwargs).items)

    assert names(label_selector="app=web") == ["web-1", "web-2"]
    assert names(label_selector="app=web,tier=front") == ["web-1"]
    assert names(label_selector="app!=web") == ["db-1"]
    assert names(label_selector="app in (db, web),!tier") == ["db-1", "web-2"]
    assert names(field_selector="metadata.name=web-2") == ["web-2"]
    assert names(field_selector="spec.serviceAccountName=web-sa") == ["web-2"]
    assert names(field_selector="metadata.namespace!=apps") == ["db-1"]
    assert [p.metadata.name for p in core.list_namespaced_pod("other").items] == ["db-1"]

    with pytest.raises(ApiException) as excinfo:
        core.list_pod_for_all_namespaces(field_selector="spec.unknown=x")
    assert excinfo.value.status == 400
    assert status_body(excinfo.value)["message"] == "field label not supported: spec.unknown"


def test_pod_lists_paginate_on_a_consistent_snapshot(
    server: FakeKubeApiServer, core: client.CoreV1Api
) -> None:
    for i in range(5):
        server.add_pod("apps", f"pod-{i}")
    first = core.list_namespaced_pod("apps", limit=2)
    assert [p.metadata.name for p in first.items] == ["pod-0", "pod-1"]
    assert first.metadata.remaining_item_count == 3
    server.delete_pod("apps", "pod-3")
    server.add_pod("apps", "pod-9")
    second = core.list_namespaced_pod("apps", limit=2, _continue=first.metadata._continue)
    third = core.list_namespaced_pod("apps", limit=2, _continue=second.metadata._continue)
    assert [p.metadata.name for p in second.items + third.items] == ["pod-2", "pod-3", "pod-4"]
    assert third.metadata._continue is None
    assert second.metadata.resource_version == first.metadata.resource_version

    server.compact_history()
    with pytest.raises(ApiException) as excinfo:
        core.list_namespaced_pod("apps", limit=2, _continue=first.metadata._continue)
    assert excinfo.value.status == 410
    assert status_body(excinfo.value)["reason"] == "Expired"


def test_secret_lifecycle(server: FakeKubeApiServer, core: client.CoreV1Api) -> None:
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name="istio-ca-secret", labels={"app": "meshca"}),
        type="istio.io/ca-root",
        string_data={"ca-cert.pem": "CERT"},
        data={"ca-key.pem": b64("KEY")},
    )
    created = core.create_namespaced_secret("istio-system", body)
    assert created.data == {"ca-cert.pem": b64("CERT"), "ca-key.pem": b64("KEY")}
    assert created.string_data is None
    assert created.type == "istio.io/ca-root"
    assert created.metadata.uid and created.metadata.resource_version

    with pytest.raises(ApiException) as excinfo:
        core.create_namespaced_secret("istio-system", body)
    assert excinfo.value.status == 409
    assert status_body(excinfo.value)["reason"] == "AlreadyExists"
    assert status_body(excinfo.value)["message"] == 'secrets "istio-ca-secret" already exists'

    read = core.read_namespaced_secret("istio-ca-secret", "istio-system")
    read.data["ca-cert.pem"] = b64("CERT2")
    replaced = core.replace_namespaced_secret("istio-ca-secret", "istio-system", read)
    assert int(replaced.metadata.resource_version) > int(created.metadata.resource_version)
    assert replaced.metadata.uid == created.metadata.uid
    assert replaced.metadata.creation_timestamp == created.metadata.creation_timestamp

    with pytest.raises(ApiException) as excinfo:
        core.replace_namespaced_secret("istio-ca-secret", "istio-system", read)
    assert excinfo.value.status == 409
    assert status_body(excinfo.value)["reason"] == "Conflict"
    assert "the object has been modified" in status_body(excinfo.value)["message"]

    patched = core.patch_namespaced_secret(
        "istio-ca-secret", "istio-system", {"metadata": {"labels": {"rotated": "yes"}}}
    )
    assert patched.metadata.labels == {"app": "meshca", "rotated": "yes"}
    assert patched.data["ca-cert.pem"] == b64("CERT2")

    merged = core.patch_namespaced_secret(
        "istio-ca-secret",
        "istio-system",
        {"data": {"ca-key.pem": None}},
        _content_type="application/merge-patch+json",
    )
    assert merged.data == {"ca-cert.pem": b64("CERT2")}

    json_patched = core.patch_namespaced_secret(
        "istio-ca-secret", "istio-system", [{"op": "add", "path": "/data/extra", "value": b64("x")}]
    )
    assert json_patched.data["extra"] == b64("x")

    with pytest.raises(ApiException) as excinfo:
        core.patch_namespaced_secret(
            "istio-ca-secret",
            "istio-system",
            {"metadata": {"resourceVersion": created.metadata.resource_version}, "data": {}},
            _content_type="application/merge-patch+json",
        )
    assert excinfo.value.status == 409

    with pytest.raises(ApiException) as excinfo:
        core.create_namespaced_secret(
            "istio-system",
            client.V1Secret(metadata=client.V1ObjectMeta(name="bad"), data={"k": "not base64!"}),
        )
    assert excinfo.value.status == 400

    listed = core.list_namespaced_secret("istio-system", label_selector="rotated=yes")
    assert [s.metadata.name for s in listed.items] == ["istio-ca-secret"]

    stored = server.get_object("Secret", "istio-system", "istio-ca-secret")
    assert stored is not None and stored["data"]["extra"] == b64("x")

    deleted = core.delete_namespaced_secret("istio-ca-secret", "istio-system")
    assert deleted["kind"] == "Status"
    assert deleted["status"] == "Success"
    assert deleted["details"] == {"name": "istio-ca-secret", "kind": "secrets", "uid": created.metadata.uid}
    with pytest.raises(ApiException) as excinfo:
        core.read_namespaced_secret("istio-ca-secret", "istio-system")
    assert excinfo.value.status == 404


def test_configmap_lifecycle(server: FakeKubeApiServer, core: client.CoreV1Api) -> None:
    created = core.create_namespaced_config_map(
        "apps",
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(generate_name="istio-ca-root-cert-"), data={"a": "1"}
        ),
    )
    name = created.metadata.name
    assert name.startswith("istio-ca-root-cert-") and len(name) == len("istio-ca-root-cert-") + 5

    unchanged = core.replace_namespaced_config_map(name, "apps", created)
    assert unchanged.metadata.resource_version == created.metadata.resource_version

    created.data["b"] = "2"
    created.metadata.resource_version = None
    replaced = core.replace_namespaced_config_map(name, "apps", created)
    assert replaced.data == {"a": "1", "b": "2"}

    patched = core.patch_namespaced_config_map(name, "apps", {"data": {"a": None, "c": "3"}})
    assert patched.data == {"b": "2", "c": "3"}

    with pytest.raises(ApiException) as excinfo:
        core.replace_namespaced_config_map(
            "absent", "apps", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="absent"))
        )
    assert excinfo.value.status == 404

    with pytest.raises(ApiException) as excinfo:
        core.create_namespaced_config_map(
            "apps", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="x", resource_version="5"))
        )
    assert excinfo.value.status == 500
    assert (
        status_body(excinfo.value)["message"] == "resourceVersion should not be set on objects to be created"
    )

    with pytest.raises(ApiException) as excinfo:
        core.create_namespaced_config_map(
            "apps", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="Not_Valid"))
        )
    assert excinfo.value.status == 422
    assert status_body(excinfo.value)["reason"] == "Invalid"

    with pytest.raises(ApiException) as excinfo:
        core.delete_namespaced_config_map(
            name, "apps", body=client.V1DeleteOptions(preconditions=client.V1Preconditions(uid="other"))
        )
    assert excinfo.value.status == 409

    server.put_object("configmap", "apps", {"metadata": {"name": "seeded"}, "data": {"k": "v"}})
    assert core.read_namespaced_config_map("seeded", "apps").data == {"k": "v"}
    assert sorted(c.metadata.name for c in core.list_namespaced_config_map("apps").items) == sorted(
        [name, "seeded"]
    )
    core.delete_namespaced_config_map(name, "apps")
    assert server.get_object("configmaps", "apps", name) is None


def test_token_review_success_and_failures(
    server: FakeKubeApiServer, clock: FakeClock, api_client: client.ApiClient
) -> None:
    auth = client.AuthenticationV1Api(api_client)
    server.add_pod("apps", "web-1", uid="pod-uid-1", node_name="node-1")
    server.register_token("good", "apps", "web-sa", "sa-uid-1", pod_name="web-1", pod_uid="pod-uid-1")
    server.register_token("unbound", "apps", "web-sa", "sa-uid-1", audiences=("istio-ca", "other"))

    def review(token: str, audiences: list[str] | None = None) -> client.V1TokenReviewStatus:
        body = client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token, audiences=audiences))
        result = auth.create_token_review(body)
        assert result.kind == "TokenReview"
        return result.status

    ok = review("good", ["istio-ca"])
    assert ok.authenticated is True
    assert ok.error is None
    assert ok.audiences == ["istio-ca"]
    assert ok.user.username == "system:serviceaccount:apps:web-sa"
    assert ok.user.uid == "sa-uid-1"
    assert ok.user.groups == ["system:serviceaccounts", "system:serviceaccounts:apps", "system:authenticated"]
    assert ok.user.extra["authentication.kubernetes.io/pod-name"] == ["web-1"]
    assert ok.user.extra["authentication.kubernetes.io/pod-uid"] == ["pod-uid-1"]
    assert ok.user.extra["authentication.kubernetes.io/node-name"] == ["node-1"]
    assert ok.user.extra["authentication.kubernetes.io/credential-id"][0].startswith("JTI=")

    unbound = review("unbound", ["other", "istio-ca"])
    assert unbound.authenticated is True
    assert unbound.audiences == ["istio-ca", "other"]
    assert "authentication.kubernetes.io/pod-name" not in unbound.user.extra

    unknown = review("who-knows", ["istio-ca"])
    assert not unknown.authenticated
    assert unknown.error

    wrong_audience = review("good", ["vault"])
    assert not wrong_audience.authenticated
    assert (
        'token audiences ["istio-ca"] is invalid for the target audiences ["vault"]' in wrong_audience.error
    )

    api_audience = review("good")
    assert not api_audience.authenticated
    assert "https://kubernetes.default.svc.cluster.local" in api_audience.error

    server.delete_pod("apps", "web-1")
    assert not review("good", ["istio-ca"]).authenticated
    server.add_pod("apps", "web-1", uid="pod-uid-2")
    replaced = review("good", ["istio-ca"])
    assert not replaced.authenticated
    assert "pod UID (pod-uid-2) does not match service account pod ref claim (pod-uid-1)" in replaced.error

    server.register_token("short", "apps", "web-sa", "sa-uid-1", expires_at=FIXED_NOW + timedelta(minutes=10))
    assert review("short", ["istio-ca"]).authenticated
    clock.advance(timedelta(minutes=11))
    assert "service account token has expired" in review("short", ["istio-ca"]).error

    server.fail_next_tokenreviews(2, code=503)
    for _ in range(2):
        with pytest.raises(ApiException) as excinfo:
            review("unbound", ["istio-ca"])
        assert excinfo.value.status == 503
        assert status_body(excinfo.value)["reason"] == "ServiceUnavailable"
    assert review("unbound", ["istio-ca"]).authenticated
    assert server.tokenreview_count == 12

    with pytest.raises(ApiException) as excinfo:
        review("")
    assert excinfo.value.status == 400


def test_leases_support_leader_election(
    server: FakeKubeApiServer, clock: FakeClock, api_client: client.ApiClient
) -> None:
    coordination = client.CoordinationV1Api(api_client)
    now = datetime(2024, 5, 6, 7, 8, 9, 500000, tzinfo=UTC)
    lease = client.V1Lease(
        metadata=client.V1ObjectMeta(name="meshca-leader"),
        spec=client.V1LeaseSpec(
            holder_identity="a", lease_duration_seconds=15, acquire_time=now, renew_time=now
        ),
    )
    created = coordination.create_namespaced_lease("istio-system", lease)
    assert created.spec.holder_identity == "a"
    raw = server.get_object("lease", "istio-system", "meshca-leader")
    assert raw is not None and raw["spec"]["renewTime"] == "2024-05-06T07:08:09.500000Z"
    assert raw["apiVersion"] == "coordination.k8s.io/v1"

    with pytest.raises(ApiException) as excinfo:
        coordination.create_namespaced_lease("istio-system", lease)
    assert excinfo.value.status == 409

    mine = coordination.read_namespaced_lease("meshca-leader", "istio-system")
    theirs = coordination.read_namespaced_lease("meshca-leader", "istio-system")
    mine.spec.renew_time = now + timedelta(seconds=5)
    renewed = coordination.replace_namespaced_lease("meshca-leader", "istio-system", mine)
    assert renewed.spec.renew_time == now + timedelta(seconds=5)

    theirs.spec.holder_identity = "b"
    with pytest.raises(ApiException) as excinfo:
        coordination.replace_namespaced_lease("meshca-leader", "istio-system", theirs)
    assert excinfo.value.status == 409
    assert status_body(excinfo.value)["message"] == (
        'Operation cannot be fulfilled on leases.coordination.k8s.io "meshca-leader": the object has been '
        "modified; please apply your changes to the latest version and try again"
    )
    assert coordination.read_namespaced_lease("meshca-leader", "istio-system").spec.holder_identity == "a"

    fresh = client.V1Lease(
        metadata=client.V1ObjectMeta(name="other"), spec=client.V1LeaseSpec(holder_identity="c")
    )
    assert coordination.replace_namespaced_lease("other", "istio-system", fresh).spec.holder_identity == "c"

    naive = client.V1Lease(
        metadata=client.V1ObjectMeta(name="naive"), spec=client.V1LeaseSpec(renew_time=datetime(2024, 1, 1))
    )
    with pytest.raises(ApiException) as excinfo:
        coordination.create_namespaced_lease("istio-system", naive)
    assert excinfo.value.status == 400


def test_peer_authentications_are_served_in_both_versions(
    server: FakeKubeApiServer, custom: client.CustomObjectsApi
) -> None:
    created = custom.create_namespaced_custom_object(
        PA_GROUP, "v1beta1", "apps", PA_PLURAL, peer_authentication("default", "STRICT", "v1beta1")
    )
    assert created["apiVersion"] == "security.istio.io/v1beta1"
    assert created["metadata"]["generation"] == 1

    listed = custom.list_namespaced_custom_object(PA_GROUP, "v1", "apps", PA_PLURAL)
    assert listed["kind"] == "PeerAuthenticationList"
    assert listed["apiVersion"] == "security.istio.io/v1"
    assert [(i["apiVersion"], i["kind"], i["spec"]) for i in listed["items"]] == [
        ("security.istio.io/v1", "PeerAuthentication", {"mtls": {"mode": "STRICT"}})
    ]

    server.apply_peer_authentication(
        "istio-system",
        "mesh",
        {"mtls": {"mode": "PERMISSIVE"}},
        creation_timestamp=datetime(2020, 1, 1, tzinfo=UTC),
    )
    everywhere = custom.list_cluster_custom_object(PA_GROUP, "v1beta1", PA_PLURAL)
    assert sorted((i["metadata"]["namespace"], i["apiVersion"]) for i in everywhere["items"]) == [
        ("apps", "security.istio.io/v1beta1"),
        ("istio-system", "security.istio.io/v1beta1"),
    ]
    mesh = custom.get_namespaced_custom_object(PA_GROUP, "v1", "istio-system", PA_PLURAL, "mesh")
    assert mesh["metadata"]["creationTimestamp"] == "2020-01-01T00:00:00Z"

    with pytest.raises(ApiException) as excinfo:
        custom.create_namespaced_custom_object(
            PA_GROUP, "v1", "apps", PA_PLURAL, peer_authentication("default", "STRICT")
        )
    assert excinfo.value.status == 409

    current = custom.get_namespaced_custom_object(PA_GROUP, "v1", "apps", PA_PLURAL, "default")
    current["spec"]["mtls"]["mode"] = "DISABLE"
    replaced = custom.replace_namespaced_custom_object(PA_GROUP, "v1", "apps", PA_PLURAL, "default", current)
    assert replaced["metadata"]["generation"] == 2

    del current["metadata"]["resourceVersion"]
    with pytest.raises(ApiException) as excinfo:
        custom.replace_namespaced_custom_object(PA_GROUP, "v1", "apps", PA_PLURAL, "default", current)
    assert excinfo.value.status == 422

    patched = custom.patch_namespaced_custom_object(
        PA_GROUP, "v1beta1", "apps", PA_PLURAL, "default", {"spec": {"mtls": {"mode": "STRICT"}}}
    )
    assert patched["spec"] == {"mtls": {"mode": "STRICT"}}
    assert patched["apiVersion"] == "security.istio.io/v1beta1"

    with pytest.raises(ApiException) as excinfo:
        custom.patch_namespaced_custom_object(
            PA_GROUP,
            "v1",
            "apps",
            PA_PLURAL,
            "default",
            {"spec": {}},
            _content_type="application/strategic-merge-patch+json",
        )
    assert excinfo.value.status == 415

    custom.delete_namespaced_custom_object(PA_GROUP, "v1", "apps", PA_PLURAL, "default")
    server.delete_peer_authentication("istio-system", "mesh")
    assert custom.list_cluster_custom_object(PA_GROUP, "v1", PA_PLURAL)["items"] == []


def test_pod_watch_streams_changes_after_a_resource_version(
    server: FakeKubeApiServer, core: client.CoreV1Api
) -> None:
    server.add_pod("apps", "before")
    start = core.list_namespaced_pod("apps").metadata.resource_version
    server.add_pod("apps", "web", labels={"app": "web"})
    server.add_pod("elsewhere", "ignored")
    web = server.get_object("pods", "apps", "web")
    assert web is not None
    web["metadata"]["labels"]["v"] = "2"
    server.put_object("pods", "apps", web)
    server.delete_pod("apps", "web")

    w = watch.Watch()
    seen = []
    for event in w.stream(core.list_namespaced_pod, "apps", resource_version=start, timeout_seconds=2):
        seen.append((event["type"], event["object"].metadata.name, event["object"].metadata.resource_version))
        if event["type"] == "DELETED":
            w.stop()
    assert [(t, n) for t, n, _ in seen] == [("ADDED", "web"), ("MODIFIED", "web"), ("DELETED", "web")]
    assert [int(rv) for _, _, rv in seen] == [2, 4, 5]
    assert w.resource_version == "5"


def test_watch_without_resource_version_lists_current_objects_first(
    server: FakeKubeApiServer, core: client.CoreV1Api
) -> None:
    server.add_pod("apps", "a")
    server.add_pod("apps", "b")
    started = time.monotonic()
    events = [
        (e["type"], e["object"].metadata.name)
        for e in watch.Watch().stream(core.list_namespaced_pod, "apps", timeout_seconds=1)
    ]
    assert events == [("ADDED", "a"), ("ADDED", "b")]
    assert 0.9 <= time.monotonic() - started < 3


def test_watch_follows_label_selector_membership(server: FakeKubeApiServer, core: client.CoreV1Api) -> None:
    server.add_pod("apps", "p", labels={"sidecar": "yes"})
    rv = server.resource_version
    pod = server.get_object("pods", "apps", "p")
    assert pod is not None
    pod["metadata"]["labels"] = {"sidecar": "no"}
    server.put_object("pods", "apps", pod)
    pod["metadata"]["labels"] = {"sidecar": "yes"}
    server.put_object("pods", "apps", pod)
    events = []
    w = watch.Watch()
    for event in w.stream(
        core.list_pod_for_all_namespaces, label_selector="sidecar=yes", resource_version=rv, timeout_seconds=2
    ):
        events.append(event["type"])
        if len(events) == 2:
            w.stop()
    assert events == ["DELETED", "ADDED"]


def test_watch_from_compacted_resource_version_is_expired(
    server: FakeKubeApiServer, core: client.CoreV1Api
) -> None:
    server.add_pod("apps", "a")
    old = server.resource_version
    server.add_pod("apps", "b")
    server.compact_history()
    server.add_pod("apps", "c")

    with pytest.raises(ApiException) as excinfo:
        list(watch.Watch().stream(core.list_namespaced_pod, "apps", resource_version=old, timeout_seconds=1))
    assert excinfo.value.status == 410
    assert excinfo.value.reason == f"Expired: too old resource version: {old} (2)"
    assert server.watch_count == 1

    with pytest.raises(ApiException) as excinfo:
        list(watch.Watch().stream(core.list_namespaced_pod, "apps", resource_version=old, _request_timeout=5))
    assert excinfo.value.status == 410
    assert server.watch_count == 3

    raw: Any = core.list_namespaced_pod(
        "apps", watch=True, resource_version=old, timeout_seconds=1, _preload_content=False
    )
    lines = [json.loads(line) for line in raw.data.decode().splitlines()]
    assert lines == [
        {
            "type": "ERROR",
            "object": {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": f"too old resource version: {old} (2)",
                "reason": "Expired",
                "code": 410,
            },
        }
    ]

    events = list(
        watch.Watch().stream(
            core.list_namespaced_pod, "apps", resource_version=server.resource_version, timeout_seconds=1
        )
    )
    assert events == []


def test_bounded_history_expires_old_resource_versions(clock: FakeClock) -> None:
    with FakeKubeApiServer(now=clock.now, history_limit=2) as server, server.api_client() as api:
        core = client.CoreV1Api(api)
        for i in range(4):
            server.add_pod("apps", f"p{i}")
        with pytest.raises(ApiException) as excinfo:
            list(
                watch.Watch().stream(
                    core.list_namespaced_pod, "apps", resource_version="1", timeout_seconds=1
                )
            )
        assert excinfo.value.status == 410
        w = watch.Watch()
        names = []
        for event in w.stream(core.list_namespaced_pod, "apps", resource_version="2", timeout_seconds=5):
            names.append(event["object"].metadata.name)
            if len(names) == 2:
                w.stop()
        assert names == ["p2", "p3"]


def test_abrupt_disconnect_breaks_the_stream_and_the_client_can_resume(
    server: FakeKubeApiServer, core: client.CoreV1Api
) -> None:
    server.add_pod("apps", "older")
    start = server.resource_version
    server.add_pod("apps", "first")
    w = watch.Watch()
    stream = w.stream(core.list_namespaced_pod, "apps", resource_version=start, timeout_seconds=5)
    assert next(stream)["object"].metadata.name == "first"
    assert server.disconnect_watches() == 1
    with pytest.raises(urllib3.exceptions.ProtocolError):
        next(stream)

    server.add_pod("apps", "second")
    resumed = watch.Watch().stream(
        core.list_namespaced_pod, "apps", resource_version=w.resource_version, timeout_seconds=5
    )
    assert next(resumed)["object"].metadata.name == "second"
    resumed.close()
    assert server.watch_count == 2


def test_graceful_disconnect_lets_the_client_rewatch_on_its_own(
    server: FakeKubeApiServer, core: client.CoreV1Api
) -> None:
    server.add_pod("apps", "older")
    start = server.resource_version
    server.add_pod("apps", "first")
    w = watch.Watch()
    stream = w.stream(core.list_namespaced_pod, "apps", resource_version=start, _request_timeout=5)
    assert next(stream)["object"].metadata.name == "first"
    assert server.disconnect_watches(graceful=True) == 1
    server.add_pod("apps", "second")
    assert next(stream)["object"].metadata.name == "second"
    w.stop()
    stream.close()
    assert server.watch_count == 2
    last = server.requests[-1]
    assert (last.verb, last.query["resourceVersion"]) == ("watch", "2")
    assert int(server.resource_version) == 3


def test_bookmarks_carry_the_latest_resource_version(
    server: FakeKubeApiServer, core: client.CoreV1Api
) -> None:
    server.add_pod("apps", "older")
    start = server.resource_version
    server.add_pod("apps", "a")
    server.put_object("configmaps", "apps", {"metadata": {"name": "unrelated"}})
    w = watch.Watch()
    stream = w.stream(
        core.list_namespaced_pod,
        "apps",
        resource_version=start,
        allow_watch_bookmarks=True,
        timeout_seconds=5,
    )
    assert next(stream)["type"] == "ADDED"
    assert server.wait_for_active_watches(1)
    server.send_bookmarks()
    bookmark = next(stream)
    assert bookmark["type"] == "BOOKMARK"
    assert bookmark["raw_object"]["kind"] == "Pod"
    assert bookmark["raw_object"]["metadata"]["resourceVersion"] == "3"
    assert w.resource_version == "3"
    stream.close()


def test_peer_authentication_watch_in_both_versions(
    server: FakeKubeApiServer, custom: client.CustomObjectsApi
) -> None:
    server.apply_peer_authentication("apps", "existing", {})
    start = custom.list_cluster_custom_object(PA_GROUP, "v1", PA_PLURAL)["metadata"]["resourceVersion"]
    server.apply_peer_authentication("istio-system", "mesh", {"mtls": {"mode": "STRICT"}})
    server.apply_peer_authentication("istio-system", "mesh", {"mtls": {"mode": "PERMISSIVE"}})
    server.apply_peer_authentication("apps", "ignored", {})
    server.delete_peer_authentication("istio-system", "mesh")

    for version in ("v1", "v1beta1"):
        w = watch.Watch()
        seen = []
        for event in w.stream(
            custom.list_namespaced_custom_object,
            PA_GROUP,
            version,
            "istio-system",
            PA_PLURAL,
            resource_version=start,
            timeout_seconds=2,
        ):
            obj = event["object"]
            seen.append(
                (event["type"], obj["apiVersion"], obj["spec"]["mtls"]["mode"], obj["metadata"]["generation"])
            )
            if event["type"] == "DELETED":
                w.stop()
        api_version = f"{PA_GROUP}/{version}"
        assert seen == [
            ("ADDED", api_version, "STRICT", 1),
            ("MODIFIED", api_version, "PERMISSIVE", 2),
            ("DELETED", api_version, "PERMISSIVE", 2),
        ]

    server.compact_history()
    with pytest.raises(ApiException) as excinfo:
        list(
            watch.Watch().stream(
                custom.list_cluster_custom_object,
                PA_GROUP,
                "v1beta1",
                PA_PLURAL,
                resource_version=start,
                timeout_seconds=1,
            )
        )
    assert excinfo.value.status == 410


def test_injected_failures_and_request_log(server: FakeKubeApiServer, core: client.CoreV1Api) -> None:
    server.add_pod("apps", "a")
    server.fail_next("pods", code=500, verbs=["list"])
    with pytest.raises(ApiException) as excinfo:
        core.list_namespaced_pod("apps")
    assert excinfo.value.status == 500
    assert status_body(excinfo.value)["reason"] == "InternalError"
    assert core.read_namespaced_pod("a", "apps").metadata.name == "a"
    assert len(core.list_namespaced_pod("apps").items) == 1
    assert server.request_count("pods", "list") == 2
    assert server.request_count("pods", "get") == 1


def test_namespaces_are_cluster_scoped_and_terminate_on_delete(
    server: FakeKubeApiServer, core: client.CoreV1Api
) -> None:
    created = core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="shop")))
    assert created.metadata.namespace is None
    assert (created.status.phase, created.spec.finalizers) == ("Active", ["kubernetes"])
    assert [n.metadata.name for n in core.list_namespace().items] == ["shop"]
    core.create_namespaced_config_map("shop", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="a")))

    # As without a namespace controller: the namespace stays, Terminating, and takes nothing new.
    core.delete_namespace("shop")
    gone = core.read_namespace("shop")
    assert gone.status.phase == "Terminating" and gone.metadata.deletion_timestamp is not None
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_config_map("shop", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="b")))
    assert refused.value.status == 403
    causes = json.loads(refused.value.body)["details"]["causes"]
    assert causes == [
        {
            "reason": "NamespaceTerminating",
            "message": "namespace shop is being terminated",
            "field": "metadata.namespace",
        }
    ]
    assert [n.metadata.name for n in core.list_namespace(field_selector="status.phase=Active").items] == []
