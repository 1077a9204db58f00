"""The SPIFFE bundle endpoint on a real socket, fetched by a verifying HTTPS client and read back with
py-spiffe."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from spiffe import TrustDomain
from spiffe.bundle.x509_bundle.x509_bundle import X509Bundle

from ca.errors import CaMaterialError, ConfigError
from ca.issuance.authority import SigningAuthority
from ca.issuance.spiffe_id import SpiffeId
from ca.net.bundle_endpoint import BundleEndpoint
from ca.server.serving_cert import ServingCertificate, ServingIdentity
from tests.support.clock import FakeClock
from tests.support.issuing import TRUST_DOMAIN, make_root
from tests.support.pki import make_hierarchy

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
ENDPOINT_ID = SpiffeId.parse(f"spiffe://{TRUST_DOMAIN}/meshca/bundle-endpoint")


@dataclass
class Roots:
    """What the CA trusts now; a test changes it as a rotation would."""

    current: list[x509.Certificate]
    failure: Exception | None = None

    def __call__(self) -> list[x509.Certificate]:
        if self.failure is not None:
            raise self.failure
        return list(self.current)


@dataclass
class Served:
    endpoint: BundleEndpoint
    roots: Roots
    identity: ServingIdentity
    authority: SigningAuthority
    clock: FakeClock
    certificates: list[ServingCertificate] = field(default_factory=list)


@pytest.fixture
def served() -> Iterator[Served]:
    clock = FakeClock(NOW)
    authority = make_root(clock)
    identity = ServingIdentity(authority=authority, hosts=["127.0.0.1"], spiffe_id=ENDPOINT_ID, clock=clock)
    roots = Roots(list(authority.roots))
    endpoint = BundleEndpoint("127.0.0.1", 0, roots=roots, certificate=lambda: identity.current, clock=clock)
    endpoint.start()
    yield Served(endpoint, roots, identity, authority, clock)
    endpoint.stop()


def client_context(authority: SigningAuthority) -> ssl.SSLContext:
    """A consumer that trusts this trust domain's roots and checks the endpoint's address."""
    return ssl.create_default_context(cadata=authority.trust_bundle_pem())


def fetch(served: Served, path: str = "/") -> tuple[int, str, bytes, bytes]:
    """Status, content type, body, and the DER of the certificate the endpoint presented."""
    conn = http.client.HTTPSConnection(
        "127.0.0.1", served.endpoint.port, context=client_context(served.authority), timeout=5
    )
    try:
        conn.request("GET", path)
        assert isinstance(conn.sock, ssl.SSLSocket)
        presented = conn.sock.getpeercert(binary_form=True)
        assert presented is not None
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read(), presented
    finally:
        conn.close()


def bundle_of(served: Served) -> dict[str, Any]:
    status, content_type, body, _ = fetch(served)
    assert (status, content_type) == (200, "application/json")
    document = json.loads(body)
    assert isinstance(document, dict)
    return document


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def authorities(document: dict[str, Any]) -> list[bytes]:
    """The roots a SPIFFE consumer takes from the bundle, checked by py-spiffe."""
    ders = [base64.standard_b64decode(k["x5c"][0]) for k in document["keys"] if k.get("use") == "x509-svid"]
    parsed = X509Bundle.parse_raw(TrustDomain(TRUST_DOMAIN), b"".join(ders))
    assert {der(c) for c in parsed.x509_authorities} == set(ders)
    return ders


def test_the_bundle_is_served_over_verified_https(served: Served) -> None:
    document = bundle_of(served)
    assert authorities(document) == [der(served.authority.roots[0])]
    assert document["keys"][0]["use"] == "x509-svid"
    assert document["spiffe_refresh_hint"] == 300
    assert document["spiffe_sequence"] == int(NOW.timestamp())
    assert served.endpoint.url == f"https://127.0.0.1:{served.endpoint.port}/"


def test_the_endpoint_presents_its_spiffe_id(served: Served) -> None:
    """So a consumer can authenticate it the SPIFFE way (by the endpoint's SPIFFE ID)."""
    _, _, _, presented = fetch(served)
    names = x509.load_der_x509_certificate(presented).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert names.value.get_values_for_type(x509.UniformResourceIdentifier) == [ENDPOINT_ID.uri]


def test_a_client_that_does_not_trust_the_domain_refuses_the_endpoint(served: Served) -> None:
    stranger = ssl.create_default_context(cadata=make_root(FakeClock(NOW)).trust_bundle_pem())
    conn = http.client.HTTPSConnection("127.0.0.1", served.endpoint.port, context=stranger, timeout=5)
    with pytest.raises(ssl.SSLCertVerificationError):
        conn.request("GET", "/")
    conn.close()


def test_the_sequence_moves_up_only_when_the_roots_change(served: Served) -> None:
    first = bundle_of(served)
    assert bundle_of(served)["spiffe_sequence"] == first["spiffe_sequence"]

    next_root = make_hierarchy().root
    served.roots.current.append(next_root)  # a new root published beside the old one
    second = bundle_of(served)
    assert authorities(second) == [der(served.authority.roots[0]), der(next_root)]
    assert second["spiffe_sequence"] == first["spiffe_sequence"] + 1  # within the same second

    served.clock.advance(timedelta(days=30))
    served.roots.current.pop(0)  # the old root retired
    third = bundle_of(served)
    assert authorities(third) == [der(next_root)]
    assert third["spiffe_sequence"] == int((NOW + timedelta(days=30)).timestamp())


def test_a_renewed_certificate_serves_from_the_next_connection(served: Served) -> None:
    _, _, _, before = fetch(served)
    renewed = served.identity.rotate()
    _, _, _, after = fetch(served)
    assert before != after
    assert after == der(x509.load_pem_x509_certificate(renewed.chain_pem))


def test_other_paths_are_not_found(served: Served) -> None:
    status, _, body, _ = fetch(served, "/other")
    assert (status, body) == (404, b"not found; the SPIFFE bundle is at /\n")
    assert fetch(served, "/?query=1")[0] == 200


def test_no_bundle_is_a_503_and_the_endpoint_goes_on(served: Served) -> None:
    served.roots.failure = CaMaterialError("the CA material is unreadable")
    status, _, body, _ = fetch(served)
    assert (status, body) == (503, b"the trust bundle is not available; see the CA's log\n")
    served.roots.current = []
    served.roots.failure = None
    assert fetch(served)[0] == 503
    served.roots.current = list(served.authority.roots)
    assert fetch(served)[0] == 200


def test_a_silent_client_holds_up_no_other(served: Served) -> None:
    """The handshake runs on the connection's own thread, not the one that accepts."""
    with socket.create_connection(("127.0.0.1", served.endpoint.port), timeout=5):
        assert bundle_of(served)["keys"]


def test_a_bad_certificate_fails_at_construction() -> None:
    clock = FakeClock(NOW)
    authority = make_root(clock)
    broken = ServingCertificate(
        chain_pem=b"not a certificate", key_pem=b"no key", not_before=NOW, not_after=NOW
    )
    with pytest.raises(ConfigError, match="certificate or key cannot be loaded"):
        BundleEndpoint("127.0.0.1", 0, roots=lambda: authority.roots, certificate=lambda: broken, clock=clock)


def test_a_port_in_use_names_the_flag(served: Served) -> None:
    with pytest.raises(
        ConfigError, match=r"--bundle-endpoint-listen 127\.0\.0\.1:\d+: the address is already"
    ):
        BundleEndpoint(
            "127.0.0.1",
            served.endpoint.port,
            roots=served.roots,
            certificate=lambda: served.identity.current,
            clock=served.clock,
        )


def test_start_refuses_roots_that_make_no_bundle() -> None:
    clock = FakeClock(NOW)
    authority = make_root(clock)
    identity = ServingIdentity(authority=authority, hosts=["127.0.0.1"], spiffe_id=ENDPOINT_ID, clock=clock)
    endpoint = BundleEndpoint("127.0.0.1", 0, roots=list, certificate=lambda: identity.current, clock=clock)
    try:
        with pytest.raises(CaMaterialError, match="no root"):
            endpoint.start()
    finally:
        endpoint.stop()
