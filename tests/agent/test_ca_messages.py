"""The agent's hand-written Istio certificate messages are protobuf's: the request byte for byte as
`istio_ca_pb2` writes it, and the response read as `istio_ca_pb2` reads it, refusals included,
over well-formed messages with unknown fields, damaged ones and random bytes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ca._proto import istio_ca_pb2
from ca.agent.ca_messages import CREATE_CERTIFICATE, WireFormatError, decode_response, encode_request

INT64 = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
REFUSED = "refused"


def protobuf_reads(data: bytes) -> list[str] | str:
    try:
        return list(istio_ca_pb2.IstioCertificateResponse.FromString(data).cert_chain)
    except Exception:  # protobuf's DecodeError; nothing else is expected
        return REFUSED


def agent_reads(data: bytes) -> list[str] | str:
    try:
        return decode_response(data)
    except WireFormatError:
        return REFUSED


def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out + bytes([value]))


def tag(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


@st.composite
def unknown_field(draw: st.DrawFn, depth: int = 0) -> bytes:
    """A field of any wire type, well-formed or not, numbered anything (1 included: the
    cert_chain number with a wire type it does not have)."""
    edges = st.sampled_from([0, 1, 2, 3, 15, 16, 2047, 2048, (1 << 29) - 1])
    field = draw(edges | st.integers(1, (1 << 29) - 1))
    wire_type = draw(st.integers(0, 7))
    head = tag(field, wire_type)
    if wire_type == 0:
        return head + varint(draw(st.integers(0, (1 << 70) - 1)))
    if wire_type == 1:
        return head + draw(st.binary(min_size=8, max_size=8))
    if wire_type == 5:
        return head + draw(st.binary(min_size=4, max_size=4))
    if wire_type == 2:
        body = draw(st.binary(max_size=8) | st.text(max_size=8).map(str.encode))
        return head + varint(len(body)) + body
    if wire_type == 3 and depth < 3:
        inner = b"".join(draw(st.lists(unknown_field(depth + 1), max_size=3)))
        end = draw(st.sampled_from([field, field, field, field + 1]))
        return head + inner + tag(end, 4)
    return head


@st.composite
def response_bytes(draw: st.DrawFn) -> tuple[list[str], bytes]:
    """An IstioCertificateResponse as protobuf writes it, then with unknown fields between its
    own: (its chain, the bytes)."""
    chain = draw(st.lists(st.text(max_size=40), max_size=4))
    fields = [tag(1, 2) + varint(len(s.encode())) + s.encode() for s in chain]
    assert b"".join(fields) == istio_ca_pb2.IstioCertificateResponse(cert_chain=chain).SerializeToString()
    others = unknown_field().filter(lambda field: not field.startswith(tag(1, 2)))  # not cert_chain's
    for _ in range(draw(st.integers(0, 3))):
        fields.insert(draw(st.integers(0, len(fields))), draw(others))
    return chain, b"".join(fields)


@settings(max_examples=500, deadline=None)
@given(csr=st.text(), validity=INT64)
def test_the_request_is_the_bytes_protobuf_writes(csr: str, validity: int) -> None:
    expected = istio_ca_pb2.IstioCertificateRequest(csr=csr, validity_duration=validity).SerializeToString()
    assert encode_request(csr, validity) == expected


def test_defaults_are_left_out_and_negative_durations_take_ten_bytes() -> None:
    assert encode_request("", 0) == b""
    assert encode_request("x", 0) == b"\x0a\x01x"
    assert encode_request("", 86400) == b"\x18\x80\xa3\x05"
    assert encode_request("", -1) == b"\x18" + b"\xff" * 9 + b"\x01"


@pytest.mark.parametrize("value", [1 << 63, -(1 << 63) - 1])
def test_a_duration_out_of_the_int64_range_is_refused_as_protobuf_refuses_it(value: int) -> None:
    with pytest.raises(ValueError):
        istio_ca_pb2.IstioCertificateRequest(csr="csr", validity_duration=value)
    with pytest.raises(ValueError):
        encode_request("csr", value)


def test_a_csr_that_cannot_be_utf8_is_refused_as_protobuf_refuses_it() -> None:
    with pytest.raises(UnicodeEncodeError):
        istio_ca_pb2.IstioCertificateRequest(csr="\ud800", validity_duration=1).SerializeToString()
    with pytest.raises(UnicodeEncodeError):
        encode_request("\ud800", 1)


@settings(max_examples=1000, deadline=None)
@given(response_bytes())
def test_a_response_reads_as_protobuf_reads_it(message: tuple[list[str], bytes]) -> None:
    chain, data = message
    assert agent_reads(data) == protobuf_reads(data)
    if protobuf_reads(data) != REFUSED:
        assert agent_reads(data) == chain


@settings(max_examples=1000, deadline=None)
@given(response_bytes(), st.data())
def test_a_damaged_response_reads_or_is_refused_as_protobuf_does(
    message: tuple[list[str], bytes], data: st.DataObject
) -> None:
    damaged = bytearray(message[1])
    if damaged:
        at = data.draw(st.integers(0, len(damaged) - 1))
        match data.draw(st.sampled_from(["cut", "change", "insert"])):
            case "cut":
                del damaged[at:]
            case "change":
                damaged[at] = data.draw(st.integers(0, 255))
            case "insert":
                damaged.insert(at, data.draw(st.integers(0, 255)))
    assert agent_reads(bytes(damaged)) == protobuf_reads(bytes(damaged))


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=24))
def test_random_bytes_read_or_are_refused_as_protobuf_does(data: bytes) -> None:
    assert agent_reads(data) == protobuf_reads(data)


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=1, max_size=6))
def test_a_certificate_that_is_not_utf8_is_refused_as_protobuf_refuses_it(text: bytes) -> None:
    data = tag(1, 2) + varint(len(text)) + text
    assert agent_reads(data) == protobuf_reads(data)


def test_edges_protobuf_draws() -> None:
    cases = [
        b"\x02\x00",  # field 0
        b"\x0c",  # an end of group with no group
        b"\x13\x1c",  # a group ended by another field's end
        b"\x13\x02\x00\x14",  # field 0 inside a group: protobuf lets it pass
        b"\x10" + b"\xff" * 9 + b"\x7f",  # a ten-byte varint
        b"\x10" + b"\xff" * 10 + b"\x01",  # an eleven-byte one
        b"\xf8\xff\xff\xff\x0f\x00",  # the highest field number
        b"\x80\x80\x80\x80\x10\x00",  # a tag past 32 bits
        b"\x88\x80\x80\x80\x80\x00\x00",  # a six-byte tag
        b"\x0a\x83\x00abc",  # a length written in more bytes than it needs
        b"\x0a\x80\x80\x80\x80\x08",  # a length of 2**31
        b"\x0a\x03\xed\xa0\x80",  # a UTF-16 surrogate
        b"\x0a\x02\xc0\x80",  # an overlong encoding
    ]
    for depth in (99, 100, 101, 102):  # protobuf nests groups 100 deep
        cases.append(b"\x13" * depth + b"\x14" * depth)
    for data in cases:
        assert agent_reads(data) == protobuf_reads(data), data


def test_the_method_is_the_one_the_generated_stub_calls() -> None:
    service = istio_ca_pb2.DESCRIPTOR.services_by_name["IstioCertificateService"]
    method = service.methods_by_name["CreateCertificate"]
    assert f"/{service.full_name}/{method.name}" == CREATE_CERTIFICATE
