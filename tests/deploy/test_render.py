"""Every overlay renders with `kubectl kustomize` into what the issue asks of it, and what it sets
matches what meshca reads: MESHCA_* variables that are flags of the container's command, the
health endpoint on the metrics port, RBAC names that are the code's names."""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ca.cli.main import build_parser
from ca.common.flags import env_name
from ca.kube.client import LEDGER_HEAD_CONFIGMAP, LEDGER_KEY_SECRET
from ca.kube.root_configmap import CONFIGMAP_NAME
from ca.kube.webhook_config import DEFAULT_CONFIGURATION
from ca.server.settings import DEFAULT_LEADER_LEASE
from tests.deploy.install import DEPLOY, OVERLAYS, REPO, Manifest, ca_container, find, overlay, render


def rendered() -> dict[str, list[Manifest]]:
    return {name: render(overlay(name)) for name in OVERLAYS}


def pod_spec(manifests: list[Manifest]) -> dict[str, Any]:
    spec: dict[str, Any] = find(manifests, "Deployment", "meshca")["spec"]["template"]["spec"]
    return spec


def env_of(container: Manifest) -> dict[str, Any]:
    return {e["name"]: e for e in container.get("env") or ()}


def examples() -> list[Manifest]:
    return [
        doc
        for path in sorted((DEPLOY / "examples").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
    ]


def containers(manifests: list[Manifest]) -> Iterator[Manifest]:
    for m in manifests:
        spec = (m.get("spec") or {}).get("template", {}).get("spec")
        if spec:
            yield from spec.get("initContainers") or ()
            yield from spec["containers"]


def subcommand(name: str) -> argparse.ArgumentParser:
    parser = build_parser({})
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found: argparse.ArgumentParser = action.choices[name]
    return found


def test_single_one_replica_with_its_sqlite_ledger_on_a_claim() -> None:
    manifests = render(overlay("single"))
    deployment = find(manifests, "Deployment", "meshca")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"  # one writer of the SQLite file
    volumes = {v["name"]: v for v in pod_spec(manifests)["volumes"]}
    claim = volumes["state"]["persistentVolumeClaim"]["claimName"]
    assert set(volumes["state"]) == {"name", "persistentVolumeClaim"}
    assert find(manifests, "PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteOnce"]
    container = ca_container(manifests)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    state_dir = container["args"][container["args"].index("--state-dir") + 1]
    assert mounts["state"] == state_dir
    assert "MESHCA_LEDGER" not in env_of(container)  # auto: SQLite in the state directory


def test_ha_three_replicas_postgresql_from_a_secret_pdb_and_anti_affinity() -> None:
    manifests = render(overlay("ha"))
    deployment = find(manifests, "Deployment", "meshca")
    assert deployment["spec"]["replicas"] == 3
    ledger = env_of(ca_container(manifests))["MESHCA_LEDGER"]
    assert ledger["valueFrom"]["secretKeyRef"] == {"name": "meshca-ledger", "key": "url"}
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    budget = find(manifests, "PodDisruptionBudget", "meshca")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"]["maxUnavailable"] == 1
    terms = pod_spec(manifests)["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert terms[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert terms[0]["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("name", OVERLAYS)
def test_restricted_non_root_read_only_with_resources_and_probes(name: str) -> None:
    manifests = render(overlay(name))
    pod = pod_spec(manifests)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = ca_container(manifests)
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert "memory" in container["resources"]["limits"]
    # The probes ask the status endpoint on the port `serve` gives it (--metrics-listen :15014).
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    metrics_default = subcommand("serve").get_default("metrics_listen")
    assert ports["http-metrics"] == int(metrics_default.rpartition(":")[2])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz/ready", "port": "http-metrics"}, probe
    # Only volumes are written: the state directory and /tmp.
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/var/lib/meshca", "/tmp"}
    # The Service exposes the CA's ports by name.
    service = find(manifests, "Service", "meshca")
    assert {p["port"]: p["targetPort"] for p in service["spec"]["ports"]} == {
        15012: "grpc-ca",
        15013: "grpc-renew",
        15014: "http-metrics",
        443: "https-webhook",
    }
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "grpc-ca": 15012,
        "grpc-renew": 15013,
        "http-metrics": 15014,
        "https-webhook": 15017,
    }
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert container["image"] == f"meshca:{version}"


def test_every_meshca_variable_in_deploy_is_a_flag_of_its_command() -> None:
    seen = 0
    for manifests in [*rendered().values(), examples()]:
        for container in containers(manifests):
            if not container["image"].startswith("meshca:"):
                continue
            command = subcommand(container["args"][0])
            flags = {env_name(o) for a in command._actions for o in a.option_strings if o.startswith("--")}
            for name in env_of(container):
                assert name in flags, (
                    f"{container['name']}: {name} is no flag of meshca {container['args'][0]}"
                )
                seen += 1
            # The command line and the values given parse (a Secret's value stands in as a URL).
            environ = {
                k: str(v.get("value", "postgresql://meshca@db/meshca")) for k, v in env_of(container).items()
            }
            build_parser(environ).parse_args(container["args"])
    assert seen >= 10


def test_the_rbac_names_are_the_codes() -> None:
    manifests = render(overlay("single"))
    role = find(manifests, "Role", "meshca")
    named = {name for rule in role["rules"] for name in rule.get("resourceNames", ())}
    serve = subcommand("serve")
    assert named == {
        serve.get_default("ca_secret"),
        LEDGER_KEY_SECRET,
        LEDGER_HEAD_CONFIGMAP,
        DEFAULT_LEADER_LEASE,
    }
    assert serve.get_default("ca_namespace") == role["metadata"]["namespace"]
    cluster = find(manifests, "ClusterRole", "meshca")
    assert {n for rule in cluster["rules"] for n in rule.get("resourceNames", ())} == {
        CONFIGMAP_NAME,
        serve.get_default("webhook_configuration"),
    }
    # No rule grants everything, and nothing is deleted.
    for rules in (role["rules"], cluster["rules"]):
        for rule in rules:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
            assert "delete" not in rule["verbs"], rule


def test_the_example_takes_its_root_from_the_configmap_meshca_publishes() -> None:
    config_maps = [
        v["configMap"]["name"]
        for m in examples()
        for v in ((m.get("spec") or {}).get("template", {}).get("spec", {}).get("volumes") or ())
        if "configMap" in v
    ]
    assert config_maps == [CONFIGMAP_NAME]


def test_nothing_in_deploy_is_left_outside_an_overlay_or_the_examples() -> None:
    loose = sorted(p.relative_to(DEPLOY).as_posix() for p in DEPLOY.glob("*.yaml"))
    assert loose == [], "apply these through deploy/overlays or move them to deploy/examples"
    assert not Path(DEPLOY / "meshca.yaml").exists()


def test_the_injection_webhook_calls_the_port_meshca_serves_it_on() -> None:
    manifests = render(overlay("single"))
    configuration = find(manifests, "MutatingWebhookConfiguration", DEFAULT_CONFIGURATION)
    [webhook] = configuration["webhooks"]
    service = find(manifests, "Service", "meshca")
    target = {p["port"]: p["targetPort"] for p in service["spec"]["ports"]}[
        webhook["clientConfig"]["service"]["port"]
    ]
    container = ca_container(manifests)
    port = {p["name"]: p["containerPort"] for p in container["ports"]}[target]
    environment = {e["name"]: e.get("value") for e in container["env"]}
    assert environment[env_name("--webhook-listen")] == f":{port}"
    assert webhook["clientConfig"]["service"]["path"] == "/inject"
    assert webhook["failurePolicy"] == "Fail" and webhook["sideEffects"] == "None"
    assert webhook["admissionReviewVersions"] == ["v1"]
    # The name the API server dials is in the webhook's certificate by default.
    dialled = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"
    assert subcommand("serve").get_default("webhook_dns_names") == dialled
    assert environment[env_name("--inject-image")] == container["image"]
