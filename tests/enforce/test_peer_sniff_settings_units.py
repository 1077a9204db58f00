"""The enforcer's pure parts: first-byte sniffing, XFCC, PROXY v2, the SPIFFE peer check, settings,
the refusal log limiter, the certificate files check, and the loop's deadline queue."""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import socket
import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from hypothesis import given
from hypothesis import strategies as st

from ca.agent.output import write_svid
from ca.cli.main import build_parser
from ca.enforce import proxy_v2
from ca.enforce.loop import DeadlineQueue
from ca.enforce.material import check_material, read_files, version_of
from ca.enforce.peer import PeerCache, PeerRefused, check, identify
from ca.enforce.settings import config_from_args, parse_outbound
from ca.enforce.sniff import FirstBytes, classify, classify_after_timeout
from ca.enforce.xfcc import cert_hash, xfcc_header_line, xfcc_value
from ca.errors import ConfigError
from ca.issuance.spiffe_id import SpiffeId
from ca.policy.ports import SPIFFE_ID_TLV_TYPE
from tests.support.clock import FakeClock
from tests.support.pki import ec_key, make_hierarchy
from tests.support.svids import make_svid

# --------------------------------------------------------------------------- sniffing


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


# --------------------------------------------------------------------------- XFCC


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


# --------------------------------------------------------------------------- PROXY v2


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


# --------------------------------------------------------------------------- the SPIFFE peer check


def _leaf(uris: list[str], *, days: int = 1) -> bytes:
    hierarchy, key, now = make_hierarchy(), ec_key(), datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(hierarchy.signing.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=2))
        .not_valid_after(now + timedelta(days=days))
    )
    if uris:
        names = [x509.UniformResourceIdentifier(u) for u in uris]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=True)
    return builder.sign(hierarchy.signing_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


NOW = datetime.now(UTC)


def test_a_mesh_peer_is_identified() -> None:
    der = _leaf(["spiffe://cluster.local/ns/shop/sa/client"])
    identity = identify(der)
    assert identity.uri == "spiffe://cluster.local/ns/shop/sa/client"
    assert identity.der_hash == cert_hash(der)
    check(identity, trust_domain="cluster.local", now=NOW)
    check(identity, trust_domain="cluster.local", now=NOW, expected=identity.spiffe_id)


@pytest.mark.parametrize(
    ("uris", "reason"),
    [
        ([], "bad_spiffe_id"),
        (["spiffe://cluster.local/a", "spiffe://cluster.local/b"], "bad_spiffe_id"),
        (["https://cluster.local/ns/x"], "bad_spiffe_id"),
        (["spiffe://cluster.local.evil/ns/shop/sa/client"], "foreign_trust_domain"),
    ],
)
def test_peers_that_are_not_one_spiffe_id_of_the_trust_domain_are_refused(
    uris: list[str], reason: str
) -> None:
    with pytest.raises(PeerRefused) as refused:
        check(identify(_leaf(uris)), trust_domain="cluster.local", now=NOW)
    assert refused.value.reason == reason


def test_an_expected_identity_must_match_and_an_expired_certificate_fails() -> None:
    identity = identify(_leaf(["spiffe://cluster.local/ns/shop/sa/client"], days=1))
    with pytest.raises(PeerRefused, match=r"not spiffe://cluster\.local/ns/shop/sa/other") as wrong:
        check(
            identity,
            trust_domain="cluster.local",
            now=NOW,
            expected=SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/other"),
        )
    assert wrong.value.reason == "unexpected_identity"
    with pytest.raises(PeerRefused) as expired:
        check(identity, trust_domain="cluster.local", now=NOW + timedelta(days=2))
    assert expired.value.reason == "peer_certificate_expired"


def test_the_peer_cache_answers_repeats_and_forgets_the_oldest() -> None:
    cache = PeerCache(size=2)
    loads: list[bytes] = []

    def loader(der: bytes) -> Callable[[], bytes]:
        def load() -> bytes:
            loads.append(der)
            return der

        return load

    good, bad = _leaf(["spiffe://cluster.local/a"]), _leaf([])
    assert cache.identify(cert_hash_bytes(good), loader(good)) is cache.identify(
        cert_hash_bytes(good), loader(good)
    )
    for _ in range(2):
        with pytest.raises(PeerRefused):
            cache.identify(cert_hash_bytes(bad), loader(bad))
    assert loads == [good, bad]  # each certificate parsed once
    third = _leaf(["spiffe://cluster.local/c"])
    cache.identify(cert_hash_bytes(third), loader(third))
    cache.identify(cert_hash_bytes(good), loader(good))
    assert loads == [good, bad, third, good]  # the oldest was forgotten


def cert_hash_bytes(der: bytes) -> bytes:
    return hashlib.sha256(der).digest()


def test_an_unparsable_certificate_is_refused() -> None:
    with pytest.raises(PeerRefused) as refused:
        identify(b"\x30\x03\x02\x01\x01")
    assert refused.value.reason == "bad_certificate"


# --------------------------------------------------------------------------- settings


def enforce_args(*extra: str) -> argparse.Namespace:
    return build_parser({}).parse_args(["enforce", *extra])


def test_outbound_targets_parse() -> None:
    targets = parse_outbound(
        [
            "15001:backend.shop:8443=spiffe://cluster.local/ns/shop/sa/backend",
            "15002:[::1]:9000,15003:10.0.0.1:80",
        ],
        "cluster.local",
    )
    assert [(t.listen_port, t.host, t.port, str(t.spiffe_id)) for t in targets] == [
        (15001, "backend.shop", 8443, "spiffe://cluster.local/ns/shop/sa/backend"),
        (15002, "::1", 9000, "None"),
        (15003, "10.0.0.1", 80, "None"),
    ]
    assert [t.label for t in targets] == ["backend.shop:8443", "[::1]:9000", "10.0.0.1:80"]
    assert [t.host_is_address for t in targets] == [False, True, True]


def test_outbound_listen_port_0_asks_for_any_free_port_as_often_as_given() -> None:
    targets = parse_outbound(["0:backend.shop:8443,0:payments.shop:8443"], "cluster.local")
    assert [(t.listen_port, t.label) for t in targets] == [
        (0, "backend.shop:8443"),
        (0, "payments.shop:8443"),
    ]
    flags = ("--inbound", "0:80", "--outbound", "0:backend.shop:8443", "--namespace", "a", "--policies", "/p")
    cfg = config_from_args(enforce_args(*flags))
    assert cfg.inbound[0].listen_port == cfg.outbound[0].listen_port == 0  # no clash between two 0s


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("15001:backend", "malformed"),
        ("15001:backend:0", "not a port"),
        ("99999:backend:80", "not a port"),
        ("15001:b:80=spiffe://other.local/x", "outside trust domain"),
        ("15001:b:80=https://x", "invalid SPIFFE ID"),
        ("15001:a:80,15001:b:80", "one listen port twice"),
    ],
)
def test_bad_outbound_targets_say_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        parse_outbound([text], "cluster.local")


def test_config_from_flags_and_environment() -> None:
    environ = {"MESHCA_INBOUND": "15006:8080/http", "MESHCA_PROXY_PROTOCOL": "9090"}
    args = build_parser(environ).parse_args(
        ["enforce", "--inbound", "15006:8080/http,15007:9090", "--namespace", "shop", "--policies", "/p"]
    )
    cfg = config_from_args(args)
    assert [(p.listen_port, p.app_port, p.protocol) for p in cfg.inbound] == [
        (15006, 8080, "http"),
        (15007, 9090, "tcp"),
    ]
    assert cfg.proxy_protocol_ports == frozenset({9090})
    assert cfg.metrics_listen == "0.0.0.0:15020"
    assert cfg.cert_dir == Path("./meshca-certs")
    assert cfg.tls_engine == "auto"


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        ([], "give --inbound"),
        (["--inbound", "15006:8080"], "give --policies"),
        (["--inbound", "15006:8080", "--policies", "/p"], "give --namespace"),
        (["--inbound", "15006:8080", "--policies", "/p", "--namespace", "x", "--proxy-protocol", "9"], "9"),
        (["--inbound", "1:2", "--outbound", "1:h:3", "--policies", "/p", "--namespace", "x"], "both"),
        (["--outbound", "1:h:3", "--trust-domain", "Bad"], "trust domain"),
    ],
)
def test_bad_settings_are_config_errors(flags: list[str], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        config_from_args(enforce_args(*flags))


# --------------------------------------------------------------------------- deadlines


def test_a_deadline_queue_keeps_order_and_delay() -> None:
    now = [10.0]
    queue = DeadlineQueue(0.15, lambda: now[0])
    queue.add(lambda: None)
    now[0] = 10.1
    queue.add(lambda: None)
    assert [round(deadline, 3) for deadline, _ in queue.entries] == [10.15, 10.25]


# --------------------------------------------------------------------------- certificate files


def test_the_agents_files_are_read_as_one_issuance(tmp_path: Path) -> None:
    clock = FakeClock()
    assert version_of(tmp_path) is None
    svid = make_svid(clock)
    write_svid(tmp_path, svid)
    version, files = read_files(tmp_path)
    assert version.startswith("link:..")
    material = check_material(files, version=version, trust_domain="cluster.local", now=clock.now())
    assert material.serial == svid.leaf.serial_number
    assert material.spiffe_id == svid.spiffe_id
    assert "key_pem" not in repr(material)  # the key never reaches a log line
    write_svid(tmp_path, make_svid(clock))
    assert version_of(tmp_path) != version


def test_plain_files_are_versioned_by_their_stamps(tmp_path: Path) -> None:
    svid = make_svid(FakeClock())
    (tmp_path / "cert-chain.pem").write_bytes(svid.chain_pem())
    (tmp_path / "key.pem").write_bytes(svid.key_pem())
    (tmp_path / "root-cert.pem").write_bytes(svid.roots_pem())
    version = version_of(tmp_path)
    assert version is not None and version.startswith("files:")


@pytest.mark.parametrize("problem", ["other key", "other trust domain", "expired", "garbage"])
def test_unusable_files_are_refused_with_the_reason(problem: str) -> None:
    clock = FakeClock()
    svid = make_svid(clock)
    files = {"cert-chain.pem": svid.chain_pem(), "key.pem": svid.key_pem(), "root-cert.pem": svid.roots_pem()}
    trust_domain, now = "cluster.local", clock.now()
    if problem == "other key":
        files["key.pem"] = make_svid(clock).key_pem()
        match = "does not belong"
    elif problem == "other trust domain":
        trust_domain, match = "example.org", "outside trust domain"
    elif problem == "expired":
        now, match = now + timedelta(days=365), "expired"
    else:
        files["cert-chain.pem"], match = b"not pem", "do not parse"
    with pytest.raises(ConfigError, match=match):
        check_material(files, version="v", trust_domain=trust_domain, now=now)
