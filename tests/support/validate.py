"""Independent checks of an issued chain: py-spiffe, RFC 5280 path validation, openssl.

None of these share code with meshca's issuance path.
"""

from __future__ import annotations

import subprocess
import tempfile
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store
from spiffe import X509Svid

from ca.issuance.keys import PrivateKey, private_key_pem


def parse_with_py_spiffe(chain: list[str], key: PrivateKey) -> X509Svid:
    """py-spiffe checks the X.509-SVID profile of the leaf and that the key parses."""
    return X509Svid.parse("".join(chain[:-1]).encode(), private_key_pem(key))


def verify_path(chain: list[str], now: datetime) -> list[x509.GeneralName]:
    """RFC 5280 path validation (as a client certificate) to the root bundle in the chain."""
    leaf = x509.load_pem_x509_certificate(chain[0].encode())
    intermediates = [x509.load_pem_x509_certificate(c.encode()) for c in chain[1:-1]]
    roots = x509.load_pem_x509_certificates(chain[-1].encode())
    verifier = PolicyBuilder().store(Store(roots)).time(now).build_client_verifier()
    verified = verifier.verify(leaf, intermediates)
    return list(verified.subjects or [])


def openssl_verify(chain: list[str], purpose: str) -> subprocess.CompletedProcess[str]:
    """`openssl verify -x509_strict` with purpose sslclient or sslserver."""
    with tempfile.TemporaryDirectory() as tmp:
        root, untrusted, leaf = Path(tmp, "root.pem"), Path(tmp, "untrusted.pem"), Path(tmp, "leaf.pem")
        root.write_text(chain[-1])
        untrusted.write_text("".join(chain[1:-1]))
        leaf.write_text(chain[0])
        command = ["openssl", "verify", "-x509_strict", "-purpose", purpose, "-CAfile", str(root)]
        if chain[1:-1]:
            command += ["-untrusted", str(untrusted)]
        return subprocess.run([*command, str(leaf)], capture_output=True, text=True, check=False)


def assert_valid_svid(chain: list[str], key: PrivateKey, spiffe_id: str, now: datetime) -> x509.Certificate:
    svid = parse_with_py_spiffe(chain, key)
    assert str(svid.spiffe_id) == spiffe_id
    subjects = verify_path(chain, now)
    assert x509.UniformResourceIdentifier(spiffe_id) in subjects
    for purpose in ("sslclient", "sslserver"):
        result = openssl_verify(chain, purpose)
        assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stdout + result.stderr
    return x509.load_pem_x509_certificate(chain[0].encode())
