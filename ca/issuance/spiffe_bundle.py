"""This trust domain's SPIFFE bundle (pure): its X.509 roots as the JWK set other trust domains fetch
from the bundle endpoint to federate with it.

The format is the SPIFFE Trust Domain and Bundle specification's: a JWK set whose `keys` hold
one entry per root, each with `use: x509-svid`, the root's public key parameters (RFC 7518
for EC and RSA, RFC 8037 for Ed25519 and Ed448) and `x5c` holding exactly that root's DER in
standard base64, and no `kid` (the X509-SVID specification forbids one); beside `keys`,
`spiffe_sequence` (changes, upwards, whenever the keys do) and `spiffe_refresh_hint` (seconds
a consumer may wait before fetching again).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from ca.errors import CaMaterialError

X509_SVID_USE = "x509-svid"
# How long a federated trust domain may keep a copy before fetching again. The spec suggests
# five minutes to consumers that are given no hint; a new root is published long before anything
# depends on it, but a root withdrawn after a compromise should not linger for long.
DEFAULT_REFRESH_HINT = timedelta(minutes=5)
MAX_SEQUENCE = 2**63 - 1  # consumers may parse it into a signed 64-bit integer

_CURVES = {"secp256r1": ("P-256", 32), "secp384r1": ("P-384", 48), "secp521r1": ("P-521", 66)}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_uint(value: int) -> str:
    """RFC 7518's Base64urlUInt: big-endian, as few octets as hold the value (one for zero)."""
    return _b64url(value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def _describe(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or f"serial {cert.serial_number:x}"


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def public_key_parameters(cert: x509.Certificate) -> dict[str, str]:
    """The JWK members that carry the certificate's public key."""
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _CURVES:
            raise CaMaterialError(
                f"root {_describe(cert)!r} uses the curve {key.curve.name}, which a JWK cannot name; "
                "use a P-256, P-384 or P-521 root"
            )
        crv, size = _CURVES[key.curve.name]
        numbers = key.public_numbers()
        return {
            "kty": "EC",
            "crv": crv,
            "x": _b64url(numbers.x.to_bytes(size, "big")),
            "y": _b64url(numbers.y.to_bytes(size, "big")),
        }
    if isinstance(key, rsa.RSAPublicKey):
        rsa_numbers = key.public_numbers()
        return {"kty": "RSA", "n": _b64url_uint(rsa_numbers.n), "e": _b64url_uint(rsa_numbers.e)}
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        crv = "Ed25519" if isinstance(key, ed25519.Ed25519PublicKey) else "Ed448"
        return {"kty": "OKP", "crv": crv, "x": _b64url(raw)}
    raise CaMaterialError(
        f"root {_describe(cert)!r} has a {type(key).__name__}, which the SPIFFE bundle cannot carry; "
        "use an EC, RSA or Ed25519 root"
    )


def x509_svid_key(root: x509.Certificate) -> dict[str, Any]:
    """One root as a JWK of the bundle."""
    der = root.public_bytes(serialization.Encoding.DER)
    return {
        **public_key_parameters(root),
        "use": X509_SVID_USE,
        "x5c": [base64.standard_b64encode(der).decode("ascii")],
    }


def next_sequence(previous: int | None, now: datetime) -> int:
    """The sequence number of a bundle whose keys changed at `now`: the Unix time in seconds, so that
    it also goes up across restarts, and at least one more than the number before it."""
    seconds = int(now.timestamp())
    return seconds if previous is None else max(previous + 1, seconds)


@dataclass(frozen=True, kw_only=True)
class SpiffeBundle:
    """The roots a federated trust domain should trust for this one, in the order given."""

    roots: tuple[x509.Certificate, ...]
    sequence: int
    refresh_hint: timedelta = DEFAULT_REFRESH_HINT

    def __post_init__(self) -> None:
        if not self.roots:
            raise CaMaterialError(
                "the SPIFFE bundle has no root; it needs the CA's trust bundle (at least one root)"
            )
        for root in self.roots:
            if not _is_ca(root):
                raise CaMaterialError(
                    f"root {_describe(root)!r} is not a CA certificate; it cannot anchor trust"
                )
        if not 0 <= self.sequence <= MAX_SEQUENCE:
            raise ValueError(f"a SPIFFE bundle sequence must be within 0..2^63-1, not {self.sequence}")
        seconds = self.refresh_hint.total_seconds()
        if seconds < 1 or seconds != int(seconds):
            raise ValueError(f"a refresh hint is a whole number of seconds, at least 1, not {seconds}")

    @classmethod
    def of(
        cls,
        roots: Sequence[x509.Certificate],
        *,
        sequence: int,
        refresh_hint: timedelta = DEFAULT_REFRESH_HINT,
    ) -> SpiffeBundle:
        return cls(roots=tuple(roots), sequence=sequence, refresh_hint=refresh_hint)

    def same_keys(self, roots: Sequence[x509.Certificate]) -> bool:
        """Whether `roots` are this bundle's, in the same order (so the sequence may stay)."""
        return tuple(roots) == self.roots

    def document(self) -> dict[str, Any]:
        return {
            "keys": [x509_svid_key(root) for root in self.roots],
            "spiffe_refresh_hint": int(self.refresh_hint.total_seconds()),
            "spiffe_sequence": self.sequence,
        }

    def to_json(self) -> bytes:
        return json.dumps(self.document(), indent=2, sort_keys=True).encode() + b"\n"
