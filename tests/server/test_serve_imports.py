"""`meshca serve` without a cluster (the embedded defaults: a state directory, no --kubeconfig, not
in a pod) does not import the Kubernetes client: 17.5 MiB and a sixth of a second of start that
such a CA never uses. Checked in a fresh interpreter that runs `meshca serve` as the command line
does, by the modules it holds once it serves (not by timing).

With a cluster configured the same command does import them: the names checked are the modules'
real names, and a rename cannot make the check pass vacuously."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.agent import REPO
from tests.support.fake_apiserver import FakeKubeApiServer

pytestmark = pytest.mark.slow

# Top-level packages and meshca modules that only a CA with cluster access needs (a prefix covers
# submodules): the client, the Lease election, the trust bundle ConfigMaps and the webhook's
# caBundle (and the watches under them), the CA Secret.
ONLY_WITH_A_CLUSTER = (
    "kubernetes",
    "ca.kube.client",
    "ca.kube.leader",
    "ca.kube.bundles",
    "ca.kube.watch",
    "ca.kube.webhook_config",
    "ca.kube.keyring_secret",
)

# The protobuf compiler and what it loads (30 ms): meshca's generated code needs none of it at run
# time. The `grpc_tools` package itself (an empty __init__) is imported by `import grpc` whenever
# grpcio-tools is installed (grpcio's grpc/__init__.py aliases it as grpc.tools), so it is not here.
NEVER_ON_THE_SERVE_PATH = ("grpc_tools.protoc", "grpc_tools._protoc_compiler", "pkg_resources")

# Runs `meshca ARGS` the way `python -m ca.cli` does. Once the ports file is written (the CA
# serves) and the command waits for its signal, a thread prints the modules held and sends SIGTERM.
SERVE_CHILD = """
import json, os, signal, sys, threading, time
from pathlib import Path
from ca.cli.main import main

def report_when_serving(ports_file):
    while not (ports_file.exists() and ports_file.read_text()):
        time.sleep(0.02)
    while signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        time.sleep(0.02)
    ports = json.loads(ports_file.read_text())
    print(json.dumps({"ports": ports, "modules": sorted(sys.modules)}), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=report_when_serving, args=(Path(sys.argv[1]),), daemon=True).start()
sys.exit(main(sys.argv[2:]))
"""


def matching(modules: list[str], names: tuple[str, ...]) -> list[str]:
    return [m for m in modules if any(m == name or m.startswith(name + ".") for name in names)]


def serve_in_child(tmp_path: Path, *extra: str) -> tuple[dict[str, int], list[str]]:
    """Runs `meshca serve` on a fresh state directory and ports 0 until it serves; the ports it
    bound and the modules it held then. It must exit 0 on SIGTERM."""
    ports_file = tmp_path / "ports.json"
    args = [
        "serve",
        "--state-dir",
        str(tmp_path / "state"),
        "--listen",
        "127.0.0.1:0",
        "--renew-listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--ports-file",
        str(ports_file),
        *extra,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESHCA_", "KUBERNETES_"))}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "-c", SERVE_CHILD, str(ports_file), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0 and done.stdout, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    return report["ports"], report["modules"]


def test_serve_without_a_cluster_does_not_import_the_kubernetes_client(tmp_path: Path) -> None:
    ports, modules = serve_in_child(tmp_path)
    assert ports["grpc"] > 0 and ports["renew"] > 0
    assert matching(modules, ONLY_WITH_A_CLUSTER) == []
    assert matching(modules, NEVER_ON_THE_SERVE_PATH) == []
    # It did build the whole CA: the ledger, forced rotation's push, the scheduler.
    assert {"ca.server.wiring", "ca.ledger.ledger", "ca.server.push", "apscheduler"} <= set(modules)


def test_serve_with_a_cluster_imports_the_modules_checked_above(tmp_path: Path) -> None:
    with FakeKubeApiServer() as apiserver:
        kubeconfig = apiserver.write_kubeconfig(tmp_path / "kubeconfig")
        _ports, modules = serve_in_child(tmp_path, "--kubeconfig", str(kubeconfig))
    assert sorted({name for name in ONLY_WITH_A_CLUSTER if matching(modules, (name,))}) == sorted(
        ONLY_WITH_A_CLUSTER
    )
