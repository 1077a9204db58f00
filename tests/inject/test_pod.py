"""Injection into one pod: what is added, where, and that a second injection adds nothing."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ca.errors import ConfigError
from ca.inject import settings as names
from ca.inject.pod import inject_pod, uninject
from ca.inject.settings import InjectSettings

ENFORCE = "meshca.io/enforce-ports"


def _pod(**spec: Any) -> dict[str, Any]:
    annotations = spec.pop("annotations", None)
    metadata: dict[str, Any] = {"name": "web", "namespace": "shop", "labels": {"app": "web"}}
    if annotations:
        metadata["annotations"] = annotations
    body = {"containers": [{"name": "app", "image": "example.com/web:1", "ports": [{"containerPort": 8080}]}]}
    body.update(spec)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": body}


def _by_name(containers: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in containers}


def test_a_pod_gets_the_init_agent_first_and_the_rotating_agent_after_the_app() -> None:
    pod = _pod(initContainers=[{"name": "migrate", "image": "example.com/migrate:1"}])
    before = copy.deepcopy(pod)
    result = inject_pod(pod)
    assert pod == before  # the input is not changed
    assert result.changed and result.warnings == []
    spec = result.pod["spec"]
    assert [c["name"] for c in spec["initContainers"]] == [names.AGENT_INIT, "migrate"]
    assert [c["name"] for c in spec["containers"]] == ["app", names.AGENT]
    init, agent = spec["initContainers"][0], spec["containers"][1]
    assert init["args"][:1] == ["agent"] and "--once" in init["args"]
    assert init["args"][init["args"].index("--once") + 1] == "on"
    assert "--once" not in agent["args"]
    assert agent["readinessProbe"]["httpGet"]["port"] == names.AGENT_HEALTH_PORT
    for container in (init, agent):
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["resources"] == {
            "requests": {"cpu": "10m", "memory": "64Mi"},
            "limits": {"memory": "256Mi"},
        }


def test_the_token_is_projected_for_istio_ca_for_one_hour_and_the_certificates_live_in_memory() -> None:
    volumes = _by_name(inject_pod(_pod()).pod["spec"]["volumes"])
    token = volumes[names.TOKEN_VOLUME]["projected"]["sources"][0]["serviceAccountToken"]
    assert token == {"audience": "istio-ca", "expirationSeconds": 3600, "path": "istio-token"}
    assert volumes[names.CERTS_VOLUME] == {"name": names.CERTS_VOLUME, "emptyDir": {"medium": "Memory"}}
    assert volumes[names.ROOT_VOLUME]["configMap"] == {"name": "istio-ca-root-cert"}


def test_every_app_container_mounts_the_certificates_read_only_and_only_the_agent_writes_them() -> None:
    pod = _pod()
    pod["spec"]["containers"].append(
        {
            "name": "worker",
            "image": "example.com/worker:1",
            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        }
    )
    pod["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
    spec = inject_pod(pod).pod["spec"]
    containers = _by_name(spec["containers"])
    for app in ("app", "worker"):
        mounts = {m["mountPath"]: m for m in containers[app]["volumeMounts"]}
        assert mounts[names.CERTS_DIR] == {
            "name": names.CERTS_VOLUME,
            "mountPath": names.CERTS_DIR,
            "readOnly": True,
        }
        assert mounts[names.SOCKETS_DIR]["readOnly"] is True
    assert containers["worker"]["volumeMounts"][0] == {"name": "data", "mountPath": "/data"}
    agent_mounts = {m["mountPath"]: m for m in containers[names.AGENT]["volumeMounts"]}
    assert "readOnly" not in agent_mounts[names.CERTS_DIR]
    assert agent_mounts[names.TOKEN_DIR]["readOnly"] is True
    assert spec["volumes"][0]["name"] == "data"


def test_injecting_twice_changes_nothing() -> None:
    once = inject_pod(_pod(annotations={ENFORCE: "8080"}))
    twice = inject_pod(once.pod)
    assert twice.pod == once.pod
    assert not twice.changed


def test_injecting_again_with_other_settings_updates_the_sidecars() -> None:
    once = inject_pod(_pod())
    again = inject_pod(once.pod, InjectSettings(image="meshca:2"))
    assert again.changed
    images = {
        c["name"]: c["image"] for c in again.pod["spec"]["containers"] + again.pod["spec"]["initContainers"]
    }
    assert images == {"app": "example.com/web:1", names.AGENT: "meshca:2", names.AGENT_INIT: "meshca:2"}


@pytest.mark.parametrize(
    "pod",
    [
        _pod(containers=[{"name": "app", "image": "a"}, {"name": "istio-proxy", "image": "proxyv2"}]),
        _pod(initContainers=[{"name": "istio-proxy", "image": "proxyv2", "restartPolicy": "Always"}]),
        _pod(annotations={"sidecar.istio.io/status": '{"containers":["istio-proxy"]}'}),
    ],
)
def test_a_pod_with_istios_sidecar_is_left_alone_with_a_warning(pod: dict[str, Any]) -> None:
    result = inject_pod(pod, where="Pod shop/web")
    assert result.pod == pod and not result.changed
    assert len(result.warnings) == 1
    assert "Pod shop/web" in result.warnings[0] and "Istio" in result.warnings[0]


@pytest.mark.parametrize("value", ["false", "False", "no", "off"])
def test_the_opt_out_annotation_leaves_the_pod_alone(value: str) -> None:
    pod = _pod(annotations={"meshca.io/inject": value})
    result = inject_pod(pod)
    assert result.pod == pod and not result.changed and result.warnings == []


def test_a_custom_opt_out_annotation_is_the_one_read() -> None:
    custom = InjectSettings(opt_out_annotation="example.com/mesh")
    assert not inject_pod(_pod(annotations={"example.com/mesh": "false"}), custom).changed
    assert inject_pod(_pod(annotations={"meshca.io/inject": "false"}), custom).changed
    assert inject_pod(_pod(annotations={"meshca.io/inject": "true"})).changed


def test_enforced_ports_get_free_listen_ports_from_15006_up() -> None:
    pod = _pod(annotations={ENFORCE: "8080/http, 9090"})
    pod["spec"]["containers"][0]["ports"].append({"containerPort": 15006})
    result = inject_pod(pod, where="Pod shop/web")
    enforcer = _by_name(result.pod["spec"]["containers"])[names.ENFORCE]
    args = enforcer["args"]
    assert args[args.index("--inbound") + 1] == "15007:8080/http,15008:9090/tcp"
    assert args[args.index("--labels") + 1] == "app=web"
    assert [(p["name"], p["containerPort"]) for p in enforcer["ports"]] == [
        ("meshca-8080", 15007),
        ("meshca-9090", 15008),
        ("meshca-metrics", names.ENFORCE_METRICS_PORT),
    ]
    assert enforcer["env"][0]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert {m["readOnly"] for m in enforcer["volumeMounts"]} == {True}
    assert any("15007" in w and "targetPort" in w for w in result.warnings)


def test_an_app_port_named_in_the_annotation_is_never_a_listen_port() -> None:
    result = inject_pod(_pod(annotations={ENFORCE: "15006,15007/http"}))
    args = _by_name(result.pod["spec"]["containers"])[names.ENFORCE]["args"]
    assert args[args.index("--inbound") + 1] == "15008:15006/tcp,15009:15007/http"


def test_a_written_listen_port_is_kept_and_not_given_twice() -> None:
    result = inject_pod(_pod(annotations={ENFORCE: "9090,15006:8080/http"}))
    args = _by_name(result.pod["spec"]["containers"])[names.ENFORCE]["args"]
    assert args[args.index("--inbound") + 1] == "15007:9090/tcp,15006:8080/http"


def test_without_the_annotation_there_is_no_enforcer() -> None:
    assert names.ENFORCE not in _by_name(inject_pod(_pod()).pod["spec"]["containers"])


@pytest.mark.parametrize("value", ["http", "8080/udp", "70000", "15006:8080,15006:9090"])
def test_an_enforce_annotation_that_is_not_ports_is_an_error_naming_the_pod(value: str) -> None:
    with pytest.raises(ConfigError, match=r"Deployment shop/web: annotation meshca.io/enforce-ports=.*write"):
        inject_pod(_pod(annotations={ENFORCE: value}), where="Deployment shop/web")


@pytest.mark.parametrize("policy", ["Never", "OnFailure"])
def test_a_pod_that_runs_to_completion_gets_only_the_init_agent(policy: str) -> None:
    result = inject_pod(_pod(restartPolicy=policy, annotations={ENFORCE: "8080"}))
    spec = result.pod["spec"]
    assert [c["name"] for c in spec["containers"]] == ["app"]
    assert [c["name"] for c in spec["initContainers"]] == [names.AGENT_INIT]
    assert names.SOCKETS_VOLUME not in _by_name(spec["volumes"])
    assert any("runs to completion" in w for w in result.warnings)


def test_an_app_port_the_sidecars_use_is_a_warning() -> None:
    pod = _pod()
    pod["spec"]["containers"][0]["ports"] = [{"containerPort": 15021}]
    assert any("15021" in w for w in inject_pod(pod).warnings)


def test_a_pod_without_containers_is_left_alone_with_a_warning() -> None:
    result = inject_pod({"metadata": {"name": "x"}})
    assert not result.changed and "no pod spec" in result.warnings[0]


# --- Property: inject(inject(x)) == inject(x), and the app's containers keep all they had. ---

_names = st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True).filter(
    lambda n: n not in names.INJECTED_CONTAINERS and n != names.ISTIO_PROXY
)
_ports = st.lists(st.integers(1, 65535), max_size=3, unique=True)


@st.composite
def _containers(draw: st.DrawFn, *, min_size: int) -> list[dict[str, Any]]:
    result = []
    for name in draw(st.lists(_names, min_size=min_size, max_size=3, unique=True)):
        container: dict[str, Any] = {"name": name, "image": draw(st.sampled_from(["a:1", "b@sha256:00"]))}
        ports = draw(_ports)
        if ports:
            container["ports"] = [{"containerPort": p} for p in ports]
        if draw(st.booleans()):
            container["volumeMounts"] = [
                {"name": "data", "mountPath": "/data", "readOnly": draw(st.booleans())}
            ]
        if draw(st.booleans()):
            container["env"] = [{"name": "X", "value": draw(st.text(max_size=5))}]
        result.append(container)
    return result


@st.composite
def pods(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": draw(_containers(min_size=1))}
    init = draw(_containers(min_size=0))
    if init or draw(st.booleans()):
        spec["initContainers"] = init
    if draw(st.booleans()):
        spec["volumes"] = [{"name": "data", "emptyDir": {}}]
    restart = draw(st.sampled_from([None, "Always", "Never", "OnFailure"]))
    if restart is not None:
        spec["restartPolicy"] = restart
    metadata: dict[str, Any] = {}
    labels = draw(st.dictionaries(_names, _names, max_size=2))
    if labels:
        metadata["labels"] = labels
    app_ports = draw(st.lists(st.integers(1, 65535), max_size=3, unique=True))
    if app_ports:
        metadata["annotations"] = {
            ENFORCE: ",".join(f"{p}/{draw(st.sampled_from(['http', 'tcp']))}" for p in app_ports)
        }
    return {"metadata": metadata, "spec": spec}


def _without_injected_mounts(container: dict[str, Any]) -> dict[str, Any]:
    out = dict(container)
    mounts = [m for m in out.get("volumeMounts", []) if m["name"] not in names.INJECTED_VOLUMES]
    if mounts:
        out["volumeMounts"] = mounts
    else:
        out.pop("volumeMounts", None)
    return out


@settings(max_examples=300, deadline=None)
@given(pods())
def test_injection_is_idempotent_and_leaves_the_apps_otherwise_untouched(pod: dict[str, Any]) -> None:
    before = copy.deepcopy(pod)
    once = inject_pod(pod)
    twice = inject_pod(once.pod)
    assert twice.pod == once.pod
    assert not twice.changed
    assert once.changed
    apps = [c for c in once.pod["spec"]["containers"] if c["name"] not in names.INJECTED_CONTAINERS]
    assert [_without_injected_mounts(c) for c in apps] == pod["spec"]["containers"]
    other_init = [c for c in once.pod["spec"]["initContainers"] if c["name"] != names.AGENT_INIT]
    assert other_init == pod["spec"].get("initContainers", [])
    assert uninject(once.pod)["metadata"] == pod["metadata"]
    taken = {p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    written = {
        int(item.split("/")[0])
        for item in pod["metadata"].get("annotations", {}).get(ENFORCE, "").split(",")
        if item
    }
    for enforcer in (c for c in once.pod["spec"]["containers"] if c["name"] == names.ENFORCE):
        listen = {p["containerPort"] for p in enforcer["ports"] if p["name"] != "meshca-metrics"}
        assert not listen & (taken | written)  # never a port the app may listen on
    assert pod == before  # the input is not changed
