"""`meshca audit` and the ledger admin gRPC service, against the ledger of a real CA.

One CA (max TTL 48h, one admin identity) issues and refuses a known set of requests
over three hours of its fake clock; the tests query that ledger through `ca.cli.main.main`
exactly as a user would, and through the admin service on the CA's own ports.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from ca._proto import meshca_admin_pb2 as pb
from ca._proto import meshca_admin_pb2_grpc as pb_grpc
from ca.cli.main import main
from ca.errors import LedgerTamperedError
from ca.issuance.issuer import IssuancePolicy
from ca.issuance.key_policy import KeyPolicy
from ca.issuance.keys import PrivateKey
from ca.kube import client as kube
from ca.ledger import checkpoint as cp
from ca.ledger import queries
from ca.ledger.chain import canonical, chain_hash
from ca.ledger.entries import timestamp
from ca.ledger.ledger import HEAD_FILE, KEY_FILE, load_or_create_ledger_key
from ca.ledger.live_verify import SnapshotView, load_verify_key, read_head_file
from ca.ledger.reader import open_reader
from ca.ledger.store import LedgerStore, sqlite_url
from ca.ledger.verify import verify_ledger
from tests.support import ledger as ledger_support
from tests.support.ca_server import RunningCa, start_ca
from tests.support.clock import FakeClock
from tests.support.fake_apiserver import FakeKubeApiServer
from tests.support.forgery import FORGED_SERIAL, append_past_head
from tests.support.ledger import LedgerRig
from tests.support.pki import rsa_key

ADMIN = "spiffe://cluster.local/ns/istio-system/sa/admin"
CART = "spiffe://cluster.local/ns/shop/sa/cart"
HOUR = timedelta(hours=1)

ledger_url = ledger_support.ledger_url  # fixture: SQLite and PostgreSQL


@dataclass
class Audited:
    """The running CA and what it was asked, in ledger order (seq 1 is the CA's own 'created')."""

    ca: RunningCa
    t0: datetime
    serials: dict[str, str]  # name -> serial hex as the ledger keeps it
    creds: dict[str, tuple[PrivateKey, bytes]]  # name -> (key, client chain) for the renewal port

    @property
    def state(self) -> str:
        return str(self.ca.state_dir)

    def at(self, delta: timedelta) -> str:
        return (self.t0 + delta).isoformat()


def _serial(chain: list[str]) -> str:
    return format(x509.load_pem_x509_certificate(chain[0].encode()).serial_number, "x")


def _wait_for_entries(ca: RunningCa, count: int) -> None:
    assert ca.server.ledger is not None
    deadline = time.monotonic() + 10
    while ca.server.ledger.store.count() < count:
        assert time.monotonic() < deadline, "the ledger never caught up"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Audited]:
    state = tmp_path_factory.mktemp("audit") / "state"
    # Three hours back, so that every certificate the fake clock issues is valid by the real
    # clock too, which TLS checks when the tests present one on the renewal port.
    clock = FakeClock(datetime.now(UTC) - 3 * HOUR)
    ca = start_ca(state, "--max-ttl", "48h", "--admin-identity", ADMIN, clock=clock)
    t0 = ca.clock.now()
    serials: dict[str, str] = {}
    creds: dict[str, tuple[PrivateKey, bytes]] = {}

    def issue(
        name: str, namespace: str, account: str, *, ttl: int = 0, key: PrivateKey | None = None, **token: Any
    ) -> None:
        chain, used = ca.request(token=ca.token(namespace, account, **token), ttl=ttl, key=key)
        serials[name] = _serial(chain)
        creds[name] = (used, "".join(chain[:-1]).encode())

    try:
        issue("cart-24h", "shop", "cart", pod_name="cart-1", pod_uid="uid-1")  # seq 2
        issue("cart-1h", "shop", "cart", ttl=3600, pod_name="cart-2", pod_uid="uid-2")  # seq 3
        ca.clock.advance(HOUR)
        issue("checkout-40h", "shop", "checkout", ttl=40 * 3600)  # seq 4
        with pytest.raises(grpc.RpcError):  # seq 5: ttl_over_max
            ca.request(token=ca.token("web", "frontend"), ttl=7 * 86400)
        with pytest.raises(grpc.RpcError):  # seq 6: token_missing
            ca.request()
        ca.clock.advance(HOUR)
        issue("admin", "istio-system", "admin")  # seq 7
        issue("frontend-rsa", "web", "frontend", key=rsa_key(2048))  # seq 8
        _wait_for_entries(ca, 8)
        assert ca.server.ledger is not None
        assert ca.server.ledger.checkpoint() is not None
        yield Audited(ca=ca, t0=t0, serials=serials, creds=creds)
    finally:
        ca.stop()


def audit(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["audit", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def seqs_of(jsonl: str) -> list[int]:
    return [json.loads(line)["seq"] for line in jsonl.splitlines()]


# --------------------------------------------------------------------------- list


LIST_CASES: dict[str, tuple[list[str], list[int]]] = {
    "everything": ([], [8, 7, 6, 5, 4, 3, 2, 1]),
    "spiffe-id": (["--spiffe-id", CART], [3, 2]),
    "namespace": (["--namespace", "shop"], [4, 3, 2]),
    "namespace and service account": (["--namespace", "web", "--service-account", "frontend"], [8, 5]),
    "service account": (["--service-account", "checkout"], [4]),
    "pod": (["--pod", "cart-2"], [3]),
    "issued": (["--status", "issued"], [8, 7, 4, 3, 2]),
    "refused": (["--status", "refused"], [6, 5]),
    "ca events": (["--status", "ca_event"], [1]),
    "refused in shop": (["--status", "refused", "--namespace", "shop"], []),
    "unknown identity": (["--spiffe-id", "spiffe://cluster.local/ns/x/sa/y"], []),
}


@pytest.mark.parametrize("cap", [queries.PROBE_CAP, 1], ids=["index-paths", "walk-paths"])
@pytest.mark.parametrize("case", list(LIST_CASES))
def test_list_filters(
    audited: Audited, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, case: str, cap: int
) -> None:
    # With a probe cap of 1 every index looks crowded, so the queries take the walk in seq order
    # (or an index in seq order) instead: both access paths must give the same answer.
    monkeypatch.setattr(queries, "PROBE_CAP", cap)
    flags, expected = LIST_CASES[case]
    code, out, err = audit(capsys, "list", "--state-dir", audited.state, "--output", "json", *flags)
    assert code == 0, err
    assert seqs_of(out) == expected
    if not expected:
        assert "no ledger entries match" in err


@pytest.mark.parametrize("cap", [queries.PROBE_CAP, 1], ids=["index-paths", "walk-paths"])
def test_list_time_filters(
    audited: Audited, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, cap: int
) -> None:
    monkeypatch.setattr(queries, "PROBE_CAP", cap)
    cases = {
        ("--since", audited.at(HOUR)): [8, 7, 6, 5, 4],
        ("--until", audited.at(HOUR)): [3, 2, 1],
        ("--since", audited.at(HOUR), "--until", audited.at(2 * HOUR)): [6, 5, 4],
        ("--since", audited.at(HOUR), "--namespace", "shop"): [4],
        # Valid at t0+2h: the 1h certificate has expired, everything else issued by then is live.
        ("--valid-at", audited.at(2 * HOUR)): [8, 7, 4, 2],
        # Valid at t0+30m: only the two issued at t0 exist yet.
        ("--valid-at", audited.at(HOUR / 2)): [3, 2],
        ("--valid-at", audited.at(HOUR / 2), "--pod", "cart-1"): [2],
        ("--valid-at", audited.at(timedelta(days=30))): [],
    }
    for flags, expected in cases.items():
        code, out, err = audit(capsys, "list", "--state-dir", audited.state, "-o", "json", *flags)
        assert code == 0, err
        assert seqs_of(out) == expected, flags


def test_list_ages_count_back_from_now(audited: Audited, capsys: pytest.CaptureFixture[str]) -> None:
    # The fake clock started at the real time: everything is newer than a day ago, none older.
    assert seqs_of(audit(capsys, "list", "--state-dir", audited.state, "-o", "json", "--since", "1d")[1])
    code, out, _ = audit(capsys, "list", "--state-dir", audited.state, "-o", "json", "--until", "1d")
    assert code == 0 and out == ""


def test_list_limit_says_more_match(audited: Audited, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = audit(capsys, "list", "--state-dir", audited.state, "-o", "json", "--limit", "2")
    assert code == 0
    assert seqs_of(out) == [8, 7]
    assert "more match" in err and "meshca audit export" in err


def test_list_table_fits_the_terminal(
    audited: Audited, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for columns in (120, 80):
        monkeypatch.setenv("COLUMNS", str(columns))
        code, out, _ = audit(capsys, "list", "--state-dir", audited.state)
        assert code == 0
        lines = out.splitlines()
        assert lines[0].split()[:3] == ["SEQ", "TIME", "(UTC)"]
        assert len(lines) == 9
        assert max(len(line) for line in lines) <= columns, out
        assert lines[1].split()[0] == "8"
    monkeypatch.setenv("COLUMNS", "120")
    out = audit(capsys, "list", "--state-dir", audited.state)[1]
    row = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert audited.serials["checkout-40h"] in row["4"]  # a full serial, ready for `show`
    assert "shop/checkout" in row["4"] and "40h, until 2026-" in row["4"]
    assert "ttl_over_max" in row["5"] and "web/frontend" in row["5"]
    assert "token_missing" in row["6"]


def test_list_csv_carries_every_field(audited: Audited, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = audit(capsys, "list", "--state-dir", audited.state, "-o", "csv", "--namespace", "shop")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [int(r["seq"]) for r in rows] == [4, 3, 2]
    assert rows[2]["serial"] == audited.serials["cart-24h"]
    assert rows[2]["pod_name"] == "cart-1" and rows[2]["spiffe_id"] == CART
    assert rows[1]["ttl_seconds"] == str(3600 + 120)  # NotBefore is backdated two minutes
    assert rows[0]["key_type"] == "ec-p256" and rows[0]["reason"] == ""


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--status", "refused", "--valid-at", "now"], "valid-at time selects issued"),
        (["--since", "2026-01-02", "--until", "2026-01-01"], "time range is empty"),
        (["--since", "yesterday"], "is not a time"),
        (
            ["--limit", "0"],
            "--limit 0 is out of range; give a whole number from 1 to 10000 "
            "(for more, use 'meshca audit export')",
        ),
        (
            ["--limit", "-3"],
            "--limit -3 is out of range; give a whole number from 1 to 10000 "
            "(for more, use 'meshca audit export')",
        ),
        (["--limit", "10001"], "--limit 10001 is out of range; give a whole number from 1 to 10000"),
        (["--limit", "many"], "--limit must be a whole number from 1 to 10000 (for more, use"),
        (["--ledger", "off"], "nothing to audit"),
        (["--ledger", "mysql://x"], "is not auto, off"),
    ],
)
def test_list_usage_errors_exit_2(
    audited: Audited, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    code, out, err = audit(capsys, "list", "--state-dir", audited.state, *flags)
    assert code == 2
    assert message in err and out == ""
    assert err.startswith("meshca: error: ") and err.count("\n") == 1, err


def test_report_max_ttl_must_be_above_zero(audited: Audited, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = audit(capsys, "report", "--state-dir", audited.state, "--max-ttl", "0")
    assert (code, out) == (2, "")
    assert err == "meshca: error: --max-ttl must be above 0; give the CA's --max-ttl, such as 24h or 90d\n"


def test_a_missing_ledger_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    for action in (["list"], ["show", "ab"], ["export"], ["report"], ["verify"]):
        code, out, err = audit(capsys, *action, "--state-dir", str(tmp_path / "nowhere"))
        assert code == 2 and out == "", action
        assert err == (
            f"meshca: error: there is no ledger at {tmp_path / 'nowhere' / 'ledger.db'} "
            f"({tmp_path / 'nowhere'} does not exist); give --state-dir the state directory of an "
            "existing CA, or --ledger its ledger (a sqlite:/// or postgresql:// URL)\n"
        ), action
        code, _, err = audit(capsys, *action, "--state-dir", str(tmp_path / "empty"))
        assert code == 2 and f"there is no ledger at {tmp_path / 'empty' / 'ledger.db'};" in err, action
    assert not (tmp_path / "nowhere").exists()  # nothing was created on the way
    assert list((tmp_path / "empty").iterdir()) == []
    (tmp_path / "empty.db").write_bytes(b"")
    code, _, err = audit(capsys, "list", "--ledger", sqlite_url(tmp_path / "empty.db"))
    assert code == 2 and "holds no meshca ledger" in err


# --------------------------------------------------------------------------- show


def test_show_a_serial(audited: Audited, capsys: pytest.CaptureFixture[str]) -> None:
    serial = audited.serials["checkout-40h"]
    code, out, _ = audit(capsys, "show", serial, "--state-dir", audited.state)
    assert code == 0
    fields = dict(line.split(None, 1) for line in out.splitlines())
    assert fields["seq"] == "4"
    assert fields["serial"] == serial
    assert fields["spiffe_id"] == "spiffe://cluster.local/ns/shop/sa/checkout"
    assert fields["lifetime"] == "40h (granted at issuance)"
    # openssl's spelling (upper case, colons, leading zero) finds it too, as JSON.
    spelled = ":".join(f"{int(serial, 16):040X}"[i : i + 2] for i in range(0, 40, 2))
    code, out, _ = audit(capsys, "show", spelled, "--state-dir", audited.state, "-o", "json")
    assert code == 0
    (entry,) = [json.loads(line) for line in out.splitlines()]
    assert entry["seq"] == 4 and entry["ttl_seconds"] == 40 * 3600 + 120


def test_show_unknown_and_malformed_serials(audited: Audited, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = audit(capsys, "show", "abcdef", "--state-dir", audited.state)
    assert code == 1 and out == "" and "no ledger entry names serial abcdef" in err
    code, _, err = audit(capsys, "show", "not-hex", "--state-dir", audited.state)
    assert code == 2 and "is not a certificate serial number" in err


# --------------------------------------------------------------------------- export


def test_export_jsonl_and_csv_for_a_time_range(audited: Audited, capsys: pytest.CaptureFixture[str]) -> None:
    window = ["--since", audited.at(HOUR), "--until", audited.at(2 * HOUR)]
    code, out, _ = audit(capsys, "export", "--state-dir", audited.state, *window)
    assert code == 0
    entries = [json.loads(line) for line in out.splitlines()]
    assert [e["seq"] for e in entries] == [4, 5, 6]  # oldest first
    assert [e["kind"] for e in entries] == ["issued", "refused", "refused"]
    assert entries[1]["reason"] == "ttl_over_max" and entries[1]["status_code"] == "INVALID_ARGUMENT"
    code, out, _ = audit(capsys, "export", "--state-dir", audited.state, "--format", "csv", *window)
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [int(r["seq"]) for r in rows] == [4, 5, 6]
    assert rows[0]["serial"] == audited.serials["checkout-40h"]
    assert rows[2]["reason"] == "token_missing" and rows[2]["spiffe_id"] == ""


@pytest.mark.parametrize("cap", [queries.PROBE_CAP, 1], ids=["index-paths", "walk-paths"])
def test_export_in_batches(audited: Audited, monkeypatch: pytest.MonkeyPatch, cap: int) -> None:
    monkeypatch.setattr(queries, "PROBE_CAP", cap)
    reader = open_reader(sqlite_url(audited.ca.state_dir / "ledger.db"))
    try:
        every = [e["seq"] for e in queries.export(reader, queries.AuditFilter(), batch=3)]
        shop = [e["seq"] for e in queries.export(reader, queries.AuditFilter(namespace="shop"), batch=2)]
        issued = queries.AuditFilter(status="issued", since=audited.t0 + HOUR / 2)
        late = [e["seq"] for e in queries.export(reader, issued, batch=1)]
    finally:
        reader.dispose()
    assert every == [1, 2, 3, 4, 5, 6, 7, 8]
    assert shop == [2, 3, 4]
    assert late == [4, 7, 8]


# --------------------------------------------------------------------------- report


def test_report_counts_and_violations(audited: Audited, capsys: pytest.CaptureFixture[str]) -> None:
    at = audited.at(2 * HOUR + timedelta(minutes=1))
    code, out, err = audit(
        capsys, "report", "--state-dir", audited.state, "--at", at, "--max-ttl", "24h", "-o", "json"
    )
    assert code == 0, err
    report = json.loads(out)
    identities = {(i["namespace"], i["spiffe_id"]): i for i in report["identities"]}
    assert list(identities) == [
        ("istio-system", ADMIN),
        ("shop", CART),
        ("shop", "spiffe://cluster.local/ns/shop/sa/checkout"),
        ("web", "spiffe://cluster.local/ns/web/sa/frontend"),
        (None, None),
    ]
    cart = identities[("shop", CART)]
    assert (cart["issued"], cart["valid_now"], cart["refused"]) == (2, 1, 0)
    assert cart["ttl"] == {"<=1h": 1, "<=24h": 1, "<=7d": 0, "<=90d": 0, ">90d": 0}
    checkout = identities[("shop", "spiffe://cluster.local/ns/shop/sa/checkout")]
    assert checkout["ttl"]["<=7d"] == 1 and checkout["valid_now"] == 1
    frontend = identities[("web", "spiffe://cluster.local/ns/web/sa/frontend")]
    assert (frontend["issued"], frontend["refused"]) == (1, 1)
    assert identities[(None, None)]["refused"] == 1 and identities[(None, None)]["issued"] == 0
    reasons = {(r["namespace"], r["reason"]): r["count"] for r in report["refusals"]}
    assert reasons == {("web", "ttl_over_max"): 1, (None, "token_missing"): 1}
    assert report["violations_total"] == 1
    (violation,) = report["violations"]
    assert violation["serial"] == audited.serials["checkout-40h"]
    assert violation["lifetime_seconds"] == 40 * 3600
    assert violation["problems"] == ["lifetime 40h is over the maximum 1d"]


def test_report_under_the_cas_own_maximum_finds_no_violation(
    audited: Audited, capsys: pytest.CaptureFixture[str]
) -> None:
    at = audited.at(2 * HOUR)
    code, out, _ = audit(capsys, "report", "--state-dir", audited.state, "--at", at, "--max-ttl", "48h")
    assert code == 0
    assert "Valid certificates that break the policy (max TTL 2d, key types): none" in out
    # ...and the default report (no --at) runs on the real clock, the fake one's start.
    assert audit(capsys, "report", "--state-dir", audited.state)[0] == 0


def test_report_table_and_csv(
    audited: Audited, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    at = audited.at(2 * HOUR + timedelta(minutes=1))
    flags = ["--state-dir", audited.state, "--at", at, "--max-ttl", "24h"]
    code, out, _ = audit(capsys, "report", *flags)
    assert code == 0
    assert max(len(line) for line in out.splitlines()) <= 100
    rows = {line.split()[1]: line.split() for line in out.splitlines() if line.startswith("shop ")}
    assert rows["shop/cart"][2:] == ["2", "1", "1", "1", "0", "0", "0", "0"]
    assert "(unauthenticated)" in out and "token_missing" in out
    assert audited.serials["checkout-40h"] in out and "lifetime 40h" in out
    code, out, _ = audit(capsys, "report", *flags, "-o", "csv")
    assert code == 0
    rows_csv = list(csv.DictReader(io.StringIO(out)))
    assert {r["section"] for r in rows_csv} == {"identity", "refusal", "violation"}
    (violation,) = [r for r in rows_csv if r["section"] == "violation"]
    assert violation["serial"] == audited.serials["checkout-40h"]
    cart = next(r for r in rows_csv if r["section"] == "identity" and r["spiffe_id"] == CART)
    assert (cart["issued"], cart["valid_now"], cart["ttl<=1h"]) == ("2", "1", "1")


def test_report_flags_key_types_no_longer_allowed(audited: Audited) -> None:
    reader = open_reader(sqlite_url(audited.ca.state_dir / "ledger.db"))
    try:
        report = queries.report(
            reader, audited.t0 + 2 * HOUR, IssuancePolicy(key_policy=KeyPolicy(min_rsa_bits=3072))
        )
        for_shop = queries.report(
            reader, audited.t0 + 2 * HOUR, IssuancePolicy(), queries.AuditFilter(namespace="shop")
        )
    finally:
        reader.dispose()
    assert report.violations_total == 1
    (violation,) = report.violations
    assert violation.serial == audited.serials["frontend-rsa"]
    assert violation.problems == ("key type rsa-2048 is no longer allowed",)
    assert [i.namespace for i in for_shop.identities] == ["shop", "shop"]


# --------------------------------------------------------------------------- verify


def _copy_state(audited: Audited, target: Path) -> Path:
    """The CA's ledger (a consistent copy, WAL included), key and head, in a new state dir."""
    target.mkdir()
    source = sqlite3.connect(audited.ca.state_dir / "ledger.db")
    copy = sqlite3.connect(target / "ledger.db")
    with copy:
        source.backup(copy)
    source.close()
    copy.close()
    for name in (KEY_FILE, HEAD_FILE):
        shutil.copy(audited.ca.state_dir / name, target / name)
    return target


def test_verify_ok(audited: Audited, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = audit(capsys, "verify", "--state-dir", audited.state)
    assert code == 0
    assert out.startswith("ledger OK: 8 entries and ")
    assert "ledger-head.json" in out
    code, out, _ = audit(capsys, "verify", "--state-dir", audited.state, "-o", "json")
    result = json.loads(out)
    assert code == 0 and result["ok"] and result["entries_checked"] == 8 and result["bad_seq"] is None


@pytest.mark.parametrize(
    ("statements", "bad_seq", "problem"),
    [
        (
            ["UPDATE ledger_entries SET content = replace(content, 'checkout', 'payments') WHERE seq = 4"],
            4,
            "content does not match its hash",
        ),
        (["UPDATE ledger_entries SET namespace = 'other' WHERE seq = 3"], 3, "namespace column"),
        (
            [
                "DELETE FROM ledger_entries WHERE seq = 8",
                "UPDATE ledger_head SET seq = 7, "
                "hash = (SELECT entry_hash FROM ledger_entries WHERE seq = 7)",
            ],
            8,
            "a signed checkpoint names entry 8 but the ledger ends at 7",
        ),
    ],
    ids=["content-edited", "column-edited", "tail-cut"],
)
def test_verify_names_the_first_bad_entry(
    audited: Audited,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    statements: list[str],
    bad_seq: int,
    problem: str,
) -> None:
    state = _copy_state(audited, tmp_path / "copy")
    assert audit(capsys, "verify", "--state-dir", str(state))[0] == 0
    with sqlite3.connect(state / "ledger.db") as conn:
        for statement in statements:
            conn.execute(statement)
    conn.close()
    code, out, _ = audit(capsys, "verify", "--state-dir", str(state))
    assert code == 1
    assert out.startswith(f"ledger TAMPERED at entry {bad_seq}: ")
    assert problem in out
    code, out, _ = audit(capsys, "verify", "--state-dir", str(state), "-o", "json")
    assert code == 1 and json.loads(out)["bad_seq"] == bad_seq


def test_verify_with_a_public_key_and_without_a_head(
    audited: Audited, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    state = _copy_state(audited, tmp_path / "copy")
    public = tmp_path / "ledger-public.pem"
    public.write_bytes(
        load_verify_key(state / KEY_FILE).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    (state / KEY_FILE).unlink()
    (state / HEAD_FILE).unlink()
    code, _, err = audit(capsys, "verify", "--state-dir", str(state))
    assert code == 2 and "no ledger key" in err
    code, out, _ = audit(capsys, "verify", "--state-dir", str(state), "--ledger-key", str(public))
    assert code == 0 and "note: no signed head kept outside the database" in out
    (state / HEAD_FILE).write_text("{not json")
    code, out, _ = audit(capsys, "verify", "--state-dir", str(state), "--ledger-key", str(public))
    assert code == 1 and "cannot be read" in out


def test_verify_checks_the_head_kept_in_a_configmap(
    audited: Audited, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    state = _copy_state(audited, tmp_path / "copy")
    file_head = read_head_file(state / HEAD_FILE)
    assert file_head is not None and file_head.head_seq == 8
    key = load_or_create_ledger_key(state / KEY_FILE)
    with FakeKubeApiServer() as apiserver:
        kubeconfig = str(apiserver.write_kubeconfig(tmp_path / "kubeconfig"))
        api = kube.api_client(Path(kubeconfig), in_cluster=False)
        publish = kube.ledger_head_publisher(api, namespace="istio-system")
        flags = ["--state-dir", str(state), "--kubeconfig", kubeconfig]
        code, out, _ = audit(capsys, "verify", *flags)
        assert code == 0 and "ConfigMap" not in out  # none published yet
        publish(file_head)
        code, out, _ = audit(capsys, "verify", *flags)
        assert code == 0 and "ConfigMap istio-system/meshca-ledger-head" in out
        # The cluster saw a head the database no longer reaches: it was rolled back.
        publish(cp.sign(dataclasses.replace(file_head, head_seq=9, count=9, signature=""), key))
        code, out, _ = audit(capsys, "verify", *flags)
        assert code == 1 and "rolled back" in out
        # ...or one at the same entry with another hash: it was replaced.
        publish(cp.sign(dataclasses.replace(file_head, head_hash="ab" * 32, signature=""), key))
        code, out, _ = audit(capsys, "verify", *flags)
        assert code == 1 and "replaced or rolled back" in out


def test_a_verification_ignores_entries_written_after_it_began(ledger_url: str, tmp_path: Path) -> None:
    with ledger_support.ledger_rig(ledger_url, tmp_path) as rig:
        rig.issue(2)
        rig.checkpoint()
        reader = open_reader(ledger_url)
        try:
            with reader.engine.connect() as conn:
                view = SnapshotView(conn)
                assert view.head()[0] == 2  # the snapshot is taken at the first read
                rig.issue(3)  # a CA still writing while the check reads
                rig.checkpoint()
                result = verify_ledger(view, rig.key.public_key())
        finally:
            reader.dispose()
        assert result.ok and result.entries_checked == 2, result.summary()
        assert rig.verify().entries_checked == 5


# --------------------------------------------------------------------------- forged entries


@pytest.fixture
def forgeable(ledger_url: str, tmp_path: Path) -> Iterator[tuple[LedgerRig, list[str]]]:
    """The ledger of a CA still running, on SQLite or PostgreSQL, and the audit flags that find it:

    seq 1 ca_event, 2-4 issued, 5 refused | signed checkpoint 5 (the head file) | 6-7 issued
    """
    state = tmp_path / "state"
    with ledger_support.ledger_rig(ledger_url, state) as rig:
        rig.event("created")
        rig.issue(3)
        rig.refuse()
        rig.checkpoint()
        rig.issue(2)
        yield rig, ["--ledger", ledger_url, "--state-dir", str(state)]


def test_verify_says_how_many_entries_await_a_signature(
    forgeable: tuple[LedgerRig, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    rig, flags = forgeable
    code, out, _ = audit(capsys, "verify", *flags)
    assert code == 0
    assert out.splitlines()[0] == (
        "ledger OK: 7 entries and 1 signed checkpoints verified; entries 6-7, newer than the last "
        "signed checkpoint (entry 5), are chain-verified but not yet covered by a signature"
    )
    code, out, _ = audit(capsys, "verify", *flags, "-o", "json")
    result = json.loads(out)
    assert code == 0 and (result["unsigned_entries"], result["signed_through"]) == (2, 5)
    rig.checkpoint()
    code, out, _ = audit(capsys, "verify", *flags)
    assert code == 0 and out.splitlines()[0] == "ledger OK: 7 entries and 2 signed checkpoints verified"


@pytest.mark.parametrize("relink", [False, True], ids=["hashes-copied", "linked-on"])
def test_an_issuance_forged_past_the_head_is_never_shown_as_genuine(
    forgeable: tuple[LedgerRig, list[str]], capsys: pytest.CaptureFixture[str], relink: bool
) -> None:
    """A copy of an issuance under a new serial, appended after the last entry as someone with
    access to the database would: its hashes copied, or chained on from the last entry."""
    rig, flags = forgeable
    assert append_past_head(rig.store, relink=relink) == 8
    code, out, _ = audit(capsys, "verify", *flags)
    assert code == 1
    assert out.startswith("ledger TAMPERED at entry 8: it lies past the head the CA recorded (entry 7)")
    refusals = (["list"], ["list", "-o", "json"], ["show", FORGED_SERIAL], ["export"], ["report"])
    for action in (*refusals, ["export", "--format", "csv"], ["report", "-o", "csv"]):
        code, out, err = audit(capsys, *action, *flags)
        assert code == 1, action
        assert "meshca: error: the ledger fails its hash chain at entry 8: it lies past the head" in err
        assert FORGED_SERIAL not in out and "Traceback" not in err
    # What leaves the forged entry out is still answered, each entry shown checked.
    code, out, _ = audit(capsys, "list", "--status", "refused", "-o", "json", *flags)
    assert code == 0 and seqs_of(out) == [5]
    genuine = rig.store.indexed_row(2)
    assert genuine is not None
    assert audit(capsys, "show", genuine["serial"], *flags)[0] == 0


def test_an_entry_edited_and_rehashed_is_refused_and_so_is_its_neighbour(
    forgeable: tuple[LedgerRig, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """Entry 3 edited and its own hash recomputed: it links to entry 2, but entry 4 no longer
    links back to it."""
    rig, flags = forgeable
    row = rig.store.indexed_row(3)
    assert row is not None
    content = canonical({**json.loads(row["content"]), "not_after": "2099-01-01T00:00:00.000000Z"})
    ledger_support.sql(
        rig.store,
        "UPDATE ledger_entries SET content = :c, not_after = :n, entry_hash = :h WHERE seq = 3",
        c=content,
        n="2099-01-01T00:00:00.000000Z",
        h=chain_hash(row["prev_hash"], content),
    )
    serials = {seq: (rig.store.indexed_row(seq) or {})["serial"] for seq in (2, 3, 4)}
    code, _, err = audit(capsys, "show", serials[3], *flags)
    assert code == 1 and "at entry 3: entry 4 does not link back to it" in err
    code, _, err = audit(capsys, "show", serials[4], *flags)
    assert code == 1 and "at entry 4: its previous-hash link does not match" in err
    assert audit(capsys, "show", serials[2], *flags)[0] == 0
    code, _, err = audit(capsys, "list", "--valid-at", "2098-01-01", *flags)
    assert code == 1 and "at entry 3" in err


def test_a_report_checks_the_span_it_counts(
    ledger_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    with ledger_support.ledger_rig(ledger_url, state) as rig:
        rig.issue(2)  # 1-2
        rig.clock.advance(2 * HOUR)
        later = rig.clock.now()
        rig.issue(2)  # 3-4
        rig.refuse()  # 5
        ledger_support.sql(rig.store, "UPDATE ledger_entries SET namespace = 'other' WHERE seq = 1")
        flags = ["--ledger", ledger_url, "--state-dir", str(state), "--at", later.isoformat(), "-o", "json"]
        code, out, _ = audit(capsys, "report", *flags, "--since", later.isoformat())
        assert code == 0 and [i["issued"] for i in json.loads(out)["identities"]] == [2, 0]
        code, out, err = audit(capsys, "report", *flags)
        assert code == 1 and out == ""
        assert "fails its hash chain at entry 1: its namespace column(s) differ from its content" in err
        code, out, err = audit(capsys, "report", *flags, "--until", later.isoformat())
        assert code == 1 and "at entry 1" in err


def test_an_export_stops_at_the_first_entry_that_fails(
    forgeable: tuple[LedgerRig, list[str]],
) -> None:
    rig, _ = forgeable
    append_past_head(rig.store)
    reader = open_reader(rig.store.url)
    exported: list[int] = []
    try:
        with pytest.raises(LedgerTamperedError) as raised:
            exported.extend(e["seq"] for e in queries.export(reader, queries.AuditFilter(), batch=3))
    finally:
        reader.dispose()
    assert exported == [1, 2, 3, 4, 5, 6] and raised.value.seq == 8


# --------------------------------------------------------------------------- queries on both databases


def test_queries_on_sqlite_and_postgresql(ledger_url: str, tmp_path: Path) -> None:
    with ledger_support.ledger_rig(ledger_url, tmp_path) as rig:
        cart = rig.issue(2, ttl=HOUR)
        rig.clock.advance(HOUR / 2)
        rig.issue(1, ttl=40 * HOUR, namespace="web", account="front")
        rig.refuse("token_expired")
        rig.event("loaded")
        now = rig.clock.now()
        reader = open_reader(ledger_url)
        try:
            newest = [e["seq"] for e in queries.list_entries(reader, queries.AuditFilter())]
            valid = queries.list_entries(reader, queries.AuditFilter(valid_at=now + HOUR))
            shop = queries.list_entries(reader, queries.AuditFilter(namespace="shop", status="issued"))
            late = list(queries.export(reader, queries.AuditFilter(since=now - timedelta(minutes=1))))
            shown = queries.find_serial(reader, cart[0].content["serial"])
            report = queries.report(reader, now, IssuancePolicy(max_ttl=24 * HOUR))
        finally:
            reader.dispose()
    assert newest == [5, 4, 3, 2, 1]
    assert [e["seq"] for e in valid] == [3]  # the two 1h certificates expired half an hour before
    assert [e["seq"] for e in shop] == [2, 1]
    assert [e["seq"] for e in late] == [3, 4, 5]
    assert [e["seq"] for e in shown] == [1]
    assert [(i.namespace, i.issued, i.valid_now, i.ttl_buckets, i.refused) for i in report.identities] == [
        ("shop", 2, 2, (2, 0, 0, 0, 0), 0),
        ("web", 1, 1, (0, 0, 1, 0, 0), 0),
        (None, 0, 0, (0, 0, 0, 0, 0), 1),
    ]
    assert [(v.seq, v.lifetime_seconds) for v in report.violations] == [(3, 40 * 3600)]
    assert report.at == timestamp(now)


def test_the_reader_never_writes(audited: Audited) -> None:
    reader = open_reader(sqlite_url(audited.ca.state_dir / "ledger.db"))
    try:
        with pytest.raises(OperationalError, match="readonly"), reader.engine.connect() as conn:
            conn.execute(text("DELETE FROM ledger_entries"))
    finally:
        reader.dispose()
    assert LedgerStore(sqlite_url(audited.ca.state_dir / "ledger.db")).count() == 8


# --------------------------------------------------------------------------- the admin gRPC service


def _admin_stub(ca: RunningCa, **channel: Any) -> pb_grpc.LedgerAdminStub:
    return pb_grpc.LedgerAdminStub(ca.channel(**channel))


def _renewal(audited: Audited, name: str) -> dict[str, Any]:
    key, chain = audited.creds[name]
    return {"port": audited.ca.server.ports["renew"], "client_key": key, "client_chain": chain}


def _error(call: Any, request: Any, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=10, **kwargs)
    return caught.value


def test_admin_identity_with_a_client_certificate(audited: Audited) -> None:
    stub = _admin_stub(audited.ca, **_renewal(audited, "admin"))
    listed = stub.ListEntries(pb.ListEntriesRequest(filter=pb.EntryFilter(namespace="shop")), timeout=10)
    assert [e.seq for e in listed.entries] == [4, 3, 2] and not listed.truncated
    entry = listed.entries[2]
    assert entry.serial == audited.serials["cart-24h"] and entry.pod_name == "cart-1"
    assert json.loads(entry.content_json)["spiffe_id"] == CART
    limited = stub.ListEntries(pb.ListEntriesRequest(limit=2), timeout=10)
    assert [e.seq for e in limited.entries] == [8, 7] and limited.truncated
    window = pb.EntryFilter(since=audited.at(HOUR), until=audited.at(2 * HOUR), status="refused")
    refused = stub.ListEntries(pb.ListEntriesRequest(filter=window), timeout=10)
    assert [e.seq for e in refused.entries] == [6, 5]
    shown = stub.ShowSerial(pb.ShowSerialRequest(serial=audited.serials["checkout-40h"]), timeout=10)
    assert [e.seq for e in shown.entries] == [4]
    report = stub.Report(
        pb.ReportRequest(at=audited.at(2 * HOUR + timedelta(minutes=1)), max_ttl="24h"), timeout=10
    )
    assert report.violations_total == 1 and report.violations[0].serial == audited.serials["checkout-40h"]
    cart = next(i for i in report.identities if i.spiffe_id == CART)
    assert (cart.issued, cart.valid_now) == (2, 1)
    assert {b.label: b.count for b in cart.ttl} == {"<=1h": 1, "<=24h": 1, "<=7d": 0, "<=90d": 0, ">90d": 0}
    # The CA's own policy (max 48h) by default: no violation.
    assert stub.Report(pb.ReportRequest(at=audited.at(2 * HOUR)), timeout=10).violations_total == 0
    verified = stub.Verify(pb.VerifyRequest(), timeout=30)
    assert verified.ok and verified.entries_checked == 8 and verified.summary.startswith("ledger OK")


def test_admin_identity_with_a_bearer_token(audited: Audited) -> None:
    stub = _admin_stub(audited.ca)
    token = audited.ca.token("istio-system", "admin")
    listed = stub.ListEntries(
        pb.ListEntriesRequest(filter=pb.EntryFilter(status="ca_event")),
        metadata=[("authorization", f"Bearer {token}")],
        timeout=10,
    )
    assert [e.seq for e in listed.entries] == [1]


def test_another_identity_is_denied(audited: Audited) -> None:
    stub = _admin_stub(audited.ca, **_renewal(audited, "cart-24h"))
    for call, request in (
        (stub.ListEntries, pb.ListEntriesRequest()),
        (stub.ShowSerial, pb.ShowSerialRequest(serial="ab")),
        (stub.Report, pb.ReportRequest()),
        (stub.Verify, pb.VerifyRequest()),
    ):
        error = _error(call, request)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert f"{CART} is not an admin identity" in str(error.details())


def test_no_credentials_is_unauthenticated(audited: Audited) -> None:
    error = _error(_admin_stub(audited.ca).ListEntries, pb.ListEntriesRequest())
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "no credentials" in str(error.details())


def test_bad_admin_requests_are_invalid_arguments(audited: Audited) -> None:
    stub = _admin_stub(audited.ca, **_renewal(audited, "admin"))
    for call, request, message in (
        (stub.ListEntries, pb.ListEntriesRequest(filter=pb.EntryFilter(since="soon")), "is not a time"),
        (stub.ListEntries, pb.ListEntriesRequest(filter=pb.EntryFilter(status="lost")), "not one of"),
        (stub.ListEntries, pb.ListEntriesRequest(limit=5000), "over 1000"),
        (stub.ShowSerial, pb.ShowSerialRequest(serial="zz"), "not a certificate serial"),
        (stub.Report, pb.ReportRequest(filter=pb.EntryFilter(status="issued")), "filter it by identity"),
        (stub.Report, pb.ReportRequest(max_ttl="forever"), "max_ttl"),
    ):
        error = _error(call, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, message
        assert message in str(error.details())


def test_with_no_admin_identity_the_service_refuses_everyone(ca: RunningCa) -> None:
    token = ca.token("istio-system", "admin")
    error = _error(
        _admin_stub(ca).ListEntries, pb.ListEntriesRequest(), metadata=[("authorization", f"Bearer {token}")]
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "--admin-identity" in str(error.details()) and "MESHCA_ADMIN_IDENTITY" in str(error.details())


def test_the_admin_service_refuses_an_entry_that_fails_the_chain(tmp_path: Path) -> None:
    ca = start_ca(tmp_path / "state", "--admin-identity", ADMIN)
    try:
        ca.request(token=ca.token("shop", "cart"))
        assert ca.server.ledger is not None
        store = ca.server.ledger.store
        _wait_for_entries(ca, 2)
        forged = append_past_head(store)
        admin = [("authorization", f"Bearer {ca.token('istio-system', 'admin')}")]
        stub = _admin_stub(ca)
        for call, request in (
            (stub.ListEntries, pb.ListEntriesRequest()),
            (stub.ShowSerial, pb.ShowSerialRequest(serial=FORGED_SERIAL)),
            (stub.Report, pb.ReportRequest()),
        ):
            error = _error(call, request, metadata=admin)
            assert error.code() == grpc.StatusCode.DATA_LOSS
            assert f"the ledger fails its hash chain at entry {forged}" in str(error.details())
        verified = stub.Verify(pb.VerifyRequest(), metadata=admin, timeout=30)
        assert not verified.ok and verified.bad_seq == forged
    finally:
        ca.stop()


def test_threaded_server_and_a_ca_without_ledger(tmp_path: Path) -> None:
    threaded = start_ca(tmp_path / "threaded", "--grpc-server", "threaded", "--admin-identity", ADMIN)
    try:
        admin = [("authorization", f"Bearer {threaded.token('istio-system', 'admin')}")]
        listed = _admin_stub(threaded).ListEntries(pb.ListEntriesRequest(), metadata=admin, timeout=10)
        assert [e.kind for e in listed.entries] == ["ca_event"]
        other = [("authorization", f"Bearer {threaded.token('shop', 'cart')}")]
        error = _error(_admin_stub(threaded).Verify, pb.VerifyRequest(), metadata=other)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        threaded.stop()
    environ = {"MESHCA_ADMIN_IDENTITY": f"spiffe://cluster.local/ns/ops/sa/x,{ADMIN}"}
    unledgered = start_ca(tmp_path / "off", "--ledger", "off", environ=environ)
    try:
        admin = [("authorization", f"Bearer {unledgered.token('istio-system', 'admin')}")]
        error = _error(_admin_stub(unledgered).Report, pb.ReportRequest(), metadata=admin)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "--ledger off" in str(error.details())
    finally:
        unledgered.stop()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not-an-id", "invalid SPIFFE ID"),
        ("spiffe://other.domain/ns/a/sa/b", "is not in trust domain cluster.local"),
    ],
)
def test_bad_admin_identities_are_config_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str, message: str
) -> None:
    code = main(["serve", "--state-dir", str(tmp_path), "--admin-identity", value])
    assert code == 2
    assert message in capsys.readouterr().err
