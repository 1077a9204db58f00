"""PROXY protocol version 2 headers (HAProxy's proxy-protocol.txt, section 2.2), pure code.

The header tells the application who really connected: the caller's address and
the address it connected to, and, for a mutual-TLS caller, the TLS facts and the
caller's SPIFFE ID in TLVs:

- PP2_TYPE_SSL (0x20): `client` flags (PP2_CLIENT_SSL, plus PP2_CLIENT_CERT_CONN
  since every mTLS connection presented a certificate), `verify` = 0 (the
  certificate was verified; refused ones never reach the application), then the
  sub-TLVs PP2_SUBTYPE_SSL_VERSION ("TLSv1.3") and PP2_SUBTYPE_SSL_CIPHER.
- SPIFFE_ID_TLV_TYPE (0xE0, the first type the specification leaves to
  applications; shared with the Envoy configuration in `ca.policy.ports`): the
  caller's SPIFFE ID in UTF-8.

Plaintext callers (and TLS passed through untouched) get a header with the
addresses only.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from ca.policy.ports import SPIFFE_ID_TLV_TYPE

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
VERSION_2_PROXY = 0x21  # version 2, command PROXY
VERSION_2_LOCAL = 0x20  # version 2, command LOCAL: no addresses
TCP_OVER_IPV4 = 0x11
TCP_OVER_IPV6 = 0x21
UNSPECIFIED = 0x00

PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_CLIENT_SSL = 0x01
PP2_CLIENT_CERT_CONN = 0x02
MAX_TLV_VALUE = 0xFFFF

Address = tuple[str, int]


@dataclass(frozen=True, kw_only=True)
class TlsFacts:
    """What the header says about a terminated mutual-TLS connection."""

    version: str
    cipher: str
    spiffe_id: str


def tlv(kind: int, value: bytes) -> bytes:
    if not 0 <= kind <= 0xFF:
        raise ValueError(f"TLV type {kind} is not a byte")
    if len(value) > MAX_TLV_VALUE:
        raise ValueError(f"TLV value of {len(value)} bytes is over {MAX_TLV_VALUE}")
    return struct.pack("!BH", kind, len(value)) + value


def ssl_tlv(facts: TlsFacts) -> bytes:
    client = PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN
    verify = 0
    body = struct.pack("!BI", client, verify)
    body += tlv(PP2_SUBTYPE_SSL_VERSION, facts.version.encode("ascii", "replace"))
    body += tlv(PP2_SUBTYPE_SSL_CIPHER, facts.cipher.encode("ascii", "replace"))
    return tlv(PP2_TYPE_SSL, body)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    address = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _addresses(source: Address, destination: Address) -> tuple[int, bytes]:
    src, dst = _ip(source[0]), _ip(destination[0])
    ports = struct.pack("!HH", source[1], destination[1])
    if isinstance(src, ipaddress.IPv4Address) and isinstance(dst, ipaddress.IPv4Address):
        return TCP_OVER_IPV4, src.packed + dst.packed + ports
    # Mixed families: both as IPv6, IPv4 ones mapped (::ffff:a.b.c.d).
    src6 = src if isinstance(src, ipaddress.IPv6Address) else ipaddress.IPv6Address(f"::ffff:{src}")
    dst6 = dst if isinstance(dst, ipaddress.IPv6Address) else ipaddress.IPv6Address(f"::ffff:{dst}")
    return TCP_OVER_IPV6, src6.packed + dst6.packed + ports


def encode(source: Address, destination: Address, tls: TlsFacts | None = None) -> bytes:
    """A PROXY v2 header for a TCP connection from `source` to `destination`."""
    family, body = _addresses(source, destination)
    if tls is not None:
        body += ssl_tlv(tls) + tlv(SPIFFE_ID_TLV_TYPE, tls.spiffe_id.encode("utf-8"))
    if len(body) > MAX_TLV_VALUE:
        raise ValueError("PROXY v2 header body is over 65535 bytes")
    return SIGNATURE + struct.pack("!BBH", VERSION_2_PROXY, family, len(body)) + body
