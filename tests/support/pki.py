"""Test PKI: keys, CSRs, and CA hierarchies written in Istio's cacerts layout."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from ca.issuance.keys import PrivateKey, private_key_pem


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_csr(
    key: PrivateKey | ed25519.Ed25519PrivateKey,
    *,
    uris: tuple[str, ...] = (),
    dns: tuple[str, ...] = (),
    ca: bool | None = None,
) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM).decode()


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _ca_cert(
    *,
    subject: str,
    key: PrivateKey,
    issuer_cert: x509.Certificate | None,
    issuer_key: PrivateKey,
    now: datetime,
    days: int = 365,
    ca: bool = True,
) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshca-test"),
            x509.NameAttribute(NameOID.COMMON_NAME, subject),
        ]
    )
    issuer_name = issuer_cert.subject if issuer_cert else name
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    )
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass
class Hierarchy:
    root_key: PrivateKey
    root: x509.Certificate
    intermediate_key: PrivateKey
    intermediate: x509.Certificate
    signing_key: PrivateKey
    signing: x509.Certificate

    def write_cacerts(self, directory: Path) -> Path:
        """root -> intermediate -> signing CA, in Istio's four-file layout."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "ca-cert.pem").write_bytes(pem(self.signing))
        (directory / "ca-key.pem").write_bytes(private_key_pem(self.signing_key))
        (directory / "cert-chain.pem").write_bytes(
            pem(self.signing) + pem(self.intermediate) + pem(self.root)
        )
        (directory / "root-cert.pem").write_bytes(pem(self.root))
        return directory


def make_hierarchy(now: datetime | None = None, signing_key: PrivateKey | None = None) -> Hierarchy:
    now = now or datetime.now(UTC)
    root_key, intermediate_key = ec_key(), ec_key()
    signing_key = signing_key or ec_key()
    root = _ca_cert(
        subject="test root", key=root_key, issuer_cert=None, issuer_key=root_key, now=now, days=3650
    )
    intermediate = _ca_cert(
        subject="test intermediate", key=intermediate_key, issuer_cert=root, issuer_key=root_key, now=now
    )
    signing = _ca_cert(
        subject="test signing CA",
        key=signing_key,
        issuer_cert=intermediate,
        issuer_key=intermediate_key,
        now=now,
        days=180,
    )
    return Hierarchy(root_key, root, intermediate_key, intermediate, signing_key, signing)


def make_signing_ca(
    issuer: x509.Certificate,
    issuer_key: PrivateKey,
    *,
    subject: str,
    now: datetime,
    days: int = 180,
    ca: bool = True,
) -> tuple[PrivateKey, x509.Certificate]:
    """A CA certificate (and its key) signed by `issuer`: another signing CA under one root, as
    while the CA rotates its signing slot (`ca=False`: an end-entity certificate instead)."""
    key = ec_key()
    cert = _ca_cert(
        subject=subject, key=key, issuer_cert=issuer, issuer_key=issuer_key, now=now, days=days, ca=ca
    )
    return key, cert


def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)
