"""The CA's signing slots: transitions, their safety checks, the schedule, the stored document."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from ca.errors import CaMaterialError, UnsafeTransitionError
from ca.issuance.issuer import IssuancePolicy, Issuer
from ca.issuance.keys import KeyAlgorithm, generate_private_key
from ca.issuance.selfsigned import RootFactory
from ca.issuance.slots import (
    Acknowledgement,
    Keyring,
    RotationPolicy,
    SlotState,
    StepKind,
    activate,
    activation_check,
    due_step,
    keyring_document,
    load_keyring,
    next_step,
    prepare,
    retire,
)
from tests.support.clock import FakeClock
from tests.support.issuing import issue_leaf

POLICY = RotationPolicy(max_leaf_ttl=timedelta(days=1), min_root_publish=timedelta(0))
DAY = timedelta(days=1)


def everyone(_root: str) -> Acknowledgement:
    return Acknowledgement(holding=3, connected=3)


def nobody(_root: str) -> Acknowledgement:
    return Acknowledgement(holding=0, connected=3)


def factory(clock: FakeClock) -> RootFactory:
    return RootFactory(trust_domain="cluster.local", key_algorithm=KeyAlgorithm.EC_P256, clock=clock)


def fresh(clock: FakeClock) -> Keyring:
    slot = factory(clock).new_slot("1", signing_ttl=POLICY.signing_ttl, root_ttl=POLICY.root_ttl)
    return Keyring((slot.moved(SlotState.ACTIVE, slot.since),))


def validates(
    leaf: x509.Certificate,
    chain: list[x509.Certificate],
    roots: tuple[x509.Certificate, ...],
    clock: FakeClock,
) -> bool:
    verifier = PolicyBuilder().store(Store(list(roots))).time(clock.now()).build_client_verifier()
    try:
        verifier.verify(leaf, chain)
    except VerificationError:
        return False
    return True


def leaf_of(keyring: Keyring, clock: FakeClock) -> tuple[x509.Certificate, list[x509.Certificate]]:
    issuer = Issuer(authority=keyring.signing_authority(), policy=IssuancePolicy(), clock=clock)
    issued = issue_leaf(issuer, generate_private_key(KeyAlgorithm.EC_P256))
    chain = [x509.load_pem_x509_certificate(p.encode()) for p in issued.chain[1:-1]]
    return issued.certificate, chain


def test_a_new_keyring_signs_leaves_through_a_signing_ca_under_its_root() -> None:
    clock = FakeClock()
    keyring = fresh(clock)
    active = keyring.active
    assert not active.signs_with_root and active.root_key is not None
    basic = active.signing_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca and basic.path_length == 0
    assert active.signing_cert.not_valid_after_utc - clock.now() == POLICY.signing_ttl
    leaf, chain = leaf_of(keyring, clock)
    assert len(chain) == 1 and validates(leaf, chain, keyring.bundle(), clock)
    assert keyring.bundle() == (active.root,)


def test_a_prepared_root_is_in_the_bundle_before_it_signs_and_activation_waits_for_the_agents() -> None:
    clock = FakeClock()
    keyring = fresh(clock)
    new = factory(clock).new_slot("2", signing_ttl=POLICY.signing_ttl, root_ttl=POLICY.root_ttl)
    keyring, made = prepare(keyring, new)
    assert [t.to_state for t in made] == [SlotState.PREPARED] and made[0].from_state is None
    assert keyring.bundle_fingerprints() == (keyring.active.root_fingerprints[0], new.root_fingerprints[0])
    assert keyring.signing_authority().signing_cert == keyring.find("1").signing_cert
    with pytest.raises(UnsafeTransitionError, match="0 of 3 connected agents hold the new root") as refused:
        activate(keyring, clock.now(), POLICY, nobody)
    assert refused.value.reason == "not_acknowledged"
    with pytest.raises(UnsafeTransitionError, match="already prepared"):
        prepare(
            keyring, factory(clock).new_slot("3", signing_ttl=POLICY.signing_ttl, root_ttl=POLICY.root_ttl)
        )
    clock.advance(POLICY.max_ack_wait - timedelta(seconds=1))
    assert not activation_check(keyring, clock.now(), POLICY, nobody).ready
    clock.advance(timedelta(seconds=1))
    assert activation_check(keyring, clock.now(), POLICY, nobody).ready  # the maximum wait is over
    activated, moved = activate(keyring, clock.now(), POLICY, everyone)
    assert [(t.slot_id, t.from_state, t.to_state) for t in moved] == [
        ("2", SlotState.PREPARED, SlotState.ACTIVE),
        ("1", SlotState.ACTIVE, SlotState.RETIRING),
    ]
    assert activated.active.id == "2" and activated.retiring[0].id == "1"


def test_a_new_root_is_published_for_the_minimum_time_even_when_every_agent_holds_it() -> None:
    clock = FakeClock()
    policy = RotationPolicy(max_leaf_ttl=timedelta(days=1))  # the default: 5 minutes
    keyring = fresh(clock)
    keyring, _ = prepare(
        keyring, factory(clock).new_slot("2", signing_ttl=POLICY.signing_ttl, root_ttl=POLICY.root_ttl)
    )
    check = activation_check(keyring, clock.now(), policy, everyone)
    assert not check.ready and "published for 0s of at least 300s" in check.why
    assert due_step(keyring, clock.now(), policy, everyone) is None
    clock.advance(policy.min_root_publish)
    assert activation_check(keyring, clock.now(), policy, everyone).ready
    assert not activation_check(keyring, clock.now(), policy, nobody).ready


def test_activation_with_force_is_recorded_as_forced_and_a_same_root_slot_needs_no_acknowledgement() -> None:
    clock = FakeClock()
    keyring = fresh(clock)
    keyring, _ = prepare(
        keyring, factory(clock).new_slot("2", signing_ttl=POLICY.signing_ttl, root_ttl=POLICY.root_ttl)
    )
    _, moved = activate(keyring, clock.now(), POLICY, nobody, force=True)
    assert moved[0].forced
    same_root = fresh(clock)
    same_root, _ = prepare(
        same_root,
        factory(clock).new_slot(
            "2", signing_ttl=POLICY.signing_ttl, root_ttl=POLICY.root_ttl, under=same_root.active
        ),
    )
    assert activation_check(same_root, clock.now(), POLICY, nobody).ready
    assert len(same_root.bundle()) == 1


def test_a_retiring_slot_keeps_validating_its_leaves_until_they_expire_then_retires() -> None:
    clock = FakeClock()
    keyring = fresh(clock)
    old_leaf, old_chain = leaf_of(keyring, clock)
    keyring, _ = prepare(
        keyring, factory(clock).new_slot("2", signing_ttl=POLICY.signing_ttl, root_ttl=POLICY.root_ttl)
    )
    keyring, _ = activate(keyring, clock.now(), POLICY, everyone)
    new_leaf, new_chain = leaf_of(keyring, clock)
    assert validates(old_leaf, old_chain, keyring.bundle(), clock)
    assert validates(new_leaf, new_chain, keyring.bundle(), clock)
    with pytest.raises(UnsafeTransitionError, match="may still be live") as refused:
        retire(keyring, clock.now(), POLICY)
    assert refused.value.reason == "leaves_live"
    clock.advance(POLICY.max_leaf_ttl)
    retired, moved = retire(keyring, clock.now(), POLICY)
    assert [(t.slot_id, t.to_state, t.forced) for t in moved] == [("1", SlotState.RETIRED, False)]
    assert [s.id for s in retired.slots] == ["2"]
    assert retired.bundle() == (retired.active.root,)
    assert not validates(old_leaf, old_chain, retired.bundle(), clock)  # its root is gone
    with pytest.raises(UnsafeTransitionError, match="no slot is retiring"):
        retire(retired, clock.now(), POLICY)


def test_forced_retirement_of_a_slot_with_live_leaves_is_marked_forced() -> None:
    clock = FakeClock()
    keyring = fresh(clock)
    keyring, _ = prepare(
        keyring, factory(clock).new_slot("2", signing_ttl=POLICY.signing_ttl, root_ttl=POLICY.root_ttl)
    )
    keyring, _ = activate(keyring, clock.now(), POLICY, everyone)
    _, moved = retire(keyring, clock.now(), POLICY, force=True)
    assert moved[0].forced


def test_the_schedule_rotates_the_signing_ca_at_half_life_and_the_root_at_80_percent() -> None:
    clock = FakeClock()
    keyring = fresh(clock)
    policy = POLICY
    rotations = {"same_root": 0, "new_root": 0}
    first_root = keyring.active.root_fingerprints
    for _ in range(int(policy.root_ttl / DAY) + 5):
        step = due_step(keyring, clock.now(), policy, everyone)
        while step is not None:
            if step.kind is StepKind.PREPARE:
                under = None if step.new_root else keyring.active
                rotations["new_root" if step.new_root else "same_root"] += 1
                slot = factory(clock).new_slot(
                    keyring.next_id(), signing_ttl=policy.signing_ttl, root_ttl=policy.root_ttl, under=under
                )
                keyring, _ = prepare(keyring, slot)
            elif step.kind is StepKind.ACTIVATE:
                keyring, _ = activate(keyring, clock.now(), policy, everyone)
            else:
                keyring, _ = retire(keyring, clock.now(), policy)
            step = due_step(keyring, clock.now(), policy, everyone)
        leaf, chain = leaf_of(keyring, clock)  # the active slot signs valid leaves every day
        assert validates(leaf, chain, keyring.bundle(), clock)
        clock.advance(DAY)
    # Ten years of 60-day signing CAs replaced every 30 days; the root replaced once, at 8 years.
    assert rotations["new_root"] == 1
    assert 115 <= rotations["same_root"] <= 125
    assert keyring.active.root_fingerprints != first_root


def test_next_step_names_what_comes_and_when() -> None:
    clock = FakeClock()
    keyring = fresh(clock)
    step = next_step(keyring, POLICY)
    assert step is not None and step.kind is StepKind.PREPARE and not step.new_root
    signing = keyring.active.signing_cert
    assert (
        step.at
        == signing.not_valid_before_utc + (signing.not_valid_after_utc - signing.not_valid_before_utc) / 2
    )
    keyring, _ = prepare(
        keyring, factory(clock).new_slot("2", signing_ttl=POLICY.signing_ttl, root_ttl=POLICY.root_ttl)
    )
    assert next_step(keyring, POLICY).kind is StepKind.ACTIVATE  # type: ignore[union-attr]
    keyring, _ = activate(keyring, clock.now(), POLICY, everyone)
    retiring = next_step(keyring, POLICY)
    assert retiring is not None and retiring.kind is StepKind.RETIRE
    assert retiring.at == clock.now() + POLICY.max_leaf_ttl


def test_a_root_that_signs_leaves_itself_gets_a_signing_ca_at_once() -> None:
    clock = FakeClock()
    legacy = factory(clock).create(source="old state dir")
    keyring = Keyring.single(legacy, since=clock.now(), root_key=legacy.signing_key)
    step = due_step(keyring, clock.now(), POLICY, nobody)
    assert step is not None and step.kind is StepKind.PREPARE and not step.new_root
    slot = factory(clock).new_slot(
        "2", signing_ttl=POLICY.signing_ttl, root_ttl=POLICY.root_ttl, under=keyring.active
    )
    keyring, _ = prepare(keyring, slot)
    assert due_step(keyring, clock.now(), POLICY, nobody).kind is StepKind.ACTIVATE  # type: ignore[union-attr]


def test_plugged_in_material_is_never_prepared_by_the_schedule() -> None:
    clock = FakeClock()
    legacy = factory(clock).create(source="cacerts")
    keyring = Keyring.single(legacy, since=clock.now(), root_key=None)
    clock.advance(timedelta(days=3000))
    assert due_step(keyring, clock.now(), POLICY, everyone) is None


def test_the_stored_document_round_trips_and_keeps_no_retired_slot() -> None:
    clock = FakeClock()
    keyring = fresh(clock)
    keyring, _ = prepare(
        keyring, factory(clock).new_slot("2", signing_ttl=POLICY.signing_ttl, root_ttl=POLICY.root_ttl)
    )
    files = keyring_document(keyring)
    assert "slot-2.root-key.pem" in files and "slot-1.ca-key.pem" in files
    loaded = load_keyring(files, "test")
    assert [(s.id, s.state, s.since, s.signing_fingerprint) for s in loaded.slots] == [
        (s.id, s.state, s.since, s.signing_fingerprint) for s in keyring.slots
    ]
    assert loaded.bundle_fingerprints() == keyring.bundle_fingerprints()
    keyring, _ = activate(keyring, clock.now(), POLICY, everyone)
    clock.advance(POLICY.max_leaf_ttl)
    keyring, _ = retire(keyring, clock.now(), POLICY)
    assert not any(name.startswith("slot-1.") for name in keyring_document(keyring))


@pytest.mark.parametrize("damage", ["missing_key", "bad_json", "two_active"])
def test_a_damaged_document_is_refused_with_what_to_do(damage: str) -> None:
    clock = FakeClock()
    keyring = fresh(clock)
    files = keyring_document(keyring)
    if damage == "missing_key":
        del files["slot-1.ca-key.pem"]
    elif damage == "bad_json":
        files["slots.json"] = b"{"
    else:
        files["slots.json"] = files["slots.json"].replace(
            b"]", b', {"id": "1", "state": "active", "since": "2026-01-01T00:00:00+00:00"}]'
        )
    with pytest.raises(CaMaterialError, match="from a backup"):
        load_keyring(files, "test")
