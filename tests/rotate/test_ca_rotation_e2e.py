"""The CA's own keys rotate under live mTLS traffic, with real processes: `meshca serve`, three
`meshca agent`s (two feeding Envoys over SDS, one feeding `meshca enforce`), a client Envoy sending
requests in a loop to the server Envoy and another to the enforcer, and the operator's
`meshca ca rotate` / `meshca rotate` run as commands.

1. The signing CA under the same root: --prepare, it activates by itself (its root is already
   held everywhere), a rotation order of every leaf issued before the activation moves the agents
   onto it, --retire is refused while the old slot's leaves may live, --retire --force retires it.
2. The root: --prepare --new-root, every agent's root-cert.pem holds both roots and the CA counts
   them acknowledged, it activates by itself (--ca-root-publish 0s), a rotation order re-issues
   every leaf, a leaf under the old root still validates while that root is retiring, and once
   --retire --force removes it that leaf is refused by the server Envoy and by the enforcer.

0 failed requests through both loops across every step, counted per step.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import short_dir, wait_until
from tests.support.ca_slots_mesh import (
    active_slot,
    ca_report,
    enforcer,
    meshca_ca,
    roots_held,
    signing_fingerprint,
    slots_by_state,
)
from tests.support.dataplanes import ClientCert
from tests.support.envoy import inbound_bootstrap, outbound_bootstrap, start_envoy
from tests.support.rotation_mesh import (
    OK,
    REFUSED,
    AgentRun,
    CaServer,
    Traffic,
    Workload,
    issue_by_token,
    meshca_json,
    ok_app,
    start_agent,
    stop_agents,
    tls_status,
)

pytestmark = pytest.mark.slow

FRONTEND = Workload("frontend-1", "shop", "frontend")
BACKEND = Workload("backend-1", "shop", "backend")
ORDERS = Workload("orders-1", "shop", "orders")
LEGACY = Workload("legacy-1", "shop", "legacy")  # a leaf kept, with its key, from under the old root
WORKLOADS = (FRONTEND, BACKEND, ORDERS)
STEP_TIMEOUT_S = 20.0
MIN_REQUESTS_PER_STEP = 10


class Steps:
    """Requests answered and failed through each loop, step by step."""

    def __init__(self, loops: dict[str, Traffic]) -> None:
        self._loops = loops
        self._mark = self._now()
        self.rows: list[tuple[str, dict[str, tuple[int, int]]]] = []

    def _now(self) -> dict[str, tuple[int, int]]:
        return {name: (t.answered, len(t.failures)) for name, t in self._loops.items()}

    def end(self, step: str) -> None:
        """Close `step` once every loop answered a few requests in it (so each step saw traffic)."""
        floors = {name: self._mark[name][0] + MIN_REQUESTS_PER_STEP for name in self._loops}
        wait_until(
            lambda: all(loop.answered >= floors[name] for name, loop in self._loops.items()),
            10,
            f"traffic through every loop in {step}",
        )
        now = self._now()
        self.rows.append(
            (step, {n: (now[n][0] - self._mark[n][0], now[n][1] - self._mark[n][1]) for n in now})
        )
        self._mark = now

    def table(self) -> str:
        return "\n".join(
            f"  {step:<34} "
            + "  ".join(f"{n}: {ok} answered, {bad} failed" for n, (ok, bad) in counts.items())
            for step, counts in self.rows
        )


def _tail(log: Path, lines: int = 60) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


def _issued_before(moment: str) -> str:
    """A slot's `since` (ISO with offset) as `meshca rotate --issued-before` takes it."""
    return datetime.fromisoformat(moment).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _wait(check: Callable[[], Any], what: str, agents: dict[Workload, AgentRun], ca: CaServer) -> Any:
    try:
        return wait_until(check, STEP_TIMEOUT_S, what)
    except AssertionError as err:
        tails = "".join(a.log_tail(8) for a in agents.values())
        raise AssertionError(f"{err} at {time.strftime('%X')}{tails}\n{ca.log_text()[-4000:]}") from None


def _reissue(ca: CaServer, since: str, why: str) -> dict[str, Any]:
    """A rotation order for every leaf issued before `since` (what `ca rotate --now` orders)."""
    return meshca_json(
        "rotate",
        "--state-dir",
        ca.state_dir,
        "--issued-before",
        _issued_before(since),
        "--reason",
        why,
        "--grace",
        "5m",
    )


def _signed_by(agents: dict[Workload, AgentRun], signing: str) -> dict[str, int] | None:
    """Each agent's serial once every one serves a leaf signed by `signing`."""
    serials: dict[str, int] = {}
    for w, agent in agents.items():
        held = agent.credentials()
        if held is None or signing_fingerprint(held.chain_pem) != signing:
            return None
        serial = agent.serial()
        assert serial is not None
        serials[w.pod] = serial
    return serials


def test_signing_ca_then_root_rotate_under_traffic_without_a_failed_request() -> None:
    with short_dir("mca-carot-") as base, contextlib.ExitStack() as stack:
        ca = CaServer("ca", base, base / "state", extra=("--ca-root-publish", "0s")).start()
        stack.callback(ca.stop)
        agents: dict[Workload, AgentRun] = {}
        stack.callback(stop_agents, agents.values())
        for w in WORKLOADS:
            agents[w] = start_agent(ca, w, base, sds=w in (FRONTEND, BACKEND))
        for agent in agents.values():
            agent.wait_connected()
        app_port = stack.enter_context(ok_app())
        enforcer_port = stack.enter_context(
            enforcer(agents[ORDERS].output_dir, app_port, base / "enforce", "shop")
        )
        server_envoy = start_envoy(
            "server",
            inbound_bootstrap(node=BACKEND.pod, sds_socket=agents[BACKEND].sds_socket, app_port=app_port),
            base / "envoy-server",
        )
        stack.callback(server_envoy.stop)
        inbound = server_envoy.listener_port("inbound")
        clients = {}
        for name, port, peer in (("envoy", inbound, BACKEND), ("enforcer", enforcer_port, ORDERS)):
            client = start_envoy(
                f"client-{name}",
                outbound_bootstrap(
                    node=FRONTEND.pod,
                    sds_socket=agents[FRONTEND].sds_socket,
                    upstream_port=port,
                    upstream_sans={"/": peer.spiffe_id},
                ),
                base / f"envoy-client-{name}",
            )
            stack.callback(client.stop)
            clients[name] = client
        loops = {
            name: stack.enter_context(Traffic(client.listener_port("outbound")))
            for name, client in clients.items()
        }
        steps = Steps(loops)
        steps.end("before any rotation")

        first = ca_report(ca.state_dir)
        old_root = active_slot(first)["root_fingerprints"][0]
        assert [r["fingerprint"] for r in first["bundle"]] == [old_root]

        # ------------------------------------------------------------ 1. the signing CA
        prepared = meshca_ca(ca.state_dir, "rotate", "--prepare")
        assert prepared.returncode == 0, prepared.text
        assert "made prepare" in prepared.stdout, prepared.text
        signing = _wait(
            lambda: (a := active_slot(ca_report(ca.state_dir)))["id"] != active_slot(first)["id"] and a,
            "the prepared signing CA active",
            agents,
            ca,
        )
        assert signing["root_fingerprints"] == [old_root]  # the same root: nothing to wait for
        steps.end("signing: prepared and activated")
        placed = _reissue(ca, signing["since"], "e2e: signing CA rotated")
        assert placed["matched"] >= len(WORKLOADS), placed
        started = time.monotonic()
        moved = _wait(
            lambda: _signed_by(agents, signing["signing_fingerprint"]),
            "leaves of the new signing CA",
            agents,
            ca,
        )
        signing_reissue_s = time.monotonic() - started
        _wait(
            lambda: server_envoy.served_serials() == {moved[BACKEND.pod]},
            "server Envoy's new leaf",
            agents,
            ca,
        )
        _wait(
            lambda: all(c.served_serials() == {moved[FRONTEND.pod]} for c in clients.values()),
            "client Envoys' new leaf",
            agents,
            ca,
        )
        steps.end("signing: leaves re-issued")

        refused = meshca_ca(ca.state_dir, "rotate", "--retire")
        assert refused.returncode == 3 and "may still be live" in refused.stdout, refused.text
        retired = meshca_ca(ca.state_dir, "rotate", "--retire", "--force")
        assert retired.returncode == 0, retired.text
        _wait(
            lambda: "retiring" not in slots_by_state(ca_report(ca.state_dir)),
            "old signing slot retired",
            agents,
            ca,
        )
        steps.end("signing: old slot retired (--force)")

        # ------------------------------------------------------------ 2. the root
        legacy = issue_by_token(ca, LEGACY)  # chains only to the old root
        assert tls_status(inbound, legacy, base, "legacy-before-envoy") == OK
        assert tls_status(enforcer_port, legacy, base, "legacy-before-enforcer") == OK

        started = time.monotonic()
        prepared = meshca_ca(ca.state_dir, "rotate", "--prepare", "--new-root")
        assert prepared.returncode == 0, prepared.text
        new_slot = _wait(
            lambda: (
                slots_by_state(ca_report(ca.state_dir)).get("prepared", [None])[0]
                or (a if (a := active_slot(ca_report(ca.state_dir)))["id"] != signing["id"] else None)
            ),
            "the new root's slot in the CA's report",
            agents,
            ca,
        )
        new_root = new_slot["root_fingerprints"][0]
        assert new_root != old_root
        _wait(
            lambda: all(roots_held(a) == {old_root, new_root} for a in agents.values()),
            "every agent's root-cert.pem holding both roots",
            agents,
            ca,
        )
        files_s = time.monotonic() - started

        def acknowledged() -> dict[str, Any] | None:
            entry = {r["fingerprint"]: r for r in ca_report(ca.state_dir)["bundle"]}.get(new_root)
            return entry if entry and entry["holding"] == entry["connected"] == len(WORKLOADS) else None

        _wait(acknowledged, "the new root acknowledged by every agent", agents, ca)
        acked_s = time.monotonic() - started
        root_slot = _wait(
            lambda: (a := active_slot(ca_report(ca.state_dir)))["root_fingerprints"] == [new_root] and a,
            "the new root's slot active",
            agents,
            ca,
        )
        activated_s = time.monotonic() - started
        assert [r["fingerprint"] for r in ca_report(ca.state_dir)["bundle"]] == [new_root, old_root]
        steps.end("root: prepared, acknowledged, active")

        started = time.monotonic()
        placed = _reissue(ca, root_slot["since"], "e2e: root rotated")
        assert placed["matched"] >= len(WORKLOADS), placed
        moved = _wait(
            lambda: _signed_by(agents, root_slot["signing_fingerprint"]),
            "leaves under the new root",
            agents,
            ca,
        )
        root_reissue_s = time.monotonic() - started
        _wait(
            lambda: server_envoy.served_serials() == {moved[BACKEND.pod]},
            "server Envoy's new leaf",
            agents,
            ca,
        )
        _wait(
            lambda: all(c.served_serials() == {moved[FRONTEND.pod]} for c in clients.values()),
            "client Envoys' new leaf",
            agents,
            ca,
        )
        # The old root is retiring, not gone: a leaf under it still validates.
        assert tls_status(inbound, legacy, base, "legacy-retiring-envoy") == OK
        assert tls_status(enforcer_port, legacy, base, "legacy-retiring-enforcer") == OK
        steps.end("root: leaves re-issued")

        refused = meshca_ca(ca.state_dir, "rotate", "--retire")
        assert refused.returncode == 3 and "may still be live" in refused.stdout, refused.text
        retired = meshca_ca(ca.state_dir, "rotate", "--retire", "--force")
        assert retired.returncode == 0, retired.text
        _wait(
            lambda: all(roots_held(a) == {new_root} for a in agents.values()),
            "every agent's root-cert.pem holding only the new root",
            agents,
            ca,
        )
        assert [r["fingerprint"] for r in ca_report(ca.state_dir)["bundle"]] == [new_root]
        _wait(
            lambda: tls_status(inbound, legacy, base, "legacy-after-envoy") == REFUSED,
            "the server Envoy refusing the leaf under the old root",
            agents,
            ca,
        )
        _wait(
            lambda: tls_status(enforcer_port, legacy, base, "legacy-after-enforcer") == REFUSED,
            "the enforcer refusing the leaf under the old root",
            agents,
            ca,
        )
        current = agents[FRONTEND].credentials()
        assert isinstance(current, ClientCert)
        assert tls_status(inbound, current, base, "new-envoy") == OK
        assert tls_status(enforcer_port, current, base, "new-enforcer") == OK
        steps.end("root: old root retired (--force)")

        for loop in loops.values():
            loop.stop()
        for name, loop in loops.items():
            assert loop.failures == [], (
                f"{name}: {loop.failures[:3]}\n{steps.table()}\n{_tail(base / 'enforce' / 'enforce.log')}"
            )
        assert all(bad == 0 for _, counts in steps.rows for _, bad in counts.values())
        print(
            f"\nCA rotation under traffic, 0 failed requests:\n{steps.table()}\n"
            f"signing CA: order -> {len(WORKLOADS)} agents on the new signing CA {signing_reissue_s:.2f}s\n"
            f"root: --prepare --new-root -> every root-cert.pem holds both {files_s:.2f}s, "
            f"-> CA counts {len(WORKLOADS)}/{len(WORKLOADS)} acknowledged {acked_s:.2f}s, "
            f"-> active {activated_s:.2f}s; order -> {len(WORKLOADS)} agents re-issued {root_reissue_s:.2f}s"
        )
