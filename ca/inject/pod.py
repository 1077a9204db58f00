"""Sidecar injection into one pod (pure): a Pod manifest, or a pod template (metadata + spec).

What a pod gets:
- `meshca-agent-init`, the first init container: `meshca agent --once on`, so the certificate is
  on disk before any app container starts;
- `meshca-agent`, appended to the containers: the same agent left running, which keeps the
  certificate rotated and serves the SPIFFE Workload API. It is a regular container, not a
  native sidecar (an init container with `restartPolicy: Always`): that field exists from
  Kubernetes 1.28 on, and the API server the tests run against (and clusters still in use)
  are older. Appended, not prepended, so that the pod's first container stays the app's (the
  one `kubectl logs`/`exec` pick by default);
- a projected service-account token (audience istio-ca, one hour) for the agent, the trust
  bundle ConfigMap for the agent's TLS to the CA, and an in-memory emptyDir for the
  certificates, mounted read-only in every app container at /var/run/meshca/certs, with a
  second emptyDir for the Workload API socket (read-only in the apps: connecting to a socket
  needs no write access to its file system);
- for the ports the enforce annotation lists (`meshca.io/enforce-ports: "8080/http,9090"`),
  `meshca-enforce` listening in front of them (15006 upward, or LISTEN:APP as written).

A pod that runs to completion (restartPolicy Never or OnFailure: every Job's) gets only the
init container: a container left running would keep the pod, and its Job, from ever ending.

Injection first removes whatever an earlier injection added (the names in ca.inject.settings
are reserved), then adds it anew: injecting twice gives what injecting once gave, and
re-injecting with other settings updates the pod. Pods that carry Istio's sidecar, and pods
whose opt-out annotation is "false", are returned unchanged.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ca.errors import ConfigError
from ca.inject import settings as names
from ca.inject.settings import InjectSettings
from ca.policy.ports import InboundPort, parse_inbound
from ca.policy.workload_flags import label_text

OPT_OUT_VALUES = frozenset({"false", "no", "off", "disabled"})
RUN_TO_COMPLETION = frozenset({"Never", "OnFailure"})
ENFORCE_SYNTAX = (
    'APP_PORT[/http|/tcp] or LISTEN_PORT:APP_PORT[/http|/tcp], comma-separated, e.g. "8080/http,9090"'
)


@dataclass(frozen=True, kw_only=True)
class Injection:
    pod: dict[str, Any]  # a new dict; the input is never changed
    changed: bool
    warnings: list[str] = field(default_factory=list)


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Any]:
    return list(value) if isinstance(value, list) else []


def _names(containers: object) -> list[str]:
    return [str(c.get("name")) for c in _list(containers) if isinstance(c, Mapping)]


def istio_sidecar(pod: Mapping[str, Any]) -> str | None:
    """Why the pod counts as carrying Istio's sidecar, or None."""
    spec = _mapping(pod.get("spec"))
    if names.ISTIO_PROXY in _names(spec.get("containers")) + _names(spec.get("initContainers")):
        return f"it has a container {names.ISTIO_PROXY}"
    if names.ISTIO_STATUS_ANNOTATION in _mapping(_mapping(pod.get("metadata")).get("annotations")):
        return f"it has the annotation {names.ISTIO_STATUS_ANNOTATION}"
    return None


def opted_out(pod: Mapping[str, Any], settings: InjectSettings) -> bool:
    annotations = _mapping(_mapping(pod.get("metadata")).get("annotations"))
    value = annotations.get(settings.opt_out_annotation)
    return isinstance(value, str) and value.strip().lower() in OPT_OUT_VALUES


def uninject(pod: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the pod without anything injection adds (by its reserved names)."""
    out = copy.deepcopy(dict(pod))
    spec = out.get("spec")
    if not isinstance(spec, dict):
        return out
    injected_containers = set(names.INJECTED_CONTAINERS)
    injected_volumes = set(names.INJECTED_VOLUMES)
    for key in ("initContainers", "containers"):
        if isinstance(spec.get(key), list):
            spec[key] = [
                c for c in spec[key] if not (isinstance(c, Mapping) and c.get("name") in injected_containers)
            ]
            for container in spec[key]:
                if isinstance(container, dict) and isinstance(container.get("volumeMounts"), list):
                    container["volumeMounts"] = [
                        m
                        for m in container["volumeMounts"]
                        if not (isinstance(m, Mapping) and m.get("name") in injected_volumes)
                    ]
    if isinstance(spec.get("volumes"), list):
        spec["volumes"] = [
            v for v in spec["volumes"] if not (isinstance(v, Mapping) and v.get("name") in injected_volumes)
        ]
    return out


def _container_ports(containers: Sequence[Any]) -> set[int]:
    ports: set[int] = set()
    for container in containers:
        for port in _list(_mapping(container).get("ports")):
            number = _mapping(port).get("containerPort")
            if isinstance(number, int):
                ports.add(number)
    return ports


def enforce_ports(text: str, taken: set[int], *, where: str, annotation: str) -> list[InboundPort]:
    """The enforce annotation's ports, each given a listen port: the one written, else the first
    free one from 15006 up that no container of the pod declares and the annotation does not name."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        return []
    written_ports = {p.strip() for i in items for p in i.partition("/")[0].split(":")}
    used = taken | {int(p) for p in written_ports if p.isdigit()}  # listen and app ports written
    used |= {names.AGENT_HEALTH_PORT, names.ENFORCE_METRICS_PORT}
    written: list[str] = []
    candidate = names.ENFORCE_LISTEN_BASE
    for item in items:
        if ":" not in item:
            while candidate in used:
                candidate += 1
            used.add(candidate)
            item = f"{candidate}:{item}"
        written.append(item)
    try:
        return parse_inbound(written)
    except ConfigError as err:
        problem = err.message.split(";")[0]
        raise ConfigError(
            f"{where}: annotation {annotation}={text!r} is not a list of ports ({problem}); "
            f"write {ENFORCE_SYNTAX}"
        ) from err


def _security_context(settings: InjectSettings) -> dict[str, Any]:
    context: dict[str, Any] = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
    }
    if settings.run_as_user is not None:
        context["runAsUser"] = settings.run_as_user
    return context


def _container(
    name: str, args: list[str], settings: InjectSettings, mounts: list[dict[str, Any]]
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": name, "image": settings.image, "args": args}
    if settings.image_pull_policy is not None:
        container["imagePullPolicy"] = settings.image_pull_policy
    if settings.resources:
        container["resources"] = settings.resources_dict()
    container["securityContext"] = _security_context(settings)
    container["volumeMounts"] = mounts
    return container


def _mount(volume: str, path: str, *, read_only: bool) -> dict[str, Any]:
    mount: dict[str, Any] = {"name": volume, "mountPath": path}
    if read_only:
        mount["readOnly"] = True
    return mount


def agent_args(settings: InjectSettings, *, once: bool) -> list[str]:
    args = [
        "agent",
        "--ca-addr",
        settings.ca_address,
        "--ca-root",
        f"{names.ROOT_DIR}/{names.ROOT_CERT_KEY}",
        "--token-file",
        f"{names.TOKEN_DIR}/{names.TOKEN_FILE}",
        "--output-dir",
        names.CERTS_DIR,
        "--trust-domain",
        settings.trust_domain,
        "--sds-socket",
        "off",  # SDS serves an Envoy; a meshca-injected pod has none
    ]
    if settings.ca_server_name:
        args += ["--ca-server-name", settings.ca_server_name]
    if settings.cluster_id:
        args += ["--cluster-id", settings.cluster_id]
    if once:
        args += ["--once", "on", "--workload-api-socket", "off", "--health-listen", "off"]
    else:
        args += [
            "--workload-api-socket",
            names.WORKLOAD_API_SOCKET,
            "--health-listen",
            f":{names.AGENT_HEALTH_PORT}",
        ]
    return args + list(settings.agent_args)


def _agent(settings: InjectSettings, *, once: bool) -> dict[str, Any]:
    mounts = [
        _mount(names.CERTS_VOLUME, names.CERTS_DIR, read_only=False),
        _mount(names.ROOT_VOLUME, names.ROOT_DIR, read_only=True),
        _mount(names.TOKEN_VOLUME, names.TOKEN_DIR, read_only=True),
    ]
    if not once:
        mounts.append(_mount(names.SOCKETS_VOLUME, names.SOCKETS_DIR, read_only=False))
    name = names.AGENT_INIT if once else names.AGENT
    container = _container(name, agent_args(settings, once=once), settings, mounts)
    if not once:
        # Named so that a PodMonitor can scrape the agent's /metrics, served on the same port.
        container["ports"] = [
            {"name": "meshca-agent", "containerPort": names.AGENT_HEALTH_PORT, "protocol": "TCP"}
        ]
        container["readinessProbe"] = {
            "httpGet": {"path": "/healthz/ready", "port": names.AGENT_HEALTH_PORT},
            "periodSeconds": 5,
        }
    return container


def enforce_args(
    settings: InjectSettings, ports: Sequence[InboundPort], labels: Mapping[str, Any]
) -> list[str]:
    inbound = ",".join(f"{p.listen_port}:{p.app_port}/{p.protocol}" for p in ports)
    args = [
        "enforce",
        "--inbound",
        inbound,
        "--cert-dir",
        names.CERTS_DIR,
        "--trust-domain",
        settings.trust_domain,
        "--policies",
        settings.policies,
    ]
    text = label_text({str(k): str(v) for k, v in labels.items()})
    if text:
        args += ["--labels", text]
    return args + list(settings.enforce_args)


def _enforcer(
    settings: InjectSettings, ports: Sequence[InboundPort], labels: Mapping[str, Any]
) -> dict[str, Any]:
    container = _container(
        names.ENFORCE,
        enforce_args(settings, ports, labels),
        settings,
        [_mount(names.CERTS_VOLUME, names.CERTS_DIR, read_only=True)],
    )
    container["env"] = [
        {"name": "MESHCA_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}
    ]
    container["ports"] = [
        {"name": f"meshca-{p.app_port}", "containerPort": p.listen_port, "protocol": "TCP"} for p in ports
    ] + [{"name": "meshca-metrics", "containerPort": names.ENFORCE_METRICS_PORT, "protocol": "TCP"}]
    container["readinessProbe"] = {
        "httpGet": {"path": "/healthz/ready", "port": names.ENFORCE_METRICS_PORT},
        "periodSeconds": 5,
    }
    return container


def _volumes(settings: InjectSettings, *, sidecars: bool) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {"name": names.CERTS_VOLUME, "emptyDir": {"medium": "Memory"}},
        {"name": names.ROOT_VOLUME, "configMap": {"name": settings.root_configmap}},
        {
            "name": names.TOKEN_VOLUME,
            "projected": {
                "sources": [
                    {
                        "serviceAccountToken": {
                            "audience": settings.token_audience,
                            "expirationSeconds": settings.token_expiration_seconds,
                            "path": names.TOKEN_FILE,
                        }
                    }
                ]
            },
        },
    ]
    if sidecars:
        volumes.append({"name": names.SOCKETS_VOLUME, "emptyDir": {"medium": "Memory"}})
    return volumes


def inject_pod(
    pod: Mapping[str, Any], settings: InjectSettings | None = None, *, where: str = "pod"
) -> Injection:
    """`pod` with meshca's sidecars (see the module's description). `where` names the object in
    warnings and errors (e.g. "Deployment shop/web"). Raises ConfigError for an enforce
    annotation that is not a list of ports."""
    settings = settings or InjectSettings()
    original = copy.deepcopy(dict(pod))
    spec = original.get("spec")
    if not isinstance(spec, Mapping) or not isinstance(spec.get("containers"), list):
        return Injection(
            pod=original, changed=False, warnings=[f"{where}: no pod spec with containers; left alone"]
        )
    if opted_out(original, settings):
        return Injection(pod=original, changed=False)
    istio = istio_sidecar(original)
    if istio is not None:
        return Injection(
            pod=original,
            changed=False,
            warnings=[
                f"{where}: left alone because {istio} (Istio's sidecar); to move it to meshca, remove "
                'Istio\'s injection first (annotation sidecar.istio.io/inject: "false") and inject again'
            ],
        )
    out = uninject(original)
    metadata = _mapping(out.get("metadata"))
    spec_out: dict[str, Any] = out["spec"]
    apps = [c for c in spec_out["containers"] if isinstance(c, dict)]
    warnings: list[str] = []
    annotations = _mapping(metadata.get("annotations"))
    enforce_text = annotations.get(settings.enforce_annotation)
    ports: list[InboundPort] = []
    if enforce_text is not None:
        ports = enforce_ports(
            str(enforce_text), _container_ports(apps), where=where, annotation=settings.enforce_annotation
        )
    completes = spec_out.get("restartPolicy") in RUN_TO_COMPLETION
    clash = _container_ports(apps) & {names.AGENT_HEALTH_PORT, names.ENFORCE_METRICS_PORT}
    if clash and not completes:
        warnings.append(
            f"{where}: an app container uses port {min(clash)}, which meshca's sidecars listen on; "
            "move the app to another port"
        )
    if completes and ports:
        warnings.append(
            f"{where}: runs to completion (restartPolicy {spec_out['restartPolicy']}), so no enforcer is "
            f"added for {settings.enforce_annotation}: it would keep the pod from ever ending"
        )
    if completes:
        ports = []

    for container in apps:
        mounts = container.get("volumeMounts")
        container["volumeMounts"] = [
            *(mounts if isinstance(mounts, list) else []),
            _mount(names.CERTS_VOLUME, names.CERTS_DIR, read_only=True),
            *([] if completes else [_mount(names.SOCKETS_VOLUME, names.SOCKETS_DIR, read_only=True)]),
        ]
    spec_out["initContainers"] = [_agent(settings, once=True), *_list(spec_out.get("initContainers"))]
    if not completes:
        spec_out["containers"].append(_agent(settings, once=False))
    if ports:
        spec_out["containers"].append(_enforcer(settings, ports, _mapping(metadata.get("labels"))))
        mapping = ", ".join(f"{p.app_port} -> {p.listen_port}" for p in ports)
        warnings.append(
            f"{where}: meshca enforce listens in front of app ports ({mapping}); point Services' "
            "targetPort at the enforcer's port, and have the app listen on 127.0.0.1 only, or callers "
            "can reach it around the enforcer"
        )
        if spec_out.get("automountServiceAccountToken") is False and settings.policies == "kube":
            warnings.append(
                f"{where}: automountServiceAccountToken is false, so the enforcer cannot read "
                "PeerAuthentication from the cluster; allow it, or give the enforcer --policies from files"
            )
    spec_out["volumes"] = [*_list(spec_out.get("volumes")), *_volumes(settings, sidecars=not completes)]
    return Injection(pod=out, changed=out != original, warnings=warnings)
