"""First-byte sniffing: whether a connection starts with TLS or plaintext."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ca.enforce.sniff import FirstBytes, classify, classify_after_timeout


@pytest.mark.parametrize(
    ("first", "kind"),
    [
        (b"\x16\x03\x01\x02\x00", FirstBytes.TLS),
        (b"\x16\x03", FirstBytes.TLS),
        (b"\x16", FirstBytes.NEED_MORE),
        (b"", FirstBytes.NEED_MORE),
        (b"GET / HTTP/1.1\r\n", FirstBytes.PLAINTEXT),
        (b"PRI * HTTP/2.0", FirstBytes.PLAINTEXT),
        (b"\x16\x02", FirstBytes.PLAINTEXT),  # not a TLS version: a binary protocol's bytes
        (b"\x00\x00", FirstBytes.PLAINTEXT),
    ],
)
def test_classify(first: bytes, kind: FirstBytes) -> None:
    assert classify(first) is kind


def test_after_the_first_byte_timeout_what_cannot_be_told_is_plaintext() -> None:
    assert classify_after_timeout(b"") is FirstBytes.PLAINTEXT  # a server-speaks-first client
    assert classify_after_timeout(b"\x16") is FirstBytes.PLAINTEXT
    assert classify_after_timeout(b"\x16\x03") is FirstBytes.TLS


@given(st.binary(min_size=2, max_size=16))
def test_tls_exactly_when_handshake_record_and_major_version_3(first: bytes) -> None:
    expected = FirstBytes.TLS if first[:2] == b"\x16\x03" else FirstBytes.PLAINTEXT
    assert classify(first) is expected
