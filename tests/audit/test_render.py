"""How audit results are rendered: tables cut to the terminal, entry details, JSON lines, CSV,
the report and the verification result."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ca.audit.render import (
    ELLIPSIS,
    ENTRY_FIELDS,
    GAP,
    Column,
    csv_lines,
    detail,
    entries_table,
    entry_detail,
    json_line,
    lifetime,
    report_csv_fields,
    report_csv_rows,
    report_dict,
    report_table,
    short_identity,
    short_time,
    table,
    verify_dict,
)
from ca.ledger.entries import timestamp
from ca.ledger.queries import IdentityStats, OrderSummary, RefusalCount, Report, Violation
from ca.ledger.verify import VerifyReport

ISSUED_AT = datetime(2026, 11, 21, 22, 31, 24, 123456, tzinfo=UTC)
CART = "spiffe://cluster.local/ns/shop/sa/cart"

ISSUED: dict[str, Any] = {
    "seq": 7,
    "kind": "issued",
    "time": timestamp(ISSUED_AT),
    "serial": "5a" * 16,
    "spiffe_id": CART,
    "namespace": "shop",
    "pod_name": "cart-7d9f8-x2x1q",
    "not_before": timestamp(ISSUED_AT - timedelta(minutes=2)),
    "not_after": timestamp(ISSUED_AT + timedelta(hours=24)),
    "key_type": "ec-p256",
    "node_name": None,
}
REFUSED: dict[str, Any] = {
    "seq": 8,
    "kind": "refused",
    "time": timestamp(ISSUED_AT + timedelta(seconds=5)),
    "spiffe_id": None,
    "reason": "token_invalid",
    "message": "the token has expired",
}
CA_EVENT: dict[str, Any] = {
    "seq": 1,
    "kind": "ca_event",
    "time": timestamp(ISSUED_AT - timedelta(days=1)),
    "reason": "started",
    "ca_key_id": "ab:cd",
    "source": "self-signed root",
}


# --------------------------------------------------------------------------- tables


def test_a_table_that_fits_is_left_whole_and_aligned() -> None:
    lines = table([Column("NAME"), Column("COUNT", right=True)], [["cart", "7"], ["checkout", "12"]], 80)
    assert lines == [
        f"NAME    {GAP}COUNT",
        f"cart    {GAP}    7",
        f"checkout{GAP}   12",
    ]


def test_a_line_has_no_trailing_spaces() -> None:
    lines = table([Column("SEQ", right=True), Column("DETAIL")], [["1", "a long detail"], ["2", "short"]], 80)
    assert lines == ["SEQ  DETAIL", "  1  a long detail", "  2  short"]


def test_the_column_with_the_most_room_above_its_floor_gives_first() -> None:
    columns = [Column("A", floors=(10,)), Column("B", floors=(8,))]
    lines = table(columns, [["a" * 20, "b" * 30]], 20 + len(GAP) + 30 - 5)
    assert lines[1] == f"{'a' * 20}{GAP}{'b' * 24}{ELLIPSIS}"


def test_columns_go_to_their_first_floors_before_any_goes_to_its_second() -> None:
    columns = [Column("A", floors=(10, 3)), Column("B", floors=(8, 2)), Column("N")]
    row = ["a" * 20, "b" * 20, "123456"]
    first_floors = 10 + len(GAP) + 8 + len(GAP) + 6
    assert table(columns, [row], first_floors)[1] == f"{'a' * 9}{ELLIPSIS}{GAP}{'b' * 7}{ELLIPSIS}{GAP}123456"
    # one more character to give: the column with the most room above its second floor gives it
    assert (
        table(columns, [row], first_floors - 1)[1]
        == f"{'a' * 8}{ELLIPSIS}{GAP}{'b' * 7}{ELLIPSIS}{GAP}123456"
    )
    # below the last floors the table stays wider than asked rather than cut numbers
    narrowest = table(columns, [row], 1)[1]
    assert narrowest == f"aa{ELLIPSIS}{GAP}b{ELLIPSIS}{GAP}123456"


CELL = st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=30)


@given(
    st.lists(st.tuples(CELL, CELL, CELL), max_size=6),
    st.integers(min_value=0, max_value=120),
)
def test_a_table_is_cut_to_the_width_its_floors_allow_and_no_further(
    rows: list[tuple[str, str, str]], width: int
) -> None:
    columns = [Column("ID", floors=(16, 8)), Column("SEQ", right=True), Column("DETAIL", floors=(12, 3))]
    lines = table(columns, [list(r) for r in rows], width)
    assert len(lines) == len(rows) + 1
    natural = [max([len(c.title), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
    narrowest = min(natural[0], 8) + natural[1] + min(natural[2], 3) + 2 * len(GAP)
    assert max(len(line) for line in lines) <= max(width, narrowest)
    for line, row in zip(lines[1:], rows, strict=True):
        assert row[1] in line  # a column without floors is never cut
        first = line[: line.index(GAP)] if GAP in line else line
        cut = first.rstrip()
        assert cut == row[0] or (cut.endswith(ELLIPSIS) and row[0].startswith(cut[:-1]))


# --------------------------------------------------------------------------- entries


@pytest.mark.parametrize(
    ("stamp", "short"),
    [("2026-11-21T22:31:24.123456Z", "2026-11-21 22:31:24"), (None, "-"), ("", "-")],
)
def test_short_time(stamp: str | None, short: str) -> None:
    assert short_time(stamp) == short


@pytest.mark.parametrize(
    ("spiffe_id", "short"),
    [
        (CART, "shop/cart"),
        ("spiffe://example.org/payments/api", "example.org/payments/api"),
        ("spiffe://example.org/ns/shop/sa/cart/extra", "example.org/ns/shop/sa/cart/extra"),
        (None, "-"),
        ("", "-"),
    ],
)
def test_short_identity(spiffe_id: str | None, short: str) -> None:
    assert short_identity(spiffe_id) == short


def test_lifetime_is_what_was_granted_at_issuance() -> None:
    assert lifetime(ISSUED) == timedelta(hours=24)
    assert lifetime(REFUSED) is None
    assert lifetime({**ISSUED, "not_after": "not a time"}) is None
    assert lifetime({**ISSUED, "time": None}) is None


@pytest.mark.parametrize(
    ("entry", "text"),
    [
        (ISSUED, "1d, until 2026-11-22 22:31"),
        (REFUSED, "token_invalid: the token has expired"),
        ({**REFUSED, "message": None}, "token_invalid"),
        (CA_EVENT, "CA started: key ab:cd from self-signed root"),
        (
            {**ISSUED, "replaces": "0a0b", "order_id": "ro-1"},
            "1d, until 2026-11-22 22:31, replaces 0a0b for ro-1",
        ),
        (
            {
                "kind": "rotation_order",
                "order_id": "ro-1",
                "ordered_by": "spiffe://cluster.local/ns/istio-system/sa/admin",
                "selector": "namespace=shop",
                "matched": 3,
                "grace_seconds": 300,
                "order_reason": "key leaked",
            },
            "ro-1 by spiffe://cluster.local/ns/istio-system/sa/admin: namespace=shop, 3 matched, "
            "grace 5m: key leaked",
        ),
        (
            {
                "kind": "rotation_order",
                "order_id": "ro-2",
                "ordered_by": "me",
                "selector": "all",
                "matched": 0,
                "order_reason": "drill",
            },
            "ro-2 by me: all, 0 matched, grace -: drill",
        ),
        (
            {"kind": "revoked", "reason": "keyCompromise", "order_id": "ro-1", "note": "pager"},
            "keyCompromise by ro-1: pager",
        ),
        ({"kind": "revoked", "reason": "superseded"}, "superseded"),
        (
            {
                "kind": "crl_published",
                "crl_number": 12,
                "entries": 2,
                "next_update": "2026-11-22T10:00:00.000000Z",
                "ca_key_id": "ab:cd",
            },
            "CRL 12: 2 entries, next update 2026-11-22 10:00, key ab:cd",
        ),
        ({"kind": "from_a_newer_ca", "reason": "why"}, "from_a_newer_ca: why"),
        ({"kind": "from_a_newer_ca"}, "from_a_newer_ca"),
    ],
)
def test_the_detail_column_says_what_each_kind_of_entry_means(entry: dict[str, Any], text: str) -> None:
    assert detail(entry) == text


def test_the_entries_table_at_full_width() -> None:
    lines = entries_table([ISSUED, REFUSED, CA_EVENT], 200)
    assert lines[0].split() == ["SEQ", "TIME", "(UTC)", "KIND", "IDENTITY", "POD", "SERIAL", "DETAIL"]
    assert lines[1].split() == [
        "7",
        "2026-11-21",
        "22:31:24",
        "issued",
        "shop/cart",
        "cart-7d9f8-x2x1q",
        "5a" * 16,
        "1d,",
        "until",
        "2026-11-22",
        "22:31",
    ]
    assert lines[2].split()[3:6] == ["refused", "-", "-"]
    assert lines[3].split()[3] == "ca_event"


def test_a_narrow_entries_table_cuts_text_but_not_numbers_and_times() -> None:
    long_id = "spiffe://cluster.local/ns/a-rather-long-namespace/sa/an-even-longer-service-account"
    lines = entries_table([{**ISSUED, "spiffe_id": long_id}], 100)
    assert all(len(line) <= 100 for line in lines)
    assert "2026-11-21 22:31:24" in lines[1] and "5a" * 16 in lines[1]
    assert ELLIPSIS in lines[1]


def test_an_entrys_detail_lists_known_fields_in_order_then_the_rest() -> None:
    entry = {**ISSUED, "zeta": 1, "alpha": "x"}
    lines = entry_detail(entry)
    names = [line.split()[0] for line in lines]
    known = [n for n in ENTRY_FIELDS if n in entry]
    assert names == [*known, "alpha", "zeta", "lifetime"]
    width = max(len(n) for n in entry)
    assert lines[0] == f"{'seq'.ljust(width)}  7"
    assert f"{'node_name'.ljust(width)}  -" in lines  # None is shown as '-'
    assert lines[-1] == f"{'lifetime'.ljust(width)}  1d (granted at issuance)"


def test_only_an_issued_entry_gets_a_lifetime_line() -> None:
    assert not any(line.startswith("lifetime") for line in entry_detail(REFUSED))


# --------------------------------------------------------------------------- JSON and CSV

VALUES = st.one_of(st.none(), st.integers(), st.text(max_size=20))
# Any text, a lone carriage return included: rows end in CRLF (RFC 4180), so the writer
# quotes a field that holds either character and a reader keeps the row whole.
CSV_TEXT = st.text(max_size=20)
CSV_VALUES = st.one_of(st.none(), st.integers(), CSV_TEXT)


@given(st.dictionaries(st.text(max_size=10), VALUES, max_size=6))
def test_a_json_line_is_one_compact_line_that_reads_back(value: dict[str, Any]) -> None:
    line = json_line(value)
    assert "\n" not in line
    assert json.loads(line) == value
    assert ": " not in json_line({"a": 1, "b": [1, 2]}) and ", " not in json_line({"a": 1, "b": [1, 2]})


def test_a_json_line_keeps_text_as_written() -> None:
    assert json_line({"pod_name": "café"}) == '{"pod_name":"café"}'


@given(
    st.lists(
        st.fixed_dictionaries({"seq": st.integers(), "message": CSV_VALUES, "serial": CSV_VALUES}), max_size=5
    )
)
def test_csv_reads_back_with_none_as_an_empty_field(rows: list[dict[str, Any]]) -> None:
    fields = ["seq", "serial", "message"]
    chunks = list(csv_lines(fields, [{**row, "not_a_column": "dropped"} for row in rows]))
    assert len(chunks) == len(rows) + 1
    assert chunks[0] == "seq,serial,message\r\n"
    read = list(csv.DictReader(io.StringIO("".join(chunks), newline="")))
    assert read == [{k: "" if row[k] is None else str(row[k]) for k in fields} for row in rows]


# --------------------------------------------------------------------------- the report


def _report() -> Report:
    return Report(
        at=timestamp(ISSUED_AT),
        max_ttl_seconds=2 * 86400,
        identities=(
            IdentityStats(
                namespace="shop",
                spiffe_id=CART,
                issued=3,
                valid_now=2,
                ttl_buckets=(1, 2, 0, 0, 0),
                refused=1,
            ),
            IdentityStats(namespace=None, spiffe_id=None, refused=4),
        ),
        refusals=(
            RefusalCount(namespace="shop", spiffe_id=CART, reason="ttl_too_long", count=1),
            RefusalCount(namespace=None, spiffe_id=None, reason="token_invalid", count=4),
        ),
        violations=(
            Violation(
                seq=9,
                serial="ff" * 16,
                spiffe_id=CART,
                namespace="shop",
                key_type="rsa-1024",
                lifetime_seconds=3 * 86400,
                not_after=timestamp(ISSUED_AT + timedelta(days=3)),
                problems=("lifetime 3d is over the max TTL 2d", "key type rsa-1024 is not allowed"),
            ),
        ),
        violations_total=3,
        orders=(
            OrderSummary(
                order_id="ro-2",
                time=timestamp(ISSUED_AT - timedelta(hours=1)),
                ordered_by="spiffe://cluster.local/ns/istio-system/sa/admin",
                selector="namespace=shop",
                reason="key leaked",
                state="grace",
                grace_ends=timestamp(ISSUED_AT + timedelta(minutes=4)),
                matched=5,
                replaced=3,
                revoked=0,
                outstanding=1,
                expired=1,
            ),
        ),
        orders_total=2,
    )


def test_the_report_as_a_dict() -> None:
    result = report_dict(_report())
    assert result["at"] == "2026-11-21T22:31:24.123456Z" and result["max_ttl_seconds"] == 172800
    assert result["identities"][0] == {
        "namespace": "shop",
        "spiffe_id": CART,
        "issued": 3,
        "valid_now": 2,
        "ttl": {"<=1h": 1, "<=24h": 2, "<=7d": 0, "<=90d": 0, ">90d": 0},
        "refused": 1,
    }
    assert result["refusals"][1] == {
        "namespace": None,
        "spiffe_id": None,
        "reason": "token_invalid",
        "count": 4,
    }
    assert result["violations"][0]["problems"] == [
        "lifetime 3d is over the max TTL 2d",
        "key type rsa-1024 is not allowed",
    ]
    assert result["violations_total"] == 3
    assert result["orders"] == [
        {
            "order_id": "ro-2",
            "time": "2026-11-21T21:31:24.123456Z",
            "ordered_by": "spiffe://cluster.local/ns/istio-system/sa/admin",
            "selector": "namespace=shop",
            "reason": "key leaked",
            "state": "grace",
            "grace_ends": "2026-11-21T22:35:24.123456Z",
            "matched": 5,
            "replaced": 3,
            "revoked": 0,
            "outstanding": 1,
            "expired": 1,
        }
    ]
    assert result["orders_total"] == 2
    json.loads(json_line(result))  # every value is JSON


def test_the_report_as_one_csv_with_a_section_column() -> None:
    report = _report()
    fields = report_csv_fields(report)
    assert fields[:5] == ["section", "namespace", "spiffe_id", "issued", "valid_now"]
    assert fields[5:10] == ["ttl<=1h", "ttl<=24h", "ttl<=7d", "ttl<=90d", "ttl>90d"]
    rows = list(csv.DictReader(io.StringIO("".join(csv_lines(fields, report_csv_rows(report))))))
    assert [r["section"] for r in rows] == [
        "identity",
        "identity",
        "refusal",
        "refusal",
        "violation",
        "order",
    ]
    assert rows[0]["ttl<=24h"] == "2" and rows[0]["reason"] == ""
    assert rows[3]["reason"] == "token_invalid" and rows[3]["count"] == "4"
    assert rows[4]["problems"] == "lifetime 3d is over the max TTL 2d; key type rsa-1024 is not allowed"
    order = rows[5]
    assert (order["order_id"], order["order_reason"], order["reason"]) == ("ro-2", "key leaked", "")
    assert (order["matched"], order["replaced"], order["outstanding"]) == ("5", "3", "1")


def test_the_report_as_tables() -> None:
    lines = report_table(_report(), 200)
    assert lines[0] == "Certificates by namespace and identity at 2026-11-21 22:31:24 UTC"
    assert lines[1].split() == [
        "NAMESPACE",
        "IDENTITY",
        "ISSUED",
        "VALID",
        "NOW",
        *(label.upper() for label in ("<=1h", "<=24h", "<=7d", "<=90d", ">90d")),
        "REFUSED",
    ]
    assert lines[2].split() == ["shop", "shop/cart", "3", "2", "1", "2", "0", "0", "0", "1"]
    assert lines[3].split()[:2] == ["-", "(unauthenticated)"]
    refusals = lines.index("Refusals by reason")
    assert lines[refusals + 2].split() == ["shop", "shop/cart", "ttl_too_long", "1"]
    title = "Valid certificates that break the policy (max TTL 2d, key types): 3"
    violations = lines.index(title)
    assert lines[violations + 2].split()[:5] == ["ff" * 16, "shop/cart", "rsa-1024", "3d", "2026-11-24"]
    assert lines[violations + 3] == "(the newest 1 of 3)"
    orders = lines.index("Rotation orders: 2")
    assert lines[orders + 1].split()[:4] == ["ORDER", "TIME", "(UTC)", "SELECTOR"]
    assert lines[orders + 2].split() == [
        "ro-2",
        "2026-11-21",
        "21:31:24",
        "namespace=shop",
        "grace",
        "5",
        "3",
        "0",
        "1",
        "1",
        "key",
        "leaked",
    ]
    assert lines[-1] == "(the newest 1 of 2)"


def test_an_empty_report_says_none() -> None:
    empty = Report(
        at=timestamp(ISSUED_AT),
        max_ttl_seconds=3600,
        identities=(),
        refusals=(),
        violations=(),
        violations_total=0,
    )
    lines = report_table(empty, 80)
    assert lines[lines.index("Refusals by reason") + 1] == "none"
    assert "Valid certificates that break the policy (max TTL 1h, key types): none" in lines
    assert lines[-1] == "Rotation orders: none"


# --------------------------------------------------------------------------- verify


def test_a_verification_as_a_dict() -> None:
    good = VerifyReport(entries_checked=10, checkpoints_checked=2, last_seq=10, signed_through=8)
    result = verify_dict(good, ["configmap istio-system/meshca-ledger-head"])
    assert result == {
        "ok": True,
        "entries_checked": 10,
        "checkpoints_checked": 2,
        "bad_seq": None,
        "problem": None,
        "last_seq": 10,
        "signed_through": 8,
        "unsigned_entries": 2,
        "external_heads": ["configmap istio-system/meshca-ledger-head"],
        "summary": good.summary(),
    }
    bad = verify_dict(VerifyReport(entries_checked=4, checkpoints_checked=0, bad_seq=4, problem="hash"), [])
    assert (bad["ok"], bad["bad_seq"], bad["unsigned_entries"]) == (False, 4, 0)
    assert bad["summary"] == "ledger TAMPERED at entry 4: hash"
