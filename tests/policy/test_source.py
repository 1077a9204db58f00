"""PolicySet, WorkloadPolicy and the two policy sources (YAML directory, Kubernetes API)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from ca.errors import ConfigError, PolicyError, UnavailableError
from ca.policy.kube_source import KubePolicySource, ObjectMap, list_policies_once
from ca.policy.model import MtlsMode, PeerAuthentication, PolicyRef, Workload
from ca.policy.policy_set import PolicySet
from ca.policy.source import WorkloadPolicy, load_policies_once, open_policy_source
from ca.policy.yaml_source import YamlPolicySource
from tests.support.fake_apiserver import FakeKubeApiServer

WEB = Workload("shop", {"app": "web"})
T0 = datetime(2024, 5, 1, tzinfo=UTC)


def eventually(check: Callable[[], bool], timeout_s: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def policy(namespace: str, name: str, mode: MtlsMode, **kw: Any) -> PeerAuthentication:
    return PeerAuthentication(ref=PolicyRef(namespace, name), created=T0, selector=None, mode=mode, **kw)


def manifest(namespace: str, name: str, mode: str, selector: str | None = None, extra: str = "") -> str:
    lines = [
        "apiVersion: security.istio.io/v1",
        "kind: PeerAuthentication",
        f"metadata: {{name: {name}, namespace: {namespace}}}",
        "spec:",
        f"  mtls: {{mode: {mode}}}",
    ]
    if selector:
        lines.append(f"  selector: {{matchLabels: {{app: {selector}}}}}")
    return "\n".join(lines) + extra + "\n"


# PolicySet and WorkloadPolicy.


def test_policy_set_counts_real_changes_and_notifies() -> None:
    policies = PolicySet()
    calls: list[int] = []
    unsubscribe = policies.subscribe(lambda: calls.append(policies.generation))
    strict = policy("shop", "default", MtlsMode.STRICT)
    assert policies.upsert(strict) and policies.generation == 1
    assert not policies.upsert(strict) and policies.generation == 1  # same value: no change
    assert policies.replace([strict, policy("istio-system", "default", MtlsMode.DISABLE)])
    assert [str(p.ref) for p in policies.snapshot()] == ["istio-system/default", "shop/default"]
    assert policies.delete(strict.ref)
    assert not policies.delete(strict.ref)
    assert calls == [1, 2, 3]
    unsubscribe()
    policies.replace([])
    assert calls == [1, 2, 3]


def test_workload_policy_follows_the_set_and_caches_per_generation() -> None:
    policies = PolicySet([policy("shop", "default", MtlsMode.STRICT)])
    decider = WorkloadPolicy(policies, WEB, root_namespace="istio-system")
    first = decider.decide(8080)
    assert first.mode is MtlsMode.STRICT and first.port == 8080
    assert decider.decide(8080) is first  # cached
    policies.upsert(policy("shop", "default", MtlsMode.PERMISSIVE))
    assert decider.decide(8080).mode is MtlsMode.PERMISSIVE
    assert decider.decide(9090).port == 9090


def test_workload_policy_is_safe_across_threads() -> None:
    policies = PolicySet()
    decider = WorkloadPolicy(policies, WEB)
    modes = [MtlsMode.STRICT, MtlsMode.PERMISSIVE]
    stop = threading.Event()
    errors: list[BaseException] = []

    def flip() -> None:
        for i in range(2000):
            policies.upsert(policy("shop", "default", modes[i % 2]))
        stop.set()

    def read() -> None:
        try:
            while not stop.is_set():
                assert decider.decide(8080).mode in modes
        except BaseException as err:
            errors.append(err)

    readers = [threading.Thread(target=read) for _ in range(4)]
    for thread in readers:
        thread.start()
    flip()
    for thread in readers:
        thread.join()
    assert not errors
    assert decider.decide(8080).mode is MtlsMode.PERMISSIVE  # the last write (i = 1999)


def test_decide_is_cheap() -> None:
    policies = PolicySet([policy("istio-system", "default", MtlsMode.STRICT)])
    decider = WorkloadPolicy(policies, WEB)
    decider.decide(8080)
    calls = 100_000
    started = time.perf_counter()
    for _ in range(calls):
        decider.decide(8080)
    per_call_ns = (time.perf_counter() - started) / calls * 1e9
    assert per_call_ns < 5_000, f"decide() takes {per_call_ns:.0f} ns"


# The YAML directory source.


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir()
    (directory / "mesh.yaml").write_text(manifest("istio-system", "default", "STRICT"))
    (directory / "shop.yml").write_text(manifest("shop", "web", "DISABLE", selector="web"))
    (directory / "README.md").write_text("not a manifest")
    (directory / ".hidden.yaml").write_text("this: [is not read")
    return directory


@pytest.fixture
def yaml_source(policy_dir: Path) -> Iterator[tuple[YamlPolicySource, PolicySet]]:
    policies = PolicySet()
    source = YamlPolicySource(policy_dir, policies)
    source.start()
    yield source, policies
    source.stop()


def refs(policies: PolicySet) -> set[str]:
    return {str(p.ref) for p in policies.snapshot()}


def test_yaml_directory_initial_load(yaml_source: tuple[YamlPolicySource, PolicySet]) -> None:
    source, policies = yaml_source
    assert source.synced
    assert refs(policies) == {"istio-system/default", "shop/web"}
    assert WorkloadPolicy(policies, WEB).decide(80).mode is MtlsMode.DISABLE


def test_yaml_changes_apply_within_a_second(
    yaml_source: tuple[YamlPolicySource, PolicySet], policy_dir: Path
) -> None:
    _, policies = yaml_source
    decider = WorkloadPolicy(policies, WEB)
    (policy_dir / "shop.yml").write_text(manifest("shop", "web", "PERMISSIVE", selector="web"))
    assert eventually(lambda: decider.decide(80).mode is MtlsMode.PERMISSIVE)

    staged = policy_dir / ".staged"  # an atomic replace, as editors and ConfigMap updates do
    staged.write_text(manifest("shop", "web", "STRICT", selector="web"))
    os.replace(staged, policy_dir / "shop.yml")
    assert eventually(lambda: decider.decide(80).mode is MtlsMode.STRICT)

    (policy_dir / "extra.json").write_text(
        '{"apiVersion": "security.istio.io/v1beta1", "kind": "PeerAuthentication",'
        ' "metadata": {"name": "default", "namespace": "shop"}, "spec": {"mtls": {"mode": "DISABLE"}}}'
    )
    assert eventually(lambda: "shop/default" in refs(policies))

    (policy_dir / "shop.yml").unlink()
    assert eventually(lambda: decider.decide(80).mode is MtlsMode.DISABLE)  # namespace-wide now
    assert decider.decide(80).level == "namespace"


def test_yaml_same_size_same_mtime_replace_is_seen(
    yaml_source: tuple[YamlPolicySource, PolicySet], policy_dir: Path
) -> None:
    _, policies = yaml_source
    target = policy_dir / "shop.yml"
    stat = target.stat()
    staged = policy_dir / ".staged"
    staged.write_text(target.read_text().replace("{mode: DISABLE}", "{mode: STRICT }"))
    os.utime(staged, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert staged.stat().st_size == stat.st_size
    os.replace(staged, target)  # only the inode tells the files apart
    decider = WorkloadPolicy(policies, WEB)
    assert eventually(lambda: decider.decide(80).mode is MtlsMode.STRICT)


def test_yaml_invalid_file_keeps_last_good(
    yaml_source: tuple[YamlPolicySource, PolicySet], policy_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, policies = yaml_source
    decider = WorkloadPolicy(policies, WEB)
    before = metric("meshca_policy_invalid_policies_total", source="yaml")
    with caplog.at_level(logging.ERROR, logger="ca.policy.yaml_source"):
        (policy_dir / "shop.yml").write_text(manifest("shop", "web", "STRCT", selector="web"))
        assert eventually(lambda: metric("meshca_policy_invalid_policies_total", source="yaml") == before + 1)
        # The poller counts the file before it logs it: wait for the log line too.
        assert eventually(lambda: any("invalid policy file" in r.getMessage() for r in caplog.records))
    record = next(r for r in caplog.records if "invalid policy file" in r.getMessage())
    assert record.file == str(policy_dir / "shop.yml")  # type: ignore[attr-defined]
    assert "STRCT" in record.error  # type: ignore[attr-defined]
    assert decider.decide(80).mode is MtlsMode.DISABLE  # the last good version stays

    (policy_dir / "mesh.yaml").write_text(manifest("istio-system", "default", "PERMISSIVE"))
    assert eventually(
        lambda: WorkloadPolicy(policies, Workload("x", {})).decide(1).mode is MtlsMode.PERMISSIVE
    )

    (policy_dir / "shop.yml").write_text(manifest("shop", "web", "STRICT", selector="web"))
    assert eventually(lambda: decider.decide(80).mode is MtlsMode.STRICT)


def test_yaml_new_invalid_file_contributes_nothing(
    yaml_source: tuple[YamlPolicySource, PolicySet], policy_dir: Path
) -> None:
    _, policies = yaml_source
    before = metric("meshca_policy_invalid_policies_total", source="yaml")
    (policy_dir / "broken.yaml").write_text("kind: [")
    assert eventually(lambda: metric("meshca_policy_invalid_policies_total", source="yaml") == before + 1)
    assert refs(policies) == {"istio-system/default", "shop/web"}


def test_yaml_source_lists_its_invalid_files_with_their_namespaces(
    yaml_source: tuple[YamlPolicySource, PolicySet], policy_dir: Path
) -> None:
    source, _ = yaml_source
    assert source.invalid_policies() == ()
    (policy_dir / "broken.yaml").write_text("kind: [")
    (policy_dir / "typo.yaml").write_text(manifest("shop", "db", "STRCT"))
    assert eventually(lambda: len(source.invalid_policies()) == 2)
    broken, typo = source.invalid_policies()
    assert str(policy_dir / "broken.yaml") in broken.error and broken.namespaces is None
    assert "'STRCT' is not a mode" in typo.error and typo.namespaces == frozenset({"shop"})
    (policy_dir / "typo.yaml").write_text(manifest("shop", "db", "STRICT"))
    (policy_dir / "broken.yaml").unlink()
    assert eventually(lambda: source.invalid_policies() == ())


def test_yaml_duplicate_name_last_file_wins(policy_dir: Path) -> None:
    (policy_dir / "zz-override.yaml").write_text(manifest("shop", "web", "PERMISSIVE", selector="web"))
    loaded = load_policies_once(str(policy_dir))
    web = next(p for p in loaded.policies if p.ref == PolicyRef("shop", "web"))
    assert web.mode is MtlsMode.PERMISSIVE


def test_yaml_invalid_file_at_start_is_an_error(policy_dir: Path) -> None:
    (policy_dir / "typo.yaml").write_text(manifest("shop", "db", "STRCT"))
    source = YamlPolicySource(policy_dir, PolicySet())
    with pytest.raises(PolicyError, match=r"typo.yaml: .*shop/db: spec.mtls.mode 'STRCT'"):
        source.start()
    assert not source.synced


def test_yaml_single_file(tmp_path: Path) -> None:
    file = tmp_path / "one.yaml"
    file.write_text(manifest("shop", "default", "STRICT"))
    policies = PolicySet()
    source = open_policy_source(str(file), policy_set=policies)
    source.start()
    try:
        decider = WorkloadPolicy(policies, WEB)
        assert decider.decide(1).mode is MtlsMode.STRICT
        file.write_text(manifest("shop", "default", "DISABLE"))
        assert eventually(lambda: decider.decide(1).mode is MtlsMode.DISABLE)
    finally:
        source.stop()


def test_yaml_missing_path_is_a_config_error(tmp_path: Path) -> None:
    source = open_policy_source(str(tmp_path / "nope"), policy_set=PolicySet())
    with pytest.raises(ConfigError, match=r"cannot read policies from .*nope"):
        source.start()


def test_yaml_directory_removed_keeps_policies(
    yaml_source: tuple[YamlPolicySource, PolicySet], policy_dir: Path
) -> None:
    source, policies = yaml_source
    moved = policy_dir.with_name("moved")
    policy_dir.rename(moved)
    source.poll()
    assert refs(policies) == {"istio-system/default", "shop/web"}


def test_yaml_shared_scheduler_job_is_removed_on_stop(policy_dir: Path) -> None:
    from apscheduler.schedulers.background import BackgroundScheduler

    scheduler = BackgroundScheduler(timezone="UTC")
    scheduler.start()
    try:
        source = open_policy_source(str(policy_dir), policy_set=PolicySet(), scheduler=scheduler)
        source.start()
        assert len(scheduler.get_jobs()) == 1
        source.stop()
        assert scheduler.get_jobs() == []
        assert scheduler.running
    finally:
        scheduler.shutdown(wait=False)


def test_load_once_reports_invalid_files(policy_dir: Path) -> None:
    (policy_dir / "bad.yaml").write_text(manifest("shop", "x", "NOPE"))
    loaded = load_policies_once(str(policy_dir))
    assert {str(p.ref) for p in loaded.policies} == {"istio-system/default", "shop/web"}
    (invalid,) = loaded.invalid
    assert "bad.yaml" in invalid.error and invalid.namespaces == frozenset({"shop"})


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
    _, policies = kube_source
    decider = WorkloadPolicy(policies, WEB)
    apiserver.apply_peer_authentication("shop", "default", {"mtls": {"mode": "PERMISSIVE"}})
    assert eventually(lambda: mode_of(policies, "shop/default") is MtlsMode.PERMISSIVE)
    apiserver.apply_peer_authentication(
        "shop", "web", {"selector": {"matchLabels": {"app": "web"}}, "mtls": {"mode": "STRICT"}}
    )
    assert eventually(lambda: decider.decide(80).mode is MtlsMode.STRICT)
    apiserver.delete_peer_authentication("shop", "web")
    assert eventually(lambda: decider.decide(80).level == "namespace")
    assert decider.decide(80).mode is MtlsMode.PERMISSIVE
    time.sleep(0.3)  # both versions' DELETED events have arrived; nothing brings it back
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
        time.sleep(0.5)
        assert refs(policies) == {"shop/default"}  # the last known policies stay
        assert source.synced
        # The reason in words, not urllib3's reprs of its pools and connections.
        assert eventually(lambda: "Connection refused" in watch_failures(caplog))
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
