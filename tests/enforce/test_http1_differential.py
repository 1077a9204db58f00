"""Differential fuzzing: the enforcer's HTTP/1.1 parser against h11, on requests and responses.

Generated streams mix well-formed messages with deliberately odd ones (odd methods,
targets and versions, control bytes, obs-fold, whitespace before the colon, bare LF,
duplicate or conflicting Content-Length, Transfer-Encoding lists and letter case,
chunk sizes with extensions, leading zeros and either hex case, trailers, pipelining,
truncation, responses to HEAD and CONNECT, 1xx/204/304, bodies ending at close).
meshca is fed each stream split at random points; h11 reads it whole. For every
message both must agree on where the head ends, where the message ends, and the
body bytes in between, and on whether the message is accepted at all.

The only disagreements allowed are the deliberate ones listed in MESHCA_REFUSES,
H11_REFUSES and RESPONSE_DIFFERENCES below, each with its reason; the generator tags
each odd piece it emits, and a disagreement on a message without a matching tag
fails. A difference in where a message ends is never allowed.

Size: each example carries many messages (a comparison that stops at a refused message
goes on with the rest as a new connection); the default run compares about 100,000
requests and responses. MESHCA_HTTP1_FUZZ_SCALE multiplies the number of examples;
run with -s to see the count.
"""

from __future__ import annotations

import itertools
import os
import re
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ca.enforce.http1 import Exchanges, Request, RequestStream, ResponseTracker

SCALE = int(os.environ.get("MESHCA_HTTP1_FUZZ_SCALE", "1"))
REQUEST_EXAMPLES = 4000 * SCALE
RESPONSE_EXAMPLES = 2500 * SCALE
MAX_MESSAGES = 50  # per example; the mean is about half
H11_BUFFER = 1 << 20  # h11's own head limit is not what is compared here
BARE_LF = re.compile(rb"(?<!\r)\n")

COMPARED: Counter[str] = Counter()


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --------------------------------------------------------------------------- deliberate differences

# meshca refuses (400/431/505 for requests, closes the connection for responses) what h11 accepts.
# Refusing is the safe side: a message meshca does not parse the way every recipient would is not
# forwarded, so no recipient can frame it differently.
MESHCA_REFUSES = {
    # RFC 9112 2.2 lets a recipient accept a bare LF as a line end; h11 does. A recipient that
    # does not would find a different end of the head, so meshca refuses them in heads and trailers.
    "bare-lf": "a line ending in a bare LF",
    # RFC 9112 5.2: obsolete line folding may be refused with 400; h11 joins the lines.
    "obs-fold": "obsolete line folding",
    # h11 accepts every byte but NUL and whitespace in values and chunk extensions; meshca refuses
    # the other control characters (RFC 9110 5.5), which some recipients treat as line ends.
    "control-char": "a control character in a field value or chunk extension",
    # RFC 9112 6.1: such a request "ought to be handled as an error"; h11 lets chunked win.
    "te-and-cl": "Transfer-Encoding together with Content-Length",
    # RFC 9112 6.1: HTTP/1.0 has no Transfer-Encoding; h11 reads such a body as chunked.
    "te-http10": "Transfer-Encoding in an HTTP/1.0 request",
    # h11 accepts any digit.digit version; meshca answers 505 to anything but HTTP/1.x.
    "http-version": "a version other than HTTP/1.x",
    # meshca bounds Content-Length to 18 digits and chunk sizes to 15 hex digits (no overflow
    # anywhere downstream); h11 allows 20 of each.
    "long-number": "a Content-Length or chunk size with very many digits",
    # RFC 9112 7.1 has no whitespace after a chunk size without an extension; h11 allows it.
    "chunk-size-space": "whitespace after a chunk size",
    # Envoy's default limit; h11 has none on the count.
    "too-many-fields": "more than 100 header fields",
}

# h11 refuses what meshca accepts. None of these changes where a message ends.
H11_REFUSES = {
    # RFC 9112 2.2: empty lines before a request line SHOULD be ignored; meshca drops them (they
    # are not forwarded), h11 refuses them.
    "leading-empty-line": "an empty line before the request line",
    # Host is the application's business, not framing: meshca forwards the request as it is.
    "host": "a missing or repeated Host field",
    # RFC 9112 6.1/6.3: a body is chunked when chunked is the final coding, in one field or
    # several, and empty list elements are ignored; h11 implements chunked alone.
    "te-list": "a Transfer-Encoding list ending in chunked",
    # Bytes over 0x7f in the request target do not take part in framing; meshca forwards them.
    "target-obs-text": "a non-ASCII byte in the request target",
    # RFC 9112 7.1.1 allows BWS before the ';' of a chunk extension; h11 does not.
    "chunk-ext-bws": "whitespace before a chunk extension",
}

# Responses are only observed (to pair them with requests), never changed, and come from the
# application: meshca reads them as RFC 9112 tells a recipient to, more loosely than h11.
RESPONSE_DIFFERENCES = {
    # meshca reads only the status, Content-Length and Transfer-Encoding of a response; other
    # malformed fields (space before the colon, no colon) are the client's to judge.
    "loose-fields": "a malformed field other than the framing ones",
    # RFC 9112 6.3: a response whose final coding is not chunked is read until close; one whose
    # final coding is chunked is chunked. h11 refuses both.
    "te-list": "a Transfer-Encoding other than chunked alone",
    # h11 wants exactly one space after the status code; the reason phrase is ignored anyway.
    "reason": "a tab before the reason phrase",
    # A status under 100 is not informational, so meshca reads it as a final response.
    "status-range": "a status code under 100",
    # RFC 9112 6.3: a response to HEAD, a 1xx, 204, 304 or 2xx to CONNECT ends at its head whatever
    # its fields say, so meshca does not read Content-Length or Transfer-Encoding there; h11 still
    # checks them.
    "no-body": "malformed framing fields on a response that has no body",
}


# --------------------------------------------------------------------------- generated pieces


@dataclass(frozen=True)
class Piece:
    data: bytes
    tags: frozenset[str] = frozenset()


def piece(data: bytes, *tags: str) -> Piece:
    return Piece(data, frozenset(tags))


@dataclass(frozen=True)
class Message:
    data: bytes
    tags: frozenset[str]


def join(*pieces: Piece) -> Message:
    return Message(b"".join(p.data for p in pieces), frozenset().union(*(p.tags for p in pieces)))


def common(*items: Piece, weight: int = 6) -> list[Piece]:
    """The first item `weight` times, so that most messages are well-formed."""
    return [items[0]] * weight + list(items[1:])


METHODS = common(
    piece(b"GET"),
    piece(b"POST"),
    piece(b"PUT"),
    piece(b"DELETE"),
    piece(b"OPTIONS"),
    piece(b"M-SEARCH"),
    piece(b"get"),
    piece(b"G@T"),
    piece(b""),
)
TARGETS = common(
    piece(b"/"),
    piece(b"/a/b?c=d&e=%20"),
    piece(b"*"),
    piece(b"http://example.test/p"),
    piece(b"/caf\xc3\xa9", "target-obs-text"),
    piece(b"/a b"),
    piece(b"/\x7f"),
    piece(b""),
)
VERSIONS = common(
    piece(b"HTTP/1.1"),
    piece(b"HTTP/1.0"),
    piece(b"HTTP/1.2"),
    piece(b"HTTP/2.0", "http-version"),
    piece(b"HTTP/0.9", "http-version"),
    piece(b"http/1.1"),
    piece(b"HTTP/1"),
    piece(b"HTTP/1.10"),
    piece(b"HTTP/1.1 "),
    weight=12,
)
HOSTS = common(
    piece(b"Host: example.test\r\n"),
    piece(b"", "host"),
    piece(b"Host: a\r\nHost: b\r\n", "host"),
    weight=30,
)
LEADING = common(piece(b""), piece(b"\r\n", "leading-empty-line"), piece(b"\n"), weight=60)
FIELDS = [
    piece(b"Accept: */*\r\n"),
    piece(b"User-Agent: fuzz/1.0\r\n"),
    piece(b"X-Empty:\r\n"),
    piece(b"X-Padded:   padded  value \t\r\n"),
    piece(b"X-Utf8: caf\xc3\xa9\r\n"),
    piece(b"X-List: a, b,, c\r\n"),
    piece(b"Connection: keep-alive\r\n"),
    piece(b"Connection: close\r\n"),
    piece(b"Expect: 100-continue\r\n"),
    piece(b"X-Ctl: a\x01b\r\n", "control-char"),
    piece(b"X-Del: a\x7f\r\n", "control-char"),
    piece(b"X-Esc: \x1b[0m\r\n", "control-char"),
    piece(b"X-Nul: a\x00b\r\n"),
    piece(b"X-Vt: a\x0bb\r\n"),
    piece(b"X-Cr: a\rb\r\n"),
    piece(b"X-Space : v\r\n"),
    piece(b"X-Tab\t: v\r\n"),
    piece(b": v\r\n"),
    piece(b"X Y: v\r\n"),
    piece(b"X-\xc3\xa9: v\r\n"),
    piece(b"NoColon\r\n"),
    piece(b"X-Fold: a\r\n b\r\n", "obs-fold"),
    piece(b"X-Fold: a\r\n\tb\r\n", "obs-fold"),
    piece(b"X-Lf: v\nX-After: w\r\n", "bare-lf"),
    piece(b"X-Lf: v\n", "bare-lf"),
    piece(b"Content-Length: 0\r\n Transfer-Encoding: chunked\r\n", "obs-fold"),
]
ODD_VALUE_BYTES = b"\t !~\x80\xff\x01\x7f"
END_OF_HEAD = common(piece(b"\r\n"), piece(b"\n", "bare-lf"), weight=30)


def length_fields(n: int) -> list[Piece]:
    return common(
        piece(b"Content-Length: %d\r\n" % n),
        piece(b"content-LENGTH: %d\r\n" % n),
        piece(b"Content-Length: 0%d\r\n" % n),
        piece(b"Content-Length: %d, %d\r\n" % (n, n)),
        piece(b"Content-Length: %d\r\nContent-Length: %d\r\n" % (n, n)),
        piece(b"Content-Length:  %d \t\r\n" % n),
        piece(b"Content-Length: %d\r\nContent-Length: %d\r\n" % (n, n + 1)),
        piece(b"Content-Length: %d, %d\r\n" % (n, n + 1)),
        piece(b"Content-Length: +%d\r\n" % n),
        piece(b"Content-Length: %d,\r\n" % n),
        piece(b"Content-Length: 0x%x\r\n" % n),
        piece(b"Content-Length: \r\n"),
        piece(b"Content-Length: %s%d\r\n" % (b"0" * 18, n), "long-number"),
    )


CHUNKED_FIELDS = common(
    piece(b"Transfer-Encoding: chunked\r\n"),
    piece(b"transfer-encoding: Chunked\r\n"),
    piece(b"TRANSFER-ENCODING: CHUNKED\r\n"),
    piece(b"Transfer-Encoding:  chunked \t\r\n"),
    piece(b"Transfer-Encoding: gzip, chunked\r\n", "te-list"),
    piece(b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n", "te-list"),
    piece(b"Transfer-Encoding: ,chunked\r\n", "te-list"),
    piece(b"Transfer-Encoding: chunked, chunked\r\n"),
    piece(b"Transfer-Encoding: chunked, identity\r\n"),
    piece(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n"),
    piece(b"Transfer-Encoding: identity\r\n"),
    piece(b"Transfer-Encoding: chunked;q=1\r\n"),
    piece(b"Transfer-Encoding: xchunked\r\n"),
    piece(b"Transfer-Encoding:\r\n"),
    piece(b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", "te-and-cl"),
    piece(b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n", "te-and-cl"),
    piece(b"Transfer-Encoding: gzip,\r\n chunked\r\n", "obs-fold"),
)


def size_lines(size: int) -> list[Piece]:
    return common(
        piece(b"%x" % size),
        piece(b"%X" % size),
        piece(b"00%x" % size),
        piece(b"%016x" % size, "long-number"),
        piece(b"%x;ext" % size),
        piece(b'%x;a=b;c="d e"' % size),
        piece(b"%x ;ext" % size, "chunk-ext-bws"),
        piece(b"%x\t;ext" % size, "chunk-ext-bws"),
        piece(b"%x " % size, "chunk-size-space"),
        piece(b"%x;\x01" % size, "control-char"),
        piece(b"%x;caf\xc3\xa9" % size),
        piece(b"0x%x" % size),
        piece(b"-%x" % size),
        piece(b"%x\n" % size, "bare-lf"),
        piece(b""),
        weight=12,
    )


CHUNK_ENDS = common(piece(b"\r\n"), piece(b"\n"), piece(b"XX"), piece(b"\r"), weight=30)
TRAILERS = common(
    piece(b""),
    piece(b"X-Trailer: v\r\n"),
    piece(b"X-One: 1\r\nX-Two: 2\r\n"),
    piece(b"Content-Length: 5\r\n"),
    piece(b"X-Ctl: a\x01\r\n", "control-char"),
    piece(b"X-Fold: a\r\n b\r\n", "obs-fold"),
    piece(b"X-Space : v\r\n", "loose-fields"),
    piece(b"X-Lf: v\n", "bare-lf"),
    piece(b"NoColon\r\n", "loose-fields"),
)
SMUGGLED_BODIES = [
    b"\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    b"0\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
]


class Choices:
    """Every choice of one generated message, read from one drawn byte string.

    Each choice is the next digit of the string read as a number, so when hypothesis
    shrinks the string towards zeros every choice moves to the first, well-formed item.
    Drawing one value per message instead of one per choice keeps the generation cheap
    enough for the number of messages compared here.
    """

    def __init__(self, seed: bytes) -> None:
        self._rest = int.from_bytes(seed, "big")

    def index(self, n: int) -> int:
        self._rest, digit = divmod(self._rest, n)
        return digit

    def pick(self, items: list[Piece]) -> Piece:
        return items[self.index(len(items))]

    def one_in(self, n: int) -> bool:
        return self.index(n) == n - 1

    def data(self, max_size: int) -> bytes:
        if self.one_in(8):
            return SMUGGLED_BODIES[self.index(len(SMUGGLED_BODIES))]
        return bytes(self.index(256) for _ in range(self.index(max_size + 1)))


SEEDS = st.binary(min_size=64, max_size=64)


def odd_fields(choose: Choices) -> list[Piece]:
    """A few header fields from the table, and sometimes one with random odd bytes in its value."""
    fields = [choose.pick(FIELDS) for _ in range(choose.index(4))]
    if choose.one_in(10):
        value = bytes(ODD_VALUE_BYTES[choose.index(len(ODD_VALUE_BYTES))] for _ in range(choose.index(7)))
        ctl = any((b < 0x20 and b != 0x09) or b == 0x7F for b in value)
        fields.append(piece(b"X-Odd: " + value + b"\r\n", *(["control-char"] if ctl else [])))
    if choose.one_in(200):
        fields.append(piece(b"X-Many: 1\r\n" * 101, "too-many-fields"))
    return fields


LAST_CHUNKS = common(piece(b"0"), piece(b"000"), piece(b"0;done"), piece(b"0 ", "chunk-size-space"))


def chunked_body(choose: Choices) -> list[Piece]:
    pieces: list[Piece] = []
    for _ in range(choose.index(4)):
        data = choose.data(30) or b"x"
        pieces += [choose.pick(size_lines(len(data))), piece(b"\r\n" + data), choose.pick(CHUNK_ENDS)]
    return [
        *pieces,
        choose.pick(LAST_CHUNKS),
        piece(b"\r\n"),
        choose.pick(TRAILERS),
        choose.pick(END_OF_HEAD),
    ]


def framing(choose: Choices, chunked_fields: list[Piece]) -> tuple[list[Piece], list[Piece]]:
    """(framing fields, body pieces)."""
    kind = choose.index(5)
    if kind == 0:
        return [], []
    if kind <= 2:
        body = choose.data(40)
        return [choose.pick(length_fields(len(body)))], [piece(body)]
    return [choose.pick(chunked_fields)], chunked_body(choose)


def shuffled(choose: Choices, items: list[Piece]) -> list[Piece]:
    items = list(items)
    for i in range(len(items) - 1, 0, -1):
        j = choose.index(i + 1)
        items[i], items[j] = items[j], items[i]
    return items


def request(seed: bytes) -> Message:
    choose = Choices(seed)
    method, target, version = choose.pick(METHODS), choose.pick(TARGETS), choose.pick(VERSIONS)
    if choose.one_in(40):
        method, target = piece(b"CONNECT"), piece(b"example.test:443")
    frame_fields, body = framing(choose, CHUNKED_FIELDS)
    if frame_fields and version.data == b"HTTP/1.0" and b"ransfer-" in frame_fields[0].data.lower():
        frame_fields = [piece(frame_fields[0].data, *frame_fields[0].tags, "te-http10")]
    fields = shuffled(choose, [choose.pick(HOSTS), *odd_fields(choose), *frame_fields])
    if choose.one_in(40):
        fields.append(piece(b"Connection: Upgrade\r\nUpgrade: websocket\r\n"))
    line = piece(method.data + b" " + target.data + b" " + version.data + b"\r\n", *method.tags, *target.tags)
    return join(
        choose.pick(LEADING), piece(b"", *version.tags), line, *fields, choose.pick(END_OF_HEAD), *body
    )


@dataclass
class Stream:
    """Requests on one connection."""

    messages: list[Message]
    data: bytes  # the messages one after the other, perhaps cut short
    cuts: list[int]  # where meshca's reads end

    def tags(self, index: int) -> frozenset[str]:
        return self.messages[index].tags if index < len(self.messages) else frozenset()

    def rest(self, first: int) -> Stream:
        """The stream from message `first` on, as a new connection would carry it."""
        offset = sum(len(m.data) for m in self.messages[:first])
        data = self.data[offset:]
        return Stream(
            self.messages[first:], data, [c - offset for c in self.cuts if offset < c <= len(self.data)]
        )


@st.composite
def streams(draw: st.DrawFn, build: Callable[[bytes], Message]) -> Stream:
    messages = [
        build(seed) for seed in draw(st.lists(SEEDS, min_size=MAX_MESSAGES // 4, max_size=MAX_MESSAGES))
    ]
    data = b"".join(m.data for m in messages)
    if draw(st.integers(0, 3)) == 0:  # cut short
        data = data[: draw(st.integers(0, len(data)))]
    cuts = draw(st.lists(st.integers(0, len(data)), max_size=12))
    return Stream(messages, data, cuts)


# --------------------------------------------------------------------------- generated responses


@dataclass(frozen=True)
class Exchange:
    """A request as the response side knows it, and the response bytes the application sent."""

    method: bytes
    switches: bool  # CONNECT, or an Upgrade request
    response: Message


STATUS_VERSIONS = common(
    piece(b"HTTP/1.1"),
    piece(b"HTTP/1.0"),
    piece(b"HTTP/2.0", "http-version"),
    piece(b"http/1.1"),
    piece(b"HTTP/1.1 "),
    weight=16,
)
FINAL_STATUSES = common(
    piece(b"200"),
    piece(b"201"),
    piece(b"204"),
    piece(b"304"),
    piece(b"404"),
    piece(b"500"),
    piece(b"099", "status-range"),
    piece(b"20"),
    piece(b"2000"),
)
INTERIM_STATUSES = [piece(b"100"), piece(b"102"), piece(b"103")]
REASONS = common(
    piece(b" OK"),
    piece(b""),
    piece(b" "),
    piece(b"\tOK", "reason"),
    piece(b" caf\xc3\xa9"),
    piece(b" a\x01b"),
)
RESPONSE_FIELDS = [
    piece(b"Server: fuzz\r\n"),
    piece(b"X-Empty:\r\n"),
    piece(b"X-Ctl: a\x01b\r\n"),
    piece(b"Connection: close\r\n"),
    piece(b"Connection: keep-alive\r\n"),
    piece(b"X-Fold: a\r\n b\r\n"),
    piece(b"X-Space : v\r\n", "loose-fields"),
    piece(b"NoColon\r\n", "loose-fields"),
    piece(b"X-Lf: v\n", "bare-lf"),
]
RESPONSE_CHUNKED_FIELDS = common(
    piece(b"Transfer-Encoding: chunked\r\n"),
    piece(b"transfer-encoding: CHUNKED\r\n"),
    piece(b"Transfer-Encoding: gzip, chunked\r\n", "te-list"),
    piece(b"Transfer-Encoding: gzip\r\n", "te-list"),
    piece(b"Transfer-Encoding: chunked, gzip\r\n", "te-list"),
    piece(b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n"),
    piece(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"),
)


def status_line(choose: Choices, status: Piece) -> Piece:
    version, reason = choose.pick(STATUS_VERSIONS), choose.pick(REASONS)
    return piece(
        version.data + b" " + status.data + reason.data + b"\r\n", *version.tags, *status.tags, *reason.tags
    )


def response_head(choose: Choices, status: Piece, extra: list[Piece]) -> list[Piece]:
    fields = [choose.pick(RESPONSE_FIELDS) for _ in range(choose.index(3))]
    return [status_line(choose, status), *shuffled(choose, [*fields, *extra]), choose.pick(END_OF_HEAD)]


REQUEST_KINDS = [(b"GET", False)] * 6 + [
    (b"HEAD", False),
    (b"POST", False),
    (b"CONNECT", True),
    (b"GET", True),
]


def exchange(seed: bytes) -> Exchange:
    choose = Choices(seed)
    method, switches = REQUEST_KINDS[choose.index(len(REQUEST_KINDS))]
    pieces: list[Piece] = []
    for _ in range(choose.index(3) if choose.one_in(4) else 0):
        pieces += response_head(choose, choose.pick(INTERIM_STATUSES), [piece(b"", "no-body")])
    if switches and choose.one_in(2):
        status = piece(b"200") if method == b"CONNECT" else piece(b"101")
        upgrade = [] if method == b"CONNECT" else [piece(b"Connection: Upgrade\r\nUpgrade: websocket\r\n")]
        pieces += response_head(choose, status, upgrade)
        return Exchange(method, switches, join(*pieces))
    frame_fields, body = framing(choose, RESPONSE_CHUNKED_FIELDS)
    status = choose.pick(FINAL_STATUSES)
    connected = method == b"CONNECT" and status.data in (b"200", b"201", b"204")
    if method == b"HEAD" or status.data in (b"204", b"304") or connected:
        frame_fields.append(piece(b"", "no-body"))
    pieces += [*response_head(choose, status, frame_fields), *body]
    return Exchange(method, switches, join(*pieces))


@dataclass
class ResponseStream:
    exchanges: list[Exchange]
    data: bytes
    cuts: list[int]

    def tags(self, index: int) -> frozenset[str]:
        return self.exchanges[index].response.tags if index < len(self.exchanges) else frozenset()

    def rest(self, first: int) -> ResponseStream:
        offset = sum(len(e.response.data) for e in self.exchanges[:first])
        data = self.data[offset:]
        cuts = [c - offset for c in self.cuts if offset < c <= len(self.data)]
        return ResponseStream(self.exchanges[first:], data, cuts)


@st.composite
def response_streams(draw: st.DrawFn) -> ResponseStream:
    exchanges = [
        exchange(s) for s in draw(st.lists(SEEDS, min_size=MAX_MESSAGES // 4, max_size=MAX_MESSAGES))
    ]
    data = b"".join(e.response.data for e in exchanges)
    if draw(st.integers(0, 3)) == 0:  # cut short
        data = data[: draw(st.integers(0, len(data)))]
    return ResponseStream(exchanges, data, draw(st.lists(st.integers(0, len(data)), max_size=12)))


# --------------------------------------------------------------------------- what h11 reads


@dataclass
class Read:
    """One message as h11 read it: offsets in the stream, body decoded."""

    head_end: int
    end: int | None = None  # None while incomplete
    body: bytes = b""
    status: int = 0  # responses
    at_close: bool = False  # the body ended when the connection closed


@dataclass
class Reading:
    messages: list[Read] = field(default_factory=list)
    # complete: all read; incomplete: more bytes needed; rejected: the next message is refused;
    # switch: the connection changes protocol; close: h11 reads nothing after the last message
    outcome: str = "complete"


def consumed(conn: h11.Connection, data: bytes) -> int:
    return len(data) - len(conn.trailing_data[0])


def h11_requests(data: bytes) -> Reading:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=H11_BUFFER)
    conn.receive_data(data)
    reading = Reading()
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            reading.outcome = "rejected"
            return reading
        if event is h11.NEED_DATA:
            partial = consumed(conn, data) < len(data) or any(m.end is None for m in reading.messages)
            reading.outcome = "incomplete" if partial else "complete"
            return reading
        if event is h11.PAUSED:
            reading.outcome = "switch"
            return reading
        if isinstance(event, h11.ConnectionClosed):
            reading.outcome = "close"
            return reading
        if isinstance(event, h11.Request):
            reading.messages.append(Read(head_end=consumed(conn, data)))
        elif isinstance(event, h11.Data):
            reading.messages[-1].body += event.data
        elif isinstance(event, h11.EndOfMessage):
            reading.messages[-1].end = consumed(conn, data)
            if conn.their_state not in (h11.DONE, h11.MUST_CLOSE):  # a protocol switch proposed
                reading.outcome = "switch"
                return reading
            conn.send(h11.Response(status_code=200, headers=[(b"content-length", b"0")]))
            conn.send(h11.EndOfMessage())
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                reading.outcome = "close"
                return reading
            conn.start_next_cycle()


# --------------------------------------------------------------------------- what meshca reads


@dataclass(frozen=True)
class RequestsSeen:
    requests: int
    body_done: bool
    forwarded: bytes
    failed: bool
    paused: bool


def points(data: bytes, cuts: list[int], boundaries: Iterator[int]) -> list[int]:
    return sorted({0, len(data), *cuts, *boundaries})


def meshca_requests(data: bytes, at: list[int]) -> dict[int, RequestsSeen]:
    """meshca fed `data` in reads ending at each offset of `at`, and what it had done after each."""
    exchanges = Exchanges()
    stream = RequestStream(exchanges, None)
    forwarded = bytearray()
    seen = {}
    for start, end in itertools.pairwise([0, *at]):
        if end > start:
            forwarded += b"".join(bytes(p) for p in stream.feed(memoryview(data[start:end])))
        done = bool(exchanges.waiting) and exchanges.waiting[-1].body_done
        seen[end] = RequestsSeen(stream.requests, done, bytes(forwarded), stream.failed, stream.paused)
    return seen


# --------------------------------------------------------------------------- comparing


def allowed(tags: frozenset[str], table: dict[str, str], what: str) -> None:
    assert tags & table.keys(), f"{what}, and the message has no deliberate difference that explains it"
    COMPARED.update(f"difference: {tag}" for tag in tags & table.keys())


def compare_requests(stream: Stream) -> int:
    """Check meshca against h11 on one stream; returns the number of messages compared."""
    data = stream.data
    reading = h11_requests(data)
    bounds = (o for m in reading.messages for o in (m.head_end, m.end) if o is not None)
    seen = meshca_requests(data, points(data, stream.cuts, bounds))
    complete = 0  # messages both read to their end
    for index, read in enumerate(reading.messages):
        at_head = seen[read.head_end]
        if at_head.failed and at_head.requests == index:
            allowed(stream.tags(index), MESHCA_REFUSES, "meshca refused a request head that h11 accepted")
            return index + 1
        assert (at_head.requests, at_head.failed) == (index + 1, False), "the request heads end apart"
        assert at_head.forwarded == data[: read.head_end], "meshca forwarded another head"
        if read.end is None:
            break
        at_end = seen[read.end]
        if at_end.failed:
            allowed(stream.tags(index), MESHCA_REFUSES, "meshca refused a body that h11 accepted")
            return index + 1
        assert (at_end.requests, at_end.body_done) == (index + 1, True), "the request bodies end apart"
        assert at_end.forwarded == data[: read.end], "meshca forwarded another body"
        assert dechunk_if_needed(data[read.head_end : read.end], read.body), "the bodies differ"
        complete += 1
    compare_request_outcome(stream, reading, seen, complete)
    return complete + (reading.outcome in ("rejected", "incomplete"))


def compare_request_outcome(
    stream: Stream, reading: Reading, seen: dict[int, RequestsSeen], complete: int
) -> None:
    """What both made of the bytes after the last message both read to its end."""
    data, last, tags = stream.data, seen[len(stream.data)], stream.tags(complete)
    started = len(reading.messages) > complete  # h11 read the head of the next message
    done_up_to = reading.messages[complete - 1].end or 0 if complete else 0
    if reading.outcome == "complete":
        assert (last.requests, last.failed, last.forwarded) == (complete, False, data)
    elif reading.outcome == "incomplete":
        if not last.failed:
            assert last.requests == complete + started, "meshca found a head h11 did not"
            assert not (started and last.body_done), "meshca ended a body h11 was still reading"
        elif not BARE_LF.search(data[done_up_to:]):  # meshca refuses at the first bare LF: earlier
            allowed(tags, MESHCA_REFUSES, "meshca refused a message h11 was still reading")
    elif reading.outcome == "rejected":
        if last.failed and last.requests <= complete + 1:
            pass  # both refused this message
        elif last.requests == complete and last.forwarded == data[:done_up_to]:
            # h11 refuses some heads from their first bytes (one that cannot start a request
            # line); meshca waits for the whole head, and has forwarded nothing of it.
            assert not started
        else:
            allowed(tags, H11_REFUSES, "h11 refused a request meshca accepted")
    elif reading.outcome == "switch":
        assert seen[done_up_to].paused, "h11 waits for a protocol switch, meshca does not"


def dechunk_if_needed(raw: bytes, body: bytes) -> bool:
    """The raw bytes between head and end carry `body`: as they are, or in chunks."""
    return raw == body or decode_chunked(raw) == body


def decode_chunked(raw: bytes) -> bytes:
    """The data of a chunked body both parsers accepted (sizes end at a space or a ';')."""
    body, pos = b"", 0
    while True:
        line_end = raw.index(b"\r\n", pos)
        size = int(re.split(rb"[ \t;]", raw[pos:line_end], maxsplit=1)[0], 16)
        if size == 0:
            return body
        body += raw[line_end + 2 : line_end + 2 + size]
        pos = line_end + 2 + size + 2


S = TypeVar("S", Stream, ResponseStream)


def each_connection(stream: S, compare: Callable[[S], int]) -> int:
    """Compare the stream; where the comparison stops (a refused message, a connection that
    closes or switches protocols), go on with the messages after it as a new connection.
    Returns the number of messages compared."""
    compared = 0
    while stream.data:
        done = max(compare(stream), 1)
        compared += done
        stream = stream.rest(done)
    return compared


# --------------------------------------------------------------------------- responses


def h11_request_for(exchange: Exchange) -> h11.Request:
    headers = [(b"host", b"example.test")]
    if exchange.switches and exchange.method != b"CONNECT":
        headers += [(b"connection", b"upgrade"), (b"upgrade", b"websocket")]
    target = b"example.test:443" if exchange.method == b"CONNECT" else b"/"
    return h11.Request(method=exchange.method, target=target, headers=headers)


def h11_responses(stream: ResponseStream) -> Reading:
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=H11_BUFFER)
    data, reading, closed = stream.data, Reading(), False
    requests = iter(stream.exchanges)
    conn.send(h11_request_for(next(requests)))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            reading.outcome = "incomplete" if closed else "rejected"
            return reading
        if event is h11.NEED_DATA and not closed:
            conn.receive_data(b"")  # the end of the stream is the end of the connection
            closed = True
        elif event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
            reading.outcome = "switch" if event is h11.PAUSED else "complete"
            return reading
        elif isinstance(event, h11.InformationalResponse | h11.Response):
            offset = consumed(conn, data)
            reading.messages.append(Read(head_end=offset, status=event.status_code))
            if isinstance(event, h11.InformationalResponse):
                reading.messages[-1].end = offset
        elif isinstance(event, h11.Data):
            reading.messages[-1].body += event.data
        elif isinstance(event, h11.EndOfMessage):
            reading.messages[-1].end, reading.messages[-1].at_close = consumed(conn, data), closed
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                reading.outcome = "close"
                return reading
            conn.start_next_cycle()
            following = next(requests, None)
            if following is None:  # bytes after the last response answer no request
                reading.outcome = "rejected" if consumed(conn, data) < len(data) else "complete"
                return reading
            conn.send(h11_request_for(following))
            conn.send(h11.EndOfMessage())


@dataclass(frozen=True)
class ResponsesSeen:
    responses: int
    idle: bool
    lost: bool
    switched: bool
    ends_at_close: bool


def meshca_responses(
    stream: ResponseStream, at: list[int], final_ends: list[int]
) -> dict[int, ResponsesSeen]:
    """The tracker fed the stream in reads ending at each offset of `at`. Each request is made
    known when the response before it has ended (as h11 read it), so that `idle` says whether
    meshca found that end too; after the last such end the rest are known at once."""
    exchanges = Exchanges()
    tracker = ResponseTracker(exchanges)
    pending = deque(Request(e.method, e.switches, body_done=True) for e in stream.exchanges)
    exchanges.waiting.append(pending.popleft())
    last_end = final_ends[-1] if final_ends else 0
    seen = {}
    for start, end in itertools.pairwise([0, *at]):
        if end > start:
            tracker.feed(memoryview(stream.data[start:end]))
        seen[end] = ResponsesSeen(
            tracker.responses, tracker.idle, tracker.lost, tracker.switched, tracker.ends_at_close
        )
        if end == last_end:
            exchanges.waiting.extend(pending)
            pending.clear()
        elif end in final_ends and pending:
            exchanges.waiting.append(pending.popleft())
    return seen


MESHCA_LOSES = MESHCA_REFUSES
H11_REFUSES_RESPONSES = {**H11_REFUSES, **RESPONSE_DIFFERENCES}


def compare_responses(stream: ResponseStream) -> int:
    data = stream.data
    reading = h11_responses(stream)
    finals = [m for m in reading.messages if m.status >= 200]
    final_ends = [m.end for m in finals if m.end is not None and not m.at_close]
    bounds = (o for m in reading.messages for o in (m.head_end, m.end) if o is not None)
    seen = meshca_responses(stream, points(data, stream.cuts, bounds), final_ends)
    count = 0  # final responses both read
    for read in reading.messages:
        tags = stream.tags(count)
        at_head = seen[read.head_end]
        if at_head.lost:
            allowed(tags, MESHCA_LOSES, "meshca lost a response head that h11 read")
            return count + 1
        if read.status < 200:
            assert at_head.responses == count, "an interim response was counted as final"
            if read.status == 101:
                assert at_head.switched, "h11 switched protocols on a 101, meshca did not"
                return count + 1
            continue
        assert at_head.responses == count + 1, "the response heads end apart"
        if read.end is None:
            break
        count += 1
        if stream.exchanges[count - 1].method == b"CONNECT" and read.status < 300:
            assert at_head.switched, "h11 switched protocols after CONNECT, meshca did not"
            return count
        if read.at_close:
            assert seen[len(data)].ends_at_close, "h11 read a body until close, meshca did not"
            return count
        at_end = seen[read.end]
        if at_end.lost:
            allowed(tags, MESHCA_LOSES, "meshca lost a response body that h11 read")
            return count
        assert at_end.idle, "the response bodies end apart"
    read_to = max((m.end for m in reading.messages if m.end is not None), default=0)
    compare_response_outcome(stream, reading, seen[len(data)], count, data[read_to:])
    return count + (reading.outcome in ("rejected", "incomplete"))


def compare_response_outcome(
    stream: ResponseStream, reading: Reading, last: ResponsesSeen, count: int, unread: bytes
) -> None:
    """What both made of the `unread` bytes after the last message h11 read to its end."""
    tags = stream.tags(min(count, len(stream.exchanges) - 1))  # bytes after the last are its own
    if reading.outcome == "complete":
        assert (last.responses, last.lost) == (count, False)
    elif reading.outcome == "incomplete" and last.lost and not BARE_LF.search(unread):
        # (meshca refuses a head at its first bare LF; h11 reads on to the end of the head)
        allowed(tags, MESHCA_LOSES, "meshca lost a response that h11 was still reading")
    elif reading.outcome == "rejected" and not last.lost and last.responses > count:
        allowed(tags, H11_REFUSES_RESPONSES, "h11 refused a response that meshca read")


@fuzz(RESPONSE_EXAMPLES)
@given(stream=response_streams())
def test_responses_are_framed_as_h11_frames_them(stream: ResponseStream) -> None:
    COMPARED["responses"] += each_connection(stream, compare_responses)
    known = [len(stream.data)]
    whole = meshca_responses(stream, [len(stream.data)], known)
    split = meshca_responses(stream, points(stream.data, stream.cuts, iter(())), known)
    assert whole[len(stream.data)] == split[len(stream.data)]


@fuzz(REQUEST_EXAMPLES)
@given(stream=streams(request))
def test_requests_are_framed_as_h11_frames_them(stream: Stream) -> None:
    COMPARED["requests"] += each_connection(stream, compare_requests)
    whole = meshca_requests(stream.data, [len(stream.data)])
    split = meshca_requests(stream.data, points(stream.data, stream.cuts, iter(())))
    assert whole[len(stream.data)] == split[len(stream.data)]


@pytest.fixture(scope="module", autouse=True)
def report_the_count() -> Iterator[None]:
    yield
    messages = COMPARED["requests"] + COMPARED["responses"]
    differences = {k: v for k, v in COMPARED.items() if k.startswith("difference")}
    count = f"{messages} messages compared with h11"
    print(f"\nHTTP/1.1 differential: {count}; deliberate differences met: {differences}")
