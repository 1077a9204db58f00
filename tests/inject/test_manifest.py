"""Injection into each workload kind's pod template; other kinds pass through."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from ca.errors import ConfigError
from ca.inject import settings as names
from ca.inject.manifest import inject_manifest
from ca.inject.pod import inject_pod


def _template(restart: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": "example.com/app:1"}]}
    if restart:
        spec["restartPolicy"] = restart
    return {"metadata": {"labels": {"app": "web"}}, "spec": spec}


def _workload(kind: str, api: str, template: dict[str, Any]) -> dict[str, Any]:
    spec = {"selector": {"matchLabels": {"app": "web"}}, "template": template}
    return {"apiVersion": api, "kind": kind, "metadata": {"name": "web", "namespace": "shop"}, "spec": spec}


def _cronjob() -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": _template("OnFailure")}}},
    }


CASES = {
    "Deployment": (_workload("Deployment", "apps/v1", _template()), ("spec", "template")),
    "StatefulSet": (_workload("StatefulSet", "apps/v1", _template()), ("spec", "template")),
    "DaemonSet": (_workload("DaemonSet", "apps/v1", _template()), ("spec", "template")),
    "ReplicaSet": (_workload("ReplicaSet", "apps/v1", _template()), ("spec", "template")),
    "Job": (_workload("Job", "batch/v1", _template("Never")), ("spec", "template")),
    "CronJob": (_cronjob(), ("spec", "jobTemplate", "spec", "template")),
    "Pod": ({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"}, **_template()}, ()),
}


def _at(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        obj = obj[key]
    return obj


@pytest.mark.parametrize("kind", sorted(CASES))
def test_each_kinds_pod_template_is_injected_and_nothing_else_changes(kind: str) -> None:
    obj, path = CASES[kind]
    before = copy.deepcopy(obj)
    result = inject_manifest(obj)
    assert obj == before
    assert result.changed
    assert _at(result.obj, path) == inject_pod(_at(obj, path), where=f"{kind} ...").pod
    rest_before, rest_after = copy.deepcopy(obj), copy.deepcopy(result.obj)
    if path:
        _at(rest_before, path[:-1])[path[-1]] = None
        _at(rest_after, path[:-1])[path[-1]] = None
        assert rest_after == rest_before
    init = [c["name"] for c in _at(result.obj, path)["spec"]["initContainers"]]
    assert init == [names.AGENT_INIT]
    assert not inject_manifest(result.obj).changed


@pytest.mark.parametrize("kind", ["Job", "CronJob"])
def test_jobs_get_only_the_init_agent_so_they_can_end(kind: str) -> None:
    obj, path = CASES[kind]
    containers = _at(inject_manifest(obj).obj, path)["spec"]["containers"]
    assert [c["name"] for c in containers] == ["app"]


def test_a_list_is_injected_item_by_item() -> None:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"ports": [{"port": 80}]},
    }
    istio = _workload("Deployment", "apps/v1", _template())
    istio["metadata"]["name"] = "old"
    istio["spec"]["template"]["metadata"]["annotations"] = {"sidecar.istio.io/status": "{}"}
    items = [CASES["Deployment"][0], service, istio]
    result = inject_manifest({"apiVersion": "v1", "kind": "List", "items": items})
    assert result.changed
    assert result.obj["items"][0] == inject_manifest(items[0]).obj
    assert result.obj["items"][1:] == items[1:]
    assert len(result.warnings) == 1 and "Deployment shop/old" in result.warnings[0]


@pytest.mark.parametrize(
    "obj",
    [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "b"}},
        {"apiVersion": "example.com/v1", "kind": "Widget", "spec": {"template": _template()}},
        {"no": "kind"},
        "a string document",
        42,
    ],
)
def test_other_kinds_pass_through_untouched(obj: Any) -> None:
    result = inject_manifest(obj)
    assert result.obj == obj and not result.changed and result.warnings == []


def test_a_workload_without_a_template_is_left_alone_with_a_warning() -> None:
    result = inject_manifest(
        {"kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"}, "spec": {}}
    )
    assert not result.changed
    assert result.warnings == ["Deployment shop/web: no pod template; left alone"]


def test_an_invalid_enforce_annotation_names_the_workload() -> None:
    obj = copy.deepcopy(CASES["StatefulSet"][0])
    obj["spec"]["template"]["metadata"]["annotations"] = {"meshca.io/enforce-ports": "web"}
    with pytest.raises(
        ConfigError, match=re.escape("StatefulSet shop/web: annotation meshca.io/enforce-ports='web'")
    ):
        inject_manifest(obj)
