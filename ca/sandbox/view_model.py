"""What `meshca up` shows (pure): the state it polled, turned into rows of text and a list of events.

The poller (`ca.sandbox.poll`) reads the processes; this module decides what a person sees:
each workload's identity, certificate serial, time to expiry and to renewal, PeerAuthentication
mode and what its enforcer accepted and refused; each call between workloads with its counts and
how the callee saw the caller; and events found by comparing one poll with the one before (a new
certificate, a mode change, calls that start failing or succeed again).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

PLAINTEXT_CALLER = ""  # as the demo app reports a caller without a certificate
SERIAL_SHOWN = 12  # hex digits of a serial on screen
EVENTS_KEPT = 8
OUTCOME_WORDS = {"accepted_mtls": "mTLS", "accepted_plaintext": "plaintext", "passthrough": "passthrough"}


# ------------------------------------------------------------------ what was polled


@dataclass(frozen=True, kw_only=True)
class Certificate:
    spiffe_id: str
    serial: str  # lowercase hex, as the ledger and the agent's log write it
    not_after: datetime


@dataclass(frozen=True, kw_only=True)
class PolicyMode:
    mode: str  # STRICT, PERMISSIVE or DISABLE
    decided_by: str  # the policy that set it (namespace/name), or "default"


@dataclass(frozen=True, kw_only=True)
class Calls:
    ok: int = 0
    failed: int = 0
    last_ok: bool | None = None  # None: no call made yet
    seen_as: str | None = None  # the identity the callee saw at the last answered call
    last_error: str | None = None


@dataclass(frozen=True, kw_only=True)
class EnforcerCounts:
    inbound: Mapping[str, int] = field(default_factory=dict)  # accepted connections by outcome
    refused: Mapping[str, int] = field(default_factory=dict)  # refused inbound connections by reason
    outbound_refused: Mapping[str, int] = field(default_factory=dict)  # refused outbound, by reason


@dataclass(frozen=True, kw_only=True)
class WorkloadState:
    name: str
    meshed: bool
    certificate: Certificate | None = None
    policy: PolicyMode | None = None
    calls: Mapping[str, Calls] = field(default_factory=dict)  # by callee
    enforcer: EnforcerCounts | None = None


@dataclass(frozen=True, kw_only=True)
class Snapshot:
    at: datetime
    workloads: tuple[WorkloadState, ...]
    policy_problem: str | None = None  # the policy files do not validate (the enforcers keep the last good)


def calls_from_status(document: Mapping[str, Any]) -> dict[str, Calls]:
    """A demo app's `/status` calls, by callee."""
    calls = document.get("calls")
    if not isinstance(calls, Mapping):
        return {}
    found: dict[str, Calls] = {}
    for callee, count in calls.items():
        if isinstance(count, Mapping):
            found[str(callee)] = Calls(
                ok=int(count.get("ok", 0)),
                failed=int(count.get("failed", 0)),
                last_ok=count.get("last_ok"),
                seen_as=count.get("seen_as"),
                last_error=count.get("last_error"),
            )
    return found


Sample = tuple[str, Mapping[str, str], float]  # metric sample name, labels, value


def enforcer_counts(samples: Iterable[Sample]) -> EnforcerCounts:
    """Counts from an enforcer's /metrics samples (`meshca_enforcer_connections_total` and
    `meshca_enforcer_outbound_connections_total`)."""
    inbound: dict[str, int] = {}
    refused: dict[str, int] = {}
    outbound_refused: dict[str, int] = {}
    for name, labels, value in samples:
        outcome, reason = labels.get("outcome", ""), labels.get("reason", "")
        if name == "meshca_enforcer_connections_total":
            if outcome == "refused":
                refused[reason] = refused.get(reason, 0) + int(value)
            else:
                inbound[outcome] = inbound.get(outcome, 0) + int(value)
        elif name == "meshca_enforcer_outbound_connections_total" and outcome == "refused":
            outbound_refused[reason] = outbound_refused.get(reason, 0) + int(value)
    return EnforcerCounts(inbound=inbound, refused=refused, outbound_refused=outbound_refused)


# ------------------------------------------------------------------ what is shown


@dataclass(frozen=True, kw_only=True)
class WorkloadRow:
    name: str
    identity: str
    serial: str
    expires_in: str
    renews_in: str
    mode: str
    accepted: str
    refused: str


@dataclass(frozen=True, kw_only=True)
class CallRow:
    caller: str
    callee: str
    ok: int
    failed: int
    outcome: str  # "ok" or "failing"
    detail: str  # how the callee saw the caller, or why the last call failed


@dataclass(frozen=True, kw_only=True)
class View:
    workloads: tuple[WorkloadRow, ...]
    calls: tuple[CallRow, ...]
    events: tuple[str, ...]
    problem: str | None


def short_serial(serial: str) -> str:
    return serial if len(serial) <= SERIAL_SHOWN else serial[:SERIAL_SHOWN] + "…"


def countdown(left: timedelta) -> str:
    """`3m05s`, `42s`; `now` once it is due."""
    seconds = int(left.total_seconds())
    if seconds <= 0:
        return "now"
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def identity_text(seen_as: str | None) -> str:
    if seen_as is None:
        return "-"
    return seen_as if seen_as != PLAINTEXT_CALLER else "no identity (plaintext)"


def _counts_text(counts: Mapping[str, int], words: Mapping[str, str] | None = None) -> str:
    shown = [(words or {}).get(key, key or "?") for key in counts]
    parts = [f"{count} {label}" for label, count in zip(shown, counts.values(), strict=True) if count]
    return ", ".join(parts) if parts else "-"


def _workload_row(state: WorkloadState, at: datetime, renew_before_expiry: timedelta) -> WorkloadRow:
    cert = state.certificate
    enforcer = state.enforcer
    if not state.meshed:
        identity, serial, expires, renews = "none: no agent, no certificate", "-", "-", "-"
    elif cert is None:
        identity, serial, expires, renews = "waiting for its certificate", "-", "-", "-"
    else:
        identity, serial = cert.spiffe_id, short_serial(cert.serial)
        expires = "expired" if cert.not_after <= at else countdown(cert.not_after - at)
        renews = countdown(cert.not_after - renew_before_expiry - at)
    refused = "-"
    if enforcer is not None:
        refusals = {**enforcer.refused, **{f"out:{k}": v for k, v in enforcer.outbound_refused.items()}}
        refused = _counts_text(refusals)
    return WorkloadRow(
        name=state.name,
        identity=identity,
        serial=serial,
        expires_in=expires,
        renews_in=renews,
        mode="-" if state.policy is None else f"{state.policy.mode} ({state.policy.decided_by})",
        accepted="-" if enforcer is None else _counts_text(enforcer.inbound, OUTCOME_WORDS),
        refused=refused,
    )


def _call_rows(state: WorkloadState) -> list[CallRow]:
    rows = []
    for callee, calls in state.calls.items():
        if calls.last_ok is False:
            outcome, detail = "failing", calls.last_error or "failed"
        elif calls.last_ok:
            outcome, detail = "ok", f"seen as {identity_text(calls.seen_as)}"
        else:
            outcome, detail = "-", "no call yet"
        rows.append(
            CallRow(
                caller=state.name,
                callee=callee,
                ok=calls.ok,
                failed=calls.failed,
                outcome=outcome,
                detail=detail,
            )
        )
    return rows


def view(snapshot: Snapshot, *, renew_before_expiry: timedelta, events: Sequence[str] = ()) -> View:
    return View(
        workloads=tuple(_workload_row(s, snapshot.at, renew_before_expiry) for s in snapshot.workloads),
        calls=tuple(row for state in snapshot.workloads for row in _call_rows(state)),
        events=tuple(events),
        problem=snapshot.policy_problem,
    )


# ------------------------------------------------------------------ what changed


def changes(before: Snapshot | None, after: Snapshot) -> list[str]:
    """What happened between two polls, in words; nothing for the first poll's settled state
    except the certificates that arrived."""
    old = {} if before is None else {s.name: s for s in before.workloads}
    found: list[str] = []
    for state in after.workloads:
        previous = old.get(state.name)
        found += _certificate_change(state, previous)
        found += _mode_change(state, previous)
        found += _call_changes(state, previous)
    if after.policy_problem and (before is None or before.policy_problem != after.policy_problem):
        found.append(f"policy files refused: {after.policy_problem}")
    elif before is not None and before.policy_problem and not after.policy_problem:
        found.append("policy files valid again")
    return found


def _certificate_change(state: WorkloadState, previous: WorkloadState | None) -> list[str]:
    cert = state.certificate
    old = previous.certificate if previous is not None else None
    if cert is None or (old is not None and old.serial == cert.serial):
        return []
    if old is None:
        return [f"{state.name}: certificate {short_serial(cert.serial)} for {cert.spiffe_id}"]
    return [f"{state.name}: new certificate {short_serial(cert.serial)} (was {short_serial(old.serial)})"]


def _mode_change(state: WorkloadState, previous: WorkloadState | None) -> list[str]:
    if previous is None or previous.policy is None or state.policy is None:
        return []
    if previous.policy.mode == state.policy.mode:
        return []
    return [f"{state.name}: PeerAuthentication {previous.policy.mode} -> {state.policy.mode}"]


def _call_changes(state: WorkloadState, previous: WorkloadState | None) -> list[str]:
    found = []
    for callee, calls in state.calls.items():
        before = previous.calls.get(callee) if previous is not None else None
        last_before = before.last_ok if before is not None else None
        if calls.last_ok is False and last_before is not False:
            found.append(f"{state.name} -> {callee}: failing ({calls.last_error or 'failed'})")
        elif calls.last_ok and last_before is False:
            found.append(f"{state.name} -> {callee}: answered again, as {identity_text(calls.seen_as)}")
    return found


class Timeline:
    """The latest events, newest last, each stamped with the time of the poll that found it."""

    def __init__(self, kept: int = EVENTS_KEPT) -> None:
        self._events: deque[str] = deque(maxlen=kept)
        self._last: Snapshot | None = None

    @property
    def events(self) -> tuple[str, ...]:
        return tuple(self._events)

    def observe(self, snapshot: Snapshot) -> list[str]:
        """Take in a poll; the events it brought, stamped."""
        found = [self.note(snapshot.at, event) for event in changes(self._last, snapshot)]
        self._last = snapshot
        return found

    def note(self, at: datetime, event: str) -> str:
        """Keep an event (also one found elsewhere, such as a process that exited); it, stamped."""
        stamped = f"{at.strftime('%H:%M:%S')}  {event}"
        self._events.append(stamped)
        return stamped


@dataclass(frozen=True, kw_only=True)
class Guide:
    """What the view says around the tables: where the CA is and what to try."""

    header: str
    hints: tuple[tuple[str, str], ...]  # (what, how)
