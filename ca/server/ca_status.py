"""What `meshca ca status` shows: the slots, the trust bundle with each root's acknowledgement,
and the next scheduled transition. Pure: a document from a keyring, lines from a document."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from ca.issuance.authority import fingerprint_sha256
from ca.issuance.slots import Acknowledgement, Keyring, RotationPolicy, activation_check, next_step

STATUS_FORMAT = 1


def _time(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def status_document(
    keyring: Keyring,
    *,
    policy: RotationPolicy,
    now: datetime,
    acks: Callable[[str], Acknowledgement] | None,
    replica: str,
) -> dict[str, Any]:
    """`acks` None: no running CA to ask (the CLI reading the keyring itself)."""
    slots = [
        {
            "id": slot.id,
            "state": str(slot.state),
            "since": _time(slot.since),
            "signing_fingerprint": slot.signing_fingerprint,
            "signing_not_before": _time(slot.signing_cert.not_valid_before_utc),
            "signing_not_after": _time(slot.signing_cert.not_valid_after_utc),
            "root_fingerprints": list(slot.root_fingerprints),
            "root_not_after": _time(slot.root.not_valid_after_utc),
            "root_key_held": slot.root_key is not None,
            "leaves_end": _time(slot.leaves_end(policy.max_leaf_ttl))
            if str(slot.state) == "retiring"
            else None,
        }
        for slot in keyring.slots
    ]
    bundle = []
    for root in keyring.bundle():
        fingerprint = fingerprint_sha256(root)
        entry: dict[str, Any] = {"fingerprint": fingerprint, "not_after": _time(root.not_valid_after_utc)}
        if acks is not None:
            ack = acks(fingerprint)
            entry.update(holding=ack.holding, connected=ack.connected)
        bundle.append(entry)
    step = next_step(keyring, policy)
    document: dict[str, Any] = {
        "format": STATUS_FORMAT,
        "written_at": _time(now),
        "replica": replica,
        "slots": slots,
        "bundle": bundle,
        "next": {"step": str(step.kind), "at": _time(step.at), "why": step.why} if step is not None else None,
    }
    if keyring.prepared is not None and acks is not None:
        check = activation_check(keyring, now, policy, acks)
        document["activation"] = {"ready": check.ready, "why": check.why}
    return document


def _short(fingerprint: str) -> str:
    return fingerprint[:16]


def render_status(document: Mapping[str, Any], *, live: bool) -> list[str]:
    lines = ["SLOT  STATE      SINCE                      SIGNING           NOT AFTER                  ROOT"]
    for slot in document["slots"]:
        roots = ", ".join(_short(f) for f in slot["root_fingerprints"])
        lines.append(
            f"{slot['id']:<5} {slot['state']:<10} {slot['since'][:19]:<26} "
            f"{_short(slot['signing_fingerprint'])}  {slot['signing_not_after'][:19]:<26} {roots}"
        )
        if slot.get("leaves_end"):
            lines.append(f"      its last leaf expires by {slot['leaves_end'][:19]}; then it retires")
    lines.append("")
    lines.append("TRUST BUNDLE")
    for root in document["bundle"]:
        held = (
            f"held by {root['holding']} of {root['connected']} connected agents"
            if "holding" in root
            else "acknowledgements unknown (no running CA reported)"
        )
        lines.append(f"  {_short(root['fingerprint'])}  until {root['not_after'][:19]}  {held}")
    activation = document.get("activation")
    if activation is not None:
        lines.append("")
        state = "ready" if activation["ready"] else "waiting"
        lines.append(f"ACTIVATION {state}: {activation['why']}")
    step = document.get("next")
    lines.append("")
    if step is None:
        lines.append("NEXT: nothing scheduled (plugged-in CA: put the next generation's files in place)")
    else:
        when = f"at {step['at'][:19]}" if step["at"] else "once the agents hold the new root"
        lines.append(f"NEXT: {step['step']} {when} ({step['why']})")
    if live:
        lines.append(f"(reported by {document['replica']} at {document['written_at'][:19]})")
    return lines
