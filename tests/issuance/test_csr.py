"""CSR parsing: proof of possession, key policy, and refusal of everything else."""

from __future__ import annotations

import base64

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given
from hypothesis import strategies as st

from ca.errors import ErrorKind, InvalidRequestError
from ca.issuance.csr import MAX_CSR_BYTES, parse_csr
from ca.issuance.key_policy import KeyPolicy
from tests.support.pki import make_csr, rsa_key

POLICY = KeyPolicy()
EC_PUBLIC_KEY_OID = bytes.fromhex("06072a8648ce3d0201")
P256_CURVE_OID = bytes.fromhex("06082a8648ce3d030107")


@pytest.fixture(scope="module")
def rsa2048() -> rsa.RSAPrivateKey:
    return rsa_key(2048)


@pytest.fixture(scope="module")
def rsa1024() -> rsa.RSAPrivateKey:
    return rsa_key(1024)


@pytest.fixture(scope="module")
def p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def good_csr(p256: ec.EllipticCurvePrivateKey) -> str:
    return make_csr(p256, uris=("spiffe://cluster.local/ns/a/sa/b",), dns=("aaaa.example",))


def _der(pem: str) -> bytes:
    return x509.load_pem_x509_csr(pem.encode()).public_bytes(serialization.Encoding.DER)


def _pem(der: bytes, label: str = "CERTIFICATE REQUEST") -> str:
    body = base64.encodebytes(der).decode()
    return f"-----BEGIN {label}-----\n{body}-----END {label}-----\n"


def _refusal(pem: str, policy: KeyPolicy = POLICY) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as caught:
        parse_csr(pem, policy)
    assert caught.value.kind is ErrorKind.INVALID_ARGUMENT
    return caught.value


@pytest.mark.parametrize(
    ("curve", "label"), [(ec.SECP256R1(), "ec-p256"), (ec.SECP384R1(), "ec-p384")], ids=["p256", "p384"]
)
def test_ec_csrs_are_accepted(curve: ec.EllipticCurve, label: str) -> None:
    key = ec.generate_private_key(curve)
    parsed = parse_csr(make_csr(key), POLICY)
    assert parsed.key_type == label
    assert isinstance(parsed.public_key, ec.EllipticCurvePublicKey)
    assert parsed.public_key.public_numbers() == key.public_key().public_numbers()
    assert parsed.requested_uris == ()
    assert parsed.requested_dns == ()


def test_rsa_2048_csr_is_accepted(rsa2048: rsa.RSAPrivateKey) -> None:
    parsed = parse_csr(make_csr(rsa2048), POLICY)
    assert parsed.key_type == "rsa-2048"
    assert parsed.public_key.public_numbers() == rsa2048.public_key().public_numbers()


def test_requested_names_are_reported(good_csr: str) -> None:
    parsed = parse_csr(good_csr, POLICY)
    assert parsed.requested_uris == ("spiffe://cluster.local/ns/a/sa/b",)
    assert parsed.requested_dns == ("aaaa.example",)


def test_csr_asking_for_ca_false_is_accepted(p256: ec.EllipticCurvePrivateKey) -> None:
    assert parse_csr(make_csr(p256, ca=False), POLICY).key_type == "ec-p256"


def test_legacy_new_certificate_request_marker_is_accepted(good_csr: str) -> None:
    legacy = good_csr.replace("CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST")
    assert parse_csr(legacy, POLICY).requested_dns == ("aaaa.example",)


def test_csr_surrounded_by_whitespace_is_accepted(good_csr: str) -> None:
    assert parse_csr("\n\n  " + good_csr + "\n\n", POLICY).key_type == "ec-p256"


@pytest.mark.parametrize("pem", ["", "   ", "\n\t\n"])
def test_empty_csr_is_refused(pem: str) -> None:
    err = _refusal(pem)
    assert err.reason == "csr_missing"
    assert "no CSR" in err.message


def test_oversize_csr_is_refused_before_parsing(good_csr: str) -> None:
    pem = good_csr + "#" * MAX_CSR_BYTES
    err = _refusal(pem)
    assert err.reason == "csr_too_large"
    assert str(MAX_CSR_BYTES) in err.message
    assert "limit" in err.message


def test_csr_just_under_the_limit_is_not_refused_for_size(good_csr: str) -> None:
    pem = good_csr + "\n" * (MAX_CSR_BYTES - len(good_csr))
    assert len(pem) == MAX_CSR_BYTES
    assert parse_csr(pem, POLICY).key_type == "ec-p256"


@pytest.mark.parametrize(
    "pem",
    [
        "hello",
        "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA",
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----\n",
    ],
)
def test_non_pem_csr_is_refused(pem: str) -> None:
    err = _refusal(pem)
    assert err.reason == "csr_invalid"
    assert "not PEM" in err.message


def test_corrupted_base64_is_refused(good_csr: str) -> None:
    lines = good_csr.splitlines()
    lines[2] = "!!!!" + lines[2][4:]
    err = _refusal("\n".join(lines) + "\n")
    assert err.reason == "csr_invalid"
    assert "cannot be decoded" in err.message


def test_truncated_der_is_refused(good_csr: str) -> None:
    err = _refusal(_pem(_der(good_csr)[:-20]))
    assert err.reason == "csr_invalid"
    assert "cannot be decoded" in err.message


def test_pem_block_without_end_marker_is_refused(good_csr: str) -> None:
    err = _refusal(good_csr.split("-----END")[0])
    assert err.reason == "csr_invalid"


def test_tampered_csr_fails_proof_of_possession(good_csr: str) -> None:
    der = _der(good_csr)
    assert der.count(b"aaaa.example") == 1
    tampered = _pem(der.replace(b"aaaa.example", b"bbbb.example"))
    assert x509.load_pem_x509_csr(tampered.encode()).extensions is not None
    err = _refusal(tampered)
    assert err.reason == "csr_signature_invalid"
    assert "self-signature does not verify" in err.message
    assert "possession" in err.message


def test_csr_with_a_swapped_public_key_fails_proof_of_possession(p256: ec.EllipticCurvePrivateKey) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    signed = _der(make_csr(p256))
    spki = p256.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    other_spki = other.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    err = _refusal(_pem(signed.replace(spki, other_spki)))
    assert err.reason == "csr_signature_invalid"


def test_ed25519_key_is_refused() -> None:
    err = _refusal(make_csr(ed25519.Ed25519PrivateKey.generate()))
    assert err.reason == "key_type_not_allowed"
    assert "ed25519" in err.message
    assert "P-256" in err.message


def test_rsa_1024_key_is_refused(rsa1024: rsa.RSAPrivateKey) -> None:
    err = _refusal(make_csr(rsa1024))
    assert err.reason == "key_type_not_allowed"
    assert "rsa-1024" in err.message
    assert "2048" in err.message


def test_ec_p521_key_is_refused() -> None:
    err = _refusal(make_csr(ec.generate_private_key(ec.SECP521R1())))
    assert err.reason == "key_type_not_allowed"
    assert "ec-p521" in err.message


def test_csr_asking_for_a_ca_certificate_is_refused(p256: ec.EllipticCurvePrivateKey) -> None:
    err = _refusal(make_csr(p256, ca=True))
    assert err.reason == "csr_requests_ca"
    assert "cA=true" in err.message


def test_key_policy_is_applied(rsa2048: rsa.RSAPrivateKey, p256: ec.EllipticCurvePrivateKey) -> None:
    strict = KeyPolicy(ec_curves=frozenset({"secp384r1"}), min_rsa_bits=3072)
    assert _refusal(make_csr(rsa2048), strict).reason == "key_type_not_allowed"
    assert _refusal(make_csr(p256), strict).reason == "key_type_not_allowed"


def test_refusal_reasons_are_distinct(
    good_csr: str, rsa1024: rsa.RSAPrivateKey, p256: ec.EllipticCurvePrivateKey
) -> None:
    tampered = _pem(_der(good_csr).replace(b"aaaa.example", b"bbbb.example"))
    reasons = {
        _refusal("").reason,
        _refusal(good_csr + " " * MAX_CSR_BYTES).reason,
        _refusal("not a csr").reason,
        _refusal(tampered).reason,
        _refusal(make_csr(rsa1024)).reason,
        _refusal(make_csr(p256, ca=True)).reason,
    }
    assert len(reasons) == 6


def test_unknown_public_key_algorithm_is_an_invalid_request(p256: ec.EllipticCurvePrivateKey) -> None:
    der = _der(make_csr(p256))
    assert der.count(EC_PUBLIC_KEY_OID) == 1
    unknown = _pem(der.replace(EC_PUBLIC_KEY_OID, bytes.fromhex("06072a8648ce3d0209")))
    err = _refusal(unknown)
    assert err.reason == "key_type_not_allowed"


def test_unsupported_curve_is_an_invalid_request(p256: ec.EllipticCurvePrivateKey) -> None:
    der = _der(make_csr(p256))
    assert der.count(P256_CURVE_OID) == 1
    unknown = _pem(der.replace(P256_CURVE_OID, bytes.fromhex("06082a8648ce3d030109")))
    err = _refusal(unknown)
    assert err.reason == "key_type_not_allowed"


def _only_invalid_request(pem: str) -> None:
    try:
        parse_csr(pem, POLICY)
    except InvalidRequestError as err:
        assert err.reason
        assert err.message.startswith("bad CSR") or "key type" in err.message


@given(text=st.text(max_size=2000))
def test_arbitrary_text_only_raises_invalid_request(text: str) -> None:
    _only_invalid_request(text)


@given(
    data=st.binary(max_size=2000), label=st.sampled_from(["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"])
)
def test_pem_wrapped_random_bytes_only_raise_invalid_request(data: bytes, label: str) -> None:
    _only_invalid_request(_pem(data, label))


@given(prefix=st.text(max_size=50), body=st.text(max_size=200), suffix=st.text(max_size=50))
def test_mangled_pem_text_only_raises_invalid_request(prefix: str, body: str, suffix: str) -> None:
    _only_invalid_request(
        f"{prefix}-----BEGIN CERTIFICATE REQUEST-----\n{body}\n-----END CERTIFICATE REQUEST-----{suffix}"
    )


@pytest.mark.parametrize("replacement", [0x00, 0x01, 0x7F, 0xFF])
def test_every_single_byte_corruption_only_raises_invalid_request(good_csr: str, replacement: int) -> None:
    der = _der(good_csr)
    unexpected = []
    for index in range(len(der)):
        if der[index] == replacement:
            continue
        mutated = der[:index] + bytes([replacement]) + der[index + 1 :]
        try:
            parse_csr(_pem(mutated), POLICY)
        except InvalidRequestError:
            continue
        except Exception as err:
            unexpected.append((index, type(err).__name__, str(err)))
    assert unexpected == []


def test_csr_with_an_unknown_version_is_an_invalid_request(good_csr: str) -> None:
    der = _der(good_csr)
    version_zero = bytes.fromhex("020100")
    assert der.find(version_zero) < 12
    err = _refusal(_pem(der.replace(version_zero, bytes.fromhex("020101"), 1)))
    assert err.reason == "csr_invalid"
