"""Token authentication: local JWT validation, TokenReview, client certificates (REFERENCE §2)."""

from __future__ import annotations

import base64
import hmac
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.api_jws import PyJWS

from ca.auth.base import Caller, Credentials, TokenLeeway, TokenTimeError
from ca.auth.client_cert import ClientCertificateAuthenticator
from ca.auth.jwks import REFRESH_MIN_INTERVAL_S, RefreshingKeySet, StaticKeySet, parse_jwks
from ca.auth.jwt_token import JwtAuthenticator, TokenRules
from ca.auth.k8s_identity import identity_from_claims, identity_from_review
from ca.auth.token_cache import TokenCache
from ca.auth.tokenreview import TokenReviewAuthenticator
from ca.errors import AuthenticationError, ConfigError, ErrorKind, UnavailableError
from ca.issuance.authority import SigningAuthority
from ca.issuance.csr import parse_csr
from ca.issuance.issuer import IssuancePolicy, Issuer
from ca.issuance.keys import KeyAlgorithm, KeyPolicy
from ca.issuance.selfsigned import RootFactory
from ca.issuance.spiffe_id import SpiffeId
from tests.support.clock import FakeClock
from tests.support.pki import ec_key, make_csr, rsa_key

ISSUER = "https://kubernetes.default.svc.cluster.local"
AUDIENCE = "istio-ca"
TRUST_DOMAIN = "cluster.local"
RSA_KID = "rsa-key-1"
EC_KID = "ec-key-1"
LEEWAY = timedelta(seconds=30)
POD_UID = "0b1c7d6e-5f4a-4b3c-9d2e-1f0a9b8c7d6e"


@pytest.fixture(scope="module")
def rsa_signer() -> rsa.RSAPrivateKey:
    return rsa_key(2048)


@pytest.fixture(scope="module")
def rsa_impostor() -> rsa.RSAPrivateKey:
    return rsa_key(2048)


@pytest.fixture(scope="module")
def ec_signer() -> ec.EllipticCurvePrivateKey:
    return ec_key()


def _jwk(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        jwk: dict[str, Any] = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        jwk["alg"] = "RS256"
    else:
        jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        jwk["alg"] = "ES256"
    jwk.update(kid=kid, use="sig")
    return jwk


@pytest.fixture(scope="module")
def jwks(rsa_signer: rsa.RSAPrivateKey, ec_signer: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    return {"keys": [_jwk(rsa_signer, RSA_KID), _jwk(ec_signer, EC_KID)]}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2030, 1, 1, 12, tzinfo=UTC))


def _claims(now: datetime, **overrides: Any) -> dict[str, Any]:
    stamp = int(now.timestamp())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": [AUDIENCE],
        "sub": "system:serviceaccount:shop:web",
        "iat": stamp,
        "nbf": stamp,
        "exp": stamp + 12 * 3600,
        "jti": "3e4f5a6b-jti",
        "kubernetes.io": {
            "namespace": "shop",
            "serviceaccount": {"name": "web", "uid": "sa-uid-1"},
            "pod": {"name": "web-7d9f", "uid": POD_UID},
            "node": {"name": "node-1", "uid": "node-uid-1"},
        },
    }
    for name, value in overrides.items():
        name = name.replace("__", ".")
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def _sign(claims: Mapping[str, Any], key: Any, kid: str | None, algorithm: str) -> str:
    headers = {"kid": kid, "typ": "JWT"} if kid is not None else {"typ": "JWT"}
    return PyJWS().encode(json.dumps(dict(claims)).encode(), key, algorithm=algorithm, headers=headers)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class CountingKeys:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.description = inner.description
        self.lookups: list[str | None] = []

    def key_for(self, kid: str | None) -> jwt.PyJWK:
        self.lookups.append(kid)
        key: jwt.PyJWK = self.inner.key_for(kid)
        return key


class FakePods:
    def __init__(self) -> None:
        self.gone: set[tuple[str, str, str]] = set()
        self.checks: list[tuple[str, str, str]] = []

    def check_bound_pod(self, namespace: str, name: str, uid: str) -> None:
        self.checks.append((namespace, name, uid))
        if (namespace, name, uid) in self.gone:
            raise AuthenticationError(f"pod {namespace}/{name} is gone", reason="token_pod_gone")


class Setup:
    def __init__(
        self,
        jwks: Mapping[str, Any],
        clock: FakeClock,
        *,
        cache_size: int = 100,
        pods: FakePods | None = None,
        issuers: tuple[str, ...] = (ISSUER,),
        audiences: tuple[str, ...] = (AUDIENCE,),
        leeway: timedelta = LEEWAY,
    ) -> None:
        self.keys = CountingKeys(StaticKeySet(parse_jwks(jwks, "test JWKS"), "test JWKS"))
        self.cache = TokenCache(cache_size)
        self.clock = clock
        self.auth = JwtAuthenticator(
            keys=self.keys,
            rules=TokenRules(issuers=issuers, audiences=audiences, trust_domain=TRUST_DOMAIN, leeway=leeway),
            clock=clock,
            pods=pods,
            cache=self.cache,
        )

    def authenticate(self, token: str) -> Caller:
        caller = self.auth.authenticate(Credentials(bearer_token=token))
        assert caller is not None
        return caller

    def refusal(self, token: str) -> AuthenticationError:
        with pytest.raises(AuthenticationError) as caught:
            self.auth.authenticate(Credentials(bearer_token=token))
        assert caught.value.kind is ErrorKind.UNAUTHENTICATED
        return caught.value


@pytest.fixture
def setup(jwks: dict[str, Any], clock: FakeClock) -> Setup:
    return Setup(jwks, clock)


@pytest.fixture
def rs256(rsa_signer: rsa.RSAPrivateKey, clock: FakeClock) -> str:
    return _sign(_claims(clock.now()), rsa_signer, RSA_KID, "RS256")


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_valid_projected_token_yields_the_caller(
    algorithm: str,
    setup: Setup,
    clock: FakeClock,
    rsa_signer: rsa.RSAPrivateKey,
    ec_signer: ec.EllipticCurvePrivateKey,
) -> None:
    key, kid = (rsa_signer, RSA_KID) if algorithm == "RS256" else (ec_signer, EC_KID)
    caller = setup.authenticate(_sign(_claims(clock.now()), key, kid, algorithm))
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
    claims = _claims(clock.now(), jti=None, nbf=None, iat=None, kubernetes__io=None)
    assert "kubernetes.io" not in claims
    caller = setup.authenticate(_sign(claims, rsa_signer, RSA_KID, "RS256"))
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
    token = _sign(
        _claims(clock.now(), exp=stamp - 3600, iat=stamp - 7200, nbf=stamp - 7200),
        rsa_signer,
        RSA_KID,
        "RS256",
    )
    err = setup.refusal(token)
    assert err.reason == "token_expired"
    assert "expired" in err.message


def test_expiry_leeway_boundary(setup: Setup, clock: FakeClock, rsa_signer: rsa.RSAPrivateKey) -> None:
    stamp = int(clock.now().timestamp())
    just_valid = _sign(_claims(clock.now(), exp=stamp - 29, nbf=stamp - 60), rsa_signer, RSA_KID, "RS256")
    just_expired = _sign(_claims(clock.now(), exp=stamp - 30, nbf=stamp - 60), rsa_signer, RSA_KID, "RS256")
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
    early = _sign(_claims(clock.now(), nbf=stamp + 600), rsa_signer, RSA_KID, "RS256")
    err = setup.refusal(early)
    assert err.reason == "token_not_yet_valid"
    assert "not valid before" in err.message
    clock.advance(timedelta(seconds=600) - LEEWAY)
    assert setup.authenticate(early).namespace == "shop"


def test_not_before_leeway_boundary(setup: Setup, clock: FakeClock, rsa_signer: rsa.RSAPrivateKey) -> None:
    stamp = int(clock.now().timestamp())
    assert setup.authenticate(_sign(_claims(clock.now(), nbf=stamp + 30), rsa_signer, RSA_KID, "RS256"))
    err = setup.refusal(_sign(_claims(clock.now(), nbf=stamp + 31), rsa_signer, RSA_KID, "RS256"))
    assert err.reason == "token_not_yet_valid"


def _timed(clock: FakeClock, signer: rsa.RSAPrivateKey, *, exp: int, nbf: int = -3600) -> str:
    """A token expiring `exp` seconds from now, valid from `nbf` seconds from now."""
    stamp = int(clock.now().timestamp())
    return _sign(_claims(clock.now(), exp=stamp + exp, nbf=stamp + nbf), signer, RSA_KID, "RS256")


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
    err = setup.refusal(_sign(_claims(clock.now(), iss=issuer), rsa_signer, RSA_KID, "RS256"))
    assert err.reason == "token_wrong_issuer"
    assert "--token-issuer" in err.message


def test_missing_issuer_is_refused(setup: Setup, clock: FakeClock, rsa_signer: rsa.RSAPrivateKey) -> None:
    err = setup.refusal(_sign(_claims(clock.now(), iss=None), rsa_signer, RSA_KID, "RS256"))
    assert err.reason == "token_wrong_issuer"


def test_any_configured_issuer_is_accepted(
    jwks: dict[str, Any], clock: FakeClock, rsa_signer: rsa.RSAPrivateKey
) -> None:
    setup = Setup(jwks, clock, issuers=("https://a.example", "https://b.example"))
    token = _sign(_claims(clock.now(), iss="https://b.example"), rsa_signer, RSA_KID, "RS256")
    assert setup.authenticate(token).service_account == "web"


@pytest.mark.parametrize("audience", [["api"], ["https://kubernetes.default.svc"], [], "api", None])
def test_wrong_audience_is_refused(
    audience: Any, setup: Setup, clock: FakeClock, rsa_signer: rsa.RSAPrivateKey
) -> None:
    err = setup.refusal(_sign(_claims(clock.now(), aud=audience), rsa_signer, RSA_KID, "RS256"))
    assert err.reason == "token_wrong_audience"
    assert "istio-ca" in err.message


@pytest.mark.parametrize("audience", [["api", "istio-ca"], "istio-ca", ["istio-ca"]])
def test_matching_audience_is_accepted(
    audience: Any, setup: Setup, clock: FakeClock, rsa_signer: rsa.RSAPrivateKey
) -> None:
    assert setup.authenticate(_sign(_claims(clock.now(), aud=audience), rsa_signer, RSA_KID, "RS256"))


def test_unknown_kid_is_refused(setup: Setup, clock: FakeClock, rsa_signer: rsa.RSAPrivateKey) -> None:
    err = setup.refusal(_sign(_claims(clock.now()), rsa_signer, "rotated-away", "RS256"))
    assert err.reason == "token_unknown_key"
    assert "'rotated-away'" in err.message


def test_missing_kid_with_several_keys_is_refused(
    setup: Setup, clock: FakeClock, rsa_signer: rsa.RSAPrivateKey
) -> None:
    assert setup.refusal(_sign(_claims(clock.now()), rsa_signer, None, "RS256")).reason == "token_unknown_key"


def test_missing_kid_with_a_single_key_uses_that_key(clock: FakeClock, rsa_signer: rsa.RSAPrivateKey) -> None:
    setup = Setup({"keys": [_jwk(rsa_signer, RSA_KID)]}, clock)
    assert setup.authenticate(_sign(_claims(clock.now()), rsa_signer, None, "RS256")).namespace == "shop"


def test_token_signed_by_another_key_is_refused(
    setup: Setup, clock: FakeClock, rsa_impostor: rsa.RSAPrivateKey
) -> None:
    err = setup.refusal(_sign(_claims(clock.now()), rsa_impostor, RSA_KID, "RS256"))
    assert err.reason == "token_bad_signature"
    assert "does not verify" in err.message


def test_token_with_altered_claims_is_refused(setup: Setup, clock: FakeClock, rs256: str) -> None:
    header, _, signature = rs256.split(".")
    forged_claims = _claims(clock.now(), sub="system:serviceaccount:kube-system:admin")
    forged = ".".join([header, _b64(json.dumps(forged_claims).encode()), signature])
    assert setup.refusal(forged).reason == "token_bad_signature"


def test_es256_token_under_an_rsa_kid_is_refused(
    setup: Setup, clock: FakeClock, ec_signer: ec.EllipticCurvePrivateKey
) -> None:
    err = setup.refusal(_sign(_claims(clock.now()), ec_signer, RSA_KID, "ES256"))
    assert err.reason in ("token_bad_signature", "token_malformed")


def test_rs256_token_under_an_ec_kid_is_refused(
    setup: Setup, clock: FakeClock, rsa_signer: rsa.RSAPrivateKey
) -> None:
    err = setup.refusal(_sign(_claims(clock.now()), rsa_signer, EC_KID, "RS256"))
    assert err.reason in ("token_bad_signature", "token_malformed")


@pytest.mark.parametrize("token", ["", "not-a-jwt", "a.b.c", "....", "eyJhbGciOiJSUzI1NiJ9.e30"])
def test_non_jwt_is_malformed(token: str, setup: Setup) -> None:
    err = setup.refusal(token)
    assert err.reason == "token_malformed"


def test_unsigned_token_is_malformed(setup: Setup, clock: FakeClock) -> None:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": RSA_KID}).encode())
    body = _b64(json.dumps(_claims(clock.now())).encode())
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
    body = _b64(json.dumps(_claims(clock.now())).encode())
    signature = _b64(hmac.new(public_pem, f"{header}.{body}".encode(), "sha256").digest())
    err = setup.refusal(f"{header}.{body}.{signature}")
    assert err.reason == "token_malformed"


def test_token_without_exp_is_malformed(
    setup: Setup, clock: FakeClock, rsa_signer: rsa.RSAPrivateKey
) -> None:
    err = setup.refusal(_sign(_claims(clock.now(), exp=None), rsa_signer, RSA_KID, "RS256"))
    assert err.reason == "token_malformed"
    assert "'exp'" in err.message


@pytest.mark.parametrize("claim", ["exp", "nbf"])
def test_non_numeric_time_claim_is_malformed(
    claim: str, setup: Setup, clock: FakeClock, rsa_signer: rsa.RSAPrivateKey
) -> None:
    err = setup.refusal(_sign(_claims(clock.now(), **{claim: "tomorrow"}), rsa_signer, RSA_KID, "RS256"))
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
    claims = _claims(clock.now(), sub=subject)
    claims.pop("kubernetes.io")
    err = setup.refusal(_sign(claims, rsa_signer, RSA_KID, "RS256"))
    assert err.reason == "token_not_service_account"
    assert "service account" in err.message or "system:serviceaccount" in err.message


def test_subject_and_private_claim_disagreeing_is_malformed(
    setup: Setup, clock: FakeClock, rsa_signer: rsa.RSAPrivateKey
) -> None:
    token = _sign(
        _claims(clock.now(), sub="system:serviceaccount:kube-system:web"), rsa_signer, RSA_KID, "RS256"
    )
    assert setup.refusal(token).reason == "token_malformed"


def test_each_failure_has_its_own_reason(
    setup: Setup, clock: FakeClock, rsa_signer: rsa.RSAPrivateKey, rsa_impostor: rsa.RSAPrivateKey
) -> None:
    stamp = int(clock.now().timestamp())
    tokens = [
        _sign(_claims(clock.now(), exp=stamp - 3600), rsa_signer, RSA_KID, "RS256"),
        _sign(_claims(clock.now(), nbf=stamp + 3600), rsa_signer, RSA_KID, "RS256"),
        _sign(_claims(clock.now(), iss="https://other"), rsa_signer, RSA_KID, "RS256"),
        _sign(_claims(clock.now(), aud=["other"]), rsa_signer, RSA_KID, "RS256"),
        _sign(_claims(clock.now()), rsa_signer, "nope", "RS256"),
        _sign(_claims(clock.now()), rsa_impostor, RSA_KID, "RS256"),
        "garbage",
        _sign({**_claims(clock.now(), sub="alice"), "kubernetes.io": {}}, rsa_signer, RSA_KID, "RS256"),
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


def test_cache_skips_re_verification(setup: Setup, rs256: str) -> None:
    first = setup.authenticate(rs256)
    for _ in range(5):
        assert setup.authenticate(rs256) == first
    assert len(setup.keys.lookups) == 1
    assert len(setup.cache) == 1


def test_refused_tokens_are_not_cached(
    setup: Setup, clock: FakeClock, rsa_impostor: rsa.RSAPrivateKey
) -> None:
    forged = _sign(_claims(clock.now()), rsa_impostor, RSA_KID, "RS256")
    for _ in range(3):
        assert setup.refusal(forged).reason == "token_bad_signature"
    assert len(setup.keys.lookups) == 3
    assert len(setup.cache) == 0


def test_cache_disabled_verifies_every_time(jwks: dict[str, Any], clock: FakeClock, rs256: str) -> None:
    setup = Setup(jwks, clock, cache_size=0)
    for _ in range(3):
        setup.authenticate(rs256)
    assert len(setup.keys.lookups) == 3


def test_cache_is_a_bounded_lru(
    jwks: dict[str, Any], clock: FakeClock, rsa_signer: rsa.RSAPrivateKey
) -> None:
    setup = Setup(jwks, clock, cache_size=2)
    a, b, c = (
        _sign(_claims(clock.now(), jti=name), rsa_signer, RSA_KID, "RS256") for name in ("a", "b", "c")
    )
    setup.authenticate(a)
    setup.authenticate(b)
    setup.authenticate(a)
    assert len(setup.keys.lookups) == 2
    setup.authenticate(c)
    assert len(setup.cache) == 2
    assert len(setup.keys.lookups) == 3
    setup.authenticate(a)
    assert len(setup.keys.lookups) == 3
    setup.authenticate(b)
    assert len(setup.keys.lookups) == 4
    assert len(setup.cache) == 2


def test_cache_holds_no_usable_token(setup: Setup, rs256: str) -> None:
    setup.authenticate(rs256)
    held = repr(vars(setup.cache))
    assert rs256 not in held
    assert rs256.split(".")[2] not in held


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
    claims = _claims(clock.now())
    del claims["kubernetes.io"]["pod"]
    setup.authenticate(_sign(claims, rsa_signer, RSA_KID, "RS256"))
    assert pods.checks == []


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class JwksServer:
    def __init__(self, *documents: Mapping[str, Any]) -> None:
        self.documents = list(documents)
        self.fetches = 0
        self.fail = False

    def __call__(self) -> Mapping[str, Any]:
        self.fetches += 1
        if self.fail:
            raise OSError("connection refused")
        return self.documents[min(self.fetches, len(self.documents)) - 1]


def test_refreshing_key_set_fetches_lazily_and_once(jwks: dict[str, Any]) -> None:
    server = JwksServer(jwks)
    keys = RefreshingKeySet(server, "test URL", monotonic=FakeMonotonic())
    assert server.fetches == 0
    assert keys.key_for(RSA_KID).key_id == RSA_KID
    assert keys.key_for(EC_KID).key_id == EC_KID
    assert keys.key_for(RSA_KID).key_id == RSA_KID
    assert server.fetches == 1


def test_unknown_kid_refetches_at_most_once_per_interval(jwks: dict[str, Any]) -> None:
    server = JwksServer(jwks)
    clock = FakeMonotonic()
    keys = RefreshingKeySet(server, "test URL", monotonic=clock)
    keys.key_for(RSA_KID)
    for step in range(1, 10):
        clock.now = 1000.0 + step
        with pytest.raises(AuthenticationError) as caught:
            keys.key_for(f"bogus-{step}")
        assert caught.value.reason == "token_unknown_key"
    assert server.fetches == 1
    clock.now = 1000.0 + REFRESH_MIN_INTERVAL_S - 0.001
    with pytest.raises(AuthenticationError):
        keys.key_for("bogus")
    assert server.fetches == 1
    clock.now = 1000.0 + REFRESH_MIN_INTERVAL_S
    with pytest.raises(AuthenticationError):
        keys.key_for("bogus")
    assert server.fetches == 2
    with pytest.raises(AuthenticationError):
        keys.key_for("bogus")
    assert server.fetches == 2


def test_rotated_key_is_found_after_the_interval(
    jwks: dict[str, Any], rsa_impostor: rsa.RSAPrivateKey
) -> None:
    rotated = {"keys": [*jwks["keys"], _jwk(rsa_impostor, "new-key")]}
    server = JwksServer(jwks, rotated)
    clock = FakeMonotonic()
    keys = RefreshingKeySet(server, "test URL", monotonic=clock)
    keys.key_for(RSA_KID)
    clock.now += REFRESH_MIN_INTERVAL_S
    assert keys.key_for("new-key").key_id == "new-key"
    assert server.fetches == 2


def test_failed_first_fetch_is_unavailable() -> None:
    server = JwksServer()
    server.fail = True
    keys = RefreshingKeySet(server, "https://jwks.example", monotonic=FakeMonotonic())
    with pytest.raises(AuthenticationError) as caught:
        keys.key_for(RSA_KID)
    assert caught.value.reason == "jwks_unavailable"
    assert "https://jwks.example" in caught.value.message


def test_failed_refetch_keeps_the_known_keys(jwks: dict[str, Any]) -> None:
    server = JwksServer(jwks)
    clock = FakeMonotonic()
    keys = RefreshingKeySet(server, "test URL", monotonic=clock)
    keys.key_for(RSA_KID)
    server.fail = True
    clock.now += REFRESH_MIN_INTERVAL_S
    with pytest.raises(AuthenticationError) as caught:
        keys.key_for("unknown")
    assert caught.value.reason == "token_unknown_key"
    assert keys.key_for(RSA_KID).key_id == RSA_KID


def test_jwt_authenticator_with_refreshing_keys_picks_up_a_new_key(
    jwks: dict[str, Any], clock: FakeClock, rsa_impostor: rsa.RSAPrivateKey
) -> None:
    server = JwksServer(jwks, {"keys": [*jwks["keys"], _jwk(rsa_impostor, "new-key")]})
    monotonic = FakeMonotonic()
    auth = JwtAuthenticator(
        keys=RefreshingKeySet(server, "test URL", monotonic=monotonic),
        rules=TokenRules(issuers=(ISSUER,), audiences=(AUDIENCE,), trust_domain=TRUST_DOMAIN),
        clock=clock,
    )
    token = _sign(_claims(clock.now()), rsa_impostor, "new-key", "RS256")
    with pytest.raises(AuthenticationError) as caught:
        auth.authenticate(Credentials(bearer_token=token))
    assert caught.value.reason == "token_unknown_key"
    monotonic.now += REFRESH_MIN_INTERVAL_S
    caller = auth.authenticate(Credentials(bearer_token=token))
    assert caller is not None and caller.service_account == "web"
    assert server.fetches == 2


def test_static_key_set_from_file(tmp_path: Path, jwks: dict[str, Any]) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks))
    keys = StaticKeySet.from_file(path)
    assert keys.key_for(EC_KID).key_id == EC_KID
    assert keys.description == str(path)


@pytest.mark.parametrize("content", ["not json", "{}", '{"keys": []}', '{"keys": [{"kty": "nope"}]}'])
def test_bad_jwks_file_is_a_config_error(content: str, tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        StaticKeySet.from_file(path)
    assert str(path) in caught.value.message


def test_missing_jwks_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        StaticKeySet.from_file(tmp_path / "missing.json")
    assert "JSON Web Key Set" in caught.value.message


FULL_REVIEW: dict[str, Any] = {
    "authenticated": True,
    "user": {
        "username": "system:serviceaccount:shop:web",
        "uid": "sa-uid-1",
        "groups": ["system:serviceaccounts", "system:serviceaccounts:shop", "system:authenticated"],
        "extra": {
            "authentication.kubernetes.io/pod-name": ["web-7d9f"],
            "authentication.kubernetes.io/pod-uid": [POD_UID],
            "authentication.kubernetes.io/node-name": ["node-1"],
            "authentication.kubernetes.io/credential-id": ["JTI=3e4f5a6b-jti"],
        },
    },
    "audiences": ["istio-ca"],
}


def test_identity_from_a_full_review() -> None:
    identity = identity_from_review(FULL_REVIEW)
    assert (identity.namespace, identity.service_account) == ("shop", "web")
    assert identity.service_account_uid == "sa-uid-1"
    assert identity.pod_name == "web-7d9f"
    assert identity.pod_uid == POD_UID
    assert identity.node_name == "node-1"
    assert identity.token_id == "JTI=3e4f5a6b-jti"


def test_identity_from_a_review_without_extra() -> None:
    identity = identity_from_review(
        {"authenticated": True, "user": {"username": "system:serviceaccount:a:b"}}
    )
    assert (identity.namespace, identity.service_account) == ("a", "b")
    assert identity.pod_name is None and identity.pod_uid is None and identity.service_account_uid is None


@pytest.mark.parametrize(
    "extra",
    [
        {"authentication.kubernetes.io/pod-name": "web-7d9f"},
        {"authentication.kubernetes.io/pod-name": []},
        {"authentication.kubernetes.io/pod-name": [5]},
        "not a mapping",
    ],
)
def test_malformed_review_extra_gives_no_pod(extra: Any) -> None:
    status = {"authenticated": True, "user": {"username": "system:serviceaccount:a:b", "extra": extra}}
    assert identity_from_review(status).pod_name is None


@pytest.mark.parametrize(
    ("status", "reason", "words"),
    [
        (
            {"authenticated": False, "error": "token has expired"},
            "tokenreview_rejected",
            ["token has expired"],
        ),
        ({"authenticated": False}, "tokenreview_rejected", ["did not authenticate"]),
        ({}, "tokenreview_rejected", ["did not authenticate"]),
        ({"authenticated": "true", "user": FULL_REVIEW["user"]}, "tokenreview_rejected", []),
        ({"error": "[invalid bearer token]"}, "tokenreview_rejected", ["invalid bearer token"]),
        ({"authenticated": True}, "tokenreview_rejected", ["no user"]),
        ({"authenticated": True, "user": "x"}, "tokenreview_rejected", ["no user"]),
        ({"authenticated": True, "user": {"username": "alice"}}, "token_not_service_account", ["'alice'"]),
        ({"authenticated": True, "user": {"username": "system:node:n1"}}, "token_not_service_account", []),
        (
            {"authenticated": True, "user": {"username": "system:serviceaccount:a"}},
            "token_not_service_account",
            [],
        ),
        ({"authenticated": True, "user": {}}, "token_not_service_account", []),
        ({"authenticated": True, "user": {"username": 7}}, "token_not_service_account", []),
    ],
)
def test_refused_reviews(status: Mapping[str, Any], reason: str, words: list[str]) -> None:
    with pytest.raises(AuthenticationError) as caught:
        identity_from_review(status)
    assert caught.value.reason == reason
    for word in words:
        assert word in caught.value.message


def test_identity_from_full_claims(clock: FakeClock) -> None:
    identity = identity_from_claims(_claims(clock.now()))
    assert (identity.namespace, identity.service_account) == ("shop", "web")
    assert identity.service_account_uid == "sa-uid-1"
    assert (identity.pod_name, identity.pod_uid, identity.node_name) == ("web-7d9f", POD_UID, "node-1")
    assert identity.token_id == "3e4f5a6b-jti"


@pytest.mark.parametrize(
    ("private", "expected_pod"),
    [
        (None, (None, None)),
        ("not a mapping", (None, None)),
        ({}, (None, None)),
        ({"namespace": "shop", "pod": {"name": "p"}}, ("p", None)),
        ({"namespace": "shop", "pod": {"name": "", "uid": "u"}}, (None, "u")),
        ({"namespace": "shop", "pod": ["p", "u"]}, (None, None)),
    ],
)
def test_claims_with_partial_private_claim(private: Any, expected_pod: tuple[str | None, str | None]) -> None:
    claims: dict[str, Any] = {"sub": "system:serviceaccount:shop:web"}
    if private is not None:
        claims["kubernetes.io"] = private
    identity = identity_from_claims(claims)
    assert (identity.namespace, identity.service_account) == ("shop", "web")
    assert (identity.pod_name, identity.pod_uid) == expected_pod


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        (
            {"sub": "system:serviceaccount:shop:web", "kubernetes.io": {"namespace": "prod"}},
            "token_malformed",
        ),
        (
            {"sub": "system:serviceaccount:shop:web", "kubernetes.io": {"serviceaccount": {"name": "admin"}}},
            "token_malformed",
        ),
        ({"sub": "system:serviceaccount:shop:web", "kubernetes.io": {"namespace": 5}}, "token_malformed"),
        ({}, "token_not_service_account"),
        ({"sub": "admin"}, "token_not_service_account"),
        ({"sub": ["system:serviceaccount:shop:web"]}, "token_not_service_account"),
    ],
)
def test_refused_claims(claims: Mapping[str, Any], reason: str) -> None:
    with pytest.raises(AuthenticationError) as caught:
        identity_from_claims(claims)
    assert caught.value.reason == reason


class FakeReview:
    def __init__(self, status: Mapping[str, Any]) -> None:
        self.status = status
        self.calls: list[tuple[str, tuple[str, ...]]] = []

    def __call__(self, token: str, audiences: Sequence[str]) -> Mapping[str, Any]:
        self.calls.append((token, tuple(audiences)))
        return self.status


def _review_auth(
    review: Any, clock: FakeClock, *, cache_size: int = 100, cache_ttl: int = 60
) -> TokenReviewAuthenticator:
    return TokenReviewAuthenticator(
        review=review,
        audiences=[AUDIENCE],
        trust_domain=TRUST_DOMAIN,
        clock=clock,
        cache=TokenCache(cache_size),
        cache_ttl=timedelta(seconds=cache_ttl),
    )


def _review_token(clock: FakeClock, rsa_signer: rsa.RSAPrivateKey, lifetime: int) -> str:
    stamp = int(clock.now().timestamp())
    return _sign(_claims(clock.now(), exp=stamp + lifetime), rsa_signer, RSA_KID, "RS256")


def test_tokenreview_success_yields_the_caller(clock: FakeClock, rsa_signer: rsa.RSAPrivateKey) -> None:
    review = FakeReview(FULL_REVIEW)
    token = _review_token(clock, rsa_signer, 3600)
    caller = _review_auth(review, clock).authenticate(Credentials(bearer_token=token))
    assert caller is not None
    assert caller.spiffe_id.uri == "spiffe://cluster.local/ns/shop/sa/web"
    assert caller.method == "tokenreview"
    assert (caller.pod_name, caller.pod_uid) == ("web-7d9f", POD_UID)
    assert caller.expires_at == clock.now() + timedelta(seconds=3600)
    assert review.calls == [(token, (AUDIENCE,))]


def test_tokenreview_needs_a_bearer_token(clock: FakeClock) -> None:
    review = FakeReview(FULL_REVIEW)
    assert _review_auth(review, clock).authenticate(Credentials()) is None
    assert review.calls == []


def test_tokenreview_cache_hit_avoids_the_second_call(
    clock: FakeClock, rsa_signer: rsa.RSAPrivateKey
) -> None:
    review = FakeReview(FULL_REVIEW)
    auth = _review_auth(review, clock)
    token = _review_token(clock, rsa_signer, 3600)
    first = auth.authenticate(Credentials(bearer_token=token))
    second = auth.authenticate(Credentials(bearer_token=token))
    assert first == second
    assert len(review.calls) == 1


def test_tokenreview_without_cache_calls_every_time(clock: FakeClock) -> None:
    review = FakeReview(FULL_REVIEW)
    auth = TokenReviewAuthenticator(
        review=review, audiences=[AUDIENCE], trust_domain=TRUST_DOMAIN, clock=clock
    )
    auth.authenticate(Credentials(bearer_token="opaque"))
    auth.authenticate(Credentials(bearer_token="opaque"))
    assert len(review.calls) == 2


def test_tokenreview_cache_is_bounded_by_the_token_expiry(
    clock: FakeClock, rsa_signer: rsa.RSAPrivateKey
) -> None:
    review = FakeReview(FULL_REVIEW)
    auth = _review_auth(review, clock, cache_ttl=60)
    token = _review_token(clock, rsa_signer, 30)
    auth.authenticate(Credentials(bearer_token=token))
    clock.advance(timedelta(seconds=29))
    auth.authenticate(Credentials(bearer_token=token))
    assert len(review.calls) == 1
    clock.advance(timedelta(seconds=1))
    auth.authenticate(Credentials(bearer_token=token))
    assert len(review.calls) == 2


def test_tokenreview_cache_is_bounded_by_cache_ttl(clock: FakeClock, rsa_signer: rsa.RSAPrivateKey) -> None:
    review = FakeReview(FULL_REVIEW)
    auth = _review_auth(review, clock, cache_ttl=60)
    token = _review_token(clock, rsa_signer, 3600)
    auth.authenticate(Credentials(bearer_token=token))
    clock.advance(timedelta(seconds=59))
    auth.authenticate(Credentials(bearer_token=token))
    assert len(review.calls) == 1
    clock.advance(timedelta(seconds=1))
    auth.authenticate(Credentials(bearer_token=token))
    assert len(review.calls) == 2


def test_tokenreview_opaque_token_is_cached_for_cache_ttl(clock: FakeClock) -> None:
    review = FakeReview(FULL_REVIEW)
    auth = _review_auth(review, clock, cache_ttl=60)
    caller = auth.authenticate(Credentials(bearer_token="opaque-token"))
    assert caller is not None and caller.expires_at is None
    clock.advance(timedelta(seconds=59))
    auth.authenticate(Credentials(bearer_token="opaque-token"))
    assert len(review.calls) == 1
    clock.advance(timedelta(seconds=1))
    auth.authenticate(Credentials(bearer_token="opaque-token"))
    assert len(review.calls) == 2


def test_tokenreview_rejection_is_not_cached(clock: FakeClock) -> None:
    review = FakeReview({"authenticated": False, "error": "token has been invalidated"})
    auth = _review_auth(review, clock)
    for _ in range(2):
        with pytest.raises(AuthenticationError) as caught:
            auth.authenticate(Credentials(bearer_token="opaque"))
        assert caught.value.reason == "tokenreview_rejected"
        assert "token has been invalidated" in caught.value.message
    assert len(review.calls) == 2


def test_tokenreview_unavailable_api_propagates(clock: FakeClock) -> None:
    def review(token: str, audiences: Sequence[str]) -> Mapping[str, Any]:
        raise UnavailableError("API server unreachable", reason="tokenreview_unavailable")

    with pytest.raises(UnavailableError) as caught:
        _review_auth(review, clock).authenticate(Credentials(bearer_token="opaque"))
    assert caught.value.kind is ErrorKind.UNAVAILABLE


@pytest.fixture
def svid_clock() -> FakeClock:
    return FakeClock(datetime(2030, 1, 1, tzinfo=UTC))


@pytest.fixture
def authority(svid_clock: FakeClock) -> SigningAuthority:
    factory = RootFactory(trust_domain=TRUST_DOMAIN, key_algorithm=KeyAlgorithm.EC_P256, clock=svid_clock)
    return factory.create(source="test")


def _svid(authority: SigningAuthority, clock: FakeClock, spiffe_id: SpiffeId, ttl: int = 3600) -> str:
    issuer = Issuer(authority=authority, policy=IssuancePolicy(), clock=clock)
    csr = parse_csr(make_csr(ec_key()), KeyPolicy())
    return issuer.issue(spiffe_id=spiffe_id, csr=csr, requested_ttl_seconds=ttl).chain[0]


def _custom_leaf(authority: SigningAuthority, clock: FakeClock, names: list[x509.GeneralName] | None) -> str:
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(authority.signing_cert.subject)
        .public_key(ec_key().public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(clock.now() - timedelta(minutes=1))
        .not_valid_after(clock.now() + timedelta(hours=1))
    )
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=True)
    cert = builder.sign(authority.signing_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _cert_auth(clock: FakeClock) -> ClientCertificateAuthenticator:
    return ClientCertificateAuthenticator(trust_domain=TRUST_DOMAIN, clock=clock)


def _cert_refusal(auth: ClientCertificateAuthenticator, pem: str) -> AuthenticationError:
    with pytest.raises(AuthenticationError) as caught:
        auth.authenticate(Credentials(peer_certificate_pem=pem))
    assert caught.value.reason == "client_cert_invalid"
    assert "service-account token" in caught.value.message
    return caught.value


def test_valid_svid_yields_the_caller(authority: SigningAuthority, svid_clock: FakeClock) -> None:
    pem = _svid(authority, svid_clock, SpiffeId.for_workload(TRUST_DOMAIN, "shop", "web"))
    caller = _cert_auth(svid_clock).authenticate(Credentials(peer_certificate_pem=pem))
    assert caller is not None
    assert caller.spiffe_id.uri == "spiffe://cluster.local/ns/shop/sa/web"
    assert (caller.namespace, caller.service_account) == ("shop", "web")
    assert caller.method == "client-certificate"
    assert caller.expires_at == svid_clock.now() + timedelta(hours=1)


def test_no_client_certificate_is_not_this_authenticators_kind(svid_clock: FakeClock) -> None:
    assert _cert_auth(svid_clock).authenticate(Credentials(bearer_token="t")) is None


def test_unparsable_client_certificate_is_refused(svid_clock: FakeClock) -> None:
    assert "cannot be parsed" in _cert_refusal(_cert_auth(svid_clock), "garbage").message


def test_expired_svid_is_refused(authority: SigningAuthority, svid_clock: FakeClock) -> None:
    pem = _svid(authority, svid_clock, SpiffeId.for_workload(TRUST_DOMAIN, "shop", "web"))
    auth = _cert_auth(svid_clock)
    svid_clock.advance(timedelta(hours=1) - timedelta(seconds=1))
    assert auth.authenticate(Credentials(peer_certificate_pem=pem)) is not None
    svid_clock.advance(timedelta(seconds=1))
    assert "valid only from" in _cert_refusal(auth, pem).message


def test_not_yet_valid_svid_is_refused(authority: SigningAuthority, svid_clock: FakeClock) -> None:
    pem = _svid(authority, svid_clock, SpiffeId.for_workload(TRUST_DOMAIN, "shop", "web"))
    svid_clock.advance(timedelta(minutes=-3))
    assert "valid only from" in _cert_refusal(_cert_auth(svid_clock), pem).message


def test_svid_of_another_trust_domain_is_refused(authority: SigningAuthority, svid_clock: FakeClock) -> None:
    pem = _svid(authority, svid_clock, SpiffeId.for_workload("example.org", "shop", "web"))
    err = _cert_refusal(_cert_auth(svid_clock), pem)
    assert "not a workload of trust domain cluster.local" in err.message


@pytest.mark.parametrize("path", ["", "/ns/shop", "/ns/shop/sa/web/extra", "/agent/node-1"])
def test_svid_with_a_non_workload_path_is_refused(
    path: str, authority: SigningAuthority, svid_clock: FakeClock
) -> None:
    pem = _svid(authority, svid_clock, SpiffeId(TRUST_DOMAIN, path))
    assert "not a workload" in _cert_refusal(_cert_auth(svid_clock), pem).message


def test_certificate_with_two_uri_sans_is_refused(authority: SigningAuthority, svid_clock: FakeClock) -> None:
    pem = _custom_leaf(
        authority,
        svid_clock,
        [
            x509.UniformResourceIdentifier("spiffe://cluster.local/ns/shop/sa/web"),
            x509.UniformResourceIdentifier("spiffe://cluster.local/ns/kube-system/sa/admin"),
        ],
    )
    assert "2 URI SANs" in _cert_refusal(_cert_auth(svid_clock), pem).message


def test_certificate_without_uri_san_is_refused(authority: SigningAuthority, svid_clock: FakeClock) -> None:
    pem = _custom_leaf(authority, svid_clock, [x509.DNSName("web.shop.svc")])
    assert "0 URI SANs" in _cert_refusal(_cert_auth(svid_clock), pem).message


def test_certificate_without_san_is_refused(authority: SigningAuthority, svid_clock: FakeClock) -> None:
    pem = _custom_leaf(authority, svid_clock, None)
    assert "no subject alternative name" in _cert_refusal(_cert_auth(svid_clock), pem).message


def test_certificate_with_a_non_spiffe_uri_is_refused(
    authority: SigningAuthority, svid_clock: FakeClock
) -> None:
    pem = _custom_leaf(
        authority, svid_clock, [x509.UniformResourceIdentifier("https://cluster.local/ns/a/sa/b")]
    )
    assert "invalid SPIFFE ID" in _cert_refusal(_cert_auth(svid_clock), pem).message
