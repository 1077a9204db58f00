"""What sidecar injection adds to a pod: one frozen value, with defaults that match meshca's own flags.

The paths and ports here are the agent's and the enforcer's own defaults where those fit a pod
(the token file, the Workload API socket, the enforcer's metrics port), and a fixed place
otherwise (the certificate directory, the root ConfigMap's mount). `tests/inject/test_settings.py`
parses the injected command lines with meshca's real parser, so a renamed flag fails a test.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ca.common.flags import EnvDefaults, Subcommands, whole_number
from ca.errors import ConfigError
from ca.issuance.spiffe_id import trust_domain_flag

# Names injection gives to what it adds; a pod's own containers and volumes must not use them.
AGENT_INIT = "meshca-agent-init"
AGENT = "meshca-agent"
ENFORCE = "meshca-enforce"
CERTS_VOLUME = "meshca-certs"
ROOT_VOLUME = "meshca-ca-root"
TOKEN_VOLUME = "meshca-token"
SOCKETS_VOLUME = "meshca-sockets"
INJECTED_CONTAINERS = (AGENT_INIT, AGENT, ENFORCE)
INJECTED_VOLUMES = (CERTS_VOLUME, ROOT_VOLUME, TOKEN_VOLUME, SOCKETS_VOLUME)

# Where things are in the injected containers.
CERTS_DIR = "/var/run/meshca/certs"  # cert-chain.pem, key.pem, root-cert.pem (the agent's output layout)
ROOT_DIR = "/var/run/meshca/root"  # the trust bundle ConfigMap
TOKEN_DIR = "/var/run/secrets/tokens"  # the agent's --token-file default is TOKEN_DIR/TOKEN_FILE
TOKEN_FILE = "istio-token"
SOCKETS_DIR = "/var/run/secrets/meshca"  # the agent's --workload-api-socket default lives here
WORKLOAD_API_SOCKET = f"{SOCKETS_DIR}/workload-api.sock"
ROOT_CONFIGMAP = "istio-ca-root-cert"  # published by the CA in every namespace (ca.kube.root_configmap)
ROOT_CERT_KEY = "root-cert.pem"
AGENT_HEALTH_PORT = 15021  # the agent's --health-listen default port
ENFORCE_METRICS_PORT = 15020  # the enforcer's --metrics-listen default port
ENFORCE_LISTEN_BASE = 15006  # the first listen port given to an enforced application port

# Pods that already carry Istio's sidecar.
ISTIO_PROXY = "istio-proxy"
ISTIO_STATUS_ANNOTATION = "sidecar.istio.io/status"

DEFAULT_CPU = "10m"
DEFAULT_RESOURCES: Mapping[str, Mapping[str, str]] = {
    "requests": {"cpu": DEFAULT_CPU, "memory": "64Mi"},
    "limits": {"memory": "256Mi"},
}


@dataclass(frozen=True, kw_only=True)
class InjectSettings:
    image: str = "meshca:latest"
    image_pull_policy: str | None = None  # None: the cluster's default for the image's tag
    ca_address: str = "meshca.istio-system.svc:15012"  # deploy/'s Service; the agent finds :15013 itself
    ca_server_name: str | None = None
    cluster_id: str | None = None
    trust_domain: str = "cluster.local"
    root_configmap: str = ROOT_CONFIGMAP
    token_audience: str = "istio-ca"
    token_expiration_seconds: int = 3600
    agent_args: tuple[str, ...] = ()  # more `meshca agent` flags, e.g. ("--ttl", "12h")
    enforce_args: tuple[str, ...] = ()  # more `meshca enforce` flags
    policies: str = "kube"  # the enforcer's --policies
    resources: Mapping[str, Mapping[str, str]] = field(default_factory=lambda: DEFAULT_RESOURCES)
    run_as_user: int | None = None  # None: the image's own (non-root) user
    enforce_annotation: str = "meshca.io/enforce-ports"
    opt_out_annotation: str = "meshca.io/inject"  # "false" leaves the pod alone

    def resources_dict(self) -> dict[str, Any]:
        return {kind: dict(values) for kind, values in self.resources.items()}


def _resources(requests_cpu: str, requests_memory: str, limits_memory: str) -> dict[str, dict[str, str]]:
    requests = {k: v for k, v in (("cpu", requests_cpu), ("memory", requests_memory)) if v}
    limits = {"memory": limits_memory} if limits_memory else {}
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def add_inject_parser(commands: Subcommands, environ: Mapping[str, str]) -> None:
    parser = commands.add_parser(
        "inject",
        help="add the meshca agent (and enforcer) to workload manifests",
        description=(
            "Read Kubernetes manifests and write them to stdout with meshca's sidecars added to every "
            "pod template: the agent as an init container (--once: the certificate is on disk before "
            "the app starts) and as a sidecar that keeps it rotated, a projected service-account token, "
            "an in-memory volume for the certificates mounted read-only in every app container, and "
            "`meshca enforce` in front of the ports named in the pod's enforce annotation. Injecting "
            "twice changes nothing; pods with Istio's sidecar, or with the opt-out annotation set to "
            "false, are left alone."
        ),
    )
    defaults = InjectSettings()
    e = EnvDefaults(parser, environ)
    parser.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        help="a manifest file, a directory of *.yaml/*.yml/*.json files, or - for stdin; repeatable",
    )
    e.add("--image", defaults.image, "the meshca image for the injected containers")
    e.add(
        "--image-pull-policy",
        None,
        "imagePullPolicy of the injected containers (Always, IfNotPresent, Never)",
    )
    e.add("--ca-addr", defaults.ca_address, "the CA address the agent calls")
    e.add("--ca-server-name", None, "TLS server name the agent expects from the CA")
    e.add("--cluster-id", None, "cluster id the agent sends to the CA")
    e.add("--trust-domain", defaults.trust_domain, "trust domain of the workloads")
    e.add("--root-configmap", defaults.root_configmap, "ConfigMap holding root-cert.pem, in each namespace")
    e.add("--token-audience", defaults.token_audience, "audience of the projected service-account token")
    e.add(
        "--token-expiration-seconds",
        str(defaults.token_expiration_seconds),
        "lifetime of the projected token (the kubelet refreshes it; at least 600)",
    )
    e.add(
        "--agent-arg",
        None,
        "one more `meshca agent` flag (e.g. --agent-arg=--ttl=12h); repeatable",
        action="append",
    )
    e.add("--enforce-arg", None, "one more `meshca enforce` flag; repeatable", action="append")
    e.add("--policies", defaults.policies, "the enforcer's PeerAuthentication source")
    # No default of its own: "10m" would read as ten minutes to the check that every flag with a
    # duration default is a duration flag. Unset, it is DEFAULT_RESOURCES' request.
    e.add(
        "--requests-cpu", None, f"CPU request of each injected container (unset: {DEFAULT_CPU}; '' for none)"
    )
    e.add("--requests-memory", "64Mi", "memory request of each injected container ('' for none)")
    e.add("--limits-memory", "256Mi", "memory limit of each injected container ('' for none)")
    e.add("--run-as-user", None, "UID of the injected containers (default: the image's user)")
    e.add("--enforce-annotation", defaults.enforce_annotation, "pod annotation listing the ports to enforce")
    e.add(
        "--opt-out-annotation", defaults.opt_out_annotation, "pod annotation that, set to false, skips a pod"
    )


def inject_settings(args: argparse.Namespace) -> InjectSettings:
    pull = args.image_pull_policy or None
    if pull not in (None, "Always", "IfNotPresent", "Never"):
        raise ConfigError(f"--image-pull-policy {pull!r} is not Always, IfNotPresent or Never")
    expiration = whole_number(
        args.token_expiration_seconds,
        "--token-expiration-seconds",
        minimum=600,
        hint="; the API server refuses projected tokens shorter than 10 minutes",
    )
    user = None
    if args.run_as_user not in (None, ""):
        user = whole_number(args.run_as_user, "--run-as-user", minimum=1, hint="; give a non-root UID")
    return InjectSettings(
        image=args.image,
        image_pull_policy=pull,
        ca_address=args.ca_addr,
        ca_server_name=args.ca_server_name or None,
        cluster_id=args.cluster_id or None,
        trust_domain=trust_domain_flag(args.trust_domain),
        root_configmap=args.root_configmap,
        token_audience=args.token_audience,
        token_expiration_seconds=expiration,
        agent_args=tuple(_texts(args.agent_arg, getattr(args, "agent_arg_env", None))),
        enforce_args=tuple(_texts(args.enforce_arg, getattr(args, "enforce_arg_env", None))),
        policies=args.policies,
        resources=_resources(
            DEFAULT_CPU if args.requests_cpu is None else args.requests_cpu,
            args.requests_memory,
            args.limits_memory,
        ),
        run_as_user=user,
        enforce_annotation=args.enforce_annotation,
        opt_out_annotation=args.opt_out_annotation,
    )


def _texts(values: list[str] | None, env_value: str | None) -> list[str]:
    if values:
        return list(values)
    return env_value.split() if env_value else []
