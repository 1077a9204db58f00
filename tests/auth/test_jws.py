"""The compact JWS check, against pyjwt as an independent implementation: every algorithm meshca
accepts, refusals by kind, and a differential fuzz over altered tokens."""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from ca.auth.jws import ALGORITHMS, JwsBadSignature, JwsKeyMismatch, JwsMalformed, verified_payload

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
P256 = ec.generate_private_key(ec.SECP256R1())
P384 = ec.generate_private_key(ec.SECP384R1())
CLAIMS = {
    "iss": "https://kubernetes.default.svc",
    "sub": "system:serviceaccount:shop:cart",
    "exp": 2_000_000_000,
}


def signing_key(alg: str) -> Any:
    return {"ES256": P256, "ES384": P384}.get(alg, RSA_KEY)


def token(alg: str, claims: dict[str, Any] = CLAIMS, **headers: Any) -> str:
    return jwt.encode(claims, signing_key(alg), algorithm=alg, headers={"kid": "k", **headers})


def header_of(text: str) -> dict[str, Any]:
    part = text.split(".")[0]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_every_accepted_algorithm_verifies_what_pyjwt_signed(alg: str) -> None:
    signed = token(alg)
    assert verified_payload(signed, header_of(signed), signing_key(alg).public_key()) == CLAIMS


@pytest.mark.parametrize(
    ("alg", "key"),
    [("RS256", P256.public_key()), ("ES256", RSA_KEY.public_key()), ("ES256", P384.public_key())],
)
def test_an_algorithm_that_does_not_fit_the_key_is_a_mismatch(alg: str, key: Any) -> None:
    signed = token(alg)
    with pytest.raises(JwsKeyMismatch):
        verified_payload(signed, header_of(signed), key)


def test_a_signature_by_another_key_does_not_verify() -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signed = jwt.encode(CLAIMS, other, algorithm="RS256")
    with pytest.raises(JwsBadSignature):
        verified_payload(signed, header_of(signed), RSA_KEY.public_key())


def test_an_ecdsa_signature_of_the_wrong_length_does_not_verify() -> None:
    head, payload, signature = token("ES256").split(".")
    short = base64.urlsafe_b64encode(base64.urlsafe_b64decode(signature + "==")[:63]).rstrip(b"=").decode()
    altered = f"{head}.{payload}.{short}"
    with pytest.raises(JwsBadSignature, match="64 bytes, not 63"):
        verified_payload(altered, header_of(altered), P256.public_key())


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ({"alg": "none"}, "not accepted"),
        ({"alg": "HS256"}, "not accepted"),
        ({"alg": "RS256", "crit": ["b64"]}, "critical extensions"),
    ],
)
def test_what_meshca_does_not_verify_is_malformed(header: dict[str, Any], message: str) -> None:
    with pytest.raises(JwsMalformed, match=message):
        verified_payload(token("RS256"), header, RSA_KEY.public_key())


def test_a_payload_that_is_not_a_json_object_is_malformed() -> None:
    signed = jwt.api_jws.encode(b"[1, 2]", RSA_KEY, algorithm="RS256")
    with pytest.raises(JwsMalformed, match="not a JSON object"):
        verified_payload(signed, header_of(signed), RSA_KEY.public_key())


@pytest.mark.parametrize(("url", "standard"), [("_", "/"), ("-", "+")])
@pytest.mark.parametrize("part", [0, 1, 2])
def test_the_standard_base64_spelling_of_the_same_bits_is_refused(url: str, standard: str, part: int) -> None:
    signed = token("RS256", {**CLAIMS, "sub": "a?>~" * 8})  # an ASCII mix whose base64url holds '_' and '-'
    parts = signed.split(".")
    assert url in parts[part] or part == 0
    parts[part] = parts[part].replace(url, standard) if url in parts[part] else parts[part] + "="
    altered = ".".join(parts)
    assert not _pyjwt_accepts(altered, RSA_KEY.public_key())
    with pytest.raises(JwsMalformed, match="outside base64url"):
        verified_payload(altered, header_of(signed), RSA_KEY.public_key())


def _pyjwt_accepts(text: str, key: Any) -> bool:
    try:
        jwt.decode(
            text, key, algorithms=list(ALGORITHMS), options={"verify_signature": True, "verify_exp": False}
        )
    except (jwt.PyJWTError, ValueError, TypeError):
        return False
    return True


def _ours_accepts(text: str, key: Any) -> bool:
    try:
        header = header_of(text)
    except (ValueError, UnicodeDecodeError):
        return False
    if not isinstance(header, dict):
        return False
    try:
        verified_payload(text, header, key)
    except (JwsMalformed, JwsKeyMismatch, JwsBadSignature):
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(
    alg=st.sampled_from(ALGORITHMS),
    where=st.integers(min_value=0),
    replacement=st.sampled_from(list("AZaz09-_.=+/ ")),
)
def test_an_altered_token_is_accepted_exactly_when_pyjwt_accepts_it(
    alg: str, where: int, replacement: str
) -> None:
    signed = token(alg)
    at = where % len(signed)
    altered = signed[:at] + replacement + signed[at + 1 :]
    key = signing_key(alg).public_key()
    assert _ours_accepts(altered, key) == _pyjwt_accepts(altered, key), altered
