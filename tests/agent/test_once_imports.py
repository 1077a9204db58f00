"""`meshca agent --once on` imports only what one certificate needs: an init container's pod waits
for it, and every module imported is start time. Checked in a fresh interpreter by the modules it
holds once the certificate is on disk (not by timing).

The running agent's parts (its scheduler, metrics, SDS and Workload API servers, control stream,
the revocation lists it serves)
and the other commands' (the CA server and its view of a caller, the Kubernetes client, the
ledger, policy, enforcement) stay out of it, and so do the protobuf modules of every API but
Istio's certificate service. The cyclic collector does not walk the objects its imports make
before the certificate is on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import REPO, LiveClock, agent_args, short_dir
from tests.support.ca_server import RunningCa, start_ca

pytestmark = pytest.mark.slow

# Top-level packages and meshca modules that `--once` must not import (a prefix covers submodules).
NOT_ON_THE_ONCE_PATH = (
    "kubernetes",
    "sqlalchemy",
    "psycopg",
    "apscheduler",
    "prometheus_client",
    "yaml",
    "envoy",
    "pydantic",
    "requests",
    "jwt",  # the token's claims are read without it (ca.agent.identity)
    "ca.auth.k8s_identity",  # the CA's view of a caller; the agent splits its token's subject only
    "ca.issuance.key_policy",  # which keys the CA certifies; the agent only generates its own
    "ca._proto.meshca_control_pb2",
    "ca._proto.spiffe_workload_pb2",
    "ca.server",
    "ca.kube",
    "ca.ledger",
    "ca.policy",
    "ca.enforce",
    "ca.audit",
    "ca.rotate",
    "ca.inject",
    "ca.agent.attempts",
    "ca.agent.broadcast",
    "ca.agent.control",
    "ca.agent.sds",
    "ca.agent.workload_api",
    "ca.agent.telemetry",
    "ca.issuance.crl",
    "ca.net.status_http",
)

# The modules a running agent loads: the check above names real module names.
A_RUNNING_AGENT_IMPORTS = (
    "apscheduler",
    "prometheus_client",
    "envoy",
    "ca.agent.attempts",
    "ca.agent.broadcast",
    "ca.agent.control",
    "ca.agent.sds",
    "ca.agent.workload_api",
    "ca.agent.telemetry",
    "ca.issuance.crl",
    "ca.net.status_http",
    "ca._proto.meshca_control_pb2",
    "ca._proto.spiffe_workload_pb2",
)

# Runs `meshca ARGS` the way `python -m ca.cli` does, then prints the modules it holds.
ONCE_CHILD = """
import json, sys
from ca.cli.main import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "found": sorted(sys.modules)}))
"""

# The CA's dataclasses, which the agent does not use: Python 3.11 compiles each generated method of
# a dataclass as its module runs (about 1 ms a class), so the modules `--once` imports define none.
CA_ONLY_DATACLASSES = ("KeyPolicy", "ServiceAccountIdentity")
NO_DOCSTRING = " (no docstring)"

# Runs `meshca ARGS` the same way, then prints the dataclasses meshca's modules it holds define,
# marking those without a docstring of their own (dataclass then makes one from the class's
# signature, with inspect, as the module runs).
DATACLASSES_CHILD = f"""
import dataclasses, json, sys
from ca.cli.main import main
code = main(sys.argv[1:])
found = sorted(
    f"{{name}}.{{attribute}}" + ("{NO_DOCSTRING}" if value.__doc__.startswith(attribute + "(") else "")
    for name, module in list(sys.modules.items())
    if name == "ca" or name.startswith("ca.")
    for attribute, value in vars(module).items()
    if dataclasses.is_dataclass(value) and getattr(value, "__module__", None) == name
)
print(json.dumps({{"code": code, "found": found}}))
"""

# Runs `meshca ARGS` the same way, then prints the collector's runs (by generation) from the
# agent command's start until the certificate is on disk.
COLLECTIONS_CHILD = """
import gc, json, os, sys
import ca.agent.command
from ca.cli.main import main
collections = []
certificate = os.path.join(sys.argv[sys.argv.index("--output-dir") + 1], "cert-chain.pem")
running = ca.agent.command.run
def counted(args):
    def count(phase, info):
        if phase == "start" and not os.path.exists(certificate):
            collections.append(f"generation {info['generation']}")
    gc.callbacks.append(count)
    try:
        return running(args)
    finally:
        gc.callbacks.remove(count)
ca.agent.command.run = counted
code = main(sys.argv[1:])
print(json.dumps({"code": code, "found": collections, "frozen": gc.get_freeze_count()}))
"""

# Builds a running agent from `meshca agent` flags, starts and stops it, then prints the same.
RUNNING_CHILD = """
import json, sys
from ca.agent.runner import build_agent
from tests.support.agent import parse_agent_config
process = build_agent(parse_agent_config(sys.argv[1:]))
process.start()
process.stop()
print(json.dumps({"code": 0, "found": sorted(sys.modules)}))
"""


def matching(modules: list[str], names: tuple[str, ...]) -> list[str]:
    return [m for m in modules if any(m == name or m.startswith(name + ".") for name in names)]


def run_child(code: str, args: list[str], timeout: float = 60) -> tuple[int, list[str], str]:
    report, stderr = child_report(code, args, timeout)
    return report["code"], report["found"], stderr


def child_report(code: str, args: list[str], timeout: float = 60) -> tuple[dict[str, Any], str]:
    """The JSON a child script printed last, and its stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHCA_")}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
        check=False,
    )
    assert done.stdout, done.stderr
    report: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return report, done.stderr


@pytest.fixture(scope="module")
def ca() -> Iterator[RunningCa]:
    with short_dir("mca-imp-") as base:
        running = start_ca(base / "state", clock=LiveClock())
        try:
            yield running
        finally:
            running.stop(grace_s=0)


def once_command(ca: RunningCa, tmp_path: Path) -> list[str]:
    """`meshca agent ... --once on` against `ca`, writing to tmp_path/certs."""
    token = tmp_path / "token"
    token.write_text(ca.token(namespace="shop", service_account="init"))
    args = agent_args(
        ca_port=ca.port,
        ca_root=ca.state_dir / "root-cert.pem",
        token_file=token,
        output_dir=tmp_path / "certs",
        health=False,
        extra=["--once", "on"],
    )
    return ["agent", *args]


def test_once_writes_its_files_without_the_running_agent_or_other_commands(
    ca: RunningCa, tmp_path: Path
) -> None:
    out = tmp_path / "certs"
    code, modules, stderr = run_child(ONCE_CHILD, once_command(ca, tmp_path))
    assert code == 0, stderr
    assert (out / "cert-chain.pem").exists() and (out / "key.pem").exists()
    assert matching(modules, NOT_ON_THE_ONCE_PATH) == []
    assert "grpc" in modules and "ca.agent.ca_client" in modules  # it did reach the CA


def test_once_defines_none_of_the_cas_own_dataclasses_and_documents_its_own(
    ca: RunningCa, tmp_path: Path
) -> None:
    code, dataclasses, stderr = run_child(DATACLASSES_CHILD, once_command(ca, tmp_path))
    assert code == 0, stderr
    names = [d.removesuffix(NO_DOCSTRING) for d in dataclasses]
    assert "ca.agent.svid.Svid" in names  # what the check reads is there
    assert [n for n in names if n.rpartition(".")[2] in CA_ONLY_DATACLASSES] == []
    assert [d for d in dataclasses if d.endswith(NO_DOCSTRING)] == []


def test_once_runs_no_collection_while_it_imports_and_fetches(ca: RunningCa, tmp_path: Path) -> None:
    """The objects the run's imports make live as long as the process: with the collector's
    default thresholds it walked them about 50 times before the certificate was on disk."""
    code, collections, stderr = run_child(COLLECTIONS_CHILD, once_command(ca, tmp_path))
    assert code == 0, stderr
    assert (tmp_path / "certs" / "cert-chain.pem").exists()
    assert len(collections) <= 1, collections  # one may fall due as the run starts


def test_once_leaves_what_it_made_out_of_the_collections_at_exit(ca: RunningCa, tmp_path: Path) -> None:
    """Leaving the quiet block and exiting, Python collects again: walking the ~40,000 objects the
    run made cost about 8% of its instructions (callgrind), for nothing freed."""
    report, stderr = child_report(COLLECTIONS_CHILD, once_command(ca, tmp_path))
    assert report["code"] == 0, stderr
    assert report["frozen"] > 20_000, stderr


def test_a_running_agent_imports_the_modules_the_once_check_names(ca: RunningCa, tmp_path: Path) -> None:
    """An agent that runs (scheduler, metrics, SDS, Workload API, control stream) does import
    them: the names checked above are the modules' real names, and a rename cannot make that
    check pass vacuously."""
    token = tmp_path / "token"
    token.write_text(ca.token(namespace="shop", service_account="web"))
    with short_dir("mca-imp-run-") as sockets:
        args = agent_args(
            ca_port=ca.port,
            ca_root=ca.state_dir / "root-cert.pem",
            token_file=token,
            output_dir=tmp_path / "certs",
            sds_socket=sockets / "sds",
            workload_api_socket=sockets / "wl",
            extra=["--ca-control-addr", f"127.0.0.1:{ca.server.ports['renew']}"],
        )
        status, modules, stderr = run_child(RUNNING_CHILD, args)
    assert status == 0, stderr
    assert sorted({name for name in A_RUNNING_AGENT_IMPORTS if matching(modules, (name,))}) == sorted(
        A_RUNNING_AGENT_IMPORTS
    )
