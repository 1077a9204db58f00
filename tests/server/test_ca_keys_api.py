"""`meshca ca status|rotate --ca-addr` through a real CA's admin CaKeys service (mutual TLS with
the operator's client certificate on the renewal port), run through `ca.cli.main.main`: the
status document, a made and a refused transition, a dry run, `--now`, a caller that is not an
admin, bad flags and an unreachable CA."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ca.issuance.keys import private_key_pem
from ca.ledger.entries import CA_SLOT, REFUSED
from ca.server.ca_keys import CaKeys
from tests.support.admin_client import admin_flags
from tests.support.ca_server import RunningCa, start_ca
from tests.support.clock import FakeClock
from tests.support.operator import run

ADMIN = "spiffe://cluster.local/ns/istio-system/sa/admin"
CART = "spiffe://cluster.local/ns/shop/sa/cart"


@dataclass
class Api:
    ca: RunningCa
    files: Path

    def flags(self, who: str = "admin") -> list[str]:
        # --state-dir not the CA's: the API path neither reads nor needs a state directory.
        return [*admin_flags(self.ca, self.files, who), "--state-dir", str(self.files / "elsewhere")]

    @property
    def keys(self) -> CaKeys:
        assert self.ca.server.keys is not None
        return self.ca.server.keys

    def entries(self, kind: str) -> list[dict[str, Any]]:
        assert self.ca.server.ledger is not None
        return [e.content for e in self.ca.server.ledger.store.entries() if e.content["kind"] == kind]

    def eventually(self, kind: str, count: int) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 10
        while len(found := self.entries(kind)) < count:
            assert time.monotonic() < deadline, f"fewer than {count} {kind} records were written"
            time.sleep(0.02)
        return found


def _issue(api: Api, name: str, namespace: str, account: str) -> None:
    chain, key = api.ca.request(token=api.ca.token(namespace, account, pod_name=name, pod_uid=f"uid-{name}"))
    (api.files / f"{name}.pem").write_text("".join(chain[:-1]))
    (api.files / f"{name}.key").write_bytes(private_key_pem(key))


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    # Three hours back, so that what the fake clock issues is valid by the real clock too (TLS).
    ca = start_ca(
        tmp_path / "state",
        "--admin-identity",
        ADMIN,
        "--ca-root-publish",
        "10m",
        clock=FakeClock(datetime.now(UTC) - timedelta(hours=3)),
    )
    made = Api(ca=ca, files=tmp_path)
    try:
        _issue(made, "admin", "istio-system", "admin")
        _issue(made, "cart", "shop", "cart")
        yield made
    finally:
        ca.stop()


def test_status_over_the_api(api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "ca", "status", *api.flags())
    assert (code, err) == (0, "")
    assert "1     active" in out and "held by 0 of 0 connected agents" in out
    assert f"(reported by {api.ca.server.replica} at " in out

    code, out, _ = run(capsys, "ca", "status", "--format", "json", *api.flags())
    status = json.loads(out)
    assert code == 0 and status["replica"] == api.ca.server.replica
    assert [(s["id"], s["state"]) for s in status["slots"]] == [("1", "active")]
    assert status["slots"][0]["signing_fingerprint"] == api.keys.keyring.active.signing_fingerprint
    assert status["written_at"] == api.ca.clock.now().isoformat()  # dated by the CA's clock


def test_prepare_is_made_and_an_early_activation_refused_with_its_reason(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "ca", "rotate", "--prepare", "--new-root", *api.flags())
    assert (code, err) == (0, "") and "slot 2: new -> prepared" in out
    prepared = api.keys.keyring.prepared
    assert prepared is not None and prepared.id == "2"

    code, out, err = run(capsys, "ca", "rotate", "--activate", *api.flags())
    assert (code, err) == (3, "")
    assert "refused: cannot activate: the new root has been published for 0s of at least 600s" in out
    assert "pass --force to activate anyway" in out
    assert api.keys.keyring.active.id == "1"

    code, out, _ = run(capsys, "ca", "status", *api.flags())
    assert code == 0 and "ACTIVATION waiting: the new root has been published for 0s" in out

    records = api.eventually(CA_SLOT, 1)
    assert [(r["slot"], r["reason"], r["requested_by"]) for r in records] == [("2", "prepared", ADMIN)]


def test_a_dry_run_changes_nothing(api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    before = api.keys.keyring
    code, out, _ = run(capsys, "ca", "rotate", "--prepare", "--new-root", "--dry-run", *api.flags())
    assert code == 0 and "would make prepare" in out and "slot 2: new -> prepared" in out
    code, out, _ = run(capsys, "ca", "rotate", "--now", "--dry-run", *api.flags())
    assert code == 0 and "would prepare a new slot" in out
    api.keys.refresh()
    assert api.keys.keyring is before and api.keys.keyring.prepared is None
    assert len(api.keys.keyring.bundle()) == 1
    assert api.entries(CA_SLOT) == [] and api.entries("rotation_order") == []


def test_now_prepares_activates_and_orders_the_old_leaves_reissued(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    old = api.keys.keyring.active.signing_fingerprint
    api.ca.clock.advance(timedelta(minutes=1))  # the leaves above were issued before the new slot
    code, out, err = run(capsys, "ca", "rotate", "--now", "--wait", "20s", *api.flags())
    assert (code, err) == (0, "")
    assert "slot 2: new -> prepared" in out and "slot 2: prepared -> active" in out
    assert "ordered 2 certificates re-issued: rotation order ro-" in out
    assert api.keys.keyring.active.id == "2" and api.keys.keyring.active.signing_fingerprint != old
    assert api.ca.server.issuer.authority.signing_cert == api.keys.keyring.active.signing_cert
    (order,) = api.eventually("rotation_order", 1)
    assert order["ordered_by"] == ADMIN


def test_a_caller_that_is_not_an_admin_is_refused_and_recorded(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    before = api.keys.keyring
    code, out, err = run(capsys, "ca", "rotate", "--prepare", *api.flags("cart"))
    assert (code, out) == (1, "")
    assert f"refused: {CART} is not an admin identity of this CA" in err
    code, out, err = run(capsys, "ca", "status", *api.flags("cart"))
    assert (code, out) == (1, "") and "is not an admin identity" in err
    refused = api.eventually(REFUSED, 2)
    assert sorted((e["spiffe_id"], e["reason"], e["message"].split(":")[0]) for e in refused) == [
        (CART, "admin_denied", "meshca.admin.v1.CaKeys/Status"),
        (CART, "admin_denied", "meshca.admin.v1.CaKeys/Transition"),
    ]
    assert api.keys.keyring is before and api.entries(CA_SLOT) == []


def test_bad_flags_exit_2_and_an_unreachable_ca_exits_1(api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    flags = api.flags()
    code, _, err = run(capsys, "ca", "rotate", "--prepare", *flags[:4])  # --ca-addr without --cert/--key
    assert code == 2 and "--ca-addr needs --cert and --key" in err
    code, _, err = run(capsys, "ca", "rotate", "--prepare", "--wait", "soon", *flags)
    assert code == 2 and "soon" in err
    missing = [*flags[:5], str(api.files / "nowhere.pem"), *flags[6:]]
    code, _, err = run(capsys, "ca", "status", *missing)
    assert code == 2 and "cannot read --cert" in err
    flags[1] = "127.0.0.1:1"
    code, _, err = run(capsys, "ca", "status", *flags)
    assert code == 1 and "cannot reach the CA's admin API at 127.0.0.1:1" in err
    assert api.keys.keyring.prepared is None
