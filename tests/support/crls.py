"""Revocations and CRLs for tests: a revocation value, and a CRL revoking given certificates."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509

from ca.issuance.authority import SigningAuthority
from ca.issuance.crl import build_crl, crl_der

CRL_VALIDITY = timedelta(hours=1)


@dataclass(frozen=True, kw_only=True)
class Revoked:
    serial: str
    revoked_at: datetime
    reason: str
    not_after: datetime


def revoked(cert: x509.Certificate, at: datetime, reason: str = "keyCompromise") -> Revoked:
    return Revoked(
        serial=format(cert.serial_number, "x"),
        revoked_at=at,
        reason=reason,
        not_after=cert.not_valid_after_utc,
    )


def crl_revoking(
    authority: SigningAuthority,
    certs: Sequence[x509.Certificate],
    now: datetime,
    reason: str = "keyCompromise",
) -> bytes:
    """The DER of `authority`'s CRL at `now`, listing `certs` (none: an empty CRL)."""
    return crl_der(
        build_crl(authority, [revoked(c, now, reason) for c in certs], now=now, validity=CRL_VALIDITY)
    )
