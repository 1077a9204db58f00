"""`meshca rotate` and `meshca revoke` through a real CA's admin Rotation service (--ca-addr, mutual
TLS with the operator's client certificate), run through `ca.cli.main.main`."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from ca.issuance.keys import private_key_pem
from ca.ledger.entries import REFUSED
from tests.support.admin_client import admin_flags
from tests.support.ca_server import RunningCa, start_ca
from tests.support.clock import FakeClock
from tests.support.operator import run

ADMIN = "spiffe://cluster.local/ns/istio-system/sa/admin"
CART = "spiffe://cluster.local/ns/shop/sa/cart"


@dataclass
class Through:
    ca: RunningCa
    files: Path
    serials: dict[str, str]

    def flags(self, who: str = "admin") -> list[str]:
        return admin_flags(self.ca, self.files, who)

    def entries(self) -> list[dict[str, Any]]:
        assert self.ca.server.ledger is not None
        return [e.content for e in self.ca.server.ledger.store.entries()]


def _issue(through: Through, name: str, namespace: str, account: str, *, agent: bool = False) -> None:
    ca = through.ca
    metadata = [("meshca-agent", "1")] if agent else []
    chain, key = ca.request(
        token=ca.token(namespace, account, pod_name=name, pod_uid=f"uid-{name}"), metadata=metadata
    )
    through.serials[name] = format(x509.load_pem_x509_certificate(chain[0].encode()).serial_number, "x")
    (through.files / f"{name}.pem").write_text("".join(chain[:-1]))
    (through.files / f"{name}.key").write_bytes(private_key_pem(key))


@pytest.fixture
def through(tmp_path: Path) -> Iterator[Through]:
    # Three hours back, so that what the fake clock issues is valid by the real clock too (TLS).
    ca = start_ca(
        tmp_path / "state", "--admin-identity", ADMIN, clock=FakeClock(datetime.now(UTC) - timedelta(hours=3))
    )
    made = Through(ca=ca, files=tmp_path, serials={})
    try:
        _issue(made, "admin", "istio-system", "admin")
        _issue(made, "cart-1", "shop", "cart", agent=True)
        _issue(made, "cart-2", "shop", "cart")
        _issue(made, "cart-c", "shop-canary", "cart", agent=True)
        deadline = time.monotonic() + 10
        while sum(e["kind"] == "issued" for e in made.entries()) < 4:
            assert time.monotonic() < deadline, "the issuances were never recorded"
            time.sleep(0.02)
        yield made
    finally:
        ca.stop()


def test_dry_run_order_status_list_and_revoke(through: Through, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "rotate", "--namespace", "shop", "--dry-run", *through.flags())
    assert code == 0 and err == ""
    assert out.splitlines()[1].startswith(
        "2 live certificates match: 0 held by connected meshca agents (pushed within seconds), 1 by meshca "
        "agents not connected now"
    )
    assert "shop-canary" not in out and "known only to the running CA" not in out

    code, out, _ = run(
        capsys, "rotate", "--namespace", "shop", "--reason", "leak", "--grace", "2m", *through.flags()
    )
    order_id = re.search(r"order (ro-[0-9a-f]{12}) placed by (\S+) ", out)
    assert code == 0 and order_id is not None and order_id.group(2) == ADMIN

    code, out, _ = run(
        capsys, "revoke", "--serial", through.serials["cart-2"], "--reason", "keyCompromise", *through.flags()
    )
    assert code == 0 and out.startswith(f"revoked {through.serials['cart-2']} ({CART})")

    code, out, _ = run(capsys, "rotate", "status", order_id.group(1), "-o", "json", *through.flags())
    status = json.loads(out)
    assert code == 0 and status["connections_known"]
    assert {t["pod"]: (t["state"], t["holder"]) for t in status["targets"]} == {
        "cart-1": ("outstanding", "not_connected"),
        "cart-2": ("revoked", "not_pushable"),
    }
    assert (status["order"]["grace_seconds"], status["order"]["ordered_by"]) == (120, ADMIN)

    code, out, _ = run(capsys, "rotate", "list", *through.flags())
    assert code == 0 and out.splitlines()[1].split()[0] == order_id.group(1)


def test_a_caller_that_is_not_an_admin_is_refused_and_recorded(
    through: Through, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "rotate", "--all", "--reason", "takeover", *through.flags("cart-1"))
    assert (code, out) == (1, "")
    assert f"refused: {CART} is not an admin identity of this CA" in err
    deadline = time.monotonic() + 10
    while not any(e["kind"] == REFUSED and e["reason"] == "admin_denied" for e in through.entries()):
        assert time.monotonic() < deadline, "the refusal was never recorded"
        time.sleep(0.02)
    refused = [e for e in through.entries() if e["kind"] == REFUSED]
    assert [(e["spiffe_id"], e["message"].split(":")[0]) for e in refused] == [
        (CART, "meshca.admin.v1.Rotation/Rotate")
    ]
    assert not any(e["kind"] == "rotation_order" for e in through.entries())
    code, _, err = run(capsys, "revoke", "--serial", through.serials["cart-1"], *through.flags("cart-1"))
    assert code == 1 and "is not an admin identity" in err


def test_what_the_ca_refuses_exits_1(through: Through, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "rotate", "--namespace", "shopx", "--reason", "typo", *through.flags())
    assert code == 1 and "namespace 'shopx'" in err and "no order was recorded" in err
    code, _, err = run(capsys, "rotate", "status", "ro-000000000000", *through.flags())
    assert code == 1 and "no rotation order ro-000000000000" in err
    code, _, err = run(
        capsys, "rotate", "--namespace", "shop", "--reason", "r", "--restart-workloads", *through.flags()
    )
    assert code == 1 and "no Kubernetes access" in err


def test_an_unreachable_ca(through: Through, capsys: pytest.CaptureFixture[str]) -> None:
    flags = through.flags()
    flags[1] = "127.0.0.1:1"
    code, _, err = run(capsys, "rotate", "list", *flags)
    assert code == 1 and "cannot reach the CA's admin API at 127.0.0.1:1" in err and "--ca-addr" in err
