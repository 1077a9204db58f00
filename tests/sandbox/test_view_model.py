from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from ca.sandbox.view_model import (
    Calls,
    Certificate,
    EnforcerCounts,
    PolicyMode,
    Snapshot,
    Timeline,
    WorkloadState,
    calls_from_status,
    changes,
    countdown,
    enforcer_counts,
    short_serial,
    view,
)

NOW = datetime(2026, 12, 7, 14, 0, 0, tzinfo=UTC)
WEB_ID = "spiffe://cluster.local/ns/demo/sa/web"
RENEW_BEFORE = timedelta(minutes=2)


def web(**fields: object) -> WorkloadState:
    state = WorkloadState(
        name="web",
        meshed=True,
        certificate=Certificate(
            spiffe_id=WEB_ID, serial="ab" * 16, not_after=NOW + timedelta(minutes=3, seconds=5)
        ),
        policy=PolicyMode(mode="PERMISSIVE", decided_by="demo/web"),
        calls={"api": Calls(ok=3, failed=0, last_ok=True, seen_as=WEB_ID)},
        enforcer=EnforcerCounts(inbound={"accepted_plaintext": 4}, refused={}),
    )
    return replace(state, **fields)  # type: ignore[arg-type]


def snapshot(*states: WorkloadState, at: datetime = NOW, problem: str | None = None) -> Snapshot:
    return Snapshot(at=at, workloads=states, policy_problem=problem)


def test_countdowns_read_as_minutes_and_seconds() -> None:
    assert countdown(timedelta(minutes=3, seconds=5)) == "3m05s"
    assert countdown(timedelta(seconds=42)) == "42s"
    assert countdown(timedelta(hours=2, minutes=1)) == "2h01m"
    assert countdown(timedelta(seconds=0)) == "now"
    assert countdown(timedelta(seconds=-5)) == "now"


def test_a_serial_is_cut_to_twelve_hex_digits() -> None:
    assert short_serial("0123456789abcdef") == "0123456789ab…"
    assert short_serial("abc") == "abc"


def test_a_workload_row_shows_identity_serial_expiry_renewal_mode_and_counts() -> None:
    row = view(snapshot(web()), renew_before_expiry=RENEW_BEFORE).workloads[0]
    assert (row.name, row.identity, row.serial) == ("web", WEB_ID, "abababababab…")
    assert (row.expires_in, row.renews_in) == ("3m05s", "1m05s")
    assert row.mode == "PERMISSIVE (demo/web)"
    assert (row.accepted, row.refused) == ("4 plaintext", "-")


def test_refusals_in_and_out_are_counted_by_reason() -> None:
    counts = EnforcerCounts(
        inbound={"accepted_mtls": 9}, refused={"plaintext": 2}, outbound_refused={"handshake_failed": 1}
    )
    row = view(snapshot(web(enforcer=counts)), renew_before_expiry=RENEW_BEFORE).workloads[0]
    assert row.accepted == "9 mTLS"
    assert row.refused == "2 plaintext, 1 out:handshake_failed"


def test_an_expired_certificate_and_one_not_there_yet() -> None:
    expired = web(
        certificate=Certificate(spiffe_id=WEB_ID, serial="01", not_after=NOW - timedelta(seconds=1))
    )
    row = view(snapshot(expired), renew_before_expiry=RENEW_BEFORE).workloads[0]
    assert (row.expires_in, row.renews_in) == ("expired", "now")
    waiting = view(snapshot(web(certificate=None)), renew_before_expiry=RENEW_BEFORE).workloads[0]
    assert waiting.identity == "waiting for its certificate"


def test_the_caller_without_a_certificate_says_so() -> None:
    legacy = WorkloadState(name="legacy", meshed=False, calls={"web": Calls(ok=1, last_ok=True, seen_as="")})
    shown = view(snapshot(legacy), renew_before_expiry=RENEW_BEFORE)
    assert shown.workloads[0].identity == "none: no agent, no certificate"
    assert shown.calls[0].detail == "seen as no identity (plaintext)"


def test_call_rows_say_how_the_callee_saw_the_caller_or_why_the_last_call_failed() -> None:
    failing = {"db": Calls(ok=5, failed=2, last_ok=False, seen_as=WEB_ID, last_error="ConnectionResetError")}
    rows = view(snapshot(web(), web(name="api", calls=failing)), renew_before_expiry=RENEW_BEFORE).calls
    assert [(r.caller, r.callee, r.ok, r.failed, r.outcome) for r in rows] == [
        ("web", "api", 3, 0, "ok"),
        ("api", "db", 5, 2, "failing"),
    ]
    assert rows[0].detail == f"seen as {WEB_ID}"
    assert rows[1].detail == "ConnectionResetError"


def test_app_status_is_read_into_calls() -> None:
    document = {
        "calls": {"api": {"ok": 2, "failed": 1, "last_ok": False, "seen_as": WEB_ID, "last_error": "boom"}},
        "received": {},
    }
    assert calls_from_status(document) == {
        "api": Calls(ok=2, failed=1, last_ok=False, seen_as=WEB_ID, last_error="boom")
    }
    assert calls_from_status({}) == {}


def test_enforcer_samples_are_counted_by_outcome_and_reason() -> None:
    inbound = "meshca_enforcer_connections_total"
    outbound = "meshca_enforcer_outbound_connections_total"
    samples = [
        (inbound, {"mode": "STRICT", "outcome": "accepted_mtls", "reason": "ok", "port": "1"}, 3.0),
        (inbound, {"mode": "PERMISSIVE", "outcome": "accepted_mtls", "reason": "ok", "port": "1"}, 2.0),
        (inbound, {"mode": "STRICT", "outcome": "refused", "reason": "plaintext", "port": "1"}, 4.0),
        (outbound, {"outcome": "refused", "reason": "handshake_failed", "port": "2", "target": "x"}, 1.0),
        (outbound, {"outcome": "accepted_mtls", "reason": "ok", "port": "2", "target": "x"}, 7.0),
        ("meshca_enforcer_connections_created", {"outcome": "refused", "reason": "plaintext"}, 1.7e9),
    ]
    assert enforcer_counts(samples) == EnforcerCounts(
        inbound={"accepted_mtls": 5}, refused={"plaintext": 4}, outbound_refused={"handshake_failed": 1}
    )


def test_the_first_poll_announces_each_certificate() -> None:
    assert changes(None, snapshot(web())) == [f"web: certificate abababababab… for {WEB_ID}"]


def test_a_new_serial_mode_and_failing_call_are_events() -> None:
    after = web(
        certificate=Certificate(spiffe_id=WEB_ID, serial="cd" * 16, not_after=NOW + timedelta(minutes=4)),
        policy=PolicyMode(mode="STRICT", decided_by="demo/web"),
        calls={"api": Calls(ok=3, failed=1, last_ok=False, last_error="reset")},
    )
    assert changes(snapshot(web()), snapshot(after)) == [
        "web: new certificate cdcdcdcdcdcd… (was abababababab…)",
        "web: PeerAuthentication PERMISSIVE -> STRICT",
        "web -> api: failing (reset)",
    ]


def test_calls_that_recover_are_an_event_and_steady_state_is_not() -> None:
    failing = web(calls={"api": Calls(ok=3, failed=1, last_ok=False, last_error="reset")})
    recovered = web(calls={"api": Calls(ok=4, failed=1, last_ok=True, seen_as=WEB_ID)})
    assert changes(snapshot(failing), snapshot(recovered)) == [f"web -> api: answered again, as {WEB_ID}"]
    assert changes(snapshot(web()), snapshot(web())) == []
    assert changes(snapshot(failing), snapshot(failing)) == []


def test_policy_files_refused_and_valid_again() -> None:
    assert changes(snapshot(web()), snapshot(web(), problem="demo.yaml: bad")) == [
        "policy files refused: demo.yaml: bad"
    ]
    assert changes(snapshot(web(), problem="x"), snapshot(web())) == ["policy files valid again"]


def test_the_timeline_stamps_events_and_keeps_the_latest() -> None:
    timeline = Timeline(kept=2)
    assert timeline.observe(snapshot(web())) == [f"14:00:00  web: certificate abababababab… for {WEB_ID}"]
    later = NOW + timedelta(seconds=61)
    timeline.note(later, "web-app exited (status 1)")
    timeline.observe(snapshot(web(policy=PolicyMode(mode="STRICT", decided_by="demo/web")), at=later))
    assert timeline.events == (
        "14:01:01  web-app exited (status 1)",
        "14:01:01  web: PeerAuthentication PERMISSIVE -> STRICT",
    )
