"""SVIDs for agent tests, issued by the real issuer under a fake clock."""

from __future__ import annotations

from collections.abc import Sequence

from ca.agent.svid import Svid, accept_response
from ca.issuance.authority import SigningAuthority
from ca.issuance.csr import parse_csr
from ca.issuance.issuer import IssuancePolicy, Issuer
from ca.issuance.key_policy import KeyPolicy
from ca.issuance.keys import KeyAlgorithm
from ca.issuance.selfsigned import RootFactory
from ca.issuance.spiffe_id import SpiffeId
from tests.support.clock import FakeClock
from tests.support.pki import ec_key, make_csr

CART = SpiffeId.for_workload("cluster.local", "shop", "cart")


class FakeCa:
    """Issues with the real issuer; can be told to fail or to answer for another key."""

    def __init__(
        self, clock: FakeClock, trust_domain: str = "cluster.local", authority: SigningAuthority | None = None
    ) -> None:
        """A self-signed root of its own signs, unless `authority` is given."""
        authority = authority or RootFactory(
            trust_domain=trust_domain, key_algorithm=KeyAlgorithm.EC_P256, clock=clock
        ).create("t")
        self.issuer = Issuer(authority=authority, policy=IssuancePolicy(), clock=clock)
        self.fail_with: Exception | None = None
        self.swap_key = False
        self.identity = CART
        self.calls: list[int] = []
        self.metadata: list[dict[str, str]] = []  # each request's

    def create_certificate(
        self, csr_pem: str, ttl_seconds: int, *, metadata: Sequence[tuple[str, str]] = ()
    ) -> list[str]:
        self.calls.append(ttl_seconds)
        self.metadata.append(dict(metadata))
        if self.fail_with is not None:
            raise self.fail_with
        if self.swap_key:
            csr_pem = make_csr(ec_key())
        csr = parse_csr(csr_pem, KeyPolicy())
        return self.issuer.issue(spiffe_id=self.identity, csr=csr, requested_ttl_seconds=ttl_seconds).chain


def make_svid(clock: FakeClock, ca: FakeCa | None = None) -> Svid:
    """An SVID from `ca` (a new CA of its own when not given)."""
    ca, key = ca or FakeCa(clock), ec_key()
    chain = ca.issuer.issue(
        spiffe_id=CART, csr=parse_csr(make_csr(key), KeyPolicy()), requested_ttl_seconds=0
    ).chain
    return accept_response(chain, key, trust_domain="cluster.local", expected=CART, now=clock.now())
