"""Token authentication: local JWT validation, TokenReview, client certificates (REFERENCE §2)."""

from __future__ import annotations

import base64
import hmac
import json
from datetime import timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ca.auth.base import Credentials, TokenLeeway, TokenTimeError
from ca.auth.jwks import StaticKeySet, parse_jwks
from ca.auth.jwt_token import JwtAuthenticator, TokenRules
from ca.errors import AuthenticationError
from ca.issuance.spiffe_id import SpiffeId
from tests.support.clock import FakeClock
from tests.support.tokens import (
    AUDIENCE,
    EC_KID,
    ISSUER,
    LEEWAY,
    POD_UID,
    RSA_KID,
    TRUST_DOMAIN,
    FakePods,
    Setup,
    claims_for,
    public_jwk,
    sign_jwt,
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_valid_projected_token_yields_the_caller(
    algorithm: str,
    setup: Setup,
    clock: FakeClock,
    rsa_signer: rsa.RSAPrivateKey,
    ec_signer: ec.EllipticCurvePrivateKey,
) -> None:
    key, kid = (rsa_signer, RSA_KID) if algorithm == "RS256" else (ec_signer, EC_KID)
    caller = setup.authenticate(sign_jwt(claims_for(clock.now()), key, kid, algorithm))
    assert caller.spiffe_id == SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/web")
    assert caller.namespace == "shop"
    assert caller.service_account == "web"
    assert caller.service_account_uid == "sa-uid-1"
    assert caller.pod_name == "web-7d9f"
    assert caller.pod_uid == POD_UID
    assert caller.node_name == "node-1"
    assert caller.token_id == "3e4f5a6b-jti"
    assert caller.method == "jwt"
    assert caller.expires_at == clock.now() + timedelta(hours=12)
    assert setup.keys.lookups == [kid]


def test_minimal_token_without_private_claims(
    setup: Setup, clock: FakeClock, rsa_signer: rsa.RSAPrivateKey
) -> None:
    claims = claims_for(clock.now(), jti=None, nbf=None, iat=None, kubernetes__io=None)
    assert "kubernetes.io" not in claims
    caller = setup.authenticate(sign_jwt(claims, rsa_signer, RSA_KID, "RS256"))
    assert caller.spiffe_id.uri == "spiffe://cluster.local/ns/shop/sa/web"
    assert caller.pod_name is None and caller.pod_uid is None and caller.token_id is None


def test_trust_domain_comes_from_the_rules(jwks: dict[str, Any], clock: FakeClock, rs256: str) -> None:
    keys = StaticKeySet(parse_jwks(jwks, "x"), "x")
    auth = JwtAuthenticator(
        keys=keys,
        rules=TokenRules(issuers=(ISSUER,), audiences=(AUDIENCE,), trust_domain="prod.example"),
        clock=clock,
    )
    caller = auth.authenticate(Credentials(bearer_token=rs256))
    assert caller is not None
    assert caller.spiffe_id.uri == "spiffe://prod.example/ns/shop/sa/web"


def test_no_bearer_token_is_not_this_authenticators_kind(setup: Setup) -> None:
    assert setup.auth.authenticate(Credentials(peer_certificate_pem="x")) is None
    assert setup.keys.lookups == []


def test_token_past_expiry_is_refused(setup: Setup, clock: FakeClock, rsa_signer: rsa.RSAPrivateKey) -> None:
    stamp = int(clock.now().timestamp())
    token = sign_jwt(
        claims_for(clock.now(), exp=stamp - 3600, iat=stamp - 7200, nbf=stamp - 7200),
        rsa_signer,
        RSA_KID,
        "RS256",
    )
    err = setup.refusal(token)
    assert err.reason == "token_expired"
    assert "expired" in err.message


def test_expiry_leeway_boundary(setup: Setup, clock: FakeClock, rsa_signer: rsa.RSAPrivateKey) -> None:
    stamp = int(clock.now().timestamp())
    just_valid = sign_jwt(
        claims_for(clock.now(), exp=stamp - 29, nbf=stamp - 60), rsa_signer, RSA_KID, "RS256"
    )
    just_expired = sign_jwt(
        claims_for(clock.now(), exp=stamp - 30, nbf=stamp - 60), rsa_signer, RSA_KID, "RS256"
    )
    assert setup.authenticate(just_valid).namespace == "shop"
    assert setup.refusal(just_expired).reason == "token_expired"


def test_token_stops_working_when_the_clock_passes_exp(setup: Setup, clock: FakeClock, rs256: str) -> None:
    setup.authenticate(rs256)
    clock.advance(timedelta(hours=12) + LEEWAY - timedelta(seconds=1))
    setup.authenticate(rs256)
    assert len(setup.keys.lookups) == 1
    clock.advance(timedelta(seconds=1))
    err = setup.refusal(rs256)
    assert err.reason == "token_expired"
    assert len(setup.keys.lookups) == 2


def test_token_not_yet_valid_is_refused(
    setup: Setup, clock: FakeClock, rsa_signer: rsa.RSAPrivateKey
) -> None:
    stamp = int(clock.now().timestamp())
    early = sign_jwt(claims_for(clock.now(), nbf=stamp + 600), rsa_signer, RSA_KID, "RS256")
    err = setup.refusal(early)
    assert err.reason == "token_not_yet_valid"
    assert "not valid before" in err.message
    clock.advance(timedelta(seconds=600) - LEEWAY)
    assert setup.authenticate(early).namespace == "shop"


def test_not_before_leeway_boundary(setup: Setup, clock: FakeClock, rsa_signer: rsa.RSAPrivateKey) -> None:
    stamp = int(clock.now().timestamp())
    assert setup.authenticate(sign_jwt(claims_for(clock.now(), nbf=stamp + 30), rsa_signer, RSA_KID, "RS256"))
    err = setup.refusal(sign_jwt(claims_for(clock.now(), nbf=stamp + 31), rsa_signer, RSA_KID, "RS256"))
    assert err.reason == "token_not_yet_valid"


def _timed(clock: FakeClock, signer: rsa.RSAPrivateKey, *, exp: int, nbf: int = -3600) -> str:
    """A token expiring `exp` seconds from now, valid from `nbf` seconds from now."""
    stamp = int(clock.now().timestamp())
    return sign_jwt(claims_for(clock.now(), exp=stamp + exp, nbf=stamp + nbf), signer, RSA_KID, "RS256")


def test_the_default_leeway_is_30_seconds() -> None:
    assert TokenRules(issuers=(ISSUER,), audiences=(AUDIENCE,), trust_domain=TRUST_DOMAIN).leeway == LEEWAY


def test_a_token_accepted_only_within_the_leeway_says_so(
    setup: Setup, clock: FakeClock, rsa_signer: rsa.RSAPrivateKey
) -> None:
    assert setup.authenticate(_timed(clock, rsa_signer, exp=1)).token_leeway is None
    late = setup.authenticate(_timed(clock, rsa_signer, exp=-10))
    assert late.token_leeway == TokenLeeway(claim="exp", needed=timedelta(seconds=10), leeway=LEEWAY)
    early = setup.authenticate(_timed(clock, rsa_signer, exp=3600, nbf=10))
    assert early.token_leeway == TokenLeeway(claim="nbf", needed=timedelta(seconds=10), leeway=LEEWAY)
    assert setup.authenticate(_timed(clock, rsa_signer, exp=3600, nbf=0)).token_leeway is None


def test_a_cached_token_past_its_expiry_says_the_leeway_let_it_pass(
    setup: Setup, clock: FakeClock, rsa_signer: rsa.RSAPrivateKey
) -> None:
    token = _timed(clock, rsa_signer, exp=60)
    assert setup.authenticate(token).token_leeway is None
    clock.advance(timedelta(seconds=70))
    caller = setup.authenticate(token)  # from the cache: verified once only
    assert len(setup.keys.lookups) == 1
    assert caller.token_leeway == TokenLeeway(claim="exp", needed=timedelta(seconds=10), leeway=LEEWAY)


@pytest.mark.parametrize(
    ("leeway", "exp", "nbf", "claim", "needed", "words"),
    [
        (
            LEEWAY,
            -40,
            -3600,
            "exp",
            40,
            "expired at 2030-01-01T11:59:20+00:00, 40s ago, beyond the 30s leeway",
        ),
        (timedelta(0), -10, -3600, "exp", 10, "10s ago, beyond the 0s leeway (--token-leeway)"),
        (LEEWAY, 3600, 31, "nbf", 31, "31s from now, beyond the 30s leeway (--token-leeway)"),
    ],
    ids=["expired", "expired-no-leeway", "not-yet-valid"],
)
def test_a_refusal_on_the_time_claims_carries_the_leeway(
    jwks: dict[str, Any],
    clock: FakeClock,
    rsa_signer: rsa.RSAPrivateKey,
    leeway: timedelta,
    exp: int,
    nbf: int,
    claim: str,
    needed: int,
    words: str,
) -> None:
    err = Setup(jwks, clock, leeway=leeway).refusal(_timed(clock, rsa_signer, exp=exp, nbf=nbf))
    assert isinstance(err, TokenTimeError) and words in err.message
    assert err.leeway == TokenLeeway(claim=claim, needed=timedelta(seconds=needed), leeway=leeway)


def test_with_no_leeway_a_token_expires_on_the_second(
    jwks: dict[str, Any], clock: FakeClock, rsa_signer: rsa.RSAPrivateKey
) -> None:
    setup = Setup(jwks, clock, leeway=timedelta(0))
    token = _timed(clock, rsa_signer, exp=1)
    assert setup.authenticate(token).token_leeway is None
    clock.advance(timedelta(seconds=1))
    assert setup.refusal(token).reason == "token_expired"


@pytest.mark.parametrize("issuer", ["https://evil.example", "https://kubernetes.default.svc", "", 5])
def test_wrong_issuer_is_refused(
    issuer: Any, setup: Setup, clock: FakeClock, rsa_signer: rsa.RSAPrivateKey
) -> None:
    err = setup.refusal(sign_jwt(claims_for(clock.now(), iss=issuer), rsa_signer, RSA_KID, "RS256"))
    assert err.reason == "token_wrong_issuer"
    assert "--token-issuer" in err.message


def test_missing_issuer_is_refused(setup: Setup, clock: FakeClock, rsa_signer: rsa.RSAPrivateKey) -> None:
    err = setup.refusal(sign_jwt(claims_for(clock.now(), iss=None), rsa_signer, RSA_KID, "RS256"))
    assert err.reason == "token_wrong_issuer"


def test_any_configured_issuer_is_accepted(
    jwks: dict[str, Any], clock: FakeClock, rsa_signer: rsa.RSAPrivateKey
) -> None:
    setup = Setup(jwks, clock, issuers=("https://a.example", "https://b.example"))
    token = sign_jwt(claims_for(clock.now(), iss="https://b.example"), rsa_signer, RSA_KID, "RS256")
    assert setup.authenticate(token).service_account == "web"


@pytest.mark.parametrize("audience", [["api"], ["https://kubernetes.default.svc"], [], "api", None])
def test_wrong_audience_is_refused(
    audience: Any, setup: Setup, clock: FakeClock, rsa_signer: rsa.RSAPrivateKey
) -> None:
    err = setup.refusal(sign_jwt(claims_for(clock.now(), aud=audience), rsa_signer, RSA_KID, "RS256"))
    assert err.reason == "token_wrong_audience"
    assert "istio-ca" in err.message


@pytest.mark.parametrize("audience", [["api", "istio-ca"], "istio-ca", ["istio-ca"]])
def test_matching_audience_is_accepted(
    audience: Any, setup: Setup, clock: FakeClock, rsa_signer: rsa.RSAPrivateKey
) -> None:
    assert setup.authenticate(sign_jwt(claims_for(clock.now(), aud=audience), rsa_signer, RSA_KID, "RS256"))


def test_unknown_kid_is_refused(setup: Setup, clock: FakeClock, rsa_signer: rsa.RSAPrivateKey) -> None:
    err = setup.refusal(sign_jwt(claims_for(clock.now()), rsa_signer, "rotated-away", "RS256"))
    assert err.reason == "token_unknown_key"
    assert "'rotated-away'" in err.message


def test_missing_kid_with_several_keys_is_refused(
    setup: Setup, clock: FakeClock, rsa_signer: rsa.RSAPrivateKey
) -> None:
    assert (
        setup.refusal(sign_jwt(claims_for(clock.now()), rsa_signer, None, "RS256")).reason
        == "token_unknown_key"
    )


def test_missing_kid_with_a_single_key_uses_that_key(clock: FakeClock, rsa_signer: rsa.RSAPrivateKey) -> None:
    setup = Setup({"keys": [public_jwk(rsa_signer, RSA_KID)]}, clock)
    assert (
        setup.authenticate(sign_jwt(claims_for(clock.now()), rsa_signer, None, "RS256")).namespace == "shop"
    )


def test_token_signed_by_another_key_is_refused(
    setup: Setup, clock: FakeClock, rsa_impostor: rsa.RSAPrivateKey
) -> None:
    err = setup.refusal(sign_jwt(claims_for(clock.now()), rsa_impostor, RSA_KID, "RS256"))
    assert err.reason == "token_bad_signature"
    assert "does not verify" in err.message


def test_token_with_altered_claims_is_refused(setup: Setup, clock: FakeClock, rs256: str) -> None:
    header, _, signature = rs256.split(".")
    forged_claims = claims_for(clock.now(), sub="system:serviceaccount:kube-system:admin")
    forged = ".".join([header, _b64(json.dumps(forged_claims).encode()), signature])
    assert setup.refusal(forged).reason == "token_bad_signature"


def test_es256_token_under_an_rsa_kid_is_refused(
    setup: Setup, clock: FakeClock, ec_signer: ec.EllipticCurvePrivateKey
) -> None:
    err = setup.refusal(sign_jwt(claims_for(clock.now()), ec_signer, RSA_KID, "ES256"))
    assert err.reason in ("token_bad_signature", "token_malformed")


def test_rs256_token_under_an_ec_kid_is_refused(
    setup: Setup, clock: FakeClock, rsa_signer: rsa.RSAPrivateKey
) -> None:
    err = setup.refusal(sign_jwt(claims_for(clock.now()), rsa_signer, EC_KID, "RS256"))
    assert err.reason in ("token_bad_signature", "token_malformed")


@pytest.mark.parametrize("token", ["", "not-a-jwt", "a.b.c", "....", "eyJhbGciOiJSUzI1NiJ9.e30"])
def test_non_jwt_is_malformed(token: str, setup: Setup) -> None:
    err = setup.refusal(token)
    assert err.reason == "token_malformed"


def test_unsigned_token_is_malformed(setup: Setup, clock: FakeClock) -> None:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": RSA_KID}).encode())
    body = _b64(json.dumps(claims_for(clock.now())).encode())
    err = setup.refusal(f"{header}.{body}.")
    assert err.reason == "token_malformed"
    assert "algorithm" in err.message


def test_hmac_token_keyed_with_the_public_key_is_refused(
    setup: Setup, clock: FakeClock, rsa_signer: rsa.RSAPrivateKey
) -> None:
    public_pem = rsa_signer.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": RSA_KID}).encode())
    body = _b64(json.dumps(claims_for(clock.now())).encode())
    signature = _b64(hmac.new(public_pem, f"{header}.{body}".encode(), "sha256").digest())
    err = setup.refusal(f"{header}.{body}.{signature}")
    assert err.reason == "token_malformed"


def test_token_without_exp_is_malformed(
    setup: Setup, clock: FakeClock, rsa_signer: rsa.RSAPrivateKey
) -> None:
    err = setup.refusal(sign_jwt(claims_for(clock.now(), exp=None), rsa_signer, RSA_KID, "RS256"))
    assert err.reason == "token_malformed"
    assert "'exp'" in err.message


@pytest.mark.parametrize("claim", ["exp", "nbf"])
def test_non_numeric_time_claim_is_malformed(
    claim: str, setup: Setup, clock: FakeClock, rsa_signer: rsa.RSAPrivateKey
) -> None:
    err = setup.refusal(
        sign_jwt(claims_for(clock.now(), **{claim: "tomorrow"}), rsa_signer, RSA_KID, "RS256")
    )
    assert err.reason == "token_malformed"
    assert claim in err.message


@pytest.mark.parametrize(
    "subject",
    [
        "system:node:node-1",
        "alice",
        "system:serviceaccount:shop",
        "system:serviceaccount::web",
        "system:serviceaccount:shop:",
        "system:serviceaccount:shop:web:extra",
        "system:serviceaccounts:shop",
    ],
)
def test_non_service_account_subject_is_refused(
    subject: str, setup: Setup, clock: FakeClock, rsa_signer: rsa.RSAPrivateKey
) -> None:
    claims = claims_for(clock.now(), sub=subject)
    claims.pop("kubernetes.io")
    err = setup.refusal(sign_jwt(claims, rsa_signer, RSA_KID, "RS256"))
    assert err.reason == "token_not_service_account"
    assert "service account" in err.message or "system:serviceaccount" in err.message


def test_subject_and_private_claim_disagreeing_is_malformed(
    setup: Setup, clock: FakeClock, rsa_signer: rsa.RSAPrivateKey
) -> None:
    token = sign_jwt(
        claims_for(clock.now(), sub="system:serviceaccount:kube-system:web"), rsa_signer, RSA_KID, "RS256"
    )
    assert setup.refusal(token).reason == "token_malformed"


def test_each_failure_has_its_own_reason(
    setup: Setup, clock: FakeClock, rsa_signer: rsa.RSAPrivateKey, rsa_impostor: rsa.RSAPrivateKey
) -> None:
    stamp = int(clock.now().timestamp())
    tokens = [
        sign_jwt(claims_for(clock.now(), exp=stamp - 3600), rsa_signer, RSA_KID, "RS256"),
        sign_jwt(claims_for(clock.now(), nbf=stamp + 3600), rsa_signer, RSA_KID, "RS256"),
        sign_jwt(claims_for(clock.now(), iss="https://other"), rsa_signer, RSA_KID, "RS256"),
        sign_jwt(claims_for(clock.now(), aud=["other"]), rsa_signer, RSA_KID, "RS256"),
        sign_jwt(claims_for(clock.now()), rsa_signer, "nope", "RS256"),
        sign_jwt(claims_for(clock.now()), rsa_impostor, RSA_KID, "RS256"),
        "garbage",
        sign_jwt({**claims_for(clock.now(), sub="alice"), "kubernetes.io": {}}, rsa_signer, RSA_KID, "RS256"),
    ]
    reasons = [setup.refusal(t).reason for t in tokens]
    assert reasons == [
        "token_expired",
        "token_not_yet_valid",
        "token_wrong_issuer",
        "token_wrong_audience",
        "token_unknown_key",
        "token_bad_signature",
        "token_malformed",
        "token_not_service_account",
    ]


def test_bound_pod_is_checked_on_every_call(jwks: dict[str, Any], clock: FakeClock, rs256: str) -> None:
    pods = FakePods()
    setup = Setup(jwks, clock, pods=pods)
    setup.authenticate(rs256)
    setup.authenticate(rs256)
    assert pods.checks == [("shop", "web-7d9f", POD_UID)] * 2


def test_gone_pod_refuses_even_a_cached_token(jwks: dict[str, Any], clock: FakeClock, rs256: str) -> None:
    pods = FakePods()
    setup = Setup(jwks, clock, pods=pods)
    setup.authenticate(rs256)
    pods.gone.add(("shop", "web-7d9f", POD_UID))
    with pytest.raises(AuthenticationError) as caught:
        setup.auth.authenticate(Credentials(bearer_token=rs256))
    assert caught.value.reason == "token_pod_gone"
    assert len(setup.keys.lookups) == 1


def test_token_without_a_pod_binding_skips_the_pod_check(
    jwks: dict[str, Any], clock: FakeClock, rsa_signer: rsa.RSAPrivateKey
) -> None:
    pods = FakePods()
    setup = Setup(jwks, clock, pods=pods)
    claims = claims_for(clock.now())
    del claims["kubernetes.io"]["pod"]
    setup.authenticate(sign_jwt(claims, rsa_signer, RSA_KID, "RS256"))
    assert pods.checks == []
