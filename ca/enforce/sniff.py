"""What a new connection speaks, from its first bytes (read with MSG_PEEK, not consumed).

Pure code. A TLS connection starts with a handshake record: content type 0x16
followed by the major version 0x03 (REFERENCE §6). Anything else is plaintext.
A single 0x16 byte could be either, so the caller waits for more (or for the
first-byte timeout, after which a silent or short client counts as plaintext:
server-speaks-first protocols such as MySQL or SMTP send nothing until the
server greets them).
"""

from __future__ import annotations

from enum import Enum

TLS_HANDSHAKE = 0x16
TLS_MAJOR_VERSION = 0x03
PEEK_BYTES = 8


class FirstBytes(Enum):
    TLS = "tls"
    PLAINTEXT = "plaintext"
    NEED_MORE = "need_more"


def classify(first: bytes) -> FirstBytes:
    """TLS, plaintext, or too few bytes to tell (nothing, or only the 0x16 byte)."""
    if not first:
        return FirstBytes.NEED_MORE
    if first[0] != TLS_HANDSHAKE:
        return FirstBytes.PLAINTEXT
    if len(first) < 2:
        return FirstBytes.NEED_MORE
    return FirstBytes.TLS if first[1] == TLS_MAJOR_VERSION else FirstBytes.PLAINTEXT


def classify_after_timeout(first: bytes) -> FirstBytes:
    """The answer once the first-byte timeout has passed: what cannot be told is plaintext."""
    kind = classify(first)
    return FirstBytes.PLAINTEXT if kind is FirstBytes.NEED_MORE else kind
