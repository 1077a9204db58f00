"""What `meshca up` runs (pure): the demo workloads, where each file lives, and every command line.

The workloads call each other web -> api -> db and web -> db, each through its own enforcer: the
app calls a plaintext port of its enforcer on 127.0.0.1 (`--outbound`), which originates mutual
TLS with the workload's certificate to the callee's enforcer (`--inbound`), which applies the
callee's PeerAuthentication and hands the request to the callee's app. `legacy` has no agent and
no enforcer: it calls web's enforcer in plaintext, a peer without a certificate.

Every port is chosen by the process that listens on it (port 0) and read from its ports file, so
an enforcer can start only once the enforcers it calls are listening: the calls form no cycle and
the enforcers start callees first (`start_order`).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from ca.common.durations import format_duration
from ca.errors import UnavailableError
from ca.sandbox.view_model import Guide

NAMESPACE = "demo"
TRUST_DOMAIN = "cluster.local"
LOOPBACK = "127.0.0.1"
ROTATION_RATIO = 0.5  # the agents renew at half of the remaining lifetime, without jitter
TOKEN_TTL = timedelta(days=7)  # the agents re-read their token for every request
POLICY_FILE = "demo.yaml"


@dataclass(frozen=True, kw_only=True)
class DemoWorkload:
    name: str  # also its service account and its `app` label
    calls: tuple[str, ...] = ()  # the workloads it calls, in this order
    meshed: bool = True  # False: no agent, no enforcer, no certificate; it calls in plaintext

    @property
    def spiffe_id(self) -> str:
        return f"spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{self.name}"

    @property
    def labels(self) -> str:
        return f"app={self.name}"


DEMO_WORKLOADS = (
    DemoWorkload(name="web", calls=("api", "db")),
    DemoWorkload(name="api", calls=("db",)),
    DemoWorkload(name="db"),
    DemoWorkload(name="legacy", calls=("web",), meshed=False),
)


def meshed(workloads: Sequence[DemoWorkload]) -> tuple[DemoWorkload, ...]:
    return tuple(w for w in workloads if w.meshed)


def start_order(workloads: Sequence[DemoWorkload]) -> tuple[DemoWorkload, ...]:
    """The meshed workloads, each after every meshed workload it calls. ValueError on a cycle of
    calls (no enforcer of it could learn the port of the next one) or a call to no workload."""
    by_name = {w.name: w for w in workloads}
    unknown = sorted({c for w in workloads for c in w.calls if c not in by_name})
    if unknown:
        raise ValueError(f"calls to workloads that are not in the plan: {', '.join(unknown)}")
    order: list[DemoWorkload] = []
    placed: set[str] = set()
    pending = list(meshed(workloads))
    while pending:
        ready = [w for w in pending if all(c in placed or not by_name[c].meshed for c in w.calls)]
        if not ready:
            raise ValueError("the calls between " + ", ".join(w.name for w in pending) + " form a cycle")
        for workload in ready:
            order.append(workload)
            placed.add(workload.name)
            pending.remove(workload)
    return tuple(order)


@dataclass(frozen=True)
class Layout:
    """Where everything of one sandbox lives, under `root`."""

    root: Path

    @property
    def ca_state(self) -> Path:
        return self.root / "ca"

    @property
    def ca_root_cert(self) -> Path:
        return self.ca_state / "root-cert.pem"

    @property
    def policies(self) -> Path:
        return self.root / "policies"

    @property
    def policy_file(self) -> Path:
        return self.policies / POLICY_FILE

    @property
    def workloads(self) -> Path:
        return self.root / "workloads"

    @property
    def run(self) -> Path:
        return self.root / "run"

    def workload_dir(self, name: str) -> Path:
        return self.workloads / name

    def certs(self, name: str) -> Path:
        return self.workload_dir(name) / "certs"

    def token(self, name: str) -> Path:
        return self.workload_dir(name) / "token"

    def calls_file(self, name: str) -> Path:
        return self.workload_dir(name) / "calls.json"

    def ports_file(self, process: str) -> Path:
        return self.run / f"{process}.ports.json"

    def log(self, process: str) -> Path:
        return self.root / "logs" / f"{process}.log"


@dataclass(frozen=True, kw_only=True)
class ProcessSpec:
    """One process to start: its command line, the ports file it writes once listening (None:
    it listens on nothing, or runs to completion) and where its output goes."""

    name: str
    argv: tuple[str, ...]
    log: Path
    ports_file: Path | None = None
    stdout: Path | None = None  # a command whose output is kept apart from its log (a token)


@dataclass(frozen=True, kw_only=True)
class CaPorts:
    grpc: int
    renew: int
    metrics: int


@dataclass(frozen=True, kw_only=True)
class EnforcerPorts:
    inbound: int
    outbound: tuple[int, ...]  # in the order of the workload's calls
    metrics: int


def _port(document: Mapping[str, Any], key: str, source: str) -> int:
    value = document.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= 65535:
        raise UnavailableError(f"{source}: no port {key!r} in {dict(document)}; see its log")
    return value


def ca_ports(document: Mapping[str, Any]) -> CaPorts:
    """The ports `meshca serve --ports-file` reported."""
    return CaPorts(
        grpc=_port(document, "grpc", "the CA"),
        renew=_port(document, "renew", "the CA"),
        metrics=_port(document, "metrics", "the CA"),
    )


def enforcer_ports(document: Mapping[str, Any], source: str) -> EnforcerPorts:
    """The ports `meshca enforce --ports-file` reported for one --inbound and its --outbound list."""
    inbound = document.get("inbound")
    outbound = document.get("outbound")
    if not isinstance(inbound, list) or len(inbound) != 1 or not isinstance(outbound, list):
        raise UnavailableError(f"{source}: unexpected ports file {dict(document)}; see its log")
    return EnforcerPorts(
        inbound=_port(inbound[0], "listen_port", source),
        outbound=tuple(_port(item, "listen_port", source) for item in outbound),
        metrics=_port(document, "metrics", source),
    )


def app_port(document: Mapping[str, Any], source: str) -> int:
    return _port(document, "http", source)


def _flags(values: Mapping[str, str]) -> list[str]:
    """`{"--flag": "value"}` as command-line words, in order."""
    return [word for flag, value in values.items() for word in (flag, value)]


def _duration(value: timedelta) -> str:
    return (
        format_duration(value) if value >= timedelta(seconds=1) else f"{value // timedelta(milliseconds=1)}ms"
    )


@dataclass(frozen=True, kw_only=True)
class Plan:
    layout: Layout
    meshca: tuple[str, ...]  # how to run meshca: (python, "-m", "ca.cli")
    python: str
    cert_ttl: timedelta
    call_interval: timedelta
    workloads: tuple[DemoWorkload, ...] = DEMO_WORKLOADS

    def workload(self, name: str) -> DemoWorkload:
        return next(w for w in self.workloads if w.name == name)

    def renew_before_expiry(self) -> timedelta:
        """How long before NotAfter an agent renews: it asks for `cert_ttl` and renews at
        ROTATION_RATIO of it, measured from when the certificate arrived (no jitter)."""
        return self.cert_ttl * (1 - ROTATION_RATIO)

    def ca(self) -> ProcessSpec:
        layout = self.layout
        return ProcessSpec(
            name="ca",
            argv=(
                *self.meshca,
                "serve",
                *_flags(
                    {
                        "--state-dir": str(layout.ca_state),
                        "--trust-domain": TRUST_DOMAIN,
                        "--listen": f"{LOOPBACK}:0",
                        "--renew-listen": f"{LOOPBACK}:0",
                        "--metrics-listen": f"{LOOPBACK}:0",
                        "--ports-file": str(layout.ports_file("ca")),
                    }
                ),
            ),
            log=layout.log("ca"),
            ports_file=layout.ports_file("ca"),
        )

    def token(self, workload: DemoWorkload) -> ProcessSpec:
        """`meshca token`: a development service-account token the CA trusts, printed to stdout."""
        return ProcessSpec(
            name=f"{workload.name}-token",
            argv=(
                *self.meshca,
                "token",
                *_flags(
                    {
                        "--state-dir": str(self.layout.ca_state),
                        "--namespace": NAMESPACE,
                        "--service-account": workload.name,
                        "--ttl": format_duration(TOKEN_TTL),
                    }
                ),
            ),
            log=self.layout.log(f"{workload.name}-token"),
            stdout=self.layout.token(workload.name),
        )

    def agent(self, workload: DemoWorkload, ca: CaPorts) -> ProcessSpec:
        layout, name = self.layout, f"{workload.name}-agent"
        return ProcessSpec(
            name=name,
            argv=(
                *self.meshca,
                "agent",
                *_flags(
                    {
                        "--ca-addr": f"{LOOPBACK}:{ca.grpc}",
                        "--ca-control-addr": f"{LOOPBACK}:{ca.renew}",
                        "--ca-root": str(layout.ca_root_cert),
                        "--trust-domain": TRUST_DOMAIN,
                        "--token-file": str(layout.token(workload.name)),
                        "--output-dir": str(layout.certs(workload.name)),
                        "--ttl": _duration(self.cert_ttl),
                        "--rotation-ratio": str(ROTATION_RATIO),
                        "--rotation-jitter": "0",
                        "--sds-socket": "off",
                        "--workload-api-socket": "off",
                        "--health-listen": f"{LOOPBACK}:0",
                        "--ports-file": str(layout.ports_file(name)),
                    }
                ),
            ),
            log=layout.log(name),
            ports_file=layout.ports_file(name),
        )

    def app(self, workload: DemoWorkload) -> ProcessSpec:
        layout, name = self.layout, f"{workload.name}-app"
        return ProcessSpec(
            name=name,
            argv=(
                self.python,
                "-m",
                "ca.sandbox.demo_app",
                *_flags(
                    {
                        "--name": workload.name,
                        "--listen": f"{LOOPBACK}:0",
                        "--ports-file": str(layout.ports_file(name)),
                        "--calls-file": str(layout.calls_file(workload.name)),
                        "--interval": str(self.call_interval.total_seconds()),
                    }
                ),
            ),
            log=layout.log(name),
            ports_file=layout.ports_file(name),
        )

    def enforcer(self, workload: DemoWorkload, app: int, callee_inbound: Mapping[str, int]) -> ProcessSpec:
        """`meshca enforce` in front of the app's port, with one --outbound per callee (whose
        enforcer's inbound port is in `callee_inbound`), pinned to the callee's SPIFFE ID."""
        layout, name = self.layout, f"{workload.name}-enforcer"
        outbound: list[str] = []
        for callee in workload.calls:
            outbound += [
                "--outbound",
                f"0:{LOOPBACK}:{callee_inbound[callee]}={self.workload(callee).spiffe_id}",
            ]
        return ProcessSpec(
            name=name,
            argv=(
                *self.meshca,
                "enforce",
                *_flags(
                    {
                        "--inbound": f"0:{app}/http",
                        "--listen-host": LOOPBACK,
                        "--app-host": LOOPBACK,
                    }
                ),
                *outbound,
                *_flags(
                    {
                        "--cert-dir": str(layout.certs(workload.name)),
                        "--trust-domain": TRUST_DOMAIN,
                        "--namespace": NAMESPACE,
                        "--labels": workload.labels,
                        "--policies": str(layout.policies),
                        "--metrics-listen": f"{LOOPBACK}:0",
                        "--ports-file": str(layout.ports_file(name)),
                    }
                ),
            ),
            log=layout.log(name),
            ports_file=layout.ports_file(name),
        )

    def calls(
        self, workload: DemoWorkload, own: EnforcerPorts | None, inbound: Mapping[str, int]
    ) -> dict[str, str]:
        """Where the app sends its calls, by callee: its own enforcer's outbound ports when meshed,
        else straight to each callee's enforcer inbound port (plaintext, no certificate)."""
        if own is not None:
            return {
                callee: f"http://{LOOPBACK}:{port}/"
                for callee, port in zip(workload.calls, own.outbound, strict=True)
            }
        return {callee: f"http://{LOOPBACK}:{inbound[callee]}/" for callee in workload.calls}

    def rotate_command(self, program: Sequence[str]) -> str:
        """What to type in another terminal to rotate every certificate of the demo namespace:
        the order goes straight into the sandbox CA's ledger, which the CA pushes to the agents."""
        return shlex.join(
            [
                *program,
                "rotate",
                *_flags(
                    {
                        "--namespace": NAMESPACE,
                        "--state-dir": str(self.layout.ca_state),
                        "--reason": "sandbox: rotate the demo workloads",
                    }
                ),
            ]
        )


def guide(
    plan: Plan, *, program: Sequence[str], ca: CaPorts, inbound: Mapping[str, int], processes: int, kept: bool
) -> Guide:
    """The header and the hints the view shows: where the CA is, the commands to try, and what
    Ctrl-C does."""
    layout = plan.layout
    ends = f"keeps {layout.root}" if kept else f"removes {layout.root}"
    # The end of the call chain, STRICT in the default policies: a plaintext call to it is refused.
    end = next((w.name for w in plan.workloads if w.meshed and not w.calls), None)
    hints: list[tuple[str, str]] = [
        ("rotate every certificate", plan.rotate_command(program)),
        (
            "edit the policies",
            f"{layout.policy_file}  (web PERMISSIVE -> STRICT refuses legacy; db STRICT -> DISABLE "
            "breaks the calls to db)",
        ),
    ]
    if end is not None and end in inbound:
        refused = f"{end}'s enforcer: refused while {end} is STRICT"
        hints.append(("call without a certificate", f"curl http://{LOOPBACK}:{inbound[end]}/  ({refused})"))
    hints += [
        ("logs", str(layout.root / "logs")),
        ("Ctrl-C", f"stops the {processes} processes started here and {ends}"),
    ]
    header = (
        f"meshca up: CA on {LOOPBACK}:{ca.grpc} (renewal and control streams :{ca.renew}, metrics "
        f":{ca.metrics}), namespace {NAMESPACE}, trust domain {TRUST_DOMAIN}; certificates live "
        f"{_duration(plan.cert_ttl)} and are renewed at half"
    )
    return Guide(header=header, hints=tuple(hints))


DEFAULT_POLICIES = f"""\
# PeerAuthentication of the meshca up sandbox. Edit and save: the enforcers and the view follow
# within a second.
#
# Every workload in namespace {NAMESPACE} takes mutual TLS only...
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: {NAMESPACE}
spec:
  mtls:
    mode: STRICT
---
# ...but web also takes plaintext, which legacy sends: it has no certificate.
# Make this STRICT and legacy's calls are refused.
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: web
  namespace: {NAMESPACE}
spec:
  selector:
    matchLabels:
      app: web
  mtls:
    mode: PERMISSIVE
---
# Make this DISABLE and db's enforcer passes the callers' TLS to the app untouched: the app
# speaks plaintext HTTP, so the mutual-TLS calls of web and api to db fail.
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: db
  namespace: {NAMESPACE}
spec:
  selector:
    matchLabels:
      app: db
  mtls:
    mode: STRICT
"""
