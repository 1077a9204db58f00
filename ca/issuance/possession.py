"""Proof that an agent holds a certificate's private key, for moving a control stream to it.

An agent that replaces its certificate keeps its control stream and tells the CA the new
certificate with a signature by the new key over a statement naming the old and the new serial
(`rebind_statement`). The stream is already authenticated by the old certificate (mutual TLS),
so the signature adds what the TLS connection cannot: that the agent on it holds the new key,
not merely a copy of the new certificate. It binds one change and nothing else: it names both
serials, and its context string is used for nothing but this.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from ca.errors import AuthenticationError
from ca.issuance.keys import PrivateKey

REBIND_CONTEXT = b"meshca.control.v1 Rebind"


def rebind_statement(old_serial: str, new_serial: str) -> bytes:
    """What the new key signs: the context, then both serials (lower-case hex), NUL-separated."""
    return b"\x00".join((REBIND_CONTEXT, old_serial.encode("ascii"), new_serial.encode("ascii")))


def prove_possession(key: PrivateKey, statement: bytes) -> bytes:
    """Sign `statement` with `key`: ECDSA with SHA-256, or RSA PKCS#1 v1.5 with SHA-256."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(statement, ec.ECDSA(hashes.SHA256()))
    return key.sign(statement, padding.PKCS1v15(), hashes.SHA256())


def check_possession(certificate: x509.Certificate, statement: bytes, proof: bytes) -> None:
    """Raise AuthenticationError unless `proof` is the certificate key's signature of
    `statement`."""
    public_key = certificate.public_key()
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(proof, statement, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(proof, statement, padding.PKCS1v15(), hashes.SHA256())
        else:
            raise AuthenticationError(
                f"the new certificate's key is a {type(public_key).__name__}, which meshca does "
                "not issue for; reconnect with the certificate held",
                reason="rebind_key_type",
            )
    except InvalidSignature:
        raise AuthenticationError(
            "the proof of possession does not verify with the new certificate's key; reconnect "
            "with the certificate held",
            reason="rebind_proof_invalid",
        ) from None
