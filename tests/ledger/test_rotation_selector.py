"""A selector as the store keeps it (JSON) and as records and tables show it (describe)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ca.errors import InvalidRequestError
from ca.ledger.rotation import Selector, normalize_serial, selector_from_json, selector_to_json

NAMES = st.one_of(st.none(), st.text(min_size=1, max_size=30))
MOMENTS = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))


@st.composite
def selectors(draw: st.DrawFn) -> Selector:
    return Selector(
        spiffe_id=draw(NAMES),
        namespace=draw(NAMES),
        service_account=draw(NAMES),
        pod=draw(NAMES),
        node=draw(NAMES),
        serials=tuple(draw(st.lists(st.from_regex(r"[0-9a-f]{1,40}", fullmatch=True), max_size=4))),
        issued_before=draw(st.one_of(st.none(), MOMENTS)),
        all=draw(st.booleans()),
    )


@given(selectors())
def test_a_selector_survives_the_store(selector: Selector) -> None:
    assert selector_from_json(selector_to_json(selector)) == selector


@given(selectors())
def test_the_stored_form_holds_only_the_terms_given(selector: Selector) -> None:
    names = ("spiffe_id", "namespace", "service_account", "pod", "node")
    expected = {name for name in names if getattr(selector, name) is not None}
    expected |= {"serials"} if selector.serials else set()
    expected |= {"issued_before"} if selector.issued_before is not None else set()
    expected |= {"all"} if selector.all else set()
    assert set(json.loads(selector_to_json(selector))) == expected


def test_describe_reads_as_the_terms_given() -> None:
    assert Selector(all=True).describe() == "all"
    assert (
        Selector(namespace="shop", service_account="cart").describe() == "namespace=shop service_account=cart"
    )
    cutoff = datetime(2026, 12, 7, 8, 0, tzinfo=UTC) + timedelta(microseconds=1)
    assert (
        Selector(node="node-1", serials=("1a", "2b"), issued_before=cutoff).describe()
        == "node=node-1 serial=1a,2b issued_before=2026-12-07T08:00:00.000001+00:00"
    )
    assert Selector().describe() == "(empty)"


@pytest.mark.parametrize(
    "text",
    ["0A:1b:00", "a1b00", "0x0a1b00", " 0a 1b 00 ", "00:0A:1B:00"],
)
def test_an_operators_serial_is_read_one_way_wherever_it_is_given(text: str) -> None:
    assert normalize_serial(text) == "a1b00"


@pytest.mark.parametrize("text", ["", "xyz", "0a-1b", "1" * 41])
def test_what_is_not_a_serial_is_refused_with_how_to_give_it(text: str) -> None:
    with pytest.raises(InvalidRequestError, match="openssl x509 -noout -serial") as refused:
        normalize_serial(text)
    assert refused.value.reason == "serial_invalid"
