"""`meshca ca status|rotate` against a running CA on the same state directory, its clock driven
by the test: each transition, each refusal with its reason, the ledger's records, a restart."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509

from ca.cli.main import build_parser
from ca.common.clock import SystemClock
from ca.errors import UnavailableError
from ca.ledger import queries
from ca.ledger.entries import CA_SLOT
from ca.ledger.reader import open_reader
from ca.server.ca_command import EXIT_REFUSED, run_ca
from tests.support.ca_server import RunningCa, start_ca
from tests.support.clock import FakeClock

PUBLISH = "--ca-root-publish"


@pytest.fixture
def running(tmp_path: Path) -> Iterator[RunningCa]:
    ca = start_ca(tmp_path / "state", PUBLISH, "10m", clock=FakeClock())
    yield ca
    ca.stop()


def meshca_ca(ca: RunningCa, *words: str, after_turn: Callable[[], None] = lambda: None) -> tuple[int, str]:
    """Run the command while the CA answers: the test gives the CA its turn (as its scheduler
    does every second), then calls `after_turn`, until the command has its answer."""
    wait = ["--wait", "30s"] if words[0] == "rotate" else []
    args = build_parser({}).parse_args(["ca", *words, "--state-dir", str(ca.state_dir), *wait])
    out = io.StringIO()
    if words[0] == "status":  # what the CA reported at its last turn, dated by its clock
        ca.server._ca_keys_turn()
        return run_ca(args, clock=ca.clock, out=out), out.getvalue()
    result: list[int] = []
    done = threading.Event()

    def command() -> None:
        try:
            result.append(run_ca(args, clock=SystemClock(), out=out))
        finally:
            done.set()

    thread = threading.Thread(target=command)
    thread.start()
    while not done.wait(0.05):
        ca.server._ca_keys_turn()
        after_turn()
    thread.join()
    return result[0], out.getvalue()


def slot_records(ca: RunningCa) -> list[dict[str, object]]:
    reader = open_reader(ca.server.cfg.ledger_url or "")
    try:
        return [dict(e) for e in queries.export(reader, queries.AuditFilter(status=CA_SLOT), batch=50)]
    finally:
        reader.dispose()


def test_prepare_activate_retire_each_refused_while_unsafe_then_made(running: RunningCa) -> None:
    ca = running
    code, out = meshca_ca(ca, "status")
    assert code == 0 and "1     active" in out and "held by 0 of 0 connected agents" in out

    code, out = meshca_ca(ca, "rotate", "--prepare", "--new-root")
    assert code == 0 and "slot 2: new -> prepared" in out
    bundle = x509.load_pem_x509_certificates(ca.bundle)
    assert len(bundle) == 2  # the new root is published before it signs anything

    code, out = meshca_ca(ca, "rotate", "--activate")
    assert code == EXIT_REFUSED and "published for 0s of at least 600s" in out

    code, out = meshca_ca(ca, "rotate", "--activate", "--dry-run", "--force")
    assert code == 0 and "would make activate" in out
    assert ca.server.keys is not None and ca.server.keys.keyring.active.id == "1"

    ca.clock.advance(timedelta(minutes=10))
    ca.server._ca_keys_turn()  # the schedule activates it: no agent is connected to wait for
    assert ca.server.keys.keyring.active.id == "2"
    signing = ca.server.keys.keyring.active.signing_cert
    assert ca.server.issuer.authority.signing_cert == signing  # new leaves come from the new slot
    assert x509.load_pem_x509_certificates(ca.server.serving.current.chain_pem)[1] == signing

    code, out = meshca_ca(ca, "rotate", "--retire")
    assert code == EXIT_REFUSED and "may still be live" in out
    code, out = meshca_ca(ca, "rotate", "--retire", "--force")
    assert code == 0 and "slot 1: retiring -> retired (forced)" in out
    assert len(x509.load_pem_x509_certificates(ca.bundle)) == 1

    code, out = meshca_ca(ca, "status", "--format", "json")
    status = json.loads(out)
    assert [s["id"] for s in status["slots"]] == ["2"]
    moves = [(r["slot"], r["from_state"], r["reason"], r["requested_by"]) for r in slot_records(ca)]
    assert [(slot, before, after) for slot, before, after, _ in moves] == [
        ("2", None, "prepared"),
        ("2", "prepared", "active"),
        ("1", "active", "retiring"),
        ("1", "retiring", "retired"),
    ]
    assert moves[1][3] == "schedule" and moves[0][3] != "schedule"


def test_a_prepared_slot_survives_a_restart_and_activates_afterwards(tmp_path: Path) -> None:
    clock = FakeClock()
    ca = start_ca(tmp_path / "state", PUBLISH, "10m", clock=clock)
    try:
        code, _ = meshca_ca(ca, "rotate", "--prepare", "--new-root")
        assert code == 0
    finally:
        ca.stop()
    again = start_ca(tmp_path / "state", PUBLISH, "10m", clock=clock)
    try:
        assert again.server.keys is not None and again.server.keys.keyring.prepared is not None
        assert len(x509.load_pem_x509_certificates(again.bundle)) == 2
        clock.advance(timedelta(minutes=10))
        again.server._ca_keys_turn()
        assert again.server.keys.keyring.active.id == "2"
    finally:
        again.stop()


def test_status_without_a_running_ca_reads_the_keyring_and_says_acknowledgements_are_unknown(
    tmp_path: Path,
) -> None:
    ca = start_ca(tmp_path / "state", clock=FakeClock())
    ca.stop()
    args = build_parser({}).parse_args(["ca", "status", "--state-dir", str(tmp_path / "state")])
    out = io.StringIO()
    assert run_ca(args, out=out) == 0
    assert "acknowledgements unknown" in out.getvalue() and "1     active" in out.getvalue()


def test_a_transition_with_no_ca_running_says_to_start_one(tmp_path: Path) -> None:
    ca = start_ca(tmp_path / "state", clock=FakeClock())
    ca.stop()
    args = build_parser({}).parse_args(
        ["ca", "rotate", "--prepare", "--state-dir", str(tmp_path / "state"), "--wait", "1s"]
    )
    with pytest.raises(UnavailableError, match="start `meshca serve` on this --state-dir"):
        run_ca(args, out=io.StringIO())


def test_now_prepares_once_follows_its_slot_through_activation_and_orders_the_reissue(
    running: RunningCa,
) -> None:
    ca = running
    ca.request(token=ca.token("shop", "cart"))  # a leaf of slot 1, to be re-issued
    assert ca.server.keys is not None
    keys = ca.server.keys
    turns_waiting = []

    def publishing_time_passes() -> None:
        # Several turns pass with the slot waiting; then its publishing time is over and the
        # schedule activates it before the command asks again.
        if keys.keyring.prepared is not None and len(turns_waiting) < 4:
            turns_waiting.append(1)
            if len(turns_waiting) == 4:
                ca.clock.advance(timedelta(minutes=10))

    code, text = meshca_ca(ca, "rotate", "--now", "--new-root", after_turn=publishing_time_passes)
    assert code == 0, text
    assert "slot 2: new -> prepared" in text and "waiting: the new root has been published" in text
    assert "ordered 1 certificates re-issued: rotation order ro-" in text
    assert [(s.id, str(s.state)) for s in keys.keyring.slots] == [("1", "retiring"), ("2", "active")]


def test_a_file_that_is_not_a_request_is_dropped_and_does_not_hold_up_the_next(running: RunningCa) -> None:
    inbox = running.state_dir / "ca-requests"
    inbox.mkdir(exist_ok=True)
    (inbox / "aaaa.request.json").write_text("{not json")
    (inbox / "bbbb.request.json").write_text('{"unknown": 1}')
    code, out = meshca_ca(running, "status")
    assert code == 0
    code, out = meshca_ca(running, "rotate", "--prepare", "--dry-run")
    assert code == 0 and "would make prepare" in out
    assert not list(inbox.glob("*.request.json"))
