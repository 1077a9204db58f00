"""The CA's signing slots at run time: transitions, the schedule, and who hears of a change.

`CaKeys` holds the keyring the CA signs with. A transition (by the schedule or an operator)
is decided by the pure rules of `ca.issuance.slots`, stored (compare-and-swap, so two replicas
never make the same transition twice), recorded in the ledger, and then handed to every
listener: the issuer, the serving certificate, the trust bundle file, the agents' control
streams, the ConfigMap publisher. Another process's transition (a replica, the CLI) is
picked up by `refresh`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from ca.common.clock import Clock
from ca.errors import ConfigError, MeshcaError, UnsafeTransitionError
from ca.issuance.authority import SigningAuthority
from ca.issuance.selfsigned import RootFactory
from ca.issuance.slots import (
    AckSource,
    Keyring,
    RotationPolicy,
    Slot,
    SlotState,
    Step,
    StepKind,
    StoredKeyring,
    Transition,
    activate,
    activation_check,
    due_step,
    next_step,
    prepare,
    retire,
)
from ca.server.ca_requests import CaAnswer, CaRequest

log = logging.getLogger("meshca")
SCHEDULE = "schedule"
KEYRING_CHANGED = "keyring_changed"  # the reason of a store's refused compare-and-swap


class KeyringStore(Protocol):
    @property
    def where(self) -> str: ...

    def read(self) -> StoredKeyring | None: ...

    def version(self) -> str | None: ...

    def save(self, keyring: Keyring, expected_version: str) -> StoredKeyring: ...


class TransitionRecorder(Protocol):
    def __call__(self, transition: Transition, slot: Slot, *, requested_by: str, why: str) -> None: ...


KeyringListener = Callable[[Keyring], None]


ACTIONS = ("prepare", "activate", "retire")


@dataclass(frozen=True, kw_only=True)
class Outcome:
    action: str
    transitions: tuple[Transition, ...]
    dry_run: bool
    why: str


class CaKeys:
    def __init__(
        self,
        *,
        stored: StoredKeyring,
        store: KeyringStore,
        factory: RootFactory | None,
        policy: RotationPolicy,
        clock: Clock,
        acks: AckSource,
        record: TransitionRecorder | None = None,
    ) -> None:
        self._stored = stored
        self._store = store
        self._factory = factory
        self._policy = policy
        self._clock = clock
        self._acks = acks
        self._record = record
        self._listeners: list[KeyringListener] = []
        self._lock = threading.RLock()

    @property
    def keyring(self) -> Keyring:
        return self._stored.keyring

    @property
    def policy(self) -> RotationPolicy:
        return self._policy

    def acknowledgement(self, root_fingerprint: str) -> tuple[int, int]:
        ack = self._acks(root_fingerprint)
        return ack.holding, ack.connected

    def listen(self, listener: KeyringListener) -> None:
        self._listeners.append(listener)

    @property
    def acks(self) -> AckSource:
        return self._acks

    def set_acks(self, acks: AckSource) -> None:
        self._acks = acks

    def set_recorder(self, record: TransitionRecorder) -> None:
        self._record = record

    def offer(self, material: SigningAuthority, *, requested_by: str) -> Outcome | None:
        """Plugged-in material as found on disk: prepare it when it is new (the operator put the
        next generation in place); nothing when a slot already holds it."""
        with self._lock:
            self.refresh()
            keyring = self.keyring
            if any(slot.signing_fingerprint == material.fingerprint for slot in keyring.slots):
                return None
            slot = Slot(
                id=keyring.next_id(),
                state=SlotState.PREPARED,
                authority=material,
                since=self._clock.now(),
            )
            result, transitions = prepare(keyring, slot)
            why = "new plugged-in CA material"
            self._commit(result, transitions, requested_by=requested_by, why=why)
            return Outcome(action="prepare", transitions=tuple(transitions), dry_run=False, why=why)

    def next_step(self) -> Step | None:
        return next_step(self.keyring, self._policy)

    def activation_why(self) -> str:
        return activation_check(self.keyring, self._clock.now(), self._policy, self._acks).why

    def request(
        self,
        action: str,
        *,
        force: bool = False,
        dry_run: bool = False,
        requested_by: str,
        new_root: bool = False,
    ) -> Outcome:
        """An operator's transition; UnsafeTransitionError with the reason when it is unsafe."""
        if action not in ACTIONS:
            raise ConfigError(f"unknown CA transition {action!r}; use one of {', '.join(ACTIONS)}")
        with self._lock:
            self.refresh()
            keyring, transitions, why = self._decide(action, force=force, new_root=new_root)
            if dry_run:
                return Outcome(action=action, transitions=tuple(transitions), dry_run=True, why=why)
            self._commit(keyring, transitions, requested_by=requested_by, why=why)
            return Outcome(action=action, transitions=tuple(transitions), dry_run=False, why=why)

    def tick(self) -> Outcome | None:
        """The schedule's turn (on the leader): make the transition that is due, if one is."""
        with self._lock:
            self.refresh()
            step = due_step(self.keyring, self._clock.now(), self._policy, self._acks)
            if step is None:
                return None
            if step.kind is StepKind.PREPARE and self._factory is None:
                return None
            keyring, transitions, _ = self._decide(str(step.kind), force=False, new_root=step.new_root)
            try:
                self._commit(keyring, transitions, requested_by=SCHEDULE, why=step.why)
            except ConfigError as err:
                if err.reason != KEYRING_CHANGED:
                    raise
                # Another replica made a transition since the refresh above; _commit adopted it.
                log.info("another replica changed the CA keyring first; adopted its keyring")
                return None
            return Outcome(action=str(step.kind), transitions=tuple(transitions), dry_run=False, why=step.why)

    def refresh(self) -> bool:
        """Adopt the stored keyring if another process changed it; True if it changed."""
        with self._lock:
            if self._store.version() == self._stored.version:
                return False
            stored = self._store.read()
            if stored is None or stored.version == self._stored.version:
                return False
            self._stored = stored
        log.info("CA keyring changed elsewhere; adopted it", extra={"active_slot": stored.keyring.active.id})
        self._tell(stored.keyring)
        return True

    def _decide(self, action: str, *, force: bool, new_root: bool) -> tuple[Keyring, list[Transition], str]:
        keyring, now = self.keyring, self._clock.now()
        if action == "prepare":
            slot = self._new_slot(keyring, new_root=new_root)
            result, transitions = prepare(keyring, slot)
            kind = "a new root and signing CA" if new_root else "a signing CA under the current root"
            return result, transitions, f"prepared {kind}"
        if action == "activate":
            why = activation_check(keyring, now, self._policy, self._acks).why
            result, transitions = activate(keyring, now, self._policy, self._acks, force=force)
            return result, transitions, why
        result, transitions = retire(keyring, now, self._policy, force=force)
        return result, transitions, "the leaves of the retiring slot have expired"

    def _new_slot(self, keyring: Keyring, *, new_root: bool) -> Slot:
        if self._factory is None:
            raise UnsafeTransitionError(
                "this CA signs with plugged-in material (--cacerts): meshca holds no root key to make "
                "the next generation; put the new files in the cacerts directory instead",
                reason="plugged_in",
            )
        if keyring.prepared is not None:
            raise UnsafeTransitionError(
                f"slot {keyring.prepared.id} is already prepared; activate it before preparing another",
                reason="already_prepared",
            )
        under = None if new_root or keyring.active.root_key is None else keyring.active
        return self._factory.new_slot(
            keyring.next_id(),
            signing_ttl=self._policy.signing_ttl,
            root_ttl=self._policy.root_ttl,
            under=under,
        )

    def _commit(
        self, keyring: Keyring, transitions: Sequence[Transition], *, requested_by: str, why: str
    ) -> None:
        previous = self._stored
        try:
            self._stored = self._store.save(keyring, previous.version)
        except ConfigError as err:
            if err.reason == KEYRING_CHANGED:
                self.refresh()  # the other writer's keyring is the one to sign with now
            raise
        try:
            self._record_all(previous.keyring, keyring, transitions, requested_by=requested_by, why=why)
        finally:
            # Stored is done: sign with it even when the ledger could not record it.
            self._tell(keyring)

    def _record_all(
        self,
        previous: Keyring,
        keyring: Keyring,
        transitions: Sequence[Transition],
        *,
        requested_by: str,
        why: str,
    ) -> None:
        slots = {s.id: s for s in (*previous.slots, *keyring.slots)}
        for transition in transitions:
            slot = slots[transition.slot_id]
            log.info(
                "CA slot transition",
                extra={
                    "slot": transition.slot_id,
                    "from_state": str(transition.from_state) if transition.from_state else None,
                    "to_state": str(transition.to_state),
                    "signing_fingerprint": transition.signing_fingerprint,
                    "requested_by": requested_by,
                    "forced": transition.forced,
                },
            )
            if self._record is not None:
                self._record(transition, slot, requested_by=requested_by, why=why)

    def _tell(self, keyring: Keyring) -> None:
        for listener in self._listeners:
            try:
                listener(keyring)
            except Exception:
                log.exception("a CA keyring listener failed; the others were still told")


Reissue = Callable[[datetime, str, str], str]
"""Orders every leaf issued before a time to be replaced; returns what it did, in words."""


def describe(transition: Transition) -> str:
    before = str(transition.from_state) if transition.from_state else "new"
    forced = " (forced)" if transition.forced else ""
    return (
        f"slot {transition.slot_id}: {before} -> {transition.to_state}{forced}; "
        f"signing {transition.signing_fingerprint[:16]}, "
        f"root {', '.join(f[:16] for f in transition.root_fingerprints)}"
    )


def answer_ca_request(keys: CaKeys, request: CaRequest, *, reissue: Reissue) -> CaAnswer:
    """Make (or refuse) an operator's transition. `now` is prepare, then activate once the agents
    hold the new root (answered not-done until then; the CLI asks again), then a re-issue order
    for every leaf the old slot signed."""
    try:
        if request.action != "now":
            outcome = keys.request(
                request.action,
                force=request.force,
                dry_run=request.dry_run,
                requested_by=request.requested_by,
                new_root=request.new_root,
            )
            return CaAnswer(ok=True, done=True, lines=_lines(outcome))
        return _now(keys, request, reissue)
    except MeshcaError as err:
        return CaAnswer(ok=False, done=True, lines=(f"refused: {err.message}",), reason=err.reason)


def _lines(outcome: Outcome) -> tuple[str, ...]:
    head = "would make" if outcome.dry_run else "made"
    return (f"{head} {outcome.action}: {outcome.why}", *(describe(t) for t in outcome.transitions))


def _now(keys: CaKeys, request: CaRequest, reissue: Reissue) -> CaAnswer:
    """One step of `--now`. The first request prepares a slot (or takes the one already
    prepared) and names it in its answer; each repeat names that slot, so whether the schedule
    or this request activates it, the re-issue is ordered once, for that slot."""
    if request.dry_run:
        return CaAnswer(
            ok=True,
            done=True,
            lines=(
                "would prepare a new slot" + (" with a new root" if request.new_root else ""),
                "would activate it once the connected agents hold its root"
                + (" (at once: --force)" if request.force else ""),
                "would order every certificate issued before the activation to be re-issued",
            ),
        )
    lines: list[str] = []
    slot_id = request.slot
    if not slot_id:
        prepared = keys.keyring.prepared
        if prepared is None:
            made = keys.request("prepare", requested_by=request.requested_by, new_root=request.new_root)
            lines.extend(_lines(made))
            slot_id = made.transitions[0].slot_id
        else:
            lines.append(f"following slot {prepared.id}, already prepared")
            slot_id = prepared.id
    slot = keys.keyring.find(slot_id)
    if slot.state is SlotState.PREPARED:
        check = keys.activation_why()
        try:
            lines.extend(
                _lines(keys.request("activate", force=request.force, requested_by=request.requested_by))
            )
        except UnsafeTransitionError:
            return CaAnswer(ok=True, done=False, lines=(*lines, f"waiting: {check}"), slot=slot_id)
        slot = keys.keyring.find(slot_id)
    if slot.state is not SlotState.ACTIVE:
        raise UnsafeTransitionError(
            f"slot {slot_id} is {slot.state}, not active; `--now` cannot re-issue onto it",
            reason="slot_not_active",
        )
    lines.append(f"slot {slot_id} is active since {slot.since.isoformat()}")
    lines.append(reissue(slot.since, request.requested_by, f"CA rotation --now: slot {slot_id}"))
    return CaAnswer(ok=True, done=True, lines=tuple(lines), slot=slot_id)
