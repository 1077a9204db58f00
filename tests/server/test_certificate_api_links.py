"""The link an issued record carries to a rotation order: the rule (`link_for`, with fakes), then on
a real `meshca serve`: an agent that restarted names only the certificate it held before, and its
new certificate is linked to the order still pushing to that one."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import pytest

from ca.common.clock import SystemClock
from ca.ledger.rotation import Selector, TargetState
from ca.server.certificate_api import (
    ReplacementClaim,
    ReplacementLink,
    link_for,
    replacement_claim,
)
from tests.support.control import AGENT_METADATA, CaProcess, ca_process

CART = "spiffe://cluster.local/ns/shop/sa/cart"
WEB = "spiffe://cluster.local/ns/shop/sa/web"
OLDER, NEWER = "ro-00000000000a", "ro-00000000000b"


@dataclass
class FakeLinks:
    """The push coordinator's check: (order id, serial) -> the SPIFFE ID that target was issued to."""

    targets: dict[tuple[str, str], str]
    asked: list[str] = field(default_factory=list)

    def verified_replacement(self, *, order_id: str, replaces: str, spiffe_id: str) -> bool:
        self.asked.append(order_id)
        return self.targets.get((order_id, replaces)) == spiffe_id

    def replaced(self, *, order_id: str, old_serial: str, new_serial: str) -> None:
        raise AssertionError("link_for only checks")


def outstanding(by_serial: dict[str, Sequence[str]]) -> Callable[[str], Sequence[str]]:
    return lambda serial: by_serial.get(serial, ())


@pytest.mark.parametrize(
    ("headers", "claim"),
    [
        ({"meshca-replaces": ["A1"]}, ReplacementClaim(replaces="a1")),
        (
            {"meshca-order": [OLDER], "meshca-replaces": ["a1"]},
            ReplacementClaim(replaces="a1", order_id=OLDER),
        ),
        ({"meshca-order": [OLDER]}, None),
        ({"meshca-order": [""], "meshca-replaces": ["a1"]}, None),
        ({"meshca-replaces": ["not hex"]}, None),
        ({}, None),
    ],
)
def test_what_a_request_claims_it_replaces(
    headers: dict[str, list[str]], claim: ReplacementClaim | None
) -> None:
    assert replacement_claim(headers) == claim


def test_a_claim_naming_an_order_is_linked_to_that_order_only_for_the_targets_own_identity() -> None:
    links = FakeLinks({(NEWER, "a1"): CART})
    claim = ReplacementClaim(replaces="a1", order_id=NEWER)
    never_asked = outstanding({"a1": [OLDER]})
    assert link_for(claim, CART, links, never_asked) == ReplacementLink(order_id=NEWER, replaces="a1")
    assert link_for(claim, WEB, links, never_asked) is None
    assert links.asked == [NEWER, NEWER]


def test_a_claim_without_an_order_is_linked_to_the_oldest_order_still_pushing_to_that_serial() -> None:
    links = FakeLinks({(OLDER, "a1"): CART, (NEWER, "a1"): CART})
    pushing = outstanding({"a1": [OLDER, NEWER]})
    assert link_for(ReplacementClaim(replaces="a1"), CART, links, pushing) == ReplacementLink(
        order_id=OLDER, replaces="a1"
    )


def test_a_claim_without_an_order_links_only_the_callers_own_certificate() -> None:
    links = FakeLinks({(OLDER, "a1"): WEB, (NEWER, "a1"): WEB})
    pushing = outstanding({"a1": [OLDER, NEWER]})
    assert link_for(ReplacementClaim(replaces="a1"), CART, links, pushing) is None
    assert links.asked == [OLDER, NEWER]


def test_a_claim_without_an_order_for_a_serial_no_order_targets_is_not_linked() -> None:
    links = FakeLinks({(OLDER, "a1"): CART})
    assert link_for(ReplacementClaim(replaces="b2"), CART, links, outstanding({"a1": [OLDER]})) is None
    assert link_for(ReplacementClaim(replaces="a1"), CART, links, None) is None  # no ledger to ask
    assert links.asked == []


# ---------------------------------------------------------------------- on a real CA


@pytest.fixture
def ca() -> Iterator[CaProcess]:
    with ca_process() as running:
        yield running


def restarted(held: str) -> tuple[tuple[str, str], ...]:
    """What a restarted agent's first request says: it is an agent, and what it held before."""
    return (*AGENT_METADATA, ("meshca-replaces", held))


def target_state(ca: CaProcess, order_id: str, serial: str) -> TargetState | None:
    with ca.store() as store:
        target = store.target(order_id, serial, SystemClock().now())
    return target.state if target is not None else None


def issued_record(ca: CaProcess, serial: str) -> dict[str, object]:
    return next(r for r in ca.records(serial) if r["kind"] == "issued")


def test_a_restarted_agents_certificate_replaces_the_target_it_held(ca: CaProcess) -> None:
    held = ca.issue()
    ca.order(OLDER, Selector(serials=(held.serial,)))
    new = ca.issue(metadata=restarted(held.serial.upper()))
    record = issued_record(ca, new.serial)
    assert (record["order_id"], record["replaces"], record["agent"]) == (OLDER, held.serial, "meshca")
    # Marked by the write that recorded the certificate, so before the certificate came back.
    assert target_state(ca, OLDER, held.serial) is TargetState.REPLACED
    again = ca.issue(metadata=restarted(held.serial))  # replaced already: nothing left to link
    assert "order_id" not in issued_record(ca, again.serial)


def test_a_restart_links_nothing_without_an_order_or_for_another_identitys_certificate(ca: CaProcess) -> None:
    plain = ca.issue()
    web = ca.issue("shop", "web")
    ca.order(OLDER, Selector(serials=(web.serial,)))
    for held in (plain, web):
        new = ca.issue(metadata=restarted(held.serial))
        assert {"order_id", "replaces"}.isdisjoint(issued_record(ca, new.serial))
    assert target_state(ca, OLDER, web.serial) is TargetState.OUTSTANDING
    assert "rotation link" not in ca.log()  # a restart without an order is no false claim
