"""`meshca rotate`, `rotate status`, `rotate list` and `meshca revoke` on a state directory's
ledger (no CA asked), through `ca.cli.main.main` as an operator runs them, against the real
SQLite store. The ledger holds what a CA would have issued: two namespaces whose names share a
prefix, meshca agents and another client, pods on two nodes."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509

from ca.ledger.connected_agents import FRESH, SqlConnectedAgents
from ca.ledger.rotation import OrderState, TargetState
from tests.support import ledger as ledger_support
from tests.support.ca_server import start_ca
from tests.support.clock import FakeClock
from tests.support.fake_apiserver import FakeKubeApiServer
from tests.support.operator import SHOP_CART, State, operator_state, run

ledger_url = ledger_support.ledger_url  # fixture: SQLite and PostgreSQL


@pytest.fixture
def state(tmp_path: Path) -> Iterator[State]:
    with operator_state(tmp_path / "state") as made:
        yield made


def report_streams(state: State, replica: str, pods: Sequence[str], *, age: timedelta = timedelta(0)) -> None:
    """What a CA replica on this ledger writes: the serials its agents' streams were opened with,
    and its heartbeat `age` ago."""
    table = SqlConnectedAgents(state.rig.store)
    try:
        serials = frozenset(state.serials[pod] for pod in pods)
        table.report(replica, serials, datetime.now(UTC) - age, since=None)
    finally:
        table.dispose()


def _order_id(text: str) -> str:
    found = re.search(r"\bro-[0-9a-f]{12}\b", text)
    assert found, text
    return found.group(0)


# --------------------------------------------------------------------------- dry run


def test_a_dry_run_groups_the_blast_radius_and_changes_nothing(
    state: State, capsys: pytest.CaptureFixture[str]
) -> None:
    # cart-1 has a stream to a running replica; checkout-1's replica has not reported for 30 s.
    report_streams(state, "ca-a", ["cart-1"])
    report_streams(state, "ca-gone", ["checkout-1"], age=FRESH * 3)
    code, out, err = run(capsys, "rotate", "--namespace", "shop", "--dry-run", *state.flags)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == "dry run: nothing was changed"
    assert lines[1] == (
        "3 live certificates match: 1 held by connected meshca agents (pushed within seconds), 1 by "
        "meshca agents not connected now (pushed when they reconnect), 1 not pushable (other clients, "
        "such as Istio's agent)"
    )
    assert "namespace shop" in lines and "namespace shop-canary" not in out
    assert f"  {SHOP_CART}: 2 certificates (1 connected, 1 not pushable)" in lines
    rows = {line.split()[0]: line.split() for line in lines if line.startswith("    ")}
    assert rows["cart-1"][:4] == ["cart-1", "node-a", state.serials["cart-1"], "connected"]
    assert rows["checkout-1"][3:5] == ["not", "connected"]
    # The other client's pod and the agent not connected are out of a push's reach.
    heading = next(i for i, line in enumerate(lines) if line.startswith("workloads a push"))
    unreachable = lines[heading + 2 :]
    assert [line.split()[:3] for line in unreachable] == [
        ["shop", "Pod", "cart-2"],
        ["shop", "Pod", "checkout-1"],
    ]
    with state.store() as store:
        assert store.orders() == []
    assert state.records("rotation_order") == []


def test_a_dry_run_as_json(state: State, capsys: pytest.CaptureFixture[str]) -> None:
    report_streams(state, "ca-a", ["cart-c"])
    code, out, _ = run(capsys, "rotate", "--service-account", "cart", "--dry-run", "-o", "json", *state.flags)
    result = json.loads(out)
    assert code == 0 and result["dry_run"] and result["order"] is None
    holders = [result[k] for k in ("connected", "not_connected", "not_pushable", "connections_known")]
    assert (result["matched"], holders) == (3, [1, 1, 1, True])
    assert sorted((t["namespace"], t["pod"], t["node"], t["holder"]) for t in result["targets"]) == [
        ("shop", "cart-1", "node-a", "not_connected"),
        ("shop", "cart-2", "node-b", "not_pushable"),
        ("shop-canary", "cart-c", "node-a", "connected"),
    ]
    assert [w["name"] for w in result["workloads"]] == ["cart-1", "cart-2"] and result["warnings"] == []


def test_without_a_ca_running_on_the_ledger_no_agent_is_connected(
    state: State, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "rotate", "--namespace", "shop", "--dry-run", *state.flags)
    assert code == 0 and err == ""
    assert out.splitlines()[1].startswith(
        "3 live certificates match: 0 held by connected meshca agents (pushed within seconds), 2 by "
        "meshca agents not connected now"
    )


def test_an_unknown_namespace_warns_that_nothing_matches(
    state: State, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "rotate", "--namespace", "shopx", "--dry-run", *state.flags)
    assert code == 0 and out.splitlines()[1].startswith("0 live certificates match")
    assert "warning: no certificate was ever issued to namespace 'shopx', so nothing matches it" in err
    code, out, err = run(capsys, "rotate", "--namespace", "shopx", "--reason", "typo", *state.flags)
    assert code == 1 and out == ""
    assert "namespace 'shopx'" in err and "no order was recorded" in err
    assert state.records("rotation_order") == []


# --------------------------------------------------------------------------- orders


def test_an_order_is_recorded_with_its_terms(state: State, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys,
        "rotate",
        "--namespace",
        "shop",
        "--node",
        "node-a",
        "--reason",
        "key leaked from node-a",
        "--grace",
        "10m",
        "--spread",
        "30s",
        *state.flags,
    )
    assert code == 0 and err == ""
    order_id = _order_id(out)
    assert out.splitlines()[0].startswith(f"order {order_id} placed by local:")
    assert "selector: namespace=shop node=node-a; grace 10m, spread 30s" in out
    assert f"follow it with: meshca rotate status {order_id}" in out
    with state.store() as store:
        order = store.order(order_id)
        assert order is not None and order.reason == "key leaked from node-a"
        assert (order.grace, order.spread, order.state) == (
            timedelta(minutes=10),
            timedelta(seconds=30),
            OrderState.PUSHING,
        )
        assert abs(order.time - datetime.now(UTC)) < timedelta(minutes=1)
        targets = sorted(t.certificate.pod or "" for t in store.targets(order_id, datetime.now(UTC)))
    assert targets == ["cart-1", "checkout-1"]  # node-b's cart-2 and shop-canary's cart-c are not covered
    [record] = state.records("rotation_order")
    assert (record["order_id"], record["matched"], record["order_reason"]) == (
        order_id,
        2,
        "key leaked from node-a",
    )


def test_status_shows_what_is_still_outstanding(state: State, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "rotate", "--namespace", "shop", "--reason", "leak", *state.flags)
    order_id = _order_id(out)
    now = datetime.now(UTC)
    with state.store() as store:
        assert store.mark_replaced(
            order_id=order_id, old_serial=state.serials["cart-1"], new_serial="beef", at=now
        )
        store.revoke([state.serials["checkout-1"]], reason="keyCompromise", at=now)
    # The replica has not closed checkout-1's stream yet: a push no longer counts it.
    report_streams(state, "ca-a", ["cart-1", "checkout-1"])

    code, out, err = run(capsys, "rotate", "status", order_id, *state.flags)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"order {order_id}: pushing: what is still outstanding at ")
    assert lines[1].endswith(": leak") and lines[3] == (
        "matched 3, replaced 1, outstanding 1, revoked 1, expired 0"
    )
    assert lines[5].split() == ["STATE", "SERIAL", "IDENTITY", "POD", "NODE", "HOLDER", "REPLACED", "BY"]
    rows = [line.split() for line in lines[6:]]
    assert rows[0][:5] == ["outstanding", state.serials["cart-2"], SHOP_CART, "cart-2", "node-b"]
    assert rows[0][5:] == ["not", "pushable"]
    assert rows[1][:2] == ["replaced", state.serials["cart-1"]] and rows[1][-1] == "beef"
    assert rows[2][:2] == ["revoked", state.serials["checkout-1"]]
    assert err == ""  # who is connected is known: no note that only the CA knows

    code, out, _ = run(capsys, "rotate", *state.flags, "status", order_id.upper(), "-o", "json")
    status = json.loads(out)
    assert code == 0 and status["order"]["id"] == order_id and status["order"]["outstanding"] == 1
    assert status["connections_known"]
    assert {t["pod"]: (t["state"], t["holder"]) for t in status["targets"]} == {
        "cart-1": ("replaced", "connected"),
        "cart-2": ("outstanding", "not_pushable"),
        "checkout-1": ("revoked", "not_connected"),
    }


def test_list_shows_the_newest_first(state: State, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "rotate", "list", *state.flags)
    assert (code, out) == (0, "") and "no rotation orders yet" in err
    first = _order_id(run(capsys, "rotate", "--pod", "cart-1", "--reason", "one", *state.flags)[1])
    second = _order_id(run(capsys, "rotate", "--all", "--reason", "two", "--grace", "0s", *state.flags)[1])
    code, out, _ = run(capsys, "rotate", "list", *state.flags)
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:3] == ["ORDER", "TIME", "STATE"]
    assert [line.split()[0] for line in lines[1:]] == [second, first]
    assert lines[1].split()[3] == "4" and lines[1].split()[-2:] == ["all", "two"]
    code, out, _ = run(capsys, "rotate", "list", "--limit", "1", "-o", "json", *state.flags)
    assert [o["id"] for o in json.loads(out)["orders"]] == [second]


# --------------------------------------------------------------------------- revoke


def test_revoke_at_once(state: State, capsys: pytest.CaptureFixture[str]) -> None:
    serial = state.serials["cart-c"]
    colons = ":".join(re.findall("..", serial.zfill(len(serial) + len(serial) % 2))).upper()
    code, out, err = run(
        capsys,
        "revoke",
        "--serial",
        colons,
        "--reason",
        "keyCompromise",
        "--note",
        "laptop stolen",
        *state.flags,
    )
    assert code == 0 and err == ""
    assert out.startswith(f"revoked {serial} (spiffe://cluster.local/ns/shop-canary/sa/cart) at ")
    assert ": keyCompromise; listed in the CRL until it expires at " in out
    with state.store() as store:
        assert store.is_revoked(serial)
    [record] = state.records("revoked")
    assert (record["serial"], record["reason"]) == (serial, "keyCompromise")
    # A revoked certificate is no longer live: a dry run no longer counts it.
    _, out, _ = run(capsys, "rotate", "--namespace", "shop-canary", "--dry-run", "-o", "json", *state.flags)
    assert json.loads(out)["matched"] == 0


def test_revoking_an_unknown_serial_is_refused(state: State, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "revoke", "--serial", "abcdef", *state.flags)
    assert (code, out) == (1, "") and "abcdef" in err
    assert state.records("revoked") == []


def test_an_unknown_order(state: State, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "rotate", "status", "ro-000000000000", *state.flags)
    assert code == 1 and "no rotation order ro-000000000000; 'meshca rotate list' shows" in err


def test_a_state_directory_without_a_ledger(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "rotate", "list", "--state-dir", str(tmp_path))
    assert code == 2 and f"there is no ledger at {tmp_path / 'ledger.db'}" in err
    assert not (tmp_path / "ledger.db").exists()


# --------------------------------------------------------------------------- restarts


def test_restart_workloads_with_a_kubeconfig(
    state: State, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeKubeApiServer() as apiserver:
        deployment = apiserver.add_workload("deployment", "shop", "cart")
        replica_set = apiserver.add_workload("replicaset", "shop", "cart-7f", owner=deployment)
        apiserver.add_pod("shop", "cart-2", owner=replica_set)
        kubeconfig = str(apiserver.write_kubeconfig(tmp_path / "kubeconfig"))
        report_streams(state, "ca-a", ["cart-1", "checkout-1"])  # only cart-2 cannot be pushed

        code, out, _ = run(
            capsys, "rotate", "--namespace", "shop", "--dry-run", "--kubeconfig", kubeconfig, *state.flags
        )
        assert code == 0 and "  shop       Deployment  cart  cart-2" in out
        assert apiserver.request_count("deployments", "patch") == 0

        code, out, err = run(
            capsys,
            "rotate",
            "--namespace",
            "shop",
            "--reason",
            "leak",
            "--restart-workloads",
            "--kubeconfig",
            kubeconfig,
            *state.flags,
        )
        assert code == 0 and err == ""
        assert "restarted with --restart-workloads" in out and "cart-2  restarted" in out
        stored = apiserver.get_object("deployment", "shop", "cart")
        assert stored is not None
        stamp = stored["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
        assert abs(datetime.fromisoformat(stamp) - datetime.now(UTC)) < timedelta(minutes=1)


def test_workloads_that_cannot_be_restarted_fail_the_command(
    state: State, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeKubeApiServer() as apiserver:
        apiserver.add_pod("shop", "cart-2")  # a bare pod: nothing to restart
        kubeconfig = str(apiserver.write_kubeconfig(tmp_path / "kubeconfig"))
        code, out, err = run(
            capsys,
            "rotate",
            "--pod",
            "cart-2",
            "--reason",
            "r",
            "--restart-workloads",
            "--kubeconfig",
            kubeconfig,
            *state.flags,
        )
    assert code == 1
    order_id = _order_id(out)
    assert f"the order {order_id} was placed, but 1 workload(s) were not restarted" in err
    assert "no Deployment, StatefulSet or DaemonSet owns this pod" in out
    with state.store() as store:
        assert [t.state for t in store.targets(order_id, datetime.now(UTC))] == [TargetState.OUTSTANDING]


# --------------------------------------------------------------------------- beside a running CA


def test_a_ca_on_the_same_state_dir_picks_up_a_revocation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No CA address: the revocation goes into the ledger, the CA's change watcher notices it at its
    next poll (each second of its clock), and its renewal port refuses the certificate from then on."""
    clock = FakeClock(datetime.now(UTC) - timedelta(hours=3))  # what it issues is valid by real time too
    ca = start_ca(tmp_path / "state", clock=clock)
    try:
        chain, key = ca.request(token=ca.token("shop", "cart", pod_name="cart-1", pod_uid="uid-1"))
        serial = format(x509.load_pem_x509_certificate(chain[0].encode()).serial_number, "x")
        renewal: dict[str, Any] = {
            "port": ca.server.ports["renew"],
            "client_key": key,
            "client_chain": "".join(chain[:-1]).encode(),
        }
        ca.request(**renewal)  # renews with the certificate while it is good
        assert ca.server.push is not None and not ca.server.push.is_revoked(serial)

        code, out, _ = run(
            capsys,
            "revoke",
            "--serial",
            serial,
            "--reason",
            "keyCompromise",
            "--state-dir",
            str(ca.state_dir),
        )
        assert code == 0 and out.startswith(f"revoked {serial} ")

        push = ca.server.push
        deadline = time.monotonic() + 10
        while not push.is_revoked(serial):
            assert time.monotonic() < deadline, "the CA never noticed the revocation"
            clock.advance_s(1)  # one poll of the watcher
            time.sleep(0.05)
        with pytest.raises(grpc.RpcError) as refused:
            ca.request(**renewal)
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    finally:
        ca.stop()


# --------------------------------------------------------------------------- either database


def test_the_commands_on_sqlite_and_postgresql(
    ledger_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with operator_state(tmp_path / "state", ledger_url) as on:
        code, out, _ = run(capsys, "rotate", "--namespace", "shop", "--dry-run", "-o", "json", *on.flags)
        assert code == 0 and json.loads(out)["matched"] == 3
        code, out, _ = run(capsys, "rotate", "--namespace", "shop", "--reason", "leak", *on.flags)
        order_id = _order_id(out)
        code, out, _ = run(capsys, "revoke", "--serial", on.serials["cart-2"], *on.flags)
        assert code == 0
        code, out, _ = run(capsys, "rotate", "status", order_id, "-o", "json", *on.flags)
        status = json.loads(out)["order"]
        assert (code, status["matched"], status["outstanding"], status["revoked"]) == (0, 3, 2, 1)
        code, out, _ = run(capsys, "rotate", "list", "-o", "json", *on.flags)
        assert [o["id"] for o in json.loads(out)["orders"]] == [order_id]
        assert [r["order_id"] for r in on.records("rotation_order")] == [order_id]
