"""`meshca policy explain`: the effective PeerAuthentication mode of a workload, and why.

For each requested port, plus "other ports" (the workload-level mode), it
prints the mode, the level that decided it and the policy; then every policy
that applies to the workload by scope, which one won and why the others did
not. `--output json` gives the same for scripts.

A manifest that could apply (in the workload's namespace or the root
namespace, or one whose namespace cannot even be read) and fails validation
makes the mode unknown: the command names it and exits 2 instead of resolving
without it. Invalid manifests in other namespaces are skipped with a warning.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ca.common import logs
from ca.common.flags import EnvDefaults, split_list
from ca.errors import ConfigError
from ca.policy.manifest import NO_CREATION_TIME
from ca.policy.model import DEFAULT_ROOT_NAMESPACE, Decision, MtlsMode, PeerAuthentication, Workload
from ca.policy.resolve import SCOPES, Candidates, resolve_workload
from ca.policy.source import load_policies_once, refuse_invalid_in_scope
from ca.policy.workload_flags import add_workload_flags, label_text, parse_labels

COMMAND = "explain"


def add_parser(
    actions: argparse._SubParsersAction[argparse.ArgumentParser], environ: Mapping[str, str]
) -> None:
    parser = actions.add_parser(
        COMMAND,
        help="show the effective mTLS mode of a workload's ports and the policy that decided it",
        description="Resolve PeerAuthentication as Istio does (mesh -> namespace -> workload -> "
        "port) for one workload and show, per port, the mode, the level that decided it and the "
        "policy, followed by every policy considered at each level.",
    )
    e = EnvDefaults(parser, environ)
    add_workload_flags(e, environ, namespace_help="the workload's namespace (required)")
    e.add("--port", None, "a workload port to explain; repeatable or a comma list", action="append")
    e.add("--output", "table", "table for people, json for scripts", choices=["table", "json"])


@dataclass(frozen=True)
class ExplainRequest:
    workload: Workload
    ports: tuple[int, ...]
    policies: str
    kubeconfig: Path | None
    in_cluster: bool
    root_namespace: str
    output: str


def request_from_args(args: argparse.Namespace) -> ExplainRequest:
    if not args.namespace:
        raise ConfigError("give --namespace: the namespace of the workload to explain")
    if not args.policies:
        raise ConfigError("give --policies: a directory or file of PeerAuthentication manifests, or `kube`")
    port_values = args.port if args.port is not None else split_list([args.port_env or ""])
    return ExplainRequest(
        workload=Workload(args.namespace, parse_labels(args.labels)),
        ports=parse_ports(port_values),
        policies=args.policies,
        kubeconfig=Path(args.kubeconfig) if args.kubeconfig else None,
        in_cluster=bool(args.in_cluster),
        root_namespace=args.root_namespace,
        output=args.output,
    )


def parse_ports(values: Sequence[str] | None) -> tuple[int, ...]:
    ports: list[int] = []
    for text in split_list(values or []):
        if not text.isdigit() or not 1 <= int(text) <= 65535:
            raise ConfigError(f"--port {text!r} is not a port; give a whole number from 1 to 65535")
        if int(text) not in ports:
            ports.append(int(text))
    return tuple(ports)


def run(args: argparse.Namespace) -> int:
    # A one-shot command reports its outcome itself; library retries are not news here.
    logs.configure("error")
    request = request_from_args(args)
    try:
        loaded = load_policies_once(
            request.policies, kubeconfig=request.kubeconfig, in_cluster=request.in_cluster
        )
    except ConfigError as err:
        if request.policies == "kube":
            raise ConfigError(f"{err.message}; or give --policies DIR for manifests on disk") from err
        raise
    # A policy that could apply but failed validation leaves the mode unknown: say so, never a guess.
    refuse_invalid_in_scope(loaded.invalid, request.workload, root_namespace=request.root_namespace)
    for note in loaded.notes:
        print(f"meshca: warning: {note}", file=sys.stderr)
    for invalid in loaded.invalid:
        print(f"meshca: warning: skipped (cannot apply here): {invalid.error}", file=sys.stderr)
    explanation = explain(
        loaded.policies, request.workload, request.ports, root_namespace=request.root_namespace
    )
    text = (
        render_json(explanation) if request.output == "json" else render_table(explanation, request.policies)
    )
    print(text)
    return 0


# The explanation itself: pure.


@dataclass(frozen=True)
class Explanation:
    workload: Workload
    root_namespace: str
    decisions: tuple[Decision, ...]  # the requested ports, then port None ("other ports")
    candidates: Candidates


def explain(
    policies: Iterable[PeerAuthentication],
    workload: Workload,
    ports: Sequence[int],
    *,
    root_namespace: str = DEFAULT_ROOT_NAMESPACE,
) -> Explanation:
    resolution = resolve_workload(policies, workload, root_namespace=root_namespace)
    decisions = (*(resolution.decision_for(port) for port in ports), resolution.workload)
    return Explanation(workload, root_namespace, decisions, resolution.candidates)


def _verdict(scope: str, index: int, policies: Sequence[PeerAuthentication]) -> tuple[str, str]:
    """A short result for the table and the reason behind it."""
    if scope == "ignored":
        return "ignored", "a selector policy in the root namespace never applies"
    winner = policies[0]
    if index == 0:
        if winner.mode is MtlsMode.UNSET:
            return "inherits", "wins its scope but is UNSET: the level above decides"
        return "applies", "wins its scope"
    loser = policies[index]
    if loser.created != winner.created:
        why = "it is older"
    elif loser.ref.name != winner.ref.name:
        why = "same age, its name sorts first"
    else:
        why = "same age and name, its namespace sorts first"
    return "shadowed", f"{winner.ref} wins this scope ({why})"


@dataclass(frozen=True)
class _Considered:
    scope: str
    policy: PeerAuthentication
    result: str
    reason: str


def _considered(candidates: Candidates) -> list[_Considered]:
    rows = []
    for scope in (*SCOPES, "ignored"):
        policies: tuple[PeerAuthentication, ...] = getattr(candidates, scope)
        for index, policy in enumerate(policies):
            rows.append(_Considered(scope, policy, *_verdict(scope, index, policies)))
    return rows


def _created(policy: PeerAuthentication) -> str:
    if policy.created == NO_CREATION_TIME:
        return "-"
    return policy.created.strftime("%Y-%m-%dT%H:%M:%SZ")


def _port_modes(policy: PeerAuthentication) -> str:
    return ",".join(f"{port}={mode.value}" for port, mode in sorted(policy.port_modes.items())) or "-"


def _labels(labels: Mapping[str, str]) -> str:
    return label_text(labels) or "(none)"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]


def render_table(explanation: Explanation, source: str = "") -> str:
    workload = explanation.workload
    lines = [
        f"workload: namespace {workload.namespace}, labels {_labels(workload.labels)}",
        f"root namespace: {explanation.root_namespace}" + (f"; policies from {source}" if source else ""),
        "",
    ]
    decision_rows = [
        [
            "other" if d.port is None else str(d.port),
            d.mode.value,
            d.level,
            str(d.decided_by) if d.decided_by else "(no policy: PERMISSIVE)",
        ]
        for d in explanation.decisions
    ]
    lines += _table(["PORT", "MODE", "LEVEL", "DECIDED BY"], decision_rows)
    lines += ["", "policies considered (within a scope the oldest wins, then name, then namespace):"]
    considered = _considered(explanation.candidates)
    if not considered:
        lines.append("  none: no PeerAuthentication applies to this workload")
    else:
        rows = [
            [
                c.scope,
                str(c.policy.ref),
                _created(c.policy),
                c.policy.mode.value,
                _port_modes(c.policy),
                c.result,
            ]
            for c in considered
        ]
        lines += _table(["SCOPE", "POLICY", "CREATED", "MODE", "PORTS", "RESULT"], rows)
        lines += [f"  {c.policy.ref}: {c.reason}" for c in considered if c.result in ("shadowed", "ignored")]
    return "\n".join(lines)


def render_json(explanation: Explanation) -> str:
    document: dict[str, Any] = {
        "workload": {
            "namespace": explanation.workload.namespace,
            "labels": dict(explanation.workload.labels),
        },
        "root_namespace": explanation.root_namespace,
        "decisions": [
            {
                "port": d.port,
                "mode": d.mode.value,
                "level": d.level,
                "decided_by": str(d.decided_by) if d.decided_by else None,
            }
            for d in explanation.decisions
        ],
        "considered": [
            {
                "scope": c.scope,
                "policy": str(c.policy.ref),
                "created": None if c.policy.created == NO_CREATION_TIME else _created(c.policy),
                "mode": c.policy.mode.value,
                "selector": dict(c.policy.selector) if c.policy.selector is not None else None,
                "port_modes": {str(port): mode.value for port, mode in sorted(c.policy.port_modes.items())},
                "result": c.result,
                "reason": c.reason,
            }
            for c in _considered(explanation.candidates)
        ],
    }
    return json.dumps(document, indent=2)
