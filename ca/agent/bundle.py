"""The trust bundle the agent holds: the roots it serves, and trusts the CA's TLS certificate with.

Two things set it: each certificate the CA issues (the response's roots), and a TrustBundle the
CA pushes over the control stream when its signing slots change, so that a new root reaches
every workload before anything is signed under it. `check_bundle` is the pure check of a pushed
bundle; `HeldBundle` holds what the agent has (thread-safe); `trust_pem` is what the agent
verifies the CA's own TLS certificate with: its --ca-root file and the held roots together, so
that an agent whose --ca-root file still names only the old root reaches a CA whose serving
certificate moved to the new one.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.agent.svid import Svid
from ca.errors import MeshcaError


class BadBundleError(MeshcaError):
    """A pushed trust bundle the agent will not serve."""


class BundleNotServedError(MeshcaError):
    """A checked trust bundle could not be served everywhere (a file could not be written)."""


def root_sha256(root: x509.Certificate) -> str:
    """SHA-256 (hex) of the certificate's DER: how the agent and the CA name a root."""
    return hashlib.sha256(root.public_bytes(serialization.Encoding.DER)).hexdigest()


def _bad(problem: str, reason: str) -> BadBundleError:
    return BadBundleError(
        f"the CA's trust bundle was not used: {problem}; the agent keeps serving the roots it "
        "holds (the CA's signing slots hold a certificate that is not a CA root: check them with "
        "`meshca ca status`)",
        reason=reason,
    )


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return constraints.ca


def check_bundle(root_ders: Sequence[bytes]) -> tuple[x509.Certificate, ...]:
    """The roots of a pushed bundle, if each one parses and is a CA certificate (basic
    constraints cA true); BadBundleError otherwise, and for a bundle without any root."""
    if not root_ders:
        raise _bad("it holds no root certificate", "bundle_empty")
    roots = []
    for number, der in enumerate(root_ders, start=1):
        try:
            root = x509.load_der_x509_certificate(der)
        except ValueError as err:
            raise _bad(
                f"root {number} does not parse as a DER certificate ({err})", "bundle_unparsable"
            ) from err
        if not _is_ca(root):
            raise _bad(
                f"root {number} ({root.subject.rfc4514_string()}) is not a CA certificate",
                "bundle_not_ca",
            )
        roots.append(root)
    return tuple(roots)


def trust_pem(file_pem: bytes, roots: Sequence[x509.Certificate]) -> bytes:
    """The --ca-root file's PEM with each of `roots` it lacks appended."""
    try:
        listed = {
            c.public_bytes(serialization.Encoding.DER) for c in x509.load_pem_x509_certificates(file_pem)
        }
    except ValueError:  # not PEM certificates: gRPC will say so; add ours all the same
        listed = set()
    extra = [
        r.public_bytes(serialization.Encoding.PEM)
        for r in roots
        if r.public_bytes(serialization.Encoding.DER) not in listed
    ]
    if not extra:
        return file_pem
    separator = b"" if not file_pem or file_pem.endswith(b"\n") else b"\n"
    return file_pem + separator + b"".join(extra)


class HeldBundle:
    """The roots the agent holds and the sequence of the last bundle the CA pushed (0: none yet).

    An SvidSink: each new certificate's roots replace what is held (the CA sends the same
    bundle in its responses as on the stream); the sequence stays, so a bundle pushed again
    on the next stream is not taken twice."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._roots: tuple[x509.Certificate, ...] = ()
        self._sequence = 0

    @property
    def roots(self) -> tuple[x509.Certificate, ...]:
        with self._lock:
            return self._roots

    @property
    def sequence(self) -> int:
        with self._lock:
            return self._sequence

    def publish(self, svid: Svid) -> None:
        with self._lock:
            self._roots = svid.roots

    def newer(self, sequence: int) -> bool:
        """Whether a pushed bundle with this sequence is newer than the last one taken."""
        with self._lock:
            return sequence > self._sequence

    def take(self, sequence: int, roots: Sequence[x509.Certificate]) -> bool:
        """Hold a pushed bundle, unless it is not newer than the last one taken (False)."""
        with self._lock:
            if sequence <= self._sequence:
                return False
            self._sequence, self._roots = sequence, tuple(roots)
            return True

    def sha256(self) -> list[str]:
        return [root_sha256(r) for r in self.roots]

    def trust_pem(self, file_pem: bytes) -> bytes:
        """What to verify the CA's TLS certificate with: the --ca-root file and the held roots."""
        return trust_pem(file_pem, self.roots)
