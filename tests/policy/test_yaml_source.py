"""PeerAuthentication policies from a YAML file or directory, followed as it changes."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ca.errors import ConfigError, PolicyError
from ca.policy.model import MtlsMode, PolicyRef, Workload
from ca.policy.policy_set import PolicySet
from ca.policy.source import WorkloadPolicy, load_policies_once, open_policy_source
from ca.policy.yaml_source import YamlPolicySource
from tests.support.policies import WEB, eventually, manifest, metric, refs


@pytest.fixture
def yaml_source(policy_dir: Path) -> Iterator[tuple[YamlPolicySource, PolicySet]]:
    policies = PolicySet()
    source = YamlPolicySource(policy_dir, policies)
    source.start()
    yield source, policies
    source.stop()


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
