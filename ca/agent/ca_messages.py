"""The agent's two messages of the Istio certificate API, in protobuf's wire format, by hand.

`meshca agent --once on` runs in an init container that its pod waits for, and importing
protobuf with the generated `istio_ca_pb2` costs it about 8 ms of its start: more than writing
and reading these two small messages takes. Byte for byte they are what `istio_ca_pb2`
writes and reads (tests/agent/test_ca_messages.py holds both to it, over random messages and
random bytes): the request's fields in field-number order, each left out at its default; the
response's `cert_chain` strings read in order, every other field skipped as protobuf skips
an unknown field, and anything protobuf refuses to parse refused (a WireFormatError).
"""

from __future__ import annotations

CREATE_CERTIFICATE = "/istio.v1.auth.IstioCertificateService/CreateCertificate"

# Wire types (https://protobuf.dev/programming-guides/encoding/).
_VARINT, _FIXED64, _LENGTH_DELIMITED, _START_GROUP, _END_GROUP, _FIXED32 = range(6)

# IstioCertificateRequest.csr, IstioCertificateRequest.validity_duration.
_CSR_TAG = 1 << 3 | _LENGTH_DELIMITED
_VALIDITY_DURATION_TAG = 3 << 3 | _VARINT
# IstioCertificateResponse.cert_chain.
_CERT_CHAIN = 1

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_MAX_VARINT_BYTES = 10
_MAX_TAG_BYTES = 5  # a tag is a 32-bit varint
_MAX_GROUP_DEPTH = 100  # protobuf's own limit


class WireFormatError(ValueError):
    """The bytes are not a message protobuf would parse."""


def _varint(value: int) -> bytes:
    """A non-negative integer below 2**64 as a varint."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_request(csr_pem: str, validity_duration: int) -> bytes:
    """An IstioCertificateRequest with `csr` and `validity_duration` (no metadata)."""
    if not _INT64_MIN <= validity_duration <= _INT64_MAX:
        raise ValueError(f"validity_duration {validity_duration} is out of range for an int64")
    out = bytearray()
    if csr_pem:
        csr = csr_pem.encode()
        out += _varint(_CSR_TAG) + _varint(len(csr)) + csr
    if validity_duration:
        out += _varint(_VALIDITY_DURATION_TAG) + _varint(validity_duration % (1 << 64))
    return bytes(out)


def decode_response(data: bytes) -> list[str]:
    """The `cert_chain` of an IstioCertificateResponse."""
    chain: list[str] = []
    pos = 0
    while pos < len(data):
        field, wire_type, pos = _read_tag(data, pos)
        if field == 0:
            raise WireFormatError("a field numbered 0")
        if field == _CERT_CHAIN and wire_type == _LENGTH_DELIMITED:
            end, pos = _read_length(data, pos)
            try:
                chain.append(data[pos:end].decode("utf-8"))
            except UnicodeDecodeError as err:
                raise WireFormatError(f"cert_chain is not UTF-8 ({err})") from None
            pos = end
        else:
            pos = _skip(data, pos, field, wire_type, depth=0)
    return chain


def _read_varint(data: bytes, pos: int, max_bytes: int = _MAX_VARINT_BYTES) -> tuple[int, int]:
    value = 0
    for shift in range(0, 7 * max_bytes, 7):
        if pos >= len(data):
            raise WireFormatError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
    raise WireFormatError("varint too long")


def _read_tag(data: bytes, pos: int) -> tuple[int, int, int]:
    tag, pos = _read_varint(data, pos, _MAX_TAG_BYTES)
    if tag >> 32:
        raise WireFormatError("tag out of range")
    return tag >> 3, tag & 7, pos


def _read_length(data: bytes, pos: int) -> tuple[int, int]:
    """(end of a length-delimited field's bytes, their start)."""
    size, pos = _read_varint(data, pos)
    end = pos + size
    if end > len(data):
        raise WireFormatError("truncated length-delimited field")
    return end, pos


def _skip(data: bytes, pos: int, field: int, wire_type: int, *, depth: int) -> int:
    """The position after the value of an unknown field."""
    if wire_type == _VARINT:
        return _read_varint(data, pos)[1]
    if wire_type == _LENGTH_DELIMITED:
        return _read_length(data, pos)[0]
    if wire_type == _START_GROUP:
        return _skip_group(data, pos, field, depth=depth + 1)
    if wire_type in (_FIXED64, _FIXED32):
        end = pos + (8 if wire_type == _FIXED64 else 4)
        if end > len(data):
            raise WireFormatError("truncated fixed-width field")
        return end
    raise WireFormatError(f"wire type {wire_type} where a field starts")


def _skip_group(data: bytes, pos: int, field: int, *, depth: int) -> int:
    if depth > _MAX_GROUP_DEPTH:
        raise WireFormatError("groups nested too deep")
    while True:
        inner, wire_type, pos = _read_tag(data, pos)
        if wire_type == _END_GROUP:
            if inner != field:
                raise WireFormatError("a group ended by another field's end")
            return pos
        pos = _skip(data, pos, inner, wire_type, depth=depth)
