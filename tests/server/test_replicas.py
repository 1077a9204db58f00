"""Three `meshca serve` replicas against the real API server (v1.24) and one PostgreSQL ledger,
each with the token of the CA's own ServiceAccount under the RBAC of deploy/overlays/ha (installed
with `kubectl apply --server-side -k`):

- exactly one leads at a time (the Lease holder, and the only meshca_leader gauge at 1);
- kill -9 the leader: another leads within the lease duration (measured);
- a namespace created afterwards gets istio-ca-root-cert within 5 s (measured), and a ConfigMap
  edited by hand is repaired;
- every replica serves the same SPIFFE bundle; a replica stopped cleanly hands over at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ca.kube import client as kube
from ca.kube.root_configmap import CONFIGMAP_NAME, ROOT_CERT_KEY
from ca.ledger import queries
from ca.ledger.entries import CA_SLOT
from ca.ledger.reader import open_reader
from tests.deploy.install import install, overlay, service_account_kubeconfig
from tests.support.kube_apiserver import real_apiserver
from tests.support.ledger import MESHCA, _server_env, postgres_database
from tests.support.ports import read_ports_file

CA_NAMESPACE = "istio-system"
LEASE = "meshca-leader"
LEASE_S, RENEW_S, RETRY_S = 3, 2.0, 0.5
# A killed leader's lease lapses LEASE_S after the others last saw it change; each then tries
# within 2.2 retry periods; +1 s for the requests and a scrape.
TAKEOVER_BOUND_S = LEASE_S + 2 * 2.2 * RETRY_S + 1.0
CONFIGMAP_BOUND_S = 5.0

pytestmark = pytest.mark.slow


def eventually(check: Callable[[], bool], what: str, timeout_s: float, logs: Callable[[], str]) -> float:
    """Seconds until `check()` holds; fails after `timeout_s` with the replicas' logs."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not within {timeout_s}s: {what}\n{logs()[-6000:]}")
        time.sleep(0.02)
    return time.monotonic() - started


# --------------------------------------------------------------------------- the cluster


def _lease_holder(coordination: client.CoordinationV1Api) -> str:
    try:
        lease = coordination.read_namespaced_lease(LEASE, CA_NAMESPACE)
    except ApiException as err:
        if err.status == 404:
            return ""
        raise
    return str(lease.spec.holder_identity or "") if lease.spec is not None else ""


def _bundle_in(core: client.CoreV1Api, namespace: str) -> str | None:
    try:
        found = core.read_namespaced_config_map(CONFIGMAP_NAME, namespace)
    except ApiException as err:
        if err.status == 404:
            return None
        raise
    return (found.data or {}).get(ROOT_CERT_KEY)


def _roots_in(path: Path) -> int:
    return path.read_text().count("BEGIN CERTIFICATE")


def _slot_records(ledger: str) -> list[dict[str, Any]]:
    reader = open_reader(ledger)
    try:
        return [dict(e) for e in queries.export(reader, queries.AuditFilter(status=CA_SLOT), batch=50)]
    finally:
        reader.dispose()


# --------------------------------------------------------------------------- the replicas


@dataclass
class Replica:
    proc: subprocess.Popen[bytes]
    state_dir: Path
    log: Path
    ports: dict[str, int]

    @property
    def identity(self) -> str:
        return f"{socket.gethostname()}_{self.proc.pid}"

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def leader_gauge(self) -> float | None:
        """meshca_leader as scraped now; None if the replica does not answer."""
        url = f"http://127.0.0.1:{self.ports['metrics']}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                text = response.read().decode()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("meshca_leader "):
                return float(line.split()[1])
        raise AssertionError("no meshca_leader gauge on the metrics port")

    def bundle(self) -> dict[str, Any]:
        context = ssl.create_default_context(cafile=str(self.state_dir / "root-cert.pem"))
        url = f"https://localhost:{self.ports['bundle']}/"
        with urllib.request.urlopen(url, context=context, timeout=5) as response:
            body: dict[str, Any] = json.load(response)
        return body


@contextlib.contextmanager
def replicas(count: int, kubeconfig: Path, ledger: str, workdir: Path) -> Iterator[list[Replica]]:
    started: list[tuple[subprocess.Popen[bytes], Path, Path, Path]] = []
    try:
        for i in range(count):
            state, log, ports_file = (
                workdir / f"state-{i}",
                workdir / f"meshca-{i}.log",
                workdir / f"{i}.ports",
            )
            with open(log, "wb") as out:
                proc = subprocess.Popen(
                    [
                        *MESHCA,
                        "serve",
                        "--kubeconfig",
                        str(kubeconfig),
                        "--ca-namespace",
                        CA_NAMESPACE,
                        "--state-dir",
                        str(state),
                        "--ledger",
                        ledger,
                        "--listen",
                        "127.0.0.1:0",
                        "--renew-listen",
                        "off",
                        "--metrics-listen",
                        "127.0.0.1:0",
                        "--bundle-listen",
                        "127.0.0.1:0",
                        "--ports-file",
                        str(ports_file),
                        "--leader-lease-duration",
                        f"{LEASE_S}s",
                        "--leader-renew-deadline",
                        f"{RENEW_S * 1000:.0f}ms",
                        "--leader-retry-period",
                        f"{RETRY_S * 1000:.0f}ms",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=_server_env(),
                )
            started.append((proc, state, log, ports_file))
        running = [
            Replica(proc, state, log, read_ports_file(ports_file, proc, timeout=90, log=log))
            for proc, state, log, ports_file in started
        ]
        yield running
    finally:
        for proc, *_ in started:
            if proc.poll() is None:
                proc.terminate()
        for proc, *_ in started:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


class LeaderSampler:
    """Scrapes every live replica's meshca_leader on a thread; records the most seen at 1 in one
    round of scrapes."""

    def __init__(self, fleet: list[Replica]) -> None:
        self.fleet = fleet
        self.most_at_once = 0
        self.rounds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LeaderSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            leading = sum(1 for r in self.fleet if r.alive and r.leader_gauge() == 1.0)
            self.most_at_once = max(self.most_at_once, leading)
            self.rounds += 1


def leaders(fleet: list[Replica]) -> list[Replica]:
    return [r for r in fleet if r.alive and r.leader_gauge() == 1.0]


def the_leader(fleet: list[Replica], coordination: client.CoordinationV1Api) -> Replica | None:
    """The one replica whose gauge is 1 and that the Lease names; None otherwise."""
    found = leaders(fleet)
    if len(found) != 1 or _lease_holder(coordination) != found[0].identity:
        return None
    return found[0]


def test_three_replicas_one_leader_takeover_and_root_configmaps(tmp_path: Path, capsys: Any) -> None:
    with (
        real_apiserver(tmp_path / "kube") as admin_kubeconfig,
        postgres_database("meshca_replicas") as ledger,
    ):
        admin = kube.api_client(admin_kubeconfig, in_cluster=False)
        core, coordination = client.CoreV1Api(admin), client.CoordinationV1Api(admin)
        # deploy/overlays/ha as an operator applies it (the Deployment is stored; nothing runs it).
        install(overlay("ha"), admin_kubeconfig)
        kubeconfig = service_account_kubeconfig(admin_kubeconfig, admin, tmp_path / "meshca.kubeconfig")
        with replicas(3, kubeconfig, ledger, tmp_path) as fleet:

            def logs() -> str:
                return "\n".join(f"--- {r.log.name}\n{r.log.read_text(errors='replace')}" for r in fleet)

            def one_leader() -> bool:
                return the_leader(fleet, coordination) is not None

            with LeaderSampler(fleet) as sampler:
                eventually(one_leader, "one leader named by the Lease", 20, logs)
                leader = the_leader(fleet, coordination)
                assert leader is not None
                bundle = (leader.state_dir / "root-cert.pem").read_text()
                # Every replica loaded the one root of the CA Secret and serves it as a SPIFFE bundle.
                assert {(r.state_dir / "root-cert.pem").read_text() for r in fleet} == {bundle}
                assert len({json.dumps(r.bundle()["keys"]) for r in fleet}) == 1
                eventually(
                    lambda: _bundle_in(core, "default") == bundle, "the default namespace's bundle", 10, logs
                )

                # kill -9 the leader: another takes over once its lease has lapsed.
                killed_at = time.monotonic()
                os.kill(leader.proc.pid, signal.SIGKILL)
                leader.proc.wait(timeout=10)
                takeover_s = eventually(
                    lambda: (the_leader(fleet, coordination) or leader) is not leader,
                    "another replica leading after kill -9",
                    TAKEOVER_BOUND_S,
                    logs,
                )
                successor = the_leader(fleet, coordination)
                assert successor is not None and successor is not leader
                assert time.monotonic() - killed_at >= LEASE_S - 2 * RETRY_S  # it waited for the lease

                # A namespace created afterwards gets its ConfigMap from the new leader.
                core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="shop")))
                created_s = eventually(
                    lambda: _bundle_in(core, "shop") == bundle,
                    "istio-ca-root-cert in shop",
                    CONFIGMAP_BOUND_S,
                    logs,
                )
                core.patch_namespaced_config_map(CONFIGMAP_NAME, "shop", {"data": {ROOT_CERT_KEY: "edited"}})
                repaired_s = eventually(
                    lambda: _bundle_in(core, "shop") == bundle,
                    "the edited ConfigMap repaired",
                    CONFIGMAP_BOUND_S,
                    logs,
                )

                # A CA transition on the leader (a new root prepared) reaches the other replica
                # through the CA Secret, and every namespace's ConfigMap, within seconds.
                asked_at = time.monotonic()
                rotate = subprocess.run(
                    [
                        *MESHCA,
                        "ca",
                        "rotate",
                        "--state-dir",
                        str(successor.state_dir),
                        "--prepare",
                        "--new-root",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    env=_server_env(),
                )
                assert rotate.returncode == 0, rotate.stdout + rotate.stderr + logs()
                answered_s = time.monotonic() - asked_at
                alive = [r for r in fleet if r.alive]
                adopted_s = eventually(
                    lambda: all(_roots_in(r.state_dir / "root-cert.pem") == 2 for r in alive),
                    "both roots on every replica",
                    CONFIGMAP_BOUND_S,
                    logs,
                )
                both = (successor.state_dir / "root-cert.pem").read_text()
                eventually(
                    lambda: _bundle_in(core, "shop") == both, "both roots in shop", CONFIGMAP_BOUND_S, logs
                )
                adopted_s += answered_s
                published_s = time.monotonic() - asked_at
                made = [e for e in _slot_records(ledger) if e["reason"] == "prepared"]
                assert [e["replica"] for e in made] == [successor.identity]

                # A leader stopped cleanly releases the lease: the last replica leads at its next try.
                stopped_at = time.monotonic()
                successor.proc.terminate()
                assert successor.proc.wait(timeout=20) == 0
                last = next(r for r in fleet if r.alive)
                eventually(
                    lambda: the_leader(fleet, coordination) is last,
                    "the last replica leading",
                    TAKEOVER_BOUND_S,
                    logs,
                )
                handover_s = time.monotonic() - stopped_at
                assert handover_s < LEASE_S  # released, not expired
            assert sampler.rounds > 10
            assert sampler.most_at_once == 1, logs()
        with capsys.disabled():
            print(
                f"\nthree replicas: takeover after kill -9 {takeover_s:.2f}s (lease {LEASE_S}s, retry "
                f"{RETRY_S}s); new namespace's ConfigMap {created_s * 1000:.0f} ms; edited one repaired "
                f"{repaired_s * 1000:.0f} ms; clean handover {handover_s:.2f}s; `meshca ca rotate --prepare "
                f"--new-root` answered in {answered_s:.2f}s (a process start and a leader's turn), the new "
                f"root on every replica by {adopted_s:.2f}s and in the ConfigMap by {published_s:.2f}s"
            )
