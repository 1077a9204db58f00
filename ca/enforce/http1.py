"""HTTP/1.1 on an enforced port: every request head rewritten, responses followed (pure code).

The peer's identity reaches the application in `x-forwarded-client-cert`, so the
header must be ours on every request of a keep-alive connection and never the
caller's. `RequestStream` parses the client's byte stream into messages with
strict framing (RFC 9112: Content-Length, chunked, no body), removes every
x-forwarded-client-cert field (also from chunked trailers), adds ours on mTLS
connections, and passes bodies through untouched. `ResponseTracker` reads the
application's responses (without changing them) to pair them with requests:
that is what tells a protocol switch (101 to an Upgrade request, 2xx to
CONNECT), after which the connection is a tunnel, from a refused one, after
which parsing resumes; and a final response sent before its request body has
ended, after which the connection is closed (the two ends may no longer agree
on where the next request starts).

What cannot be parsed safely is refused: malformed heads (400), heads over the
size or field-count limit (431), Transfer-Encoding together with
Content-Length, conflicting Content-Lengths, obsolete line folding, bare LF
line ends (400), HTTP versions other than 1.x (505). The HTTP/2 connection
preface is refused without a response: HPACK-compressed headers cannot be
rewritten here, so an identity header could not be guaranteed removed; an
`Upgrade: h2c` request is forwarded as a plain HTTP/1.1 request (its Upgrade
and HTTP2-Settings fields removed) for the same reason.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from ca.enforce.xfcc import HEADER_BYTES as XFCC_NAME

MAX_HEAD_BYTES = 60 * 1024  # Envoy's default max_request_headers_kb
MAX_HEADER_FIELDS = 100  # Envoy's default max_headers_count
MAX_CHUNK_LINE = 4096
MAX_RESPONSE_HEAD_BYTES = 256 * 1024
MAX_PIPELINED = 256  # requests waiting for their responses before the client is read again

CRLF = b"\r\n"
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([^\x00-\x20\x7f]+) HTTP/([0-9])\.([0-9])")
_FIELD = re.compile(rb"(" + _TOKEN + rb"):[ \t]*(.*?)[ \t]*")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_BARE_LF = re.compile(rb"(?<!\r)\n")
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,15})((?:[ \t]*;[^\x00-\x08\x0a-\x1f\x7f]*)?)")
_STATUS_LINE = re.compile(rb"HTTP/1\.[0-9] ([0-9]{3})(?:[ \t].*)?")
_DIGITS = re.compile(rb"[0-9]{1,18}")
H2_PREFACE_LINE = b"PRI * HTTP/2.0"

Pieces = list[bytes | memoryview]


class HttpError(Exception):
    """A request the enforcer refuses; `status` 0 means close without answering."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail


_STATUS_TEXT = {
    400: "Bad Request",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    505: "HTTP Version Not Supported",
}


def error_response(error: HttpError) -> bytes:
    """The response sent for a refused request (empty for status 0)."""
    if error.status == 0:
        return b""
    body = f"{error.detail}\n".encode("ascii", "replace")
    text = _STATUS_TEXT.get(error.status, "Error")
    return (
        f"HTTP/1.1 {error.status} {text}\r\ncontent-type: text/plain\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


def _bad(detail: str) -> HttpError:
    return HttpError(400, "bad_request", detail)


@dataclass
class Request:
    """One request of the connection, as the response side needs to know it."""

    method: bytes
    switches: bool  # an Upgrade request or CONNECT: a 101 / 2xx answer makes the connection a tunnel
    body_done: bool = False


@dataclass
class Exchanges:
    """Requests sent to the application whose final response has not been read yet."""

    waiting: deque[Request] = field(default_factory=deque)


# --------------------------------------------------------------------------- heads


@dataclass(frozen=True)
class Field:
    name: bytes  # lower case
    value: bytes
    line: bytes  # the line as received, without CRLF


def _refuse_bare_lf(buffer: bytearray, start: int, end: int) -> None:
    """Refuse a bare LF in `buffer[start:end]` as it arrives: a recipient that takes it for a line
    end finds another end of the head, and waiting for a CRLF that may never come helps no one."""
    if _BARE_LF.search(buffer, max(0, start - 1), end):
        raise _bad("a line ends in a bare LF; end every line of a head or of chunked framing with CRLF")


def _split_head(head: bytes) -> list[bytes]:
    lines = head.split(CRLF)
    for line in lines:
        if b"\n" in line or b"\r" in line:
            raise _bad("a header line ends in a bare LF or CR; end lines with CRLF")
    return lines


def parse_fields(lines: list[bytes], *, limit: int = MAX_HEADER_FIELDS) -> list[Field]:
    if len(lines) > limit:
        raise HttpError(431, "headers_too_large", f"more than {limit} header fields")
    fields = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            raise _bad("obsolete line folding is not accepted; send each field on one line")
        match = _FIELD.fullmatch(line)
        if match is None:
            raise _bad("a header field is malformed (name, colon, value; no space before the colon)")
        value = match.group(2)
        if _BAD_VALUE.search(value):
            raise _bad("a header field value holds a control character")
        fields.append(Field(match.group(1).lower(), value, line))
    return fields


def _tokens(fields: list[Field], name: bytes) -> list[bytes]:
    return [t.strip().lower() for f in fields if f.name == name for t in f.value.split(b",") if t.strip()]


def _content_length(fields: list[Field]) -> int | None:
    values = {v.strip() for f in fields if f.name == b"content-length" for v in f.value.split(b",")}
    if not values:
        return None
    if len(values) > 1:
        raise _bad("conflicting Content-Length values")
    (value,) = values
    if not _DIGITS.fullmatch(value):
        raise _bad("Content-Length is not a number")
    return int(value)


@dataclass(frozen=True)
class Framing:
    chunked: bool
    length: int  # when not chunked


def request_framing(fields: list[Field], *, http10: bool) -> Framing:
    codings = _tokens(fields, b"transfer-encoding")
    length = _content_length(fields)
    if any(f.name == b"transfer-encoding" for f in fields):
        if http10:
            raise _bad("Transfer-Encoding is not allowed in HTTP/1.0")
        if length is not None:
            raise _bad("a request may not have both Transfer-Encoding and Content-Length")
        if any(f.name == b"transfer-encoding" and not f.value.strip(b" \t,") for f in fields):
            # Empty list elements are ignored by the RFC, but a server that takes the last field
            # as the whole value would read no body, and the chunks as the next request.
            raise _bad("a Transfer-Encoding field is empty; send one Transfer-Encoding: chunked")
        if not codings or codings[-1] != b"chunked" or codings.count(b"chunked") != 1:
            raise _bad("Transfer-Encoding must end in chunked (once)")
        return Framing(chunked=True, length=0)
    return Framing(chunked=False, length=length or 0)


@dataclass(frozen=True)
class RequestHead:
    method: bytes
    out: bytes  # the head to send on, CRLFCRLF included
    framing: Framing
    switches: bool


def rewrite_request_head(head: bytes, xfcc_line: bytes | None) -> RequestHead:
    """Parse a request head (without its final CRLFCRLF) and build the head to forward."""
    lines = _split_head(head)
    request_line = lines[0]
    if request_line == H2_PREFACE_LINE:
        raise HttpError(0, "http2_unsupported", "HTTP/2 with prior knowledge is not supported here")
    match = _REQUEST_LINE.fullmatch(request_line)
    if match is None:
        raise _bad("the request line is malformed")
    method, major, minor = match.group(1), int(match.group(3)), int(match.group(4))
    if major != 1:
        raise HttpError(505, "unsupported_version", f"HTTP/{major}.{minor} is not supported; use HTTP/1.1")
    fields = parse_fields(lines[1:])
    framing = request_framing(fields, http10=minor == 0)
    upgrade = _tokens(fields, b"upgrade")
    h2c_only = bool(upgrade) and set(upgrade) == {b"h2c"}
    if b"h2c" in upgrade and not h2c_only:
        raise _bad("an Upgrade to h2c together with other protocols is not supported")
    dropped = {XFCC_NAME}
    if h2c_only:
        dropped |= {b"upgrade", b"http2-settings"}
    switches = method == b"CONNECT" or (
        bool(upgrade) and not h2c_only and b"upgrade" in _tokens(fields, b"connection")
    )
    kept = [request_line, *(f.line for f in fields if f.name not in dropped)]
    out = CRLF.join(kept) + CRLF + (xfcc_line or b"") + CRLF
    return RequestHead(method=method, out=out, framing=framing, switches=switches)


# --------------------------------------------------------------------------- bodies


class _Chunk(Enum):
    SIZE = "size"
    DATA = "data"
    DATA_END = "data_end"
    TRAILERS = "trailers"
    DONE = "done"


class ChunkedBody:
    """A chunked body, byte by byte as it arrives; trailer fields named in `drop` are removed."""

    def __init__(self, drop: frozenset[bytes] = frozenset(), *, strict: bool = True) -> None:
        self._drop = drop
        self._strict = strict
        self._state = _Chunk.SIZE
        self._line = bytearray()
        self._line_start = 0
        self._left = 0
        self._end_seen = 0

    @property
    def done(self) -> bool:
        return self._state is _Chunk.DONE

    def feed(self, data: memoryview, out: Pieces) -> int:
        """Consume from `data` until the body ends; append what to forward; return bytes consumed."""
        pos, size = 0, len(data)
        while pos < size and self._state is not _Chunk.DONE:
            if self._state is _Chunk.DATA:
                take = min(self._left, size - pos)
                out.append(data[pos : pos + take])
                pos += take
                self._left -= take
                if self._left == 0:
                    self._state = _Chunk.DATA_END
            elif self._state is _Chunk.DATA_END:
                take = min(2 - self._end_seen, size - pos)
                expected = CRLF[self._end_seen : self._end_seen + take]
                if bytes(data[pos : pos + take]) != expected:
                    raise _bad("a chunk is not followed by CRLF")
                out.append(data[pos : pos + take])
                pos += take
                self._end_seen += take
                if self._end_seen == 2:
                    self._end_seen = 0
                    self._state = _Chunk.SIZE
            else:
                pos = self._feed_line(data, pos, out)
        return pos

    def _feed_line(self, data: memoryview, pos: int, out: Pieces) -> int:
        """Collect a chunk-size line, or the trailer section up to its empty line."""
        trailers = self._state is _Chunk.TRAILERS
        limit = MAX_HEAD_BYTES if trailers else MAX_CHUNK_LINE
        start = len(self._line)
        self._line += data[pos:]
        end = self._line.find(CRLF, max(self._line_start, start - 1))
        _refuse_bare_lf(self._line, start, end if end >= 0 else len(self._line))
        if end < 0:
            if len(self._line) > limit:
                raise HttpError(431 if trailers else 400, *self._too_long())
            return len(data)
        consumed = end + 2 - start
        if not trailers:
            line = bytes(self._line[:end])
            del self._line[:]
            self._size_line(line, out)
        elif end == self._line_start:  # the empty line: the section is complete
            self._trailers(bytes(self._line[: end + 2]), out)
        else:
            del self._line[end + 2 :]  # keep the lines so far; the rest is fed again
            self._line_start = end + 2
            if len(self._line) > limit:
                raise HttpError(431, *self._too_long())
        return pos + consumed

    def _too_long(self) -> tuple[str, str]:
        if self._state is _Chunk.TRAILERS:
            return "headers_too_large", "the chunked trailer section is too large"
        return "bad_request", "a chunk size line is too long"

    def _size_line(self, line: bytes, out: Pieces) -> None:
        match = _CHUNK_LINE.fullmatch(line)
        if match is None:
            raise _bad("a chunk size line is malformed")
        self._left = int(match.group(1), 16)
        out.append(line + CRLF)
        self._state = _Chunk.DATA if self._left else _Chunk.TRAILERS

    def _trailers(self, section: bytes, out: Pieces) -> None:
        """`section` is every trailer line and the final empty line, CRLFs included."""
        lines = section[:-2].split(CRLF)[:-1] if section != CRLF else []
        if self._strict:
            fields = parse_fields(_split_head(CRLF.join(lines)) if lines else [])
            kept = [f.line + CRLF for f in fields if f.name not in self._drop]
            out.append(b"".join(kept) + CRLF)
        else:
            out.append(section)
        del self._line[:]
        self._line_start = 0
        self._state = _Chunk.DONE


# --------------------------------------------------------------------------- requests


class _Req(Enum):
    HEAD = "head"
    LENGTH = "length"
    CHUNKED = "chunked"
    WAIT_SWITCH = "wait_switch"  # an Upgrade/CONNECT request went out: hold the rest until its answer
    TUNNEL = "tunnel"
    FAILED = "failed"


class RequestStream:
    """The client-to-application direction of one HTTP/1.1 connection.

    `feed` takes the bytes as they arrive and returns what to send on. It never
    raises: a refused request sets `error` (the pieces before it are still
    returned), after which nothing more is accepted. While `paused` (waiting
    for the answer to an Upgrade or CONNECT request) bytes are held, and
    `resume`/`tunnel` release them once the ResponseTracker has seen the answer.
    """

    def __init__(self, exchanges: Exchanges, xfcc_line: bytes | None) -> None:
        self.exchanges = exchanges
        self.xfcc_line = xfcc_line
        self.error: HttpError | None = None
        self.requests = 0
        self._state = _Req.HEAD
        self._head = bytearray()
        self._left = 0
        self._chunked: ChunkedBody | None = None
        self._current: Request | None = None
        self._held = bytearray()

    @property
    def paused(self) -> bool:
        return self._state is _Req.WAIT_SWITCH

    @property
    def failed(self) -> bool:
        return self._state is _Req.FAILED

    @property
    def is_tunnel(self) -> bool:
        return self._state is _Req.TUNNEL

    @property
    def wants_input(self) -> bool:
        """False while paused, failed, or with too many requests waiting for responses."""
        if self._state in (_Req.WAIT_SWITCH, _Req.FAILED):
            return False
        return len(self.exchanges.waiting) < MAX_PIPELINED

    def feed(self, data: memoryview) -> Pieces:
        out: Pieces = []
        if self._state is _Req.TUNNEL:
            out.append(data)
            return out
        if self._state in (_Req.WAIT_SWITCH, _Req.FAILED):
            if self._state is _Req.WAIT_SWITCH:
                self._held += data
            return out
        try:
            self._consume(data, out)
        except HttpError as err:
            self.error = err
            self._state = _Req.FAILED
            self._held.clear()
        return out

    def resume(self) -> Pieces:
        """The Upgrade/CONNECT request was answered without switching: parse what was held."""
        if self._state is not _Req.WAIT_SWITCH:
            return []
        self._state = _Req.HEAD
        held, self._held = bytes(self._held), bytearray()
        return self.feed(memoryview(held)) if held else []

    def tunnel(self) -> Pieces:
        """The application switched protocols: from here on bytes pass as they are."""
        self._state = _Req.TUNNEL
        held, self._held = bytes(self._held), bytearray()
        return [held] if held else []

    def _consume(self, data: memoryview, out: Pieces) -> None:
        pos, size = 0, len(data)
        while pos < size:
            state = self._state
            if state is _Req.HEAD:
                pos = self._feed_head(data, pos, out)
            elif state is _Req.LENGTH:
                take = min(self._left, size - pos)
                out.append(data[pos : pos + take])
                pos += take
                self._left -= take
                if self._left == 0:
                    self._finish_request()
            elif state is _Req.CHUNKED:
                assert self._chunked is not None
                pos += self._chunked.feed(data[pos:], out)
                if self._chunked.done:
                    self._finish_request()
            else:  # WAIT_SWITCH reached inside this buffer: hold the rest
                self._held += data[pos:]
                return

    def _feed_head(self, data: memoryview, pos: int, out: Pieces) -> int:
        start = len(self._head)
        self._head += data[pos:]
        start -= self._skip_leading_crlf()
        end = self._head.find(b"\r\n\r\n", max(0, start - 3))
        _refuse_bare_lf(self._head, start, end if end >= 0 else len(self._head))
        if end < 0:
            if len(self._head) > MAX_HEAD_BYTES:
                raise HttpError(431, "headers_too_large", f"the request head is over {MAX_HEAD_BYTES} bytes")
            return len(data)
        if end > MAX_HEAD_BYTES:
            raise HttpError(431, "headers_too_large", f"the request head is over {MAX_HEAD_BYTES} bytes")
        rest = len(self._head) - (end + 4)  # bytes of this buffer after the head
        head = rewrite_request_head(bytes(self._head[:end]), self.xfcc_line)
        self._head.clear()
        out.append(head.out)
        self._start_request(head)
        return len(data) - rest

    def _skip_leading_crlf(self) -> int:
        """RFC 9112 2.2: empty lines before a request line are ignored. Returns bytes dropped."""
        skip = 0
        while self._head.startswith(CRLF, skip):
            skip += 2
        if skip:
            del self._head[:skip]
        return skip

    def _start_request(self, head: RequestHead) -> None:
        self.requests += 1
        self._current = Request(method=head.method, switches=head.switches)
        self.exchanges.waiting.append(self._current)
        if head.framing.chunked:
            self._state = _Req.CHUNKED
            self._chunked = ChunkedBody(drop=frozenset({XFCC_NAME}))
        elif head.framing.length:
            self._state = _Req.LENGTH
            self._left = head.framing.length
        else:
            self._finish_request()

    def _finish_request(self) -> None:
        assert self._current is not None
        self._current.body_done = True
        self._chunked = None
        self._state = _Req.WAIT_SWITCH if self._current.switches else _Req.HEAD


# --------------------------------------------------------------------------- responses


class _Resp(Enum):
    HEAD = "head"
    LENGTH = "length"
    CHUNKED = "chunked"
    UNTIL_CLOSE = "until_close"
    TUNNEL = "tunnel"
    LOST = "lost"


class ResponseTracker:
    """The application-to-client direction: observed, never changed.

    After each `feed`, the flags say what happened: `switched` (the connection
    is now a tunnel), `refused_switch` (an Upgrade/CONNECT request was answered
    without switching), `close_after` (a final response arrived before its
    request's body had ended, or with no request waiting: close once it is
    sent), `lost` (a response that cannot be parsed: close).
    """

    def __init__(self, exchanges: Exchanges) -> None:
        self.exchanges = exchanges
        self.switched = False
        self.refused_switch = False
        self.close_after = False
        self.lost = False
        self.responses = 0
        self._state = _Resp.HEAD
        self._head = bytearray()
        self._left = 0
        self._chunked: ChunkedBody | None = None
        self._closing = False  # close_after becomes true when this response has been sent

    @property
    def idle(self) -> bool:
        """No response under way and none owed."""
        return self._state is _Resp.HEAD and not self._head and not self.exchanges.waiting

    @property
    def ends_at_close(self) -> bool:
        return self._state is _Resp.UNTIL_CLOSE

    def feed(self, data: memoryview) -> None:
        pos, size = 0, len(data)
        try:
            while pos < size:
                state = self._state
                if state in (_Resp.TUNNEL, _Resp.LOST, _Resp.UNTIL_CLOSE):
                    return
                if state is _Resp.HEAD:
                    pos = self._feed_head(data, pos)
                elif state is _Resp.LENGTH:
                    take = min(self._left, size - pos)
                    pos += take
                    self._left -= take
                    if self._left == 0:
                        self._end_response()
                else:
                    assert self._chunked is not None
                    pos += self._chunked.feed(data[pos:], [])
                    if self._chunked.done:
                        self._end_response()
        except HttpError:
            self._lose()

    def _lose(self) -> None:
        self.lost = True
        self._state = _Resp.LOST

    def _feed_head(self, data: memoryview, pos: int) -> int:
        start = len(self._head)
        self._head += data[pos:]
        end = self._head.find(b"\r\n\r\n", max(0, start - 3))
        _refuse_bare_lf(self._head, start, end if end >= 0 else len(self._head))
        if end < 0:
            if len(self._head) > MAX_RESPONSE_HEAD_BYTES:
                self._lose()
            return len(data)
        rest = len(self._head) - (end + 4)
        head = bytes(self._head[:end])
        self._head.clear()
        self._start_response(head)
        return len(data) - rest

    def _start_response(self, head: bytes) -> None:
        lines = head.split(CRLF)
        match = _STATUS_LINE.fullmatch(lines[0])
        if match is None:
            self._lose()
            return
        status = int(match.group(1))
        fields = [Field(*self._loose_field(line)) for line in lines[1:]]
        waiting = self.exchanges.waiting
        request = waiting[0] if waiting else None
        if 100 <= status < 200:
            self._interim(status, request)
            return
        self.responses += 1
        if request is None:
            self._closing = True  # unsolicited (a server's 408 before it closes): nothing may follow
            method = b"GET"
        else:
            waiting.popleft()
            method = request.method
            if not request.body_done:
                self._closing = True
            if request.switches:
                if method == b"CONNECT" and 200 <= status < 300:
                    self._switch()
                    return
                self.refused_switch = True
        self._start_body(method, status, fields)

    @staticmethod
    def _loose_field(line: bytes) -> tuple[bytes, bytes, bytes]:
        name, _, value = line.partition(b":")
        return name.strip().lower(), value.strip(), line

    def _interim(self, status: int, request: Request | None) -> None:
        if status != 101:
            return  # 100 Continue, 102, 103: the final response is still to come
        if request is None or not request.switches or request.method == b"CONNECT":
            self._lose()
            return
        self.exchanges.waiting.popleft()
        self._switch()

    def _switch(self) -> None:
        self.switched = True
        self._state = _Resp.TUNNEL

    def _start_body(self, method: bytes, status: int, fields: list[Field]) -> None:
        if method == b"HEAD" or status in (204, 304):
            self._end_response()
            return
        codings = _tokens(fields, b"transfer-encoding")
        if codings.count(b"chunked") > 1:
            self._lose()  # chunked applied twice (RFC 9112 7): no reading of the body is safe
            return
        if codings:
            if codings[-1] == b"chunked":
                self._state = _Resp.CHUNKED
                self._chunked = ChunkedBody(strict=False)
            else:
                self._state = _Resp.UNTIL_CLOSE
            return
        try:
            length = _content_length(fields)
        except HttpError:
            self._lose()
            return
        if length is None:
            self._state = _Resp.UNTIL_CLOSE
        elif length:
            self._state = _Resp.LENGTH
            self._left = length
        else:
            self._end_response()

    def _end_response(self) -> None:
        self._state = _Resp.HEAD
        self._chunked = None
        if self._closing:
            self.close_after = True
