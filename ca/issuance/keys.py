"""Key types: key generation, labels and PEM encoding."""

from __future__ import annotations

from enum import Enum

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
)

from ca.errors import ConfigError

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


class KeyAlgorithm(Enum):
    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    RSA_4096 = "rsa-4096"

    @classmethod
    def parse(cls, text: str) -> KeyAlgorithm:
        try:
            return cls(text.lower())
        except ValueError:
            choices = ", ".join(a.value for a in cls)
            raise ConfigError(f"unknown key type {text!r}; choose one of {choices}") from None


# Curve names (as cryptography gives them) to key type labels.
CURVE_LABELS = {"secp256r1": "ec-p256", "secp384r1": "ec-p384", "secp521r1": "ec-p521"}


def generate_private_key(algorithm: KeyAlgorithm) -> PrivateKey:
    match algorithm:
        case KeyAlgorithm.EC_P256:
            return ec.generate_private_key(ec.SECP256R1())
        case KeyAlgorithm.EC_P384:
            return ec.generate_private_key(ec.SECP384R1())
        case _:
            bits = int(algorithm.value.split("-")[1])
            return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def key_type_label(key: CertificatePublicKeyTypes) -> str:
    """A short label such as `ec-p256` or `rsa-2048`, for policy, logs and audits."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        return CURVE_LABELS.get(key.curve.name, f"ec-{key.curve.name}")
    if isinstance(key, rsa.RSAPublicKey):
        return f"rsa-{key.key_size}"
    return type(key).__name__.removesuffix("PublicKey").lower().lstrip("_")


def private_key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key_pem(data: bytes, source: str) -> PrivateKey:
    try:
        key: PrivateKeyTypes = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as err:
        raise ConfigError(
            f"{source} does not hold an unencrypted PEM private key ({err}); "
            "provide a PKCS#8, PKCS#1 or SEC1 PEM key without a passphrase"
        ) from err
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ConfigError(f"{source} holds a {type(key).__name__}; meshca signs with EC or RSA keys")
    return key
