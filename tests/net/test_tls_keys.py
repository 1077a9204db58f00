from __future__ import annotations

import ssl
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ca.net.tls_keys import load_chain_and_key
from tests.support.pki import ec_key


def _pem_pair(key: ec.EllipticCurvePrivateKey) -> tuple[bytes, bytes]:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tls-keys")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _leftovers(prefix: str) -> list[Path]:
    return list(Path(tempfile.gettempdir()).glob(f"{prefix}*"))


def test_the_chain_and_key_are_loaded_and_no_key_file_stays_behind() -> None:
    chain, key = _pem_pair(ec_key())
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    load_chain_and_key(context, chain, key, prefix="meshca-test-tls-keys-")
    assert _leftovers("meshca-test-tls-keys-") == []
    assert context.get_ca_certs() == []  # the chain is the context's own, not a trust anchor


def test_a_key_that_does_not_match_the_certificate_is_refused_and_cleaned_up() -> None:
    chain, _ = _pem_pair(ec_key())
    _, other_key = _pem_pair(ec_key())
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with pytest.raises(ssl.SSLError):
        load_chain_and_key(context, chain, other_key, prefix="meshca-test-tls-keys-bad-")
    assert _leftovers("meshca-test-tls-keys-bad-") == []
