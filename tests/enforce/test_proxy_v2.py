"""PROXY protocol v2 headers, read back by an independent parser."""

from __future__ import annotations

import ipaddress
import socket
import struct

from hypothesis import given
from hypothesis import strategies as st

from ca.enforce import proxy_v2
from ca.policy.ports import SPIFFE_ID_TLV_TYPE


def parse_proxy_v2(data: bytes) -> tuple[int, int, tuple[str, int], tuple[str, int], dict[int, bytes], bytes]:
    """An independent reader of a PROXY v2 header: (ver_cmd, family, src, dst, TLVs, rest)."""
    assert data[:12] == b"\r\n\r\n\x00\r\nQUIT\n"
    ver_cmd, family, length = struct.unpack("!BBH", data[12:16])
    body, rest = data[16 : 16 + length], data[16 + length :]
    assert len(body) == length
    if family == 0x11:
        size, af = 4, socket.AF_INET
    else:
        assert family == 0x21
        size, af = 16, socket.AF_INET6
    src = socket.inet_ntop(af, body[:size])
    dst = socket.inet_ntop(af, body[size : 2 * size])
    sport, dport = struct.unpack("!HH", body[2 * size : 2 * size + 4])
    tlvs, offset = {}, 2 * size + 4
    while offset < len(body):
        kind, tlv_length = struct.unpack("!BH", body[offset : offset + 3])
        tlvs[kind] = body[offset + 3 : offset + 3 + tlv_length]
        assert len(tlvs[kind]) == tlv_length
        offset += 3 + tlv_length
    return ver_cmd, family, (src, sport), (dst, dport), tlvs, rest


def test_proxy_v2_for_a_plaintext_caller_has_addresses_only() -> None:
    header = proxy_v2.encode(("10.1.2.3", 41234), ("10.9.8.7", 8080))
    assert parse_proxy_v2(header) == (0x21, 0x11, ("10.1.2.3", 41234), ("10.9.8.7", 8080), {}, b"")


def test_proxy_v2_for_mtls_carries_ssl_facts_and_the_spiffe_id() -> None:
    facts = proxy_v2.TlsFacts(
        version="TLSv1.3", cipher="TLS_AES_128_GCM_SHA256", spiffe_id="spiffe://cluster.local/ns/a/sa/b"
    )
    header = proxy_v2.encode(("::ffff:127.0.0.1", 5000), ("127.0.0.1", 15006), facts)
    _, family, src, _, tlvs, _ = parse_proxy_v2(header)
    assert family == 0x11 and src == ("127.0.0.1", 5000)  # v4-mapped IPv6 is written as IPv4
    assert tlvs[SPIFFE_ID_TLV_TYPE] == b"spiffe://cluster.local/ns/a/sa/b"
    ssl_value = tlvs[proxy_v2.PP2_TYPE_SSL]
    client, verify = struct.unpack("!BI", ssl_value[:5])
    assert client == proxy_v2.PP2_CLIENT_SSL | proxy_v2.PP2_CLIENT_CERT_CONN
    assert verify == 0
    sub = parse_proxy_v2(
        b"\r\n\r\n\x00\r\nQUIT\n"
        + struct.pack("!BBH", 0x21, 0x11, 12 + len(ssl_value) - 5)
        + bytes(12)
        + ssl_value[5:]
    )[4]
    assert sub == {
        proxy_v2.PP2_SUBTYPE_SSL_VERSION: b"TLSv1.3",
        proxy_v2.PP2_SUBTYPE_SSL_CIPHER: b"TLS_AES_128_GCM_SHA256",
    }


def test_proxy_v2_mixed_families_are_written_as_ipv6() -> None:
    _, family, src, dst, _, _ = parse_proxy_v2(proxy_v2.encode(("2001:db8::1", 1), ("10.0.0.1", 2)))
    assert family == 0x21
    assert src == ("2001:db8::1", 1) and dst == ("::ffff:10.0.0.1", 2)


addresses = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str))


@given(
    src=addresses,
    dst=addresses,
    sport=st.integers(0, 65535),
    dport=st.integers(0, 65535),
    spiffe_path=st.none() | st.from_regex(r"(/[a-z0-9]{1,8}){1,6}", fullmatch=True),
)
def test_proxy_v2_round_trips(src: str, dst: str, sport: int, dport: int, spiffe_path: str | None) -> None:
    facts = None
    if spiffe_path is not None:
        facts = proxy_v2.TlsFacts(version="TLSv1.3", cipher="X", spiffe_id=f"spiffe://td{spiffe_path}")
    header = proxy_v2.encode((src, sport), (dst, dport), facts)
    _, family, got_src, got_dst, tlvs, rest = parse_proxy_v2(header + b"payload")
    assert rest == b"payload"
    expected = [_plain(src), _plain(dst)]
    if all(isinstance(a, ipaddress.IPv4Address) for a in expected):
        assert family == 0x11
    else:
        assert family == 0x21
        expected = [ipaddress.IPv6Address(f"::ffff:{a}") if a.version == 4 else a for a in expected]
    assert [ipaddress.ip_address(got_src[0]), ipaddress.ip_address(got_dst[0])] == expected
    assert (got_src[1], got_dst[1]) == (sport, dport)
    assert (SPIFFE_ID_TLV_TYPE in tlvs) == (facts is not None)
    if facts is not None:
        assert tlvs[SPIFFE_ID_TLV_TYPE].decode() == facts.spiffe_id


def _plain(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address as the header must carry it: an IPv4-mapped IPv6 address as IPv4."""
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
