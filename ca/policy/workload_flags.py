"""The flags that name a workload and where its PeerAuthentication comes from.

Shared by `meshca policy explain`, `meshca policy envoy-config` and `meshca enforce`,
so the three read --namespace, --labels, --policies, --kubeconfig and
--root-namespace alike.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ca.common.flags import EnvDefaults, env_name, split_list
from ca.errors import ConfigError
from ca.policy.model import DEFAULT_ROOT_NAMESPACE

_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_LABEL_PREFIX = r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?"
_LABEL_KEY = re.compile(rf"({_LABEL_PREFIX}/)?{_LABEL_NAME}")
_LABEL_VALUE = re.compile(rf"({_LABEL_NAME})?")


def add_workload_flags(
    e: EnvDefaults,
    environ: Mapping[str, str],
    *,
    namespace_help: str = "the workload's namespace",
    namespace_required: bool = False,
) -> None:
    """Add the workload flags, and `in_cluster` (running in a pod) for `--policies kube`.

    `namespace_required` has argparse insist on --namespace unless its environment variable is set;
    otherwise the command checks for it itself.
    """
    e.parser.set_defaults(in_cluster=bool(environ.get("KUBERNETES_SERVICE_HOST")))
    required = namespace_required and environ.get(env_name("--namespace")) is None
    e.add("--namespace", None, namespace_help, required=required)
    e.add("--labels", "", "the workload's labels, k=v,k=v (workload selectors match them)")
    e.add(
        "--policies",
        None,
        "PeerAuthentication source: a directory or file of manifests, or `kube` "
        "(the cluster of --kubeconfig, or the service account in a pod)",
    )
    e.add("--kubeconfig", None, "kubeconfig for --policies kube (in a pod the service account is used)")
    e.add("--root-namespace", DEFAULT_ROOT_NAMESPACE, "the mesh's root namespace (mesh-wide policies)")


def parse_labels(text: str) -> dict[str, str]:
    """`app=web,version=v1` -> labels, checked against Kubernetes label syntax."""
    labels: dict[str, str] = {}
    for item in split_list([text]):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(value):
            raise ConfigError(
                f"--labels item {item!r} is not a Kubernetes label key=value; write e.g. app=web,version=v1"
            )
        if key in labels:
            raise ConfigError(f"--labels gives {key!r} twice; give each label once")
        labels[key] = value
    return labels


def label_text(labels: Mapping[str, str]) -> str:
    """Labels -> `app=web,version=v1` (sorted), the `--labels` syntax; empty for no labels."""
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
