"""The agent reads its token's claims without PyJWT (ca.agent.identity.unverified_claims): it
accepts exactly the tokens PyJWT's unverified decode accepts, with the same claims, and the
identity and pod placement it reads from them are unchanged."""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path
from typing import Any

import jwt
import pytest

from ca.agent.identity import token_identity, token_placement, unverified_claims
from ca.issuance.spiffe_id import SpiffeId
from tests.support.pki import ec_key


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: object) -> str:
    return b64(json.dumps(value).encode())


def pyjwt_claims(token: str) -> dict[str, Any] | None:
    try:
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    return claims


CLAIMS = {
    "sub": "system:serviceaccount:shop:web",
    "aud": ["istio-ca"],
    "exp": 1,  # long expired: not checked without the signature
    "kubernetes.io": {"pod": {"name": "web-1", "uid": "u"}, "node": {"name": "node-a"}},
}
SIGNED = jwt.encode(CLAIMS, ec_key(), algorithm="ES256", headers={"kid": "k1"})
HEAD, BODY, SIG = SIGNED.split(".")
ALG = {"alg": "ES256"}

TOKENS = {
    "signed": SIGNED,
    "no signature": f"{HEAD}.{BODY}.",
    "two segments": f"{HEAD}.{BODY}",
    "one segment": HEAD,
    "four segments": f"{HEAD}.{BODY}.{SIG}.{SIG}",
    "empty": "",
    "dots only": "..",
    "header not json": f"{b64(b'not json')}.{BODY}.{SIG}",
    "header a list": f"{b64json([1])}.{BODY}.{SIG}",
    "header null": f"{b64json(None)}.{BODY}.{SIG}",
    "payload a list": f"{HEAD}.{b64json(['sub'])}.{SIG}",
    "payload a string": f"{HEAD}.{b64json('sub')}.{SIG}",
    "payload not json": f"{HEAD}.{b64(b'{')}.{SIG}",
    "payload deeply nested": f"{HEAD}.{b64(b'[' * 100_000)}.{SIG}",
    "payload utf-16": f"{HEAD}.{b64(json.dumps(CLAIMS).encode('utf-16'))}.{SIG}",
    "payload bad utf-8": f"{HEAD}.{b64(bytes([0x7B, 0xFF, 0x7D]))}.{SIG}",
    "kid a number": f"{b64json({**ALG, 'kid': 7})}.{BODY}.{SIG}",
    "kid a string": f"{b64json({**ALG, 'kid': '7'})}.{BODY}.{SIG}",
    "crit empty": f"{b64json({**ALG, 'crit': []})}.{BODY}.{SIG}",
    "crit not a list": f"{b64json({**ALG, 'crit': 'b64'})}.{BODY}.{SIG}",
    "crit unsupported": f"{b64json({**ALG, 'crit': ['exp'], 'exp': 1})}.{BODY}.{SIG}",
    "crit b64 absent": f"{b64json({**ALG, 'crit': ['b64']})}.{BODY}.{SIG}",
    "crit b64 true": f"{b64json({**ALG, 'crit': ['b64'], 'b64': True})}.{BODY}.{SIG}",
    "crit a number": f"{b64json({**ALG, 'crit': [1]})}.{BODY}.{SIG}",
    "b64 false, detached": f"{b64json({**ALG, 'crit': ['b64'], 'b64': False})}..{SIG}",
    "b64 false, payload": f"{b64json({**ALG, 'crit': ['b64'], 'b64': False})}.{BODY}.{SIG}",
    "b64 false, no crit": f"{b64json({**ALG, 'b64': False})}..{SIG}",
    "no alg": f"{b64json({})}.{BODY}.{SIG}",
    "padded header": f"{base64.urlsafe_b64encode(json.dumps(ALG).encode()).decode()}.{BODY}.{SIG}",
    "one =": f"{HEAD}=.{BODY}.{SIG}",
    "three =": f"{b64json({'alg': 'E'})}===.{BODY}.{SIG}",
    "= inside": f"{HEAD[:4]}={HEAD[4:]}.{BODY}.{SIG}",
    "plus and slash": f"{HEAD}.{BODY}.{SIG[:-2]}+/",
    "space": f"{HEAD} .{BODY}.{SIG}",
    "length 1 mod 4": f"{HEAD}.{BODY}.{SIG}AAAAA"[: len(f"{HEAD}.{BODY}.") + 4 * (len(SIG) // 4) + 1],
    "not canonical": f"{HEAD}.{BODY}.{b64(b'ab')[:-1]}B",
    "non-ascii": f"{HEAD}.{BODY}.{SIG}é",
}


@pytest.mark.parametrize("name", list(TOKENS))
def test_a_token_reads_as_pyjwt_reads_it(name: str) -> None:
    assert unverified_claims(TOKENS[name]) == pyjwt_claims(TOKENS[name])


def test_the_signed_token_and_several_variants_are_read() -> None:
    """The list above is not all refusals."""
    readable = [name for name, token in TOKENS.items() if unverified_claims(token) is not None]
    assert {"signed", "no signature", "kid a string", "crit b64 true", "padded header"} <= set(readable)
    assert unverified_claims(SIGNED) == CLAIMS


def test_random_damage_to_a_token_reads_as_pyjwt_reads_it() -> None:
    rng = random.Random(15)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=.+/ "
    for _ in range(3000):
        chars = list(SIGNED)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(chars))
            action = rng.random()
            if action < 0.5:
                chars[at] = rng.choice(alphabet)
            elif action < 0.75:
                del chars[at]
            else:
                chars.insert(at, rng.choice(alphabet))
        token = "".join(chars)
        assert unverified_claims(token) == pyjwt_claims(token), token


def test_identity_and_placement_from_the_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(SIGNED + "\n")
    assert token_identity(token_file, "cluster.local") == SpiffeId.for_workload(
        "cluster.local", "shop", "web"
    )
    assert token_placement(token_file) == ("web-1", "node-a")
    token_file.write_text(TOKENS["kid a number"])
    assert token_identity(token_file, "cluster.local") is None
    assert token_placement(token_file) == (None, None)
    assert token_identity(tmp_path / "missing", "cluster.local") is None
