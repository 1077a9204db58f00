"""The x-forwarded-client-cert value Envoy sends to an application (pure code).

With `forward_client_cert_details: SANITIZE_SET` and `set_current_client_cert_details:
{uri: true}`, Envoy replaces whatever the caller sent with one element describing
the connection it terminated: `By=<own URI SAN>;Hash=<hex SHA-256 of the client
certificate (DER)>;URI=<client URI SAN>`, keys in that order. A value holding one
of `,;="` is double-quoted with inner quotes escaped; SPIFFE IDs never hold them,
but the quoting keeps the header well-formed whatever it is given.
"""

from __future__ import annotations

import hashlib

HEADER = "x-forwarded-client-cert"
HEADER_BYTES = HEADER.encode()
_SPECIAL = frozenset(',;="')


def _value(text: str) -> str:
    if any(char in _SPECIAL for char in text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def cert_hash(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def xfcc_value(*, by: str | None, cert_hash_hex: str, peer_uri: str) -> str:
    """One XFCC element: `By` (omitted when this proxy has no URI SAN), `Hash`, `URI`."""
    parts = [] if by is None else [f"By={_value(by)}"]
    parts.append(f"Hash={cert_hash_hex}")
    parts.append(f"URI={_value(peer_uri)}")
    return ";".join(parts)


def xfcc_header_line(value: str) -> bytes:
    """The header line as sent on HTTP/1.1, CRLF included."""
    return HEADER_BYTES + b": " + value.encode("latin-1") + b"\r\n"
