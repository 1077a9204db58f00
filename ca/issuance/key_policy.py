"""Which workload keys the CA certifies, by curve and RSA size.

A module of its own, apart from key generation and PEM encoding (ca.issuance.keys): the agent
uses those, and `meshca agent --once on` (an init container, which its pod waits for) then does
not build a dataclass it never uses as it starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from ca.errors import InvalidRequestError
from ca.issuance.keys import CURVE_LABELS, PublicKey, key_type_label


@dataclass(frozen=True, kw_only=True)
class KeyPolicy:
    """Which workload keys the CA certifies."""

    ec_curves: frozenset[str] = frozenset({"secp256r1", "secp384r1"})
    min_rsa_bits: int = 2048
    max_rsa_bits: int = 8192

    def check(self, key: CertificatePublicKeyTypes) -> PublicKey:
        """Return the key if the policy allows it, else raise InvalidRequestError."""
        if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in self.ec_curves:
            return key
        if isinstance(key, rsa.RSAPublicKey) and self.min_rsa_bits <= key.key_size <= self.max_rsa_bits:
            return key
        raise InvalidRequestError(
            f"the CSR's key type {key_type_label(key)} is not allowed; use an EC P-256 or P-384 key, "
            f"or RSA with {self.min_rsa_bits} to {self.max_rsa_bits} bits",
            reason="key_type_not_allowed",
        )

    def allows_label(self, label: str) -> bool:
        if label.startswith("rsa-"):
            bits = label.removeprefix("rsa-")
            # isascii: str.isdigit also takes '²' (which int() refuses) and other scripts' digits
            return bits.isascii() and bits.isdigit() and self.min_rsa_bits <= int(bits) <= self.max_rsa_bits
        return label in {CURVE_LABELS[c] for c in self.ec_curves if c in CURVE_LABELS}
