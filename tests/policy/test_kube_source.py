"""PeerAuthentication policies from the Kubernetes API: the pure merge of both API versions' streams, then
the source against the API stand-in."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from ca.errors import UnavailableError
from ca.policy.kube_source import KubePolicySource, ObjectMap, list_policies_once
from ca.policy.model import MtlsMode, PolicyRef, Workload
from ca.policy.policy_set import PolicySet
from ca.policy.source import WorkloadPolicy
from tests.support.fake_apiserver import FakeKubeApiServer
from tests.support.policies import T0, WEB, eventually, metric, refs

# The pure merge of both API versions' streams.


def k8s(namespace: str, name: str, rv: int, mode: str = "STRICT", version: str = "v1") -> dict[str, Any]:
    return {
        "apiVersion": f"security.istio.io/{version}",
        "kind": "PeerAuthentication",
        "metadata": {"namespace": namespace, "name": name, "resourceVersion": str(rv)},
        "spec": {"mtls": {"mode": mode}},
    }


def invalid_log() -> tuple[ObjectMap, list[str]]:
    seen: list[str] = []
    return ObjectMap(lambda ref, err, kept: seen.append(f"{ref} kept={kept}")), seen


def test_object_map_newest_resource_version_wins() -> None:
    objects, _ = invalid_log()
    assert objects.put(k8s("shop", "a", 5, "STRICT"))
    assert not objects.put(k8s("shop", "a", 5, "STRICT", version="v1beta1"))  # the other stream, same rv
    assert objects.put(k8s("shop", "a", 7, "DISABLE", version="v1beta1"))
    assert not objects.put(k8s("shop", "a", 6, "PERMISSIVE"))  # the lagging stream
    assert [p.mode for p in objects.policies()] == [MtlsMode.DISABLE]


def test_object_map_deleted_object_does_not_come_back() -> None:
    objects, _ = invalid_log()
    objects.put(k8s("shop", "a", 5))
    assert objects.remove(k8s("shop", "a", 9))
    assert not objects.put(k8s("shop", "a", 7, version="v1beta1"))  # older event from the other stream
    assert objects.policies() == []
    assert objects.put(k8s("shop", "a", 12))  # re-created later
    assert len(objects.policies()) == 1


def test_object_map_relist_removes_only_what_the_list_could_see() -> None:
    objects, _ = invalid_log()
    objects.put(k8s("shop", "old", 3))
    objects.put(k8s("shop", "new", 20))  # seen by the other stream after the list below
    assert objects.relisted([k8s("shop", "kept", 4)], list_rv=10)
    assert sorted(p.ref.name for p in objects.policies()) == ["kept", "new"]
    assert not objects.put(k8s("shop", "old", 8, version="v1beta1"))  # deleted before rv 10


def test_object_map_tombstones_pruned_once_streams_pass_them() -> None:
    objects, _ = invalid_log()
    objects.put(k8s("shop", "a", 5))
    objects.remove(k8s("shop", "a", 9))
    objects.prune_tombstones(8)
    assert not objects.put(k8s("shop", "a", 7))
    objects.prune_tombstones(9)
    assert objects.put(k8s("shop", "a", 10))


def test_object_map_invalid_update_keeps_last_valid() -> None:
    objects, seen = invalid_log()
    objects.put(k8s("shop", "a", 5, "STRICT"))
    objects.put(k8s("shop", "b", 6, "BOGUS"))
    assert not objects.put(k8s("shop", "a", 7, "BOGUS"))
    assert seen == ["shop/b kept=False", "shop/a kept=True"]
    assert [(p.ref.name, p.mode) for p in objects.policies()] == [("a", MtlsMode.STRICT)]


def test_object_map_lists_the_objects_whose_current_spec_is_invalid() -> None:
    objects, _ = invalid_log()
    objects.put(k8s("shop", "a", 5, "BOGUS"))
    objects.put(k8s("cart", "b", 6, "NOPE"))
    assert [(i.namespaces, "BOGUS" in i.error) for i in objects.invalid()] == [
        (frozenset({"cart"}), False),
        (frozenset({"shop"}), True),
    ]
    objects.put(k8s("shop", "a", 7, "STRICT"))
    objects.remove(k8s("cart", "b", 8))
    assert objects.invalid() == []


# The Kubernetes source against the API stand-in.


@pytest.fixture
def apiserver() -> Iterator[FakeKubeApiServer]:
    with FakeKubeApiServer() as server:
        yield server


def start_kube(apiserver: FakeKubeApiServer, **kw: Any) -> tuple[KubePolicySource, PolicySet]:
    policies = PolicySet()
    source = KubePolicySource(apiserver.api_client(), policies, **kw)
    source.start(wait_s=5)
    return source, policies


@pytest.fixture
def kube_source(apiserver: FakeKubeApiServer) -> Iterator[tuple[KubePolicySource, PolicySet]]:
    apiserver.apply_peer_authentication("istio-system", "default", {"mtls": {"mode": "STRICT"}})
    apiserver.apply_peer_authentication(
        "shop", "web", {"selector": {"matchLabels": {"app": "web"}}, "mtls": {"mode": "DISABLE"}}
    )
    source, policies = start_kube(apiserver)
    assert apiserver.wait_for_active_watches(2)
    yield source, policies
    source.stop()


def mode_of(policies: PolicySet, ref: str) -> MtlsMode | None:
    return next((p.mode for p in policies.snapshot() if str(p.ref) == ref), None)


def test_kube_initial_list(
    kube_source: tuple[KubePolicySource, PolicySet], apiserver: FakeKubeApiServer
) -> None:
    source, policies = kube_source
    assert source.synced
    assert refs(policies) == {"istio-system/default", "shop/web"}
    assert WorkloadPolicy(policies, WEB).decide(80).mode is MtlsMode.DISABLE
    listed = {r.path for r in apiserver.requests if r.verb == "list"}
    assert listed == {
        "/apis/security.istio.io/v1/peerauthentications",
        "/apis/security.istio.io/v1beta1/peerauthentications",
    }
    assert metric("meshca_policy_policies_loaded", source="kube") == 2


def test_kube_add_modify_delete_within_a_second(
    kube_source: tuple[KubePolicySource, PolicySet], apiserver: FakeKubeApiServer
) -> None:
    source, policies = kube_source
    decider = WorkloadPolicy(policies, WEB)
    apiserver.apply_peer_authentication("shop", "default", {"mtls": {"mode": "PERMISSIVE"}})
    assert eventually(lambda: mode_of(policies, "shop/default") is MtlsMode.PERMISSIVE)
    apiserver.apply_peer_authentication(
        "shop", "web", {"selector": {"matchLabels": {"app": "web"}}, "mtls": {"mode": "STRICT"}}
    )
    assert eventually(lambda: decider.decide(80).mode is MtlsMode.STRICT)
    apiserver.delete_peer_authentication("shop", "web")
    deleted_at = int(apiserver.resource_version)
    assert eventually(lambda: decider.decide(80).level == "namespace")
    assert decider.decide(80).mode is MtlsMode.PERMISSIVE
    # Once both versions' streams are past the deletion, nothing brings it back.
    assert eventually(lambda: (source.applied_through or 0) >= deleted_at)
    assert "shop/web" not in refs(policies)


def test_kube_creation_time_orders_policies(
    kube_source: tuple[KubePolicySource, PolicySet], apiserver: FakeKubeApiServer
) -> None:
    _, policies = kube_source
    apiserver.apply_peer_authentication(
        "shop", "young", {"mtls": {"mode": "STRICT"}}, creation_timestamp=T0 + timedelta(hours=1)
    )
    apiserver.apply_peer_authentication("shop", "old", {"mtls": {"mode": "DISABLE"}}, creation_timestamp=T0)
    decider = WorkloadPolicy(policies, Workload("shop", {}))
    assert eventually(lambda: len(policies.snapshot()) == 4)
    decision = decider.decide(1)
    assert (decision.mode, decision.decided_by) == (MtlsMode.DISABLE, PolicyRef("shop", "old"))


def test_kube_watch_disconnect_resumes_without_relisting(
    kube_source: tuple[KubePolicySource, PolicySet], apiserver: FakeKubeApiServer
) -> None:
    _, policies = kube_source
    lists_before = apiserver.request_count("peerauthentications", "list")
    assert apiserver.disconnect_watches() == 2
    apiserver.apply_peer_authentication("shop", "default", {"mtls": {"mode": "STRICT"}})
    assert eventually(lambda: mode_of(policies, "shop/default") is MtlsMode.STRICT)
    assert apiserver.wait_for_active_watches(2)
    assert apiserver.request_count("peerauthentications", "list") == lists_before
    resumed = [r for r in apiserver.requests if r.verb == "watch"][-2:]
    assert all(r.query.get("resourceVersion") not in (None, "", "0") for r in resumed)


def test_kube_expired_resource_version_relists(
    kube_source: tuple[KubePolicySource, PolicySet], apiserver: FakeKubeApiServer
) -> None:
    _, policies = kube_source
    expired_before = metric("meshca_policy_watch_restarts_total", version="v1", cause="expired")
    lists_before = apiserver.request_count("peerauthentications", "list")
    apiserver.disconnect_watches()
    apiserver.delete_peer_authentication("shop", "web")  # happens while nobody watches
    apiserver.apply_peer_authentication("shop", "default", {"mtls": {"mode": "DISABLE"}})
    apiserver.compact_history()  # so resuming from the old resourceVersion answers 410
    assert eventually(lambda: refs(policies) == {"istio-system/default", "shop/default"}, timeout_s=3)
    assert eventually(lambda: apiserver.request_count("peerauthentications", "list") >= lists_before + 2)
    assert metric("meshca_policy_watch_restarts_total", version="v1", cause="expired") > expired_before
    apiserver.apply_peer_authentication("shop", "late", {"mtls": {"mode": "STRICT"}})
    assert eventually(lambda: "shop/late" in refs(policies))


def test_kube_one_version_not_served(apiserver: FakeKubeApiServer) -> None:
    apiserver.unserved_versions.add("security.istio.io/v1")
    apiserver.apply_peer_authentication("shop", "default", {"mtls": {"mode": "STRICT"}})
    source, policies = start_kube(apiserver)
    try:
        assert refs(policies) == {"shop/default"}
        apiserver.apply_peer_authentication("shop", "default", {"mtls": {"mode": "DISABLE"}})
        assert eventually(lambda: mode_of(policies, "shop/default") is MtlsMode.DISABLE)
    finally:
        source.stop()


def test_kube_no_version_served_means_no_policies(apiserver: FakeKubeApiServer) -> None:
    apiserver.unserved_versions.update({"security.istio.io/v1", "security.istio.io/v1beta1"})
    source, policies = start_kube(apiserver)
    try:
        assert source.synced and policies.snapshot() == ()
    finally:
        source.stop()


def test_kube_invalid_object_skipped_others_kept(
    kube_source: tuple[KubePolicySource, PolicySet], apiserver: FakeKubeApiServer
) -> None:
    _, policies = kube_source
    before = metric("meshca_policy_invalid_policies_total", source="kube")
    apiserver.apply_peer_authentication("shop", "bad", {"portLevelMtls": {"8080": {"mode": "STRICT"}}})
    apiserver.apply_peer_authentication("shop", "default", {"mtls": {"mode": "PERMISSIVE"}})
    assert eventually(lambda: "shop/default" in refs(policies))
    assert "shop/bad" not in refs(policies)
    assert (
        metric("meshca_policy_invalid_policies_total", source="kube") == before + 1
    )  # once, not per version
    apiserver.apply_peer_authentication("shop", "web", {"mtls": {"mode": "NOPE"}})
    assert eventually(lambda: metric("meshca_policy_invalid_policies_total", source="kube") == before + 2)
    assert mode_of(policies, "shop/web") is MtlsMode.DISABLE  # the last valid spec stays


def test_kube_api_down_at_start_is_a_clear_error(apiserver: FakeKubeApiServer) -> None:
    apiserver.fail_next("peerauthentications", n=1000, code=500, verbs=("list",))
    source = KubePolicySource(apiserver.api_client(), PolicySet())
    with pytest.raises(UnavailableError, match=r"could not list PeerAuthentication objects .* HTTP 500"):
        source.start(wait_s=1)


def test_kube_survives_api_outage(
    kube_source: tuple[KubePolicySource, PolicySet], apiserver: FakeKubeApiServer
) -> None:
    _, policies = kube_source
    apiserver.fail_next("peerauthentications", n=4, code=500, verbs=("watch",))
    apiserver.disconnect_watches()
    apiserver.apply_peer_authentication("shop", "default", {"mtls": {"mode": "STRICT"}})
    assert eventually(lambda: mode_of(policies, "shop/default") is MtlsMode.STRICT, timeout_s=10)
    assert refs(policies) == {"istio-system/default", "shop/default", "shop/web"}


def watch_failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The `error` field of each "list/watch failed" line."""
    return [
        getattr(r, "error", "")
        for r in caplog.records
        if r.getMessage().startswith("PeerAuthentication list/watch failed")
    ]


def test_kube_server_gone_keeps_last_policies(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server = FakeKubeApiServer().start()
    server.apply_peer_authentication("shop", "default", {"mtls": {"mode": "STRICT"}})
    source, policies = start_kube(server, max_backoff_s=0.5)
    caplog.set_level(logging.WARNING, logger="ca.policy.kube_source")
    try:
        server.stop()  # the connection is refused from now on
        # The reason in words, not urllib3's reprs of its pools and connections.
        assert eventually(lambda: "Connection refused" in watch_failures(caplog))
        assert refs(policies) == {"shop/default"}  # the last known policies stay
        assert source.synced
        assert not [e for e in watch_failures(caplog) if "(host=" in e or "object at" in e]
    finally:
        source.stop()


def test_list_once_for_explain(apiserver: FakeKubeApiServer) -> None:
    apiserver.apply_peer_authentication("shop", "default", {"mtls": {"mode": "STRICT"}})
    apiserver.apply_peer_authentication("shop", "bad", {"mtls": {"mode": "WRONG"}})
    loaded = list_policies_once(apiserver.api_client())
    assert [str(p.ref) for p in loaded.policies] == ["shop/default"]
    (invalid,) = loaded.invalid
    assert "shop/bad" in invalid.error and invalid.namespaces == frozenset({"shop"})
