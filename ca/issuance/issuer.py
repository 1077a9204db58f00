"""Issuance: the identity from the caller, the key from the CSR, the rest from policy.

Pure apart from the injected clock and serial source. The sign path reads
policy -> template -> sign.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum

from cryptography import x509

from ca.common.clock import Clock
from ca.common.durations import format_duration
from ca.errors import ConfigError, InvalidRequestError
from ca.issuance import leaf_der, profile
from ca.issuance.authority import SigningAuthority
from ca.issuance.csr import ParsedCsr
from ca.issuance.key_policy import KeyPolicy
from ca.issuance.leaf_der import LeafWriter
from ca.issuance.spiffe_id import SpiffeId

SerialSource = Callable[[], int]


def random_serial() -> int:
    """A 128-bit random serial number, as Istio issues; zero is not a valid serial."""
    while True:
        serial = secrets.randbits(128)
        if serial:
            return serial


class OverMaxTtl(Enum):
    REJECT = "reject"
    CLAMP = "clamp"


@dataclass(frozen=True, kw_only=True)
class IssuancePolicy:
    default_ttl: timedelta = timedelta(hours=24)
    max_ttl: timedelta = timedelta(days=90)
    over_max: OverMaxTtl = OverMaxTtl.REJECT
    key_policy: KeyPolicy = field(default_factory=KeyPolicy)
    strict_csr_names: bool = False

    def __post_init__(self) -> None:
        if self.default_ttl <= timedelta(0) or self.max_ttl <= timedelta(0):
            raise ConfigError("certificate TTLs must be positive; set --default-ttl and --max-ttl above 0")
        if self.default_ttl > self.max_ttl:
            raise ConfigError(
                f"--default-ttl ({format_duration(self.default_ttl)}) is longer than "
                f"--max-ttl ({format_duration(self.max_ttl)}); "
                "lower the default or raise the maximum"
            )

    def resolve_ttl(self, requested_seconds: int) -> timedelta:
        """The lifetime to issue for a request's `validity_duration` (0 = default)."""
        if requested_seconds == 0:
            return self.default_ttl
        if requested_seconds < 0:
            raise InvalidRequestError(
                f"requested validity_duration {requested_seconds}s is negative; "
                "send 0 for the default TTL or a positive number of seconds",
                reason="ttl_invalid",
            )
        max_seconds = int(self.max_ttl.total_seconds())
        if requested_seconds <= max_seconds:
            return timedelta(seconds=requested_seconds)
        if self.over_max is OverMaxTtl.CLAMP:
            return self.max_ttl
        raise InvalidRequestError(
            f"requested TTL {requested_seconds}s is over the maximum of {max_seconds}s; "
            "ask for a shorter validity_duration",
            reason="ttl_over_max",
        )

    def check_requested_names(self, csr: ParsedCsr, spiffe_id: SpiffeId) -> None:
        if not self.strict_csr_names:
            return
        foreign = [u for u in csr.requested_uris if u != spiffe_id.uri] + list(csr.requested_dns)
        if foreign:
            raise InvalidRequestError(
                f"the CSR asks for {', '.join(foreign)} but the caller is {spiffe_id.uri}; "
                "in strict mode the CSR may name only the caller's own SPIFFE ID",
                reason="csr_identity_mismatch",
            )


@dataclass(frozen=True, kw_only=True)
class IssuedCertificate:
    certificate: x509.Certificate
    chain: list[str]
    spiffe_id: SpiffeId
    serial: int
    not_before: datetime
    not_after: datetime
    authority: SigningAuthority = field(repr=False)
    key_type: str  # the CSR's: reading it back out of the certificate costs a key parse


class Issuer:
    def __init__(
        self,
        *,
        authority: SigningAuthority,
        policy: IssuancePolicy,
        clock: Clock,
        serials: SerialSource = random_serial,
    ) -> None:
        self._authority = authority
        self._policy = policy
        self._clock = clock
        self._serials = serials
        self._leaves = LeafWriter()

    @property
    def authority(self) -> SigningAuthority:
        return self._authority

    @property
    def policy(self) -> IssuancePolicy:
        return self._policy

    def use_authority(self, authority: SigningAuthority) -> None:
        self._authority = authority

    def issue(self, *, spiffe_id: SpiffeId, csr: ParsedCsr, requested_ttl_seconds: int) -> IssuedCertificate:
        ttl = self._policy.resolve_ttl(requested_ttl_seconds)
        self._policy.check_requested_names(csr, spiffe_id)
        authority = self._authority
        not_before, not_after = profile.leaf_validity(
            now=self._clock.now(), ttl=ttl, issuer=authority.signing_cert
        )
        serial = self._serials()
        der = self._leaves.issue(
            authority, csr.public_key, spiffe_id=spiffe_id, serial=serial, validity=(not_before, not_after)
        )
        leaf = x509.load_der_x509_certificate(der)
        leaf_pem = leaf_der.pem(der)
        return IssuedCertificate(
            certificate=leaf,
            chain=authority.response_chain(leaf_pem),
            spiffe_id=spiffe_id,
            serial=serial,
            not_before=not_before,
            not_after=not_after,
            authority=authority,
            key_type=csr.key_type,
        )
