"""The certificate API end to end: real gRPC over real TLS, checked by independent validators."""

from __future__ import annotations

import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import grpc
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ca._proto import istio_ca_pb2
from ca.server.certificate_api import METHOD_NAME, SERVICE_NAME
from tests.support.ca_server import RunningCa, start_ca
from tests.support.pki import ec_key, make_csr, make_hierarchy, rsa_key
from tests.support.validate import assert_valid_svid

CART = "spiffe://cluster.local/ns/shop/sa/cart"


def _code_and_details(ca: RunningCa, **kwargs: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        ca.request(**kwargs)  # type: ignore[arg-type]
    return caught.value.code(), caught.value.details()


def _raw_call(ca: RunningCa, payload: bytes, token: str | None) -> grpc.RpcError | bytes:
    call = ca.channel().unary_unary(f"/{SERVICE_NAME}/{METHOD_NAME}")
    metadata = [("authorization", f"Bearer {token}")] if token else []
    try:
        return call(payload, metadata=metadata, timeout=10)  # type: ignore[no-any-return]
    except grpc.RpcError as err:
        return err


def test_issues_a_valid_svid_for_the_token_identity(ca: RunningCa) -> None:
    chain, key = ca.request(token=ca.token("shop", "cart"))
    assert len(chain) == 3  # leaf, the signing CA, the root: the root signs only signing CAs
    leaf = assert_valid_svid(chain, key, CART, ca.clock.now())
    assert leaf.not_valid_after_utc - ca.clock.now() == timedelta(hours=24)
    assert chain[-1].encode() == ca.bundle


def test_requested_ttl_is_honoured(ca: RunningCa) -> None:
    chain, _ = ca.request(token=ca.token(), ttl=3600)
    leaf = x509.load_pem_x509_certificate(chain[0].encode())
    assert leaf.not_valid_after_utc - ca.clock.now() == timedelta(hours=1)


def test_rsa_workload_key_gets_key_encipherment(ca: RunningCa) -> None:
    key = rsa_key()
    chain, _ = ca.request(token=ca.token("shop", "cart"), key=key, csr=make_csr(key))
    leaf = assert_valid_svid(chain, key, CART, ca.clock.now())
    assert leaf.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment


def test_identity_comes_from_the_token_not_the_csr(ca: RunningCa) -> None:
    key = ec_key()
    csr = make_csr(key, uris=("spiffe://cluster.local/ns/kube-system/sa/admin",), dns=("evil.example",))
    chain, _ = ca.request(token=ca.token("shop", "cart"), key=key, csr=csr)
    leaf = assert_valid_svid(chain, key, CART, ca.clock.now())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == []


def test_strict_mode_refuses_a_csr_naming_another_identity(tmp_path: Path) -> None:
    ca = start_ca(tmp_path, "--strict-csr-names", "on")
    try:
        key = ec_key()
        csr = make_csr(key, uris=("spiffe://cluster.local/ns/kube-system/sa/admin",))
        code, details = _code_and_details(ca, token=ca.token("shop", "cart"), key=key, csr=csr)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "strict mode" in details
        own = make_csr(key, uris=(CART,))
        chain, _ = ca.request(token=ca.token("shop", "cart"), key=key, csr=own)
        assert_valid_svid(chain, key, CART, ca.clock.now())
    finally:
        ca.stop()


@pytest.mark.parametrize(
    ("csr", "ttl", "words"),
    [
        ("not a csr", 0, "not PEM"),
        (
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            0,
            "cannot be decoded",
        ),
        ("x" * 40_000, 0, "over the"),
        ("", 0, "no CSR"),
        (None, -5, "negative"),
        (None, 2**62, "over the maximum"),
        (None, 90 * 86400 + 1, "over the maximum"),
    ],
)
def test_bad_requests_are_invalid_argument(ca: RunningCa, csr: str | None, ttl: int, words: str) -> None:
    kwargs: dict[str, object] = {"token": ca.token(), "ttl": ttl}
    if csr is not None:
        kwargs["csr"] = csr if csr else " "
    code, details = _code_and_details(ca, **kwargs)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert words in details


def test_csr_asking_for_a_ca_is_refused(ca: RunningCa) -> None:
    key = ec_key()
    code, details = _code_and_details(ca, token=ca.token(), key=key, csr=make_csr(key, ca=True))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "CA certificate" in details


@pytest.mark.parametrize(
    "key_factory",
    [
        ed25519.Ed25519PrivateKey.generate,
        lambda: ec.generate_private_key(ec.SECP521R1()),
        lambda: rsa_key(1024),
    ],
    ids=["ed25519", "p521", "rsa1024"],
)
def test_disallowed_key_types_are_refused(ca: RunningCa, key_factory: object) -> None:
    key = key_factory()  # type: ignore[operator]
    code, details = _code_and_details(ca, token=ca.token(), csr=make_csr(key))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "not allowed" in details


def test_over_max_ttl_is_clamped_when_configured(tmp_path: Path) -> None:
    ca = start_ca(tmp_path, "--max-ttl", "48h", "--ttl-over-max", "clamp")
    try:
        chain, _ = ca.request(token=ca.token(), ttl=30 * 86400)
        leaf = x509.load_pem_x509_certificate(chain[0].encode())
        assert leaf.not_valid_after_utc - ca.clock.now() == timedelta(hours=48)
    finally:
        ca.stop()


def test_token_failures_are_unauthenticated_with_distinct_messages(ca: RunningCa) -> None:
    expired = ca.token(ttl=timedelta(minutes=5))
    wrong_audience = ca.token(audiences=("vault",))
    forged = jwt.encode(
        jwt.decode(ca.token(), options={"verify_signature": False}),
        rsa_key(),
        algorithm="RS256",
        headers={"kid": ca.dev_tokens().kid},
    )
    ca.clock.advance(timedelta(minutes=10))
    messages = set()
    for token, words in [
        (expired, "expired"),
        (wrong_audience, "audiences"),
        (forged, "signature"),
        ("abc", "not a JWT"),
    ]:
        code, details = _code_and_details(ca, token=token)
        assert code == grpc.StatusCode.UNAUTHENTICATED, details
        assert words in details
        messages.add(details)
    assert len(messages) == 4


@pytest.mark.parametrize(
    ("metadata", "code", "words"),
    [
        ([("authorization", "Basic dXNlcjpwYXNz")], grpc.StatusCode.UNAUTHENTICATED, "Bearer"),
        ([("clusterid", "a"), ("clusterid", "b")], grpc.StatusCode.INVALID_ARGUMENT, "clusterid"),
        ([("clusterid", "other-cluster")], grpc.StatusCode.UNAUTHENTICATED, "not served"),
    ],
)
def test_bad_metadata(
    ca: RunningCa, metadata: list[tuple[str, str]], code: grpc.StatusCode, words: str
) -> None:
    token = None if metadata[0][0] == "authorization" else ca.token()
    got, details = _code_and_details(ca, token=token, metadata=metadata)
    assert got == code and words in details


def test_cluster_id_of_this_cluster_is_accepted(ca: RunningCa) -> None:
    chain, key = ca.request(token=ca.token("shop", "cart"), metadata=[("clusterid", "Kubernetes")])
    assert_valid_svid(chain, key, CART, ca.clock.now())


def _struct(**fields: str) -> struct_pb2.Struct:
    value = struct_pb2.Struct()
    value.update(fields)
    return value


def test_impersonation_and_unknown_signer_are_refused(ca: RunningCa) -> None:
    stub = ca.stub()
    token = [("authorization", f"Bearer {ca.token()}")]
    for metadata, code in [
        (_struct(ImpersonatedIdentity="spiffe://cluster.local/ns/a/sa/b"), grpc.StatusCode.PERMISSION_DENIED),
        (_struct(CertSigner="other-signer"), grpc.StatusCode.INVALID_ARGUMENT),
    ]:
        request = istio_ca_pb2.IstioCertificateRequest(csr=make_csr(ec_key()), metadata=metadata)
        with pytest.raises(grpc.RpcError) as caught:
            stub.CreateCertificate(request, metadata=token, timeout=10)
        assert caught.value.code() == code


def test_garbage_protobuf_is_invalid_argument(ca: RunningCa) -> None:
    result = _raw_call(ca, b"\xff\xff\xff\x0f garbage", ca.token())
    assert isinstance(result, grpc.RpcError)
    assert result.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_oversized_message_is_refused_by_the_transport(ca: RunningCa) -> None:
    result = _raw_call(ca, b"\x0a" + b"\xff" * 400_000, ca.token())
    assert isinstance(result, grpc.RpcError)
    assert result.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(max_size=2048))
def test_fuzzed_request_bytes_never_break_the_server(ca: RunningCa, payload: bytes) -> None:
    result = _raw_call(ca, payload, ca.token())
    if isinstance(result, grpc.RpcError):
        assert result.code() in (grpc.StatusCode.INVALID_ARGUMENT,), result.details()
    else:
        response = istio_ca_pb2.IstioCertificateResponse.FromString(result)
        assert len(response.cert_chain) == 2


def test_server_keeps_serving_after_bad_requests(ca: RunningCa) -> None:
    for payload in (b"\x00", b"\x0a\x03abc", b"\x18\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"):
        _raw_call(ca, payload, ca.token())
    health = health_pb2_grpc.HealthStub(ca.channel())
    for service in ("", SERVICE_NAME):
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    chain, key = ca.request(token=ca.token("shop", "cart"))
    assert_valid_svid(chain, key, CART, ca.clock.now())


def test_concurrent_requests_all_succeed_with_distinct_serials(ca: RunningCa) -> None:
    tokens = [ca.token("shop", f"sa{i}") for i in range(40)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        chains = list(pool.map(lambda t: ca.request(token=t)[0], tokens))
    serials = {x509.load_pem_x509_certificate(c[0].encode()).serial_number for c in chains}
    assert len(serials) == 40
    assert all(s.bit_length() <= 128 for s in serials)


def test_renewal_with_a_client_certificate(ca: RunningCa) -> None:
    chain, key = ca.request(token=ca.token("shop", "cart"))
    client_chain = "".join(chain[:-1]).encode()
    renewed, new_key = ca.request(port=ca.server.ports["renew"], client_key=key, client_chain=client_chain)
    assert_valid_svid(renewed, new_key, CART, ca.clock.now())


def test_renewal_with_an_expired_client_certificate_is_refused(ca: RunningCa) -> None:
    chain, key = ca.request(token=ca.token("shop", "cart"), ttl=600)
    ca.clock.advance(timedelta(minutes=11))
    code, details = _code_and_details(
        ca, port=ca.server.ports["renew"], client_key=key, client_chain="".join(chain[:-1]).encode()
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED and "renewal" in details


def test_renewal_port_refuses_a_foreign_certificate(ca: RunningCa, tmp_path: Path) -> None:
    other = start_ca(tmp_path / "other")
    try:
        chain, key = other.request(token=other.token("shop", "cart"))
    finally:
        other.stop()
    code, _ = _code_and_details(
        ca, port=ca.server.ports["renew"], client_key=key, client_chain="".join(chain[:-1]).encode()
    )
    assert code == grpc.StatusCode.UNAVAILABLE


def test_renewal_port_requires_a_client_certificate(ca: RunningCa) -> None:
    code, _ = _code_and_details(ca, port=ca.server.ports["renew"], token=ca.token())
    assert code == grpc.StatusCode.UNAVAILABLE


def _metrics(ca: RunningCa) -> dict[str, float]:
    url = f"http://127.0.0.1:{ca.server.ports['metrics']}/metrics"
    values: dict[str, float] = {}
    with urllib.request.urlopen(url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
    return values


def test_the_metrics_port_answers_readiness_once_serving(ca: RunningCa) -> None:
    url = f"http://127.0.0.1:{ca.server.ports['metrics']}/healthz/ready"
    with urllib.request.urlopen(url, timeout=5) as response:
        assert (response.status, response.read()) == (200, b"ready\n")
    ca.server.stop(grace_s=0)
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=5)


def test_istio_compatible_metrics(ca: RunningCa) -> None:
    ca.request(token=ca.token())
    ca.request(token=ca.token())
    _code_and_details(ca)
    _code_and_details(ca, token=ca.token(), ttl=-1)
    ca.server.refresh_expiry_gauges()
    metrics = _metrics(ca)
    assert metrics["citadel_server_csr_count"] == 4
    assert metrics["citadel_server_success_cert_issuance_count"] == 2
    assert metrics['citadel_server_authentication_failure_count{reason="token_missing"}'] == 1
    assert metrics['citadel_server_csr_sign_err_count{error="ttl_invalid"}'] == 1
    root_expiry = ca.server.authority.root_expiry().timestamp()
    assert metrics["citadel_server_root_cert_expiry_timestamp"] == pytest.approx(root_expiry)
    assert metrics["citadel_server_cert_chain_expiry_seconds"] == pytest.approx(60 * 86400, abs=300)


def test_plugged_in_ca_with_intermediate(tmp_path: Path) -> None:
    hierarchy = make_hierarchy()
    ca = start_ca(tmp_path / "state", "--cacerts", str(hierarchy.write_cacerts(tmp_path / "cacerts")))
    try:
        chain, key = ca.request(token=ca.token("shop", "cart"))
        assert len(chain) == 4
        leaf = assert_valid_svid(chain, key, CART, ca.clock.now())
        assert leaf.issuer == hierarchy.signing.subject
        assert x509.load_pem_x509_certificate(chain[1].encode()) == hierarchy.signing
        assert x509.load_pem_x509_certificate(chain[2].encode()) == hierarchy.intermediate
        assert x509.load_pem_x509_certificates(chain[3].encode()) == [hierarchy.root]
        assert leaf.not_valid_after_utc <= hierarchy.signing.not_valid_after_utc
    finally:
        ca.stop()


def test_leaf_is_clamped_to_a_short_lived_signing_ca(tmp_path: Path) -> None:
    hierarchy = make_hierarchy()
    ca = start_ca(tmp_path / "state", "--cacerts", str(hierarchy.write_cacerts(tmp_path / "cacerts")))
    try:
        ca.clock.set(hierarchy.signing.not_valid_after_utc - timedelta(hours=2))
        chain, _ = ca.request(token=ca.token("shop", "cart"))
        leaf = x509.load_pem_x509_certificate(chain[0].encode())
        assert leaf.not_valid_after_utc == hierarchy.signing.not_valid_after_utc
    finally:
        ca.stop()


def test_rsa_root(tmp_path: Path) -> None:
    ca = start_ca(tmp_path, "--ca-key-type", "rsa-2048")
    try:
        chain, key = ca.request(token=ca.token("shop", "cart"))
        assert_valid_svid(chain, key, CART, ca.clock.now())
    finally:
        ca.stop()


def test_restart_keeps_the_root_and_earlier_certificates_verify(tmp_path: Path) -> None:
    first = start_ca(tmp_path)
    chain_before, key_before = first.request(token=first.token("shop", "cart"))
    bundle_before = first.bundle
    first.stop()
    second = start_ca(tmp_path)
    try:
        assert second.bundle == bundle_before
        chain_after, _ = second.request(token=second.token("shop", "cart"))
        assert chain_after[-1] == chain_before[-1]
        assert_valid_svid(chain_before, key_before, CART, second.clock.now())
        assert_valid_svid([*chain_before[:-1], chain_after[-1]], key_before, CART, second.clock.now())
    finally:
        second.stop()


@pytest.mark.parametrize("flavour", ["threaded", "asyncio"])
def test_both_server_flavours_serve_the_same_api(tmp_path: Path, flavour: str) -> None:
    ca = start_ca(tmp_path, "--grpc-server", flavour)
    try:
        chain, key = ca.request(token=ca.token("shop", "cart"))
        assert_valid_svid(chain, key, CART, ca.clock.now())
        code, details = _code_and_details(ca, token=ca.token(), ttl=-1)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "negative" in details
        assert _code_and_details(ca)[0] == grpc.StatusCode.UNAUTHENTICATED
        renewed, new_key = ca.request(
            port=ca.server.ports["renew"], client_key=key, client_chain="".join(chain[:-1]).encode()
        )
        assert_valid_svid(renewed, new_key, CART, ca.clock.now())
        result = _raw_call(ca, b"\xff\xff", ca.token())
        assert isinstance(result, grpc.RpcError) and result.code() == grpc.StatusCode.INVALID_ARGUMENT
        health = health_pb2_grpc.HealthStub(ca.channel())
        status = health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    finally:
        ca.stop()
