"""Forced rotation end to end, with real processes: `meshca serve`, `meshca agent`s in two
namespaces whose names share a prefix (shop, shop-canary), two Envoys fed by shop agents over SDS
with traffic between them, `meshca enforce` in front of another shop workload, and the operator's
`meshca rotate` run as a command.

- An order for `--namespace shop` replaces every shop certificate within 5 s and leaves shop-canary
  alone, with no failed request between the Envoys; when its grace period ends the CA revokes the
  old certificates on its own, and a client presenting one is refused by the server Envoy, by the
  enforcer and by the CA's renewal port. `meshca rotate status` tells what the test saw.
- An agent stopped (SIGSTOP) whose stream is cut meanwhile misses the push; when it goes on it
  reconnects and gets the order from a CA restarted during the order, which also completes it.
- An agent killed (SIGKILL) before an order and started again afterwards: its first certificate
  names the one it held, so the order counts that target replaced, not outstanding.
- Two CA replicas on one PostgreSQL ledger: an order placed through one replica's admin API reaches
  the agents connected to either, and both refuse the old certificates once it completes.
"""

from __future__ import annotations

import contextlib
import http.client
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.support.agent import short_dir, wait_until
from tests.support.dataplanes import ClientCert, meshca_process, stop_process
from tests.support.envoy import RunningEnvoy, inbound_bootstrap, outbound_bootstrap, start_envoy
from tests.support.ledger import postgres_database
from tests.support.ports import inbound_ports, read_ports_file, reserved_port
from tests.support.rotation_mesh import (
    OK,
    REFUSED,
    AgentRun,
    CaServer,
    Relay,
    Traffic,
    Workload,
    issue_by_token,
    meshca_json,
    ok_app,
    renewal_status,
    restart_agent,
    serial_hex,
    start_agent,
    stop_agents,
    tls_status,
)

pytestmark = pytest.mark.slow

FRONTEND = Workload("frontend-1", "shop", "frontend")
BACKEND = Workload("backend-1", "shop", "backend")
ORDERS = Workload("orders-1", "shop", "orders")
CANARY_FRONTEND = Workload("frontend-c1", "shop-canary", "frontend")
CANARY_BACKEND = Workload("backend-c1", "shop-canary", "backend")
ADMIN = Workload("admin-1", "istio-system", "rotation-admin")
CART = Workload("cart-1", "shop", "cart")
CHECKOUT = Workload("checkout-1", "shop", "checkout")
CANARY_CART = Workload("cart-c1", "shop-canary", "cart")
REPLACED_WITHIN_S = 5.0


def _wait_replaced(agents: list[AgentRun], old: dict[str, int], timeout: float) -> dict[str, int]:
    """Each agent's serial once every one holds a certificate other than its `old` one."""

    def replaced() -> dict[str, int] | None:
        now = {a.workload.pod: a.serial() for a in agents}
        if any(serial is None or serial == old[pod] for pod, serial in now.items()):
            return None
        return {pod: serial for pod, serial in now.items() if serial is not None}

    try:
        return wait_until(replaced, timeout, f"new certificates for {sorted(a.workload.pod for a in agents)}")
    except AssertionError as err:
        raise AssertionError(
            f"{err} at {time.strftime('%X')}{''.join(a.log_tail(10) for a in agents)}"
        ) from None


def _held(agent: AgentRun) -> ClientCert:
    held = agent.credentials()
    assert held is not None, f"agent {agent.workload.pod} holds no certificate"
    return held


def _by_serial(status: dict[str, Any]) -> dict[str, tuple[str, str | None, str | None]]:
    """rotate status JSON -> {old serial: (state, pod, replaced_by)}."""
    return {t["serial"]: (t["state"], t["pod"], t["replaced_by"]) for t in status["targets"]}


def _crl_lists(agents: list[AgentRun], serials: set[int], timeout: float) -> None:
    """Wait until each agent's crl.pem lists these serials."""
    for agent in agents:
        try:
            wait_until(
                lambda agent=agent: serials <= (agent.crl_serials() or set()),  # type: ignore[misc]
                timeout,
                f"{agent.workload.pod}'s crl.pem listing {sorted(map(serial_hex, serials))}",
            )
        except AssertionError as err:
            raise AssertionError(f"{err}{agent.log_tail(5)}") from None


def _counts(status: dict[str, Any]) -> tuple[str, int, int, int, int, int]:
    """rotate status JSON -> (state, matched, replaced, outstanding, revoked, expired)."""
    order: dict[str, Any] = status["order"]
    return (
        order["state"],
        order["matched"],
        order["replaced"],
        order["outstanding"],
        order["revoked"],
        order["expired"],
    )


def _epoch(ledger_time: str) -> float:
    """A ledger timestamp (2026-12-07T09:30:03.594070Z) as seconds since the epoch."""
    return datetime.fromisoformat(ledger_time.replace("Z", "+00:00")).timestamp()


def _log_lines(log: Path, message: str) -> str:
    """The lines of a meshca log with this message."""
    return "\n".join(line for line in log.read_text().splitlines() if f'"msg": "{message}"' in line)


@contextlib.contextmanager
def _agents(
    ca: CaServer,
    workloads: list[Workload],
    base: Path,
    *,
    sds: tuple[Workload, ...] = (),
    control_ports: dict[Workload, int] | None = None,
) -> Iterator[dict[Workload, AgentRun]]:
    """Agents for `workloads`, started together; each holds a certificate and a control stream."""
    running: dict[Workload, AgentRun] = {}
    try:
        for w in workloads:
            running[w] = start_agent(ca, w, base, sds=w in sds, control_port=(control_ports or {}).get(w))
        for agent in running.values():
            agent.wait_connected()
        yield running
    finally:
        stop_agents(running.values())


@contextlib.contextmanager
def _enforcer(cert_dir: Path, app_port: int, workdir: Path) -> Iterator[tuple[int, int]]:
    """`meshca enforce` in front of `app_port` with an agent's files: (listen port, metrics port)."""
    workdir.mkdir()
    (workdir / "policies").mkdir()  # no PeerAuthentication: PERMISSIVE, mTLS peers checked
    ports_file, log = workdir / "enforce.ports", workdir / "enforce.log"
    process = meshca_process(
        [
            "enforce",
            "--inbound",
            f"0:{app_port}",
            "--listen-host",
            "127.0.0.1",
            "--cert-dir",
            str(cert_dir),
            "--namespace",
            "shop",
            "--policies",
            str(workdir / "policies"),
            "--metrics-listen",
            "127.0.0.1:0",
            "--ports-file",
            str(ports_file),
        ],
        log,
    )
    try:
        ports = read_ports_file(ports_file, process, log=log)
        yield inbound_ports(ports)[app_port], int(ports["metrics"])
    finally:
        stop_process(process)


def _revoked_refusals(metrics_port: int) -> float:
    """How many connections the enforcer refused because the peer's certificate is revoked."""
    conn = http.client.HTTPConnection("127.0.0.1", metrics_port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        body = conn.getresponse().read().decode()
    finally:
        conn.close()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith("meshca_enforcer_connections_total{")
        and 'outcome="refused"' in line
        and 'reason="certificate_revoked"' in line
    )


def _envoys(
    base: Path, client: AgentRun, server: AgentRun, app_port: int, stack: contextlib.ExitStack
) -> tuple[RunningEnvoy, RunningEnvoy, int, int]:
    """Server Envoy (mTLS in, to the app) and client Envoy (plaintext in, mTLS to the server Envoy),
    each with its agent's SDS: (client, server, client's outbound port, server's inbound port)."""
    server_envoy = start_envoy(
        "server",
        inbound_bootstrap(node=server.workload.pod, sds_socket=server.sds_socket, app_port=app_port),
        base / "envoy-server",
    )
    stack.callback(server_envoy.stop)
    inbound = server_envoy.listener_port("inbound")
    client_envoy = start_envoy(
        "client",
        outbound_bootstrap(
            node=client.workload.pod,
            sds_socket=client.sds_socket,
            upstream_port=inbound,
            upstream_sans={"/": server.workload.spiffe_id},
        ),
        base / "envoy-client",
    )
    stack.callback(client_envoy.stop)
    return client_envoy, server_envoy, client_envoy.listener_port("outbound"), inbound


def test_an_order_for_shop_replaces_its_certificates_without_a_failed_request_then_revokes_the_old_ones() -> (
    None
):
    shop = [FRONTEND, BACKEND, ORDERS]
    canary = [CANARY_FRONTEND, CANARY_BACKEND]
    with short_dir("mca-rot-") as base, contextlib.ExitStack() as stack:
        ca = CaServer("ca", base, base / "state").start()
        stack.callback(ca.stop)
        agents = stack.enter_context(_agents(ca, shop + canary, base, sds=(FRONTEND, BACKEND)))
        app_port = stack.enter_context(ok_app())
        client_envoy, server_envoy, outbound, inbound = _envoys(
            base, agents[FRONTEND], agents[BACKEND], app_port, stack
        )
        enforcer, enforcer_metrics = stack.enter_context(
            _enforcer(agents[ORDERS].output_dir, app_port, base / "enforce")
        )
        old = {w.pod: agents[w].wait_connected() for w in shop + canary}
        old_certs = {w.pod: _held(agents[w]) for w in shop}
        # Before the order: the old certificates get through everywhere (so the refusals below are
        # the revocation's doing).
        assert tls_status(inbound, old_certs[FRONTEND.pod], base, "before-envoy") == OK
        assert tls_status(enforcer, old_certs[FRONTEND.pod], base, "before-enforcer") == OK

        traffic = stack.enter_context(Traffic(outbound))
        wait_until(lambda: traffic.answered >= 20, 15, "traffic through the Envoys")
        before_order = traffic.answered
        started = time.monotonic()
        placed = meshca_json(
            "rotate",
            "--state-dir",
            ca.state_dir,
            "--namespace",
            "shop",
            "--reason",
            "e2e: key leaked on node-a",
            "--grace",
            "5s",
        )
        new = _wait_replaced([agents[w] for w in shop], old, 10)
        took = time.monotonic() - started
        order: dict[str, Any] = placed["order"]
        assert took < REPLACED_WITHIN_S, f"shop replaced in {took:.2f}s"
        assert placed["matched"] == len(shop)
        assert sorted(t["pod"] for t in placed["targets"]) == sorted(w.pod for w in shop)
        assert {w.pod: agents[w].serial() for w in canary} == {w.pod: old[w.pod] for w in canary}

        # The Envoys serve the new certificates, and requests carry on with them.
        wait_until(lambda: server_envoy.served_serials() == {new[BACKEND.pod]}, 10, "server Envoy's new cert")
        wait_until(
            lambda: client_envoy.served_serials() == {new[FRONTEND.pod]}, 10, "client Envoy's new cert"
        )
        wait_until(lambda: traffic.peer_serials[new[FRONTEND.pod]] >= 5, 10, "requests with the new cert")

        # The grace period ends: the CA completes the order by itself and every agent gets a CRL
        # listing the old shop certificates.
        _crl_lists(list(agents.values()), {old[w.pod] for w in shop}, 15)
        wait_until(
            lambda: tls_status(inbound, old_certs[FRONTEND.pod], base, "after-envoy") == REFUSED,
            10,
            "the server Envoy refusing the old frontend certificate",
        )
        wait_until(
            lambda: tls_status(enforcer, old_certs[FRONTEND.pod], base, "after-enforcer") == REFUSED,
            10,
            "the enforcer refusing the old frontend certificate",
        )
        assert _revoked_refusals(enforcer_metrics) >= 1
        for pod, cert in old_certs.items():
            assert renewal_status(ca, cert) == grpc.StatusCode.UNAUTHENTICATED, pod
        # ... while the certificates held now get through.
        assert tls_status(inbound, _held(agents[FRONTEND]), base, "new-envoy") == OK
        assert tls_status(enforcer, _held(agents[FRONTEND]), base, "new-enforcer") == OK
        assert tls_status(enforcer, _held(agents[CANARY_FRONTEND]), base, "canary-enforcer") == OK
        after_revocation = traffic.answered
        wait_until(lambda: traffic.answered >= after_revocation + 10, 10, "traffic after the revocation")
        traffic.stop()
        assert traffic.failures == [], traffic.failures[:10]
        assert before_order >= 20 and set(traffic.peer_serials) == {old[FRONTEND.pod], new[FRONTEND.pod]}

        status = meshca_json("rotate", "status", order["id"], "--state-dir", ca.state_dir)
        assert _counts(status) == ("completed", 3, 3, 0, 3, 0)  # the replaced old certificates revoked
        assert _by_serial(status) == {
            serial_hex(old[w.pod]): ("replaced", w.pod, serial_hex(new[w.pod])) for w in shop
        }
        assert {w.pod: agents[w].serial() for w in canary} == {w.pod: old[w.pod] for w in canary}
        print(
            f"\nshop replaced {took:.2f}s after `meshca rotate` started; {traffic.answered} requests, "
            f"0 failed ({before_order} before the order)"
        )


def test_an_agent_stopped_and_cut_off_during_an_order_gets_it_on_reconnect_from_the_restarted_ca() -> None:
    shop = [CART, CHECKOUT]
    with (
        short_dir("mca-rot-restart-") as base,
        reserved_port() as grpc_port,
        reserved_port() as renew_port,
        contextlib.ExitStack() as stack,
    ):
        ca = CaServer(
            "ca",
            base,
            base / "state",
            listen=f"127.0.0.1:{grpc_port}",
            renew_listen=f"127.0.0.1:{renew_port}",
        ).start()
        stack.callback(ca.stop)
        relay = Relay(renew_port)  # the cart agent's way to the control stream
        stack.callback(relay.close)
        agents = stack.enter_context(
            _agents(ca, [*shop, CANARY_CART], base, control_ports={CART: relay.port})
        )
        old = {w.pod: agents[w].wait_connected() for w in agents}
        old_certs = {w.pod: _held(agents[w]) for w in shop}

        agents[CART].pause()  # stopped (SIGSTOP) ...
        relay.cut()  # ... and its stream lost meanwhile: no push reaches it
        placed = meshca_json(
            "rotate",
            "--state-dir",
            ca.state_dir,
            "--namespace",
            "shop",
            "--reason",
            "e2e restart",
            "--grace",
            "12s",
        )
        order: dict[str, Any] = placed["order"]
        new = _wait_replaced([agents[CHECKOUT]], old, REPLACED_WITHIN_S)
        assert agents[CART].serial() == old[CART.pod]

        ca.stop()  # during the order: this process never reaches the end of its grace period
        ca.start()  # same ports, same state directory
        restarted = time.time()
        agents[CART].resume()  # its stream fails; it reconnects (to the new CA) and gets the order
        new |= _wait_replaced([agents[CART]], old, 15)
        assert restarted < _epoch(order["grace_ends"]), "the CA came back after the grace period ended"
        pushed = _log_lines(ca.logs[-1], "pushed rotation orders on connect")
        assert serial_hex(old[CART.pod]) in pushed, f"{pushed}{agents[CART].log_tail()}"

        # The restarted CA completes the order: both old certificates are revoked.
        _crl_lists(list(agents.values()), {old[w.pod] for w in shop}, 20)
        for pod, cert in old_certs.items():
            assert renewal_status(ca, cert) == grpc.StatusCode.UNAUTHENTICATED, pod
        assert renewal_status(ca, _held(agents[CART])) == grpc.StatusCode.OK
        assert order["id"] in _log_lines(ca.logs[-1], "rotation order completed: grace period over")
        status = meshca_json("rotate", "status", order["id"], "--state-dir", ca.state_dir)
        assert _counts(status) == ("completed", 2, 2, 0, 2, 0)
        assert _by_serial(status) == {
            serial_hex(old[w.pod]): ("replaced", w.pod, serial_hex(new[w.pod])) for w in shop
        }
        assert agents[CANARY_CART].serial() == old[CANARY_CART.pod]


def test_an_agent_killed_before_an_order_and_started_again_counts_its_target_replaced() -> None:
    shop = [CART, CHECKOUT]
    with short_dir("mca-rot-kill-") as base, contextlib.ExitStack() as stack:
        ca = CaServer("ca", base, base / "state").start()
        stack.callback(ca.stop)
        agents = stack.enter_context(_agents(ca, [*shop, CANARY_CART], base))
        old = {w.pod: agents[w].wait_connected() for w in agents}

        agents[CART].kill()  # no goodbye: its stream and its files are left as they were
        placed = meshca_json(
            "rotate",
            "--state-dir",
            ca.state_dir,
            "--namespace",
            "shop",
            "--reason",
            "e2e killed agent",
            "--grace",
            "5m",
        )
        order: dict[str, Any] = placed["order"]
        assert placed["matched"] == len(shop)
        new = _wait_replaced([agents[CHECKOUT]], old, REPLACED_WITHIN_S)
        assert agents[CART].serial() == old[CART.pod]  # the dead agent's files still hold the old one

        agents[CART] = restart_agent(ca, agents[CART])  # the same directory and token
        new |= _wait_replaced([agents[CART]], old, 15)
        agents[CART].wait_connected()
        expected = {serial_hex(old[w.pod]): ("replaced", w.pod, serial_hex(new[w.pod])) for w in shop}

        def replaced_in_status() -> dict[str, Any] | None:
            status = meshca_json("rotate", "status", order["id"], "--state-dir", ca.state_dir)
            return status if _by_serial(status) == expected else None

        try:
            status = wait_until(replaced_in_status, 10, "both shop targets replaced in `rotate status`")
        except AssertionError as err:
            last = meshca_json("rotate", "status", order["id"], "--state-dir", ca.state_dir)
            raise AssertionError(f"{err}: {_by_serial(last)}{agents[CART].log_tail()}") from None
        assert _counts(status) == ("pushing", 2, 2, 0, 0, 0)
        assert serial_hex(old[CART.pod]) in _log_lines(
            agents[CART].log, "the first certificate replaces the one held before this start"
        )
        assert agents[CANARY_CART].serial() == old[CANARY_CART.pod]


def test_two_ca_replicas_on_one_postgresql_ledger_push_an_order_to_the_agents_of_both() -> None:
    with short_dir("mca-rot-pg-") as base, postgres_database() as url, contextlib.ExitStack() as stack:
        replicas = [
            CaServer(name, base, base / "state", extra=("--ledger", url, "--admin-identity", ADMIN.spiffe_id))
            for name in ("ca1", "ca2")
        ]
        launched = [replica.launch() for replica in replicas]  # both first starts at once
        for replica, launch in zip(replicas, launched, strict=True):
            stack.callback(replica.stop)
            replica.started(*launch)
        first, second = replicas
        on_first = stack.enter_context(_agents(first, [CART], base))
        on_second = stack.enter_context(_agents(second, [CHECKOUT, CANARY_CART], base))
        agents = {**on_first, **on_second}
        old = {w.pod: agents[w].wait_connected() for w in agents}
        old_certs = {w.pod: _held(agents[w]) for w in (CART, CHECKOUT)}
        admin = issue_by_token(first, ADMIN)
        (base / "admin.pem").write_bytes(admin.chain_pem)
        (base / "admin.key").write_bytes(admin.key_pem)
        (base / "admin.key").chmod(0o600)

        def through(replica: CaServer) -> list[str | Path]:
            return [
                "--ca-addr",
                f"127.0.0.1:{replica.renew_port}",
                "--cert",
                base / "admin.pem",
                "--key",
                base / "admin.key",
                "--ca-root",
                replica.root_file,
                "--ca-server-name",
                "localhost",
            ]

        started = time.monotonic()
        placed = meshca_json(
            "rotate", *through(first), "--namespace", "shop", "--reason", "e2e replicas", "--grace", "3s"
        )
        new = _wait_replaced([agents[CART], agents[CHECKOUT]], old, 10)
        took = time.monotonic() - started
        assert took < REPLACED_WITHIN_S, f"replaced in {took:.2f}s"
        order: dict[str, Any] = placed["order"]
        assert placed["matched"] == 2 and agents[CANARY_CART].serial() == old[CANARY_CART.pod]

        _crl_lists(list(agents.values()), {old[CART.pod], old[CHECKOUT.pod]}, 15)
        for replica in replicas:
            for pod, cert in old_certs.items():
                assert renewal_status(replica, cert) == grpc.StatusCode.UNAUTHENTICATED, (replica.name, pod)
        status = meshca_json("rotate", "status", order["id"], *through(second))
        assert _counts(status) == ("completed", 2, 2, 0, 2, 0)
        assert _by_serial(status) == {
            serial_hex(old[w.pod]): ("replaced", w.pod, serial_hex(new[w.pod])) for w in (CART, CHECKOUT)
        }
        assert agents[CANARY_CART].serial() == old[CANARY_CART.pod]
        print(f"\nreplicas: both shop agents replaced {took:.2f}s after `meshca rotate` started")
