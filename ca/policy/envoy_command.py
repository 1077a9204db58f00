"""`meshca policy envoy-config`: Envoy configuration that enforces a workload's PeerAuthentication.

Renders the bootstrap once (to `--bootstrap`, standard output by default).
With `--lds-file` the listeners go to that file, which the bootstrap names as
Envoy's LDS source; with `--watch` the command keeps following the policy
source and replaces the file (by an atomic rename, the only change Envoy
notices) whenever a port's decision changes, so a new mode reaches new
connections without restarting Envoy. `--cert-dir` replaces SDS from the
agent's socket with file-based SDS on the agent's output directory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ca.common import logs
from ca.common.flags import EnvDefaults
from ca.errors import ConfigError
from ca.issuance.spiffe_id import trust_domain_flag
from ca.policy.envoy_config import (
    FileSecrets,
    InboundWorkload,
    SdsSecrets,
    Secrets,
    render_bootstrap,
    render_file_secrets,
    render_lds,
    render_listeners,
)
from ca.policy.model import Decision, Workload
from ca.policy.policy_set import PolicySet
from ca.policy.ports import check_proxy_protocol_ports, parse_inbound, parse_port_list
from ca.policy.source import WorkloadPolicy, open_policy_source, refuse_invalid_in_scope
from ca.policy.workload_flags import add_workload_flags, parse_labels

log = logging.getLogger(__name__)

COMMAND = "envoy-config"
FORMATS = ["auto", "yaml", "json"]
ON_OFF = ["on", "off"]


@dataclass(frozen=True, kw_only=True)
class EnvoyConfigSettings:
    workload: Workload
    inbound: InboundWorkload
    policies: str
    kubeconfig: Path | None
    in_cluster: bool
    root_namespace: str
    admin_port: int
    bootstrap: Path | None  # None: standard output
    bootstrap_format: str  # yaml or json
    lds_file: Path | None
    watch: bool
    log_level: str


def add_parser(
    actions: argparse._SubParsersAction[argparse.ArgumentParser], environ: Mapping[str, str]
) -> None:
    parser = actions.add_parser(
        COMMAND,
        help="render Envoy config that enforces a workload's PeerAuthentication",
        description="Render an Envoy bootstrap whose inbound listeners enforce the workload's "
        "PeerAuthentication (STRICT, PERMISSIVE, DISABLE per port), with certificates over SDS "
        "from `meshca agent`.",
    )
    e = EnvDefaults(parser, environ)
    add_workload_flags(e, environ, namespace_required=True)
    e.add(
        "--inbound",
        None,
        "LISTEN_PORT:APP_PORT[/http|/tcp]; repeatable or a comma list (default protocol tcp)",
        action="append",
    )
    e.add("--listen-host", "0.0.0.0", "address the inbound listeners bind")
    e.add("--app-host", "127.0.0.1", "address of the application")
    e.add("--trust-domain", "cluster.local", "SPIFFE trust domain peers must belong to")
    e.add(
        "--sds-socket",
        "/var/run/secrets/workload-spiffe-uds/socket",
        "the agent's SDS Unix socket (secrets `default` and `ROOTCA`)",
    )
    e.add(
        "--cert-dir",
        None,
        "instead of SDS from the agent: the agent's output directory, read through file-based SDS "
        "(needs --lds-file; the secret files are written next to it)",
    )
    e.add("--proxy-protocol", "", "application TCP ports that get a PROXY protocol v2 header; comma list")
    e.add("--admin-port", "15000", "Envoy admin port on 127.0.0.1 (0: any free port)")
    e.add("--node-id", None, "Envoy node id (default meshca-inbound~<namespace>)")
    e.add("--bootstrap", "-", "where the Envoy bootstrap goes; - for standard output")
    e.add(
        "--format",
        "auto",
        "bootstrap format; auto: json for a .json --bootstrap file, else yaml",
        choices=FORMATS,
    )
    e.add("--lds-file", None, "write the listeners here (.yaml or .json) and have Envoy watch it")
    e.add(
        "--watch",
        "off",
        "keep running and update --lds-file when the policies change",
        nargs="?",
        const="on",
        choices=ON_OFF,
    )
    e.add("--log-level", "info", "log level", choices=["debug", "info", "warning", "error"])


# --------------------------------------------------------------------------- settings


def _admin_port(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,5}", text.strip()) or int(text) > 65535:
        raise ConfigError(f"--admin-port must be a port number 0-65535, not {text!r}")
    return int(text)


def _bootstrap_format(choice: str, bootstrap: Path | None) -> str:
    if choice != "auto":
        return choice
    return "json" if bootstrap is not None and bootstrap.suffix == ".json" else "yaml"


def _lds_file(text: str | None) -> Path | None:
    if text is None:
        return None
    path = Path(text)
    if path.suffix not in (".yaml", ".yml", ".json"):
        raise ConfigError(
            f"--lds-file {text!r} must end in .yaml, .yml or .json: Envoy picks the parser by extension"
        )
    return path.absolute()


def _secrets(args: argparse.Namespace, lds_file: Path | None) -> Secrets:
    if args.cert_dir is None:
        return SdsSecrets(socket=Path(args.sds_socket).absolute())
    if lds_file is None:
        raise ConfigError("--cert-dir needs --lds-file: the secret files Envoy reads are written next to it")
    return FileSecrets(cert_dir=Path(args.cert_dir).absolute(), secrets_dir=lds_file.parent)


def settings_from_args(args: argparse.Namespace) -> EnvoyConfigSettings:
    inbound_texts = args.inbound or ([args.inbound_env] if args.inbound_env else [])
    if not inbound_texts:
        raise ConfigError(
            "give at least one --inbound LISTEN_PORT:APP_PORT[/http|/tcp], e.g. 15006:8080/http"
        )
    if args.policies is None:
        raise ConfigError("give --policies: a directory or file of PeerAuthentication manifests, or `kube`")
    inbound = tuple(parse_inbound(inbound_texts))
    proxy_ports = parse_port_list(args.proxy_protocol, "--proxy-protocol")
    check_proxy_protocol_ports(proxy_ports, inbound)
    lds_file = _lds_file(args.lds_file)
    watch = args.watch == "on"
    if watch and lds_file is None:
        raise ConfigError("--watch needs --lds-file: Envoy picks up policy changes from that file")
    bootstrap = None if args.bootstrap == "-" else Path(args.bootstrap)
    workload = Workload(namespace=args.namespace, labels=parse_labels(args.labels))
    return EnvoyConfigSettings(
        workload=workload,
        inbound=InboundWorkload(
            node_id=args.node_id or f"meshca-inbound~{args.namespace}",
            cluster=args.namespace,
            inbound=inbound,
            listen_host=args.listen_host,
            app_host=args.app_host,
            trust_domain=trust_domain_flag(args.trust_domain),
            secrets=_secrets(args, lds_file),
            proxy_protocol_ports=proxy_ports,
        ),
        policies=args.policies,
        kubeconfig=Path(args.kubeconfig) if args.kubeconfig else None,
        in_cluster=bool(getattr(args, "in_cluster", False)),
        root_namespace=args.root_namespace,
        admin_port=_admin_port(args.admin_port),
        bootstrap=bootstrap,
        bootstrap_format=_bootstrap_format(args.format, bootstrap),
        lds_file=lds_file,
        watch=watch,
        log_level=args.log_level,
    )


# --------------------------------------------------------------------------- files


def dump(document: Mapping[str, Any], document_format: str) -> str:
    if document_format == "json":
        return json.dumps(document, indent=2) + "\n"
    return yaml.safe_dump(dict(document), sort_keys=False, default_flow_style=False)


def _format_for(path: Path) -> str:
    return "json" if path.suffix == ".json" else "yaml"


def write_atomically(path: Path, text: str) -> None:
    """Write to a temporary file in the same directory, then rename it over `path`.

    Envoy notices a path config source change only when the file is moved into
    place, and a rename also means it never reads a half-written file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


# --------------------------------------------------------------------------- the listener file


class ListenerFile:
    """Keeps `--lds-file` equal to the listeners for the current decisions."""

    def __init__(self, settings: EnvoyConfigSettings, policy: WorkloadPolicy, path: Path) -> None:
        self._settings = settings
        self._policy = policy
        self._path = path
        self._lock = threading.Lock()
        self._written: dict[int, Decision] | None = None

    def decisions(self) -> dict[int, Decision]:
        return {port: self._policy.decide(port) for port in self._settings.inbound.app_ports}

    def update(self) -> bool:
        """Re-render and replace the file if any port's decision changed; True if it wrote."""
        with self._lock:
            decisions = self.decisions()
            if decisions == self._written:
                return False
            listeners = render_listeners(self._settings.inbound, decisions)
            write_atomically(self._path, dump(render_lds(listeners), _format_for(self._path)))
            self._written = decisions
        log.info(
            "envoy listeners written",
            extra={
                "lds_file": str(self._path),
                "modes": {str(port): d.mode.value for port, d in sorted(decisions.items())},
                "decided_by": {
                    str(port): str(d.decided_by or d.level) for port, d in sorted(decisions.items())
                },
            },
        )
        return True

    def update_quietly(self) -> None:
        """`update` for a subscriber callback: a failure is logged, the last file stays."""
        try:
            self.update()
        except Exception:
            log.exception("cannot update the envoy listener file; the previous one stays in effect")


# --------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    logs.configure(settings.log_level)
    policy_set = PolicySet()
    source = open_policy_source(
        settings.policies,
        policy_set=policy_set,
        kubeconfig=settings.kubeconfig,
        in_cluster=settings.in_cluster,
    )
    source.start()
    try:
        # Rendering without a policy that could apply would guess the mode: refuse, as enforce does.
        refuse_invalid_in_scope(
            source.invalid_policies(), settings.workload, root_namespace=settings.root_namespace
        )
        return _render(settings, policy_set)
    finally:
        source.stop()


def _render(settings: EnvoyConfigSettings, policy_set: PolicySet) -> int:
    policy = WorkloadPolicy(policy_set, settings.workload, root_namespace=settings.root_namespace)
    workload = settings.inbound
    if isinstance(workload.secrets, FileSecrets):
        for path, secret in render_file_secrets(workload.secrets).items():
            write_atomically(path, dump(secret, _format_for(path)))
    if settings.lds_file is None:
        decisions = {port: policy.decide(port) for port in workload.app_ports}
        bootstrap = render_bootstrap(
            workload, admin_port=settings.admin_port, listeners=render_listeners(workload, decisions)
        )
        _write_bootstrap(settings, bootstrap)
        return 0
    listener_file = ListenerFile(settings, policy, settings.lds_file)
    listener_file.update()  # the file must exist before Envoy reads the bootstrap
    _write_bootstrap(
        settings, render_bootstrap(workload, admin_port=settings.admin_port, lds_path=settings.lds_file)
    )
    if not settings.watch:
        return 0
    unsubscribe = policy_set.subscribe(listener_file.update_quietly)
    try:
        listener_file.update()  # a change between the first render and subscribing
        _wait_for_signal()
    finally:
        unsubscribe()
    return 0


def _write_bootstrap(settings: EnvoyConfigSettings, bootstrap: Mapping[str, Any]) -> None:
    text = dump(bootstrap, settings.bootstrap_format)
    if settings.bootstrap is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        write_atomically(settings.bootstrap, text)


def _wait_for_signal() -> None:
    from ca.common.signals import until_signalled

    stopped = threading.Event()

    def wait() -> None:
        stopped.wait()

    log.info("watching the policies for changes")
    until_signalled(stopped.set, wait)
