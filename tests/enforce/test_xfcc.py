"""The x-forwarded-client-cert header the enforcer adds for an mTLS caller."""

from __future__ import annotations

from ca.enforce.xfcc import cert_hash, xfcc_header_line, xfcc_value


def test_xfcc_value_is_envoys_sanitize_set_with_uri() -> None:
    der = b"certificate bytes"
    value = xfcc_value(
        by="spiffe://cluster.local/ns/shop/sa/web",
        cert_hash_hex=cert_hash(der),
        peer_uri="spiffe://cluster.local/ns/shop/sa/client",
    )
    assert value == (
        "By=spiffe://cluster.local/ns/shop/sa/web;"
        f"Hash={__import__('hashlib').sha256(der).hexdigest()};"
        "URI=spiffe://cluster.local/ns/shop/sa/client"
    )
    assert xfcc_header_line(value) == b"x-forwarded-client-cert: " + value.encode() + b"\r\n"


def test_xfcc_quotes_values_with_separators_and_omits_a_missing_by() -> None:
    value = xfcc_value(by=None, cert_hash_hex="ab", peer_uri='urn:a;b="c"')
    assert value == 'Hash=ab;URI="urn:a;b=\\"c\\""'
