"""SPIFFE ID parsing and validation against the SPIFFE ID rules (REFERENCE §3)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ca.errors import ErrorKind, InvalidSpiffeIdError
from ca.issuance.spiffe_id import MAX_TRUST_DOMAIN_BYTES, MAX_URI_BYTES, SpiffeId, validate_trust_domain

TD_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.-_"
SEGMENT_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_"


def _uri_of_length(total: int) -> str:
    prefix = "spiffe://example.org/"
    body = total - len(prefix)
    segments = []
    while body > 0:
        take = min(body, 200)
        if body - take == 1:
            take -= 1
        segments.append("a" * take)
        body -= take + 1
    uri = prefix + "/".join(segments)
    assert len(uri) == total
    return uri


VALID = [
    ("spiffe://cluster.local", "cluster.local", ""),
    ("spiffe://cluster.local/ns/default/sa/web", "cluster.local", "/ns/default/sa/web"),
    ("spiffe://example.org/a", "example.org", "/a"),
    ("spiffe://td_1-x.y/Path.With-Upper_Case/9", "td_1-x.y", "/Path.With-Upper_Case/9"),
    ("spiffe://a/...", "a", "/..."),
    ("spiffe://a/.x/..y/z.", "a", "/.x/..y/z."),
    ("spiffe://1.2.3.4/x", "1.2.3.4", "/x"),
    ("spiffe://" + "d" * MAX_TRUST_DOMAIN_BYTES, "d" * MAX_TRUST_DOMAIN_BYTES, ""),
]


@pytest.mark.parametrize(("uri", "trust_domain", "path"), VALID)
def test_valid_ids_parse(uri: str, trust_domain: str, path: str) -> None:
    parsed = SpiffeId.parse(uri)
    assert parsed.trust_domain == trust_domain
    assert parsed.path == path
    assert parsed.uri == uri
    assert str(parsed) == uri


def test_id_of_exactly_the_byte_limit_is_valid() -> None:
    uri = _uri_of_length(MAX_URI_BYTES)
    assert SpiffeId.parse(uri).uri == uri


INVALID = [
    ("", "scheme"),
    ("cluster.local/ns/a/sa/b", "scheme"),
    ("https://cluster.local/ns/a", "scheme"),
    ("SPIFFE://cluster.local/ns/a", "scheme"),
    ("Spiffe://cluster.local", "scheme"),
    ("spiffe:/cluster.local", "scheme"),
    ("spiffe://", "trust domain is empty"),
    ("spiffe:///ns/a/sa/b", "trust domain is empty"),
    ("spiffe://Cluster.Local/ns/a", "lowercase"),
    ("spiffe://CLUSTER/ns/a", "lowercase"),
    ("spiffe://clüster.local", "lowercase"),
    ("spiffe://cluster local", "lowercase"),
    ("spiffe://cluster.local:8443/ns/a", "port"),
    ("spiffe://cluster.local:8443", "port"),
    ("spiffe://user@cluster.local/ns/a", "userinfo"),
    ("spiffe://user:pw@cluster.local", "userinfo"),
    ("spiffe://" + "d" * (MAX_TRUST_DOMAIN_BYTES + 1), "longer than 255"),
    ("spiffe://cluster.local/", "trailing '/'"),
    ("spiffe://cluster.local/ns/a/", "trailing '/'"),
    ("spiffe://cluster.local//ns", "empty segment"),
    ("spiffe://cluster.local/ns//sa", "empty segment"),
    ("spiffe://cluster.local/.", "'.' or '..'"),
    ("spiffe://cluster.local/ns/./sa", "'.' or '..'"),
    ("spiffe://cluster.local/ns/../sa", "'.' or '..'"),
    ("spiffe://cluster.local/..", "'.' or '..'"),
    ("spiffe://cluster.local/ns/a%2Fb", "percent-encoding"),
    ("spiffe://cluster.local/%41", "percent-encoding"),
    ("spiffe://clus%74er.local", "percent-encoding"),
    ("spiffe://cluster.local/ns/a?x=1", "query"),
    ("spiffe://cluster.local?x", "query"),
    ("spiffe://cluster.local/ns/a#frag", "fragment"),
    ("spiffe://cluster.local#frag", "fragment"),
    ("spiffe://cluster.local/ns/a b", "segment"),
    ("spiffe://cluster.local/ns/ä", "segment"),
    ("spiffe://cluster.local/ns/a:b", "segment"),
    ("spiffe://cluster.local/ns/a@b", "segment"),
    ("spiffe://cluster.local/ns/a+b", "segment"),
    ("spiffe://cluster.local/ns/a\nb", "segment"),
    ("spiffe://cluster.local/ns/a\\b", "segment"),
    (_uri_of_length(MAX_URI_BYTES + 1), "longer than 2048"),
    ("spiffe://cluster.local/" + "ä" * 1100, "longer than 2048"),
]


@pytest.mark.parametrize(("uri", "problem"), INVALID)
def test_invalid_ids_are_refused_with_the_problem_named(uri: str, problem: str) -> None:
    with pytest.raises(InvalidSpiffeIdError) as caught:
        SpiffeId.parse(uri)
    assert caught.value.reason == "invalid_spiffe_id"
    assert caught.value.kind is ErrorKind.INVALID_ARGUMENT
    assert problem in caught.value.message
    assert "expected spiffe://<trust-domain>/<path>" in caught.value.message


def test_long_ids_are_shortened_in_the_message() -> None:
    uri = "spiffe://cluster.local/" + "x" * 3000
    with pytest.raises(InvalidSpiffeIdError) as caught:
        SpiffeId.parse(uri)
    assert len(caught.value.message) < 400
    assert "..." in caught.value.message


@pytest.mark.parametrize(
    ("trust_domain", "path"),
    [
        ("cluster.local", "ns/a"),
        ("cluster.local", "/"),
        ("cluster.local", "/a/"),
        ("cluster.local", "/a//b"),
        ("cluster.local", "/a/../b"),
        ("Cluster.local", "/a"),
        ("", "/a"),
        ("cluster.local:80", ""),
        ("cluster.local", "/" + "a" * MAX_URI_BYTES),
    ],
)
def test_constructor_validates_like_parse(trust_domain: str, path: str) -> None:
    with pytest.raises(InvalidSpiffeIdError):
        SpiffeId(trust_domain, path)


@pytest.mark.parametrize("name", ["", "UPPER", "a/b", "a:1", "a b", "d" * 256])
def test_validate_trust_domain_refuses(name: str) -> None:
    with pytest.raises(InvalidSpiffeIdError):
        validate_trust_domain(name)


def test_validate_trust_domain_returns_a_valid_name() -> None:
    assert validate_trust_domain("prod.example-1_x") == "prod.example-1_x"


def test_for_workload_builds_the_mesh_form() -> None:
    spiffe_id = SpiffeId.for_workload("cluster.local", "shop", "cart")
    assert spiffe_id.uri == "spiffe://cluster.local/ns/shop/sa/cart"
    assert spiffe_id.workload() == ("shop", "cart")


@pytest.mark.parametrize(
    ("namespace", "service_account"),
    [("", "sa"), ("ns", ""), ("ns", ".."), ("n s", "sa"), ("a/b", "sa"), ("ns", "b/sa/c")],
)
def test_for_workload_refuses_names_that_are_not_one_segment(namespace: str, service_account: str) -> None:
    with pytest.raises(InvalidSpiffeIdError):
        SpiffeId.for_workload("cluster.local", namespace, service_account)


def test_for_workload_ids_cannot_collide() -> None:
    first = ("a/sa/b", "c")
    second = ("a", "b/sa/c")
    ids = []
    for namespace, service_account in (first, second):
        try:
            ids.append(SpiffeId.for_workload("cluster.local", namespace, service_account))
        except InvalidSpiffeIdError:
            continue
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize(
    "uri",
    [
        "spiffe://cluster.local",
        "spiffe://cluster.local/ns/a",
        "spiffe://cluster.local/ns/a/sa",
        "spiffe://cluster.local/ns/a/sa/b/extra",
        "spiffe://cluster.local/ns/a/serviceaccount/b",
        "spiffe://cluster.local/x/a/sa/b",
    ],
)
def test_non_workload_paths_have_no_workload(uri: str) -> None:
    assert SpiffeId.parse(uri).workload() is None


def test_membership_is_by_exact_trust_domain() -> None:
    spiffe_id = SpiffeId.parse("spiffe://cluster.local/ns/a/sa/b")
    assert spiffe_id.is_member_of("cluster.local")
    assert not spiffe_id.is_member_of("local")
    assert not spiffe_id.is_member_of("cluster.local.evil")


def test_ids_are_values() -> None:
    a = SpiffeId.parse("spiffe://cluster.local/ns/a/sa/b")
    b = SpiffeId.for_workload("cluster.local", "a", "b")
    assert a == b
    assert hash(a) == hash(b)
    assert a != SpiffeId.for_workload("cluster.local", "a", "c")


trust_domains = st.text(alphabet=TD_CHARS, min_size=1, max_size=60)
segments = st.text(alphabet=SEGMENT_CHARS, min_size=1, max_size=30).filter(lambda s: s not in (".", ".."))
paths = st.lists(segments, max_size=8).map(lambda parts: "".join("/" + p for p in parts))


@given(trust_domain=trust_domains, path=paths)
def test_ids_from_valid_parts_round_trip(trust_domain: str, path: str) -> None:
    built = SpiffeId(trust_domain, path)
    assert built.uri == f"spiffe://{trust_domain}{path}"
    parsed = SpiffeId.parse(built.uri)
    assert parsed == built
    assert parsed.trust_domain == trust_domain
    assert parsed.path == path


URI_PIECES = st.one_of(
    st.sampled_from(
        [
            "spiffe://",
            "SPIFFE://",
            "/",
            "//",
            ".",
            "..",
            "%",
            "%2F",
            "?",
            "#",
            ":",
            "@",
            "a",
            "Z",
            "-",
            "_",
            "\x00",
        ]
    ),
    st.text(max_size=5),
)
uri_like = st.lists(URI_PIECES, max_size=12).map("".join)


@given(text=st.one_of(st.text(), uri_like, uri_like.map(lambda s: "spiffe://" + s)))
def test_arbitrary_text_parses_faithfully_or_raises_invalid_id(text: str) -> None:
    try:
        parsed = SpiffeId.parse(text)
    except InvalidSpiffeIdError as err:
        assert err.reason == "invalid_spiffe_id"
        return
    assert parsed.uri == text
    assert text.startswith("spiffe://")
    assert parsed.trust_domain == parsed.trust_domain.lower()
    assert len(text.encode()) <= MAX_URI_BYTES
