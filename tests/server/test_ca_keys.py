"""CaKeys, the CA's signing slots at run time: the schedule's transitions, activation waiting for the
agents, operators' requests and their refusals, two replicas on one store, a restart, plugged-in
material offered."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest

from ca.errors import ConfigError, UnsafeTransitionError
from ca.issuance.authority import SigningAuthority
from ca.issuance.keys import KeyAlgorithm
from ca.issuance.selfsigned import RootFactory
from ca.issuance.slots import (
    Acknowledgement,
    Keyring,
    RotationPolicy,
    Slot,
    SlotState,
    StoredKeyring,
    Transition,
)
from ca.server.ca_keys import SCHEDULE, CaKeys
from ca.server.keyring_store import KeyringDirectory
from tests.support.clock import FakeClock

POLICY = RotationPolicy(max_leaf_ttl=timedelta(days=1), max_ack_wait=timedelta(hours=6))
OPERATOR = "operator alice"
# Longer than a new root is kept in the bundle before acknowledgements can activate it.
PUBLISHED = timedelta(minutes=10)


class Agents:
    """The acknowledgements, as the test says: `connected` agents, `holding[root]` of them hold it."""

    def __init__(self, connected: int = 2) -> None:
        self.connected = connected
        self.holding: dict[str, int] = {}

    def __call__(self, root: str) -> Acknowledgement:
        return Acknowledgement(holding=self.holding.get(root, 0), connected=self.connected)

    def all_hold(self, keyring: Keyring) -> None:
        for root in keyring.bundle_fingerprints():
            self.holding[root] = self.connected


@dataclass
class Recorded:
    transition: Transition
    slot: Slot
    requested_by: str
    why: str


@dataclass
class Recorder:
    entries: list[Recorded] = field(default_factory=list)

    def __call__(self, transition: Transition, slot: Slot, *, requested_by: str, why: str) -> None:
        self.entries.append(Recorded(transition, slot, requested_by, why))

    def moves(self) -> list[tuple[str, str | None, str]]:
        return [
            (
                e.transition.slot_id,
                e.transition.from_state and str(e.transition.from_state),
                str(e.transition.to_state),
            )
            for e in self.entries
        ]


@dataclass
class Heard:
    keyrings: list[Keyring] = field(default_factory=list)

    def __call__(self, keyring: Keyring) -> None:
        self.keyrings.append(keyring)

    def states(self) -> list[list[tuple[str, SlotState]]]:
        return [[(s.id, s.state) for s in k.slots] for k in self.keyrings]


def factory(clock: FakeClock) -> RootFactory:
    return RootFactory(trust_domain="cluster.local", key_algorithm=KeyAlgorithm.EC_P256, clock=clock)


def open_keys(
    state_dir: Path,
    clock: FakeClock,
    acks: Agents,
    record: Recorder | None = None,
    *,
    store: KeyringDirectory | None = None,
) -> tuple[CaKeys, Heard]:
    store = store or KeyringDirectory(state_dir)
    stored, _ = store.load_or_create(factory(clock), POLICY, clock)
    keys = CaKeys(
        stored=stored,
        store=store,
        factory=factory(clock),
        policy=POLICY,
        clock=clock,
        acks=acks,
        record=record,
    )
    heard = Heard()
    keys.listen(heard)
    return keys, heard


def states(keys: CaKeys) -> list[tuple[str, SlotState]]:
    return [(s.id, s.state) for s in keys.keyring.slots]


def test_the_schedule_walks_a_signing_rotation_telling_listeners_and_the_ledger(tmp_path: Path) -> None:
    clock, record = FakeClock(), Recorder()
    keys, heard = open_keys(tmp_path, clock, Agents(), record)
    first = keys.keyring.active
    assert keys.tick() is None  # a new signing CA is not due for 30 days

    clock.advance(timedelta(days=30, hours=1))
    prepared = keys.tick()
    assert prepared is not None and prepared.action == "prepare"
    assert states(keys) == [("1", SlotState.ACTIVE), ("2", SlotState.PREPARED)]
    second = keys.keyring.find("2")
    assert second.root_fingerprints == first.root_fingerprints  # a signing CA under the same root

    # Under the same root every consumer already trusts it: activation follows on the next tick.
    activated = keys.tick()
    assert activated is not None and activated.action == "activate"
    assert states(keys) == [("1", SlotState.RETIRING), ("2", SlotState.ACTIVE)]
    assert keys.keyring.signing_authority().fingerprint == second.signing_fingerprint

    assert keys.tick() is None  # slot 1's leaves may live another day
    clock.advance(POLICY.max_leaf_ttl)
    retired = keys.tick()
    assert retired is not None and retired.action == "retire"
    assert states(keys) == [("2", SlotState.ACTIVE)]

    assert heard.states() == [
        [("1", SlotState.ACTIVE), ("2", SlotState.PREPARED)],
        [("1", SlotState.RETIRING), ("2", SlotState.ACTIVE)],
        [("2", SlotState.ACTIVE)],
    ]
    assert record.moves() == [
        ("2", None, "prepared"),
        ("2", "prepared", "active"),
        ("1", "active", "retiring"),
        ("1", "retiring", "retired"),
    ]
    assert {e.requested_by for e in record.entries} == {SCHEDULE}
    assert [e.slot.id for e in record.entries] == ["2", "2", "1", "1"]
    assert record.entries[0].transition.signing_fingerprint == second.signing_fingerprint
    assert record.entries[3].transition.signing_fingerprint == first.signing_fingerprint
    assert not any(e.transition.forced for e in record.entries)
    stored = KeyringDirectory(tmp_path).read()
    assert stored is not None and [(s.id, s.state) for s in stored.keyring.slots] == [("2", SlotState.ACTIVE)]


def test_a_new_root_activates_once_the_agents_hold_it(tmp_path: Path) -> None:
    clock, agents, record = FakeClock(), Agents(connected=2), Recorder()
    keys, heard = open_keys(tmp_path, clock, agents, record)
    keys.request("prepare", new_root=True, requested_by=OPERATOR)
    new_root = keys.keyring.find("2").root_fingerprints[0]
    assert new_root in keys.keyring.bundle_fingerprints()  # published before any leaf depends on it

    clock.advance(PUBLISHED)
    assert keys.tick() is None
    assert "only 0 of 2 connected agents hold the new root" in keys.activation_why()
    agents.holding[new_root] = 1
    assert keys.tick() is None
    agents.holding[new_root] = 2
    outcome = keys.tick()
    assert outcome is not None and outcome.action == "activate"
    assert "2 of 2 connected agents hold the new root" in outcome.why
    assert states(keys) == [("1", SlotState.RETIRING), ("2", SlotState.ACTIVE)]
    assert record.moves()[1:] == [("2", "prepared", "active"), ("1", "active", "retiring")]
    assert record.entries[1].why == outcome.why
    assert len(heard.keyrings) == 2


def test_a_new_root_activates_after_the_maximum_wait_without_the_agents(tmp_path: Path) -> None:
    clock, agents = FakeClock(), Agents(connected=2)
    keys, _ = open_keys(tmp_path, clock, agents)
    keys.request("prepare", new_root=True, requested_by=OPERATOR)
    clock.advance(POLICY.max_ack_wait - timedelta(seconds=1))
    assert keys.tick() is None
    clock.advance(timedelta(seconds=1))
    outcome = keys.tick()
    assert outcome is not None and outcome.action == "activate"
    assert "the maximum wait of 6:00:00 has passed (0 of 2" in outcome.why
    assert keys.keyring.active.id == "2"


def test_unsafe_requests_are_refused_with_their_reason_and_force_overrides(tmp_path: Path) -> None:
    clock, record = FakeClock(), Recorder()
    keys, heard = open_keys(tmp_path, clock, Agents(), record)

    def refused(action: str, **kwargs: bool) -> UnsafeTransitionError:
        version = KeyringDirectory(tmp_path).version()
        with pytest.raises(UnsafeTransitionError) as raised:
            keys.request(action, requested_by=OPERATOR, **kwargs)
        assert KeyringDirectory(tmp_path).version() == version
        return raised.value

    assert refused("activate").reason == "not_acknowledged"
    assert "no slot is prepared" in str(refused("activate"))
    assert refused("retire").reason == "nothing_retiring"

    keys.request("prepare", new_root=True, requested_by=OPERATOR)
    assert refused("prepare").reason == "already_prepared"
    clock.advance(PUBLISHED)
    error = refused("activate")
    assert error.reason == "not_acknowledged"
    assert "only 0 of 2 connected agents hold the new root" in str(error) and "--force" in str(error)

    forced = keys.request("activate", force=True, requested_by=OPERATOR)
    assert [t.forced for t in forced.transitions] == [True, False]
    error = refused("retire")
    assert error.reason == "leaves_live" and "slot 1 until" in str(error) and "--force" in str(error)
    retired = keys.request("retire", force=True, requested_by=OPERATOR)
    assert [(t.slot_id, t.forced) for t in retired.transitions] == [("1", True)]
    assert states(keys) == [("2", SlotState.ACTIVE)]
    assert {e.requested_by for e in record.entries} == {OPERATOR}
    assert len(heard.keyrings) == 3

    with pytest.raises(ConfigError, match="unknown CA transition 'promote'"):
        keys.request("promote", requested_by=OPERATOR)


def test_a_dry_run_says_what_would_happen_and_changes_nothing(tmp_path: Path) -> None:
    clock, record = FakeClock(), Recorder()
    keys, heard = open_keys(tmp_path, clock, Agents(), record)
    version = KeyringDirectory(tmp_path).version()
    outcome = keys.request("prepare", new_root=True, dry_run=True, requested_by=OPERATOR)
    assert outcome.dry_run and [(t.slot_id, t.to_state) for t in outcome.transitions] == [
        ("2", SlotState.PREPARED)
    ]
    assert states(keys) == [("1", SlotState.ACTIVE)]
    assert KeyringDirectory(tmp_path).version() == version
    assert record.entries == [] and heard.keyrings == []

    keys.request("prepare", requested_by=OPERATOR)
    version = KeyringDirectory(tmp_path).version()
    outcome = keys.request("activate", dry_run=True, requested_by=OPERATOR)
    assert outcome.dry_run and len(outcome.transitions) == 2
    assert keys.keyring.active.id == "1" and KeyringDirectory(tmp_path).version() == version
    assert len(record.entries) == 1 and len(heard.keyrings) == 1


def test_another_replicas_transition_is_adopted_by_refresh(tmp_path: Path) -> None:
    clock = FakeClock()
    leader, _ = open_keys(tmp_path, clock, Agents())
    follower, heard = open_keys(tmp_path, clock, Agents())
    assert follower.refresh() is False

    leader.request("prepare", new_root=True, requested_by=OPERATOR)
    assert follower.refresh() is True
    assert states(follower) == [("1", SlotState.ACTIVE), ("2", SlotState.PREPARED)]
    assert follower.keyring.find("2").signing_fingerprint == leader.keyring.find("2").signing_fingerprint
    assert heard.states() == [[("1", SlotState.ACTIVE), ("2", SlotState.PREPARED)]]
    assert follower.refresh() is False
    assert len(heard.keyrings) == 1


class RacingStore(KeyringDirectory):
    """A store whose next save lets another replica's transition land first, as when both decided
    from the same keyring."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir)
        self.before_save: list[CaKeys] = []

    def save(self, keyring: Keyring, expected_version: str) -> StoredKeyring:
        while self.before_save:
            self.before_save.pop().tick()
        return super().save(keyring, expected_version)


def test_two_replicas_ticking_at_once_make_the_transition_once(tmp_path: Path) -> None:
    clock, record = FakeClock(), Recorder()
    racing = RacingStore(tmp_path)
    loser, heard = open_keys(tmp_path, clock, Agents(), record, store=racing)
    winner, _ = open_keys(tmp_path, clock, Agents(), record)
    clock.advance(timedelta(days=30, hours=1))

    racing.before_save.append(winner)  # the winner saves between the loser's decision and its save
    assert loser.tick() is None
    assert record.moves() == [("2", None, "prepared")]
    assert [e.slot.signing_fingerprint for e in record.entries] == [
        winner.keyring.find("2").signing_fingerprint
    ]
    # The loser adopted the winner's keyring and told its listeners.
    assert states(loser) == [("1", SlotState.ACTIVE), ("2", SlotState.PREPARED)]
    assert loser.keyring.find("2").signing_fingerprint == winner.keyring.find("2").signing_fingerprint
    assert heard.states() == [[("1", SlotState.ACTIVE), ("2", SlotState.PREPARED)]]
    stored = KeyringDirectory(tmp_path).read()
    assert (
        stored is not None
        and stored.keyring.find("2").signing_fingerprint == winner.keyring.find("2").signing_fingerprint
    )

    # Both tick again: one activates, the other has nothing left to do.
    assert winner.tick() is not None
    assert loser.tick() is None
    assert record.moves() == [
        ("2", None, "prepared"),
        ("2", "prepared", "active"),
        ("1", "active", "retiring"),
    ]
    assert states(loser) == [("1", SlotState.RETIRING), ("2", SlotState.ACTIVE)]


def test_an_operators_request_over_another_replicas_change_is_refused_and_adopted(tmp_path: Path) -> None:
    clock = FakeClock()
    racing = RacingStore(tmp_path)
    mine, heard = open_keys(tmp_path, clock, Agents(), store=racing)
    other, _ = open_keys(tmp_path, clock, Agents())
    other.request("prepare", requested_by=OPERATOR)
    other.request("activate", requested_by=OPERATOR)
    clock.advance(POLICY.max_leaf_ttl)  # the other replica's schedule will retire slot 1

    racing.before_save.append(other)
    with pytest.raises(ConfigError, match="changed while this change was being made") as refused:
        mine.request("prepare", requested_by=OPERATOR)
    assert refused.value.reason == "keyring_changed"
    assert states(mine) == [("2", SlotState.ACTIVE)]
    assert heard.states()[-1] == [("2", SlotState.ACTIVE)]


def test_a_restart_resumes_from_the_recorded_state(tmp_path: Path) -> None:
    clock, agents = FakeClock(), Agents()
    keys, _ = open_keys(tmp_path, clock, agents)
    keys.request("prepare", new_root=True, requested_by=OPERATOR)
    prepared_at = clock.now()
    clock.advance(timedelta(hours=5))

    restarted, _ = open_keys(tmp_path, clock, agents)
    assert states(restarted) == [("1", SlotState.ACTIVE), ("2", SlotState.PREPARED)]
    assert restarted.keyring.find("2").since == prepared_at
    assert restarted.keyring.find("2").root_key is not None
    assert restarted.tick() is None
    clock.advance(timedelta(hours=1))  # the wait counts from the preparation, not the restart
    outcome = restarted.tick()
    assert outcome is not None and outcome.action == "activate"
    activated_at = clock.now()

    again, _ = open_keys(tmp_path, clock, agents)
    assert again.keyring.find("1").since == activated_at
    clock.advance(POLICY.max_leaf_ttl - timedelta(seconds=1))
    assert again.tick() is None
    clock.advance(timedelta(seconds=1))
    retired = again.tick()
    assert retired is not None and retired.action == "retire"
    assert states(again) == [("2", SlotState.ACTIVE)]


def plugged(clock: FakeClock) -> SigningAuthority:
    """An operator's intermediate under their own root (whose key meshca never sees)."""
    return factory(clock).new_slot("x", signing_ttl=POLICY.signing_ttl, root_ttl=POLICY.root_ttl).authority


def test_new_plugged_in_material_is_prepared_once(tmp_path: Path) -> None:
    clock, agents, record = FakeClock(), Agents(), Recorder()
    first = plugged(clock)
    store = KeyringDirectory(tmp_path)
    stored, _ = store.load_or_plug(first, clock)
    keys = CaKeys(
        stored=stored, store=store, factory=None, policy=POLICY, clock=clock, acks=agents, record=record
    )
    heard = Heard()
    keys.listen(heard)

    assert keys.offer(first, requested_by="cacerts /etc/cacerts") is None
    clock.advance(timedelta(days=20))
    second = plugged(clock)
    outcome = keys.offer(second, requested_by="cacerts /etc/cacerts")
    assert outcome is not None and outcome.action == "prepare"
    slot = keys.keyring.find("2")
    assert slot.state is SlotState.PREPARED and slot.signing_fingerprint == second.fingerprint
    assert slot.root_key is None
    version = store.version()
    assert keys.offer(second, requested_by="cacerts /etc/cacerts") is None
    assert keys.offer(first, requested_by="cacerts /etc/cacerts") is None
    assert store.version() == version
    assert record.moves() == [("2", None, "prepared")]
    assert record.entries[0].requested_by == "cacerts /etc/cacerts"
    assert len(heard.keyrings) == 1

    # Its new root waits for the agents like any other; meshca makes no generation of its own.
    clock.advance(PUBLISHED)
    assert keys.tick() is None
    agents.all_hold(keys.keyring)
    assert keys.tick() is not None and keys.keyring.active.id == "2"
    with pytest.raises(UnsafeTransitionError) as refused:
        keys.request("prepare", requested_by=OPERATOR)
    assert refused.value.reason == "plugged_in"
    clock.advance(timedelta(days=3650))
    assert keys.tick() is not None  # slot 1 retires
    assert keys.tick() is None
    assert states(keys) == [("2", SlotState.ACTIVE)]


def test_a_failing_listener_does_not_keep_the_others_from_hearing(tmp_path: Path) -> None:
    clock = FakeClock()
    keys, heard = open_keys(tmp_path, clock, Agents())

    def broken(_keyring: Keyring) -> None:
        raise RuntimeError("listener broke")

    keys.listen(broken)
    after = Heard()
    keys.listen(after)
    keys.request("prepare", requested_by=OPERATOR)
    assert len(heard.keyrings) == 1 and len(after.keyrings) == 1


def test_listeners_hear_a_stored_transition_even_when_the_ledger_fails(tmp_path: Path) -> None:
    clock, down = FakeClock(), [False]

    def ledger_down(transition: Transition, slot: Slot, *, requested_by: str, why: str) -> None:
        if down[0]:
            raise OSError("ledger unavailable")

    store = KeyringDirectory(tmp_path)
    stored, _ = store.load_or_create(factory(clock), POLICY, clock)
    keys = CaKeys(
        stored=stored,
        store=store,
        factory=factory(clock),
        policy=POLICY,
        clock=clock,
        acks=Agents(),
        record=ledger_down,
    )
    heard = Heard()
    keys.listen(heard)
    keys.request("prepare", requested_by=OPERATOR)
    down[0] = True
    with pytest.raises(OSError, match="ledger unavailable"):
        keys.request("activate", requested_by=OPERATOR)
    # The transition is stored; this replica must sign with it like every other one.
    assert states(keys) == [("1", SlotState.RETIRING), ("2", SlotState.ACTIVE)]
    assert heard.states()[-1] == [("1", SlotState.RETIRING), ("2", SlotState.ACTIVE)]
