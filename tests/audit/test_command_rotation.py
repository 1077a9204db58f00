"""`meshca audit` over a ledger that holds forced rotation's records: orders, the issuances they
caused, revocations and published CRLs are listed, shown, exported and verified like the rest,
and `report` has a section for orders, counted as of its --at time.

The ledger is written as the CA writes it (Ledger on a fake clock, a real issuer) and by the
rotation store, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import csv
import io
import json
import re
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ca.audit import render
from ca.auth.base import Caller
from ca.cli.main import main
from ca.errors import LedgerTamperedError
from ca.issuance.issuer import IssuancePolicy
from ca.issuance.spiffe_id import SpiffeId
from ca.ledger import queries
from ca.ledger.entries import MESHCA_AGENT
from ca.ledger.reader import open_reader
from ca.ledger.rotation import Order, PublishedCrl, Selector
from ca.ledger.rotation_store import SqlRotationStore
from ca.ledger.store import LedgerStore
from tests.support import ledger as ledger_support
from tests.support.ledger import LedgerRig, ledger_rig

ledger_url = ledger_support.ledger_url  # fixture: SQLite and PostgreSQL

MINUTE = timedelta(minutes=1)
ADMIN = "spiffe://cluster.local/ns/istio-system/sa/admin"
ORDER_ID = "ro-0123456789ab"


@dataclass
class Rotated:
    """The ledger after one order for namespace shop, and when each step happened."""

    state: Path
    url: str
    serials: dict[str, str]  # name -> serial
    times: dict[str, datetime]  # step -> when

    def at(self, step: str, delta: timedelta = timedelta(0)) -> str:
        return (self.times[step] + delta).isoformat()


def _issue(
    rig: LedgerRig, namespace: str, account: str, pod: str, *, node: str = "node-1", **linked: str
) -> str:
    caller = Caller(
        spiffe_id=SpiffeId.for_workload("cluster.local", namespace, account),
        namespace=namespace,
        service_account=account,
        method="jwt",
        pod_name=pod,
        pod_uid=str(uuid.uuid4()),
        node_name=node,
    )
    issued = rig.issue_certificate(caller, timedelta(hours=1))
    recorded = rig.ledger.record_issued(
        issued,
        caller,
        client_address="ipv4:127.0.0.1:1",
        cluster_id="Kubernetes",
        agent=MESHCA_AGENT,
        **linked,
    )
    assert isinstance(recorded, Future)  # a thread's future: the rig's ledger runs no loop
    return str(recorded.result(timeout=10).content["serial"])


@pytest.fixture
def rotated(ledger_url: str, tmp_path: Path) -> Iterator[Rotated]:
    state = tmp_path / "state"
    with ledger_rig(ledger_url, state) as rig:
        store = SqlRotationStore(rig.store)
        clock = rig.clock
        serials = {
            "cart": _issue(rig, "shop", "cart", "cart-0"),  # seq 1
            "checkout": _issue(rig, "shop", "checkout", "checkout-0", node="node-2"),  # 2
            "pay": _issue(rig, "shop", "pay", "pay-0"),  # 3
            "canary": _issue(rig, "shop-canary", "cart", "cart-0"),  # 4
        }
        times = {"issued": clock.now()}
        clock.advance(MINUTE)
        times["ordered"] = clock.now()
        order = Order(
            id=ORDER_ID,
            ordered_by=ADMIN,
            time=clock.now(),
            selector=Selector(namespace="shop"),
            reason="node-1 compromised",
            grace=5 * MINUTE,
        )
        store.create_order(order, store.live_certificates(order.selector, clock.now()))  # 5
        clock.advance(MINUTE)
        times["replaced"] = clock.now()
        serials["cart-new"] = _issue(
            rig, "shop", "cart", "cart-0", order_id=ORDER_ID, replaces=serials["cart"]
        )  # 6
        store.mark_replaced(
            order_id=ORDER_ID, old_serial=serials["cart"], new_serial=serials["cart-new"], at=clock.now()
        )
        clock.advance(MINUTE)
        times["revoked"] = clock.now()
        store.revoke([serials["pay"]], reason="keyCompromise", at=clock.now(), note="key on a laptop")  # 7
        clock.advance(3 * MINUTE)
        times["completed"] = clock.now()
        ((_, made),) = store.complete_due_orders(clock.now())  # 8, 9: cart's old one, checkout
        assert [r.serial for r in made] == [serials["cart"], serials["checkout"]]
        store.record_crl(  # 10
            PublishedCrl(
                number=1,
                this_update=clock.now(),
                next_update=clock.now() + timedelta(hours=1),
                entries=2,
                ca_key_id="key-1",
                sha256="ab" * 32,
            ),
            clock.now(),
        )
        assert rig.checkpoint().head_seq == 10
        store.dispose()
        yield Rotated(state=state, url=ledger_url, serials=serials, times=times)


def audit(capsys: pytest.CaptureFixture[str], rotated: Rotated, *argv: str) -> tuple[int, str, str]:
    code = main(["audit", argv[0], "--ledger", rotated.url, "--state-dir", str(rotated.state), *argv[1:]])
    out, err = capsys.readouterr()
    return code, out, err


def _jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_verify_accepts_the_new_kinds(rotated: Rotated, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = audit(capsys, rotated, "verify")
    assert code == 0, out
    assert "ledger OK: 10 entries" in out


@pytest.mark.parametrize(
    ("status", "seqs"),
    [("rotation_order", [5]), ("revoked", [9, 8, 7]), ("crl_published", [10]), ("issued", [6, 4, 3, 2, 1])],
)
def test_list_by_the_new_kinds(
    rotated: Rotated, capsys: pytest.CaptureFixture[str], status: str, seqs: list[int]
) -> None:
    code, out, _ = audit(capsys, rotated, "list", "--status", status, "-o", "json")
    assert code == 0
    assert [e["seq"] for e in _jsonl(out)] == seqs


def test_a_revocation_is_listed_with_its_certificates_namespace(
    rotated: Rotated, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = audit(
        capsys, rotated, "list", "--namespace", "shop", "--service-account", "pay", "-o", "json"
    )
    assert code == 0
    assert [(e["seq"], e["kind"]) for e in _jsonl(out)] == [(7, "revoked"), (3, "issued")]


def test_each_record_says_what_it_is(rotated: Rotated, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = audit(capsys, rotated, "list", "-o", "json")
    assert code == 0
    details = {e["seq"]: render.detail(e) for e in _jsonl(out)}
    assert details[5] == f"{ORDER_ID} by {ADMIN}: namespace=shop, 3 matched, grace 5m: node-1 compromised"
    assert details[6].endswith(f", replaces {rotated.serials['cart']} for {ORDER_ID}")
    assert details[7] == "keyCompromise: key on a laptop"
    assert details[8] == details[9] == f"superseded by {ORDER_ID}"
    assert details[10].startswith("CRL 1: 2 entries, next update ")
    code, out, _ = audit(capsys, rotated, "list")
    assert code == 0
    kinds = [line.split()[3] for line in out.splitlines()[1:]]
    assert kinds == ["crl_published", *["revoked"] * 3, "issued", "rotation_order", *["issued"] * 4]


def test_show_follows_a_certificate_from_issue_to_revocation(
    rotated: Rotated, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = audit(capsys, rotated, "show", rotated.serials["checkout"], "-o", "json")
    assert code == 0
    entries = _jsonl(out)
    assert [(e["seq"], e["kind"]) for e in entries] == [(2, "issued"), (9, "revoked")]
    assert entries[1]["order_id"] == ORDER_ID and entries[1]["reason"] == "superseded"
    code, out, _ = audit(capsys, rotated, "show", rotated.serials["cart-new"])
    assert code == 0
    assert re.search(rf"^replaces +{rotated.serials['cart']}$", out, re.MULTILINE)
    assert re.search(r"^agent +meshca$", out, re.MULTILINE)


def test_export_carries_the_new_fields(rotated: Rotated, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = audit(capsys, rotated, "export", "--format", "csv")
    assert code == 0
    rows = {row["seq"]: row for row in csv.DictReader(io.StringIO(out))}
    assert rows["5"]["order_reason"] == "node-1 compromised" and rows["5"]["matched"] == "3"
    assert rows["6"]["replaces"] == rotated.serials["cart"] and rows["6"]["order_id"] == ORDER_ID
    assert rows["7"]["note"] == "key on a laptop"
    assert rows["10"]["crl_sha256"] == "ab" * 32 and rows["10"]["crl_number"] == "1"
    assert rows["1"]["order_id"] == rows["1"]["replaces"] == ""  # an ordinary issuance has none


def _orders(rotated: Rotated, capsys: pytest.CaptureFixture[str], *flags: str) -> list[dict[str, Any]]:
    code, out, _ = audit(capsys, rotated, "report", "-o", "json", *flags)
    assert code == 0
    report = json.loads(out)
    assert report["orders_total"] == len(report["orders"])
    return list(report["orders"])


def _counts(order: dict[str, Any]) -> tuple[str, int, int, int, int, int]:
    return (
        order["state"],
        order["matched"],
        order["replaced"],
        order["revoked"],
        order["outstanding"],
        order["expired"],
    )


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        ("issued", None),  # before the order
        ("ordered", ("pushing", 3, 0, 0, 3, 0)),
        ("replaced", ("pushing", 3, 1, 0, 2, 0)),
        ("revoked", ("pushing", 3, 1, 1, 1, 0)),
        ("completed", ("completed", 3, 1, 3, 0, 0)),  # the replaced one's old certificate too
    ],
)
def test_the_report_counts_an_order_as_it_stood(
    rotated: Rotated,
    capsys: pytest.CaptureFixture[str],
    step: str,
    expected: tuple[str, int, int, int, int, int] | None,
) -> None:
    orders = _orders(rotated, capsys, "--at", rotated.at(step))
    if expected is None:
        assert orders == []
        return
    (order,) = orders
    assert _counts(order) == expected
    assert order["order_id"] == ORDER_ID and order["selector"] == "namespace=shop"
    assert order["reason"] == "node-1 compromised" and order["ordered_by"] == ADMIN


def test_an_orders_counts_hold_after_its_certificates_expire(
    rotated: Rotated, capsys: pytest.CaptureFixture[str]
) -> None:
    (order,) = _orders(rotated, capsys, "--at", rotated.at("ordered", timedelta(hours=2)))
    assert _counts(order) == ("completed", 3, 1, 3, 0, 0)  # revoked ones stay counted as revoked
    (order,) = _orders(rotated, capsys, "--at", rotated.at("ordered", 30 * timedelta(seconds=1)))
    assert _counts(order) == ("pushing", 3, 0, 0, 3, 0)


def test_the_report_narrows_orders_to_the_identities_asked_for(
    rotated: Rotated, capsys: pytest.CaptureFixture[str]
) -> None:
    at = rotated.at("completed")
    (order,) = _orders(rotated, capsys, "--at", at, "--service-account", "checkout")
    assert _counts(order) == ("completed", 1, 0, 1, 0, 0)
    assert _orders(rotated, capsys, "--at", at, "--namespace", "shop-canary") == []
    assert _orders(rotated, capsys, "--at", at, "--since", rotated.at("replaced")) == []  # ordered before


def test_the_report_table_and_csv_have_an_orders_section(
    rotated: Rotated, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # wide enough that no cell is cut
    at = rotated.at("revoked")
    code, out, _ = audit(capsys, rotated, "report", "--at", at)
    assert code == 0
    lines = out.splitlines()
    start = lines.index("Rotation orders: 1")
    header, row = lines[start + 1].split(), lines[start + 2].split()
    assert header[:3] == ["ORDER", "TIME", "(UTC)"] and header[-6:] == [
        "MATCHED",
        "REPLACED",
        "REVOKED",
        "OUTSTANDING",
        "EXPIRED",
        "REASON",
    ]
    assert row[0] == ORDER_ID and row[3:10] == ["namespace=shop", "pushing", "3", "1", "1", "1", "0"]
    code, out, _ = audit(capsys, rotated, "report", "--at", at, "-o", "csv")
    assert code == 0
    (order,) = [row for row in csv.DictReader(io.StringIO(out)) if row["section"] == "order"]
    assert (order["order_id"], order["outstanding"], order["order_reason"], order["reason"]) == (
        ORDER_ID,
        "1",
        "node-1 compromised",
        "",
    )


def test_an_order_edited_in_its_table_is_refused(rotated: Rotated) -> None:
    store = LedgerStore(rotated.url)
    try:
        ledger_support.sql(store, "UPDATE rotation_orders SET matched = 2")
    finally:
        store.dispose()
    reader = open_reader(rotated.url)
    try:
        with pytest.raises(
            LedgerTamperedError, match=rf"rotation order {ORDER_ID} differs from its ledger record"
        ):
            queries.report(reader, rotated.times["completed"], IssuancePolicy())
    finally:
        reader.dispose()


def test_a_ledger_without_orders_reports_none(
    ledger_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with ledger_rig(ledger_url, tmp_path / "state") as rig:
        _issue(rig, "shop", "cart", "cart-0")
    code = main(["audit", "report", "--ledger", ledger_url, "--state-dir", str(tmp_path / "state")])
    out, _ = capsys.readouterr()
    assert code == 0
    assert out.splitlines()[-1] == "Rotation orders: none"
