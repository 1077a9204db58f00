"""The TLS seam of the enforcer: what the event loop needs from a TLS library.

Two engines implement it (chosen by `--tls-engine`):

- `openssl` (`ca.enforce.tls_openssl`): the OpenSSL that the `cryptography`
  wheel bundles (a current release; 4.0 here), called through the cffi binding
  cryptography ships for pyOpenSSL. On the benchmark machine a full mutual-TLS
  handshake costs the enforcer about 0.6 ms of CPU with it against about 1.1 ms
  through Python's `ssl` on the system OpenSSL 3.0, whose provider lookups and
  locks dominate; only the former reaches half of Envoy's handshake rate
  (scripts/bench_enforcer.py). pyOpenSSL's public API over the same OpenSSL was
  measured beside it (scripts/bench_tls_engines.py, three runs of 7-9 rounds on a
  shared 2-core host): 2-8% fewer handshakes per CPU-second and 8-21% fewer bytes
  decrypted per CPU-second (its reads copy through a buffer of their own); it
  cannot set the key exchange groups. Hence the private binding, with
  cryptography's major version bounded in pyproject.toml and
  tests/test_enforce_tls_engine.py failing if `auto` would fall back to `stdlib`.
- `stdlib` (`ca.enforce.tls_stdlib`): Python's `ssl` module on the system
  OpenSSL. Always available; the fallback when the binding lacks a function.

All I/O is non-blocking on the connection's own socket; results are byte counts
or the WANT_* codes below, never exceptions, on the hot path.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from ca.issuance.crl import NO_REVOCATIONS, RevocationLists
from ca.issuance.spiffe_id import SpiffeId

WANT_READ = -1
WANT_WRITE = -2
HANDSHAKE_DONE = 1

# TLS 1.2 suites when a peer cannot do 1.3: ECDHE with AEAD only, as Envoy's defaults.
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:"
    "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-CHACHA20-POLY1305:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384"
)
# TLS 1.3 suites in BoringSSL's (so Envoy's) order: AES-128-GCM first on machines with AES hardware.
TLS13_SUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
GROUPS = "X25519:P-256"
SESSION_ID_CONTEXT = b"meshca-enforce"


class TlsFailure(Exception):
    """A handshake or record failure; `reason` is the metric label, `detail` for the log."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, kw_only=True)
class Material:
    """One consistent set of the workload's TLS files (one issuance), checked."""

    chain_pem: bytes
    key_pem: bytes = field(repr=False)
    roots_pem: bytes
    spiffe_id: SpiffeId
    serial: int
    not_after: datetime
    version: str  # what identifies this set on disk (the `..data` target)
    # The CA's CRLs from crl.pem in the same set, checked against roots and chain; none without it.
    revocations: RevocationLists = NO_REVOCATIONS


class TlsConnection(Protocol):
    def fileno(self) -> int: ...

    def handshake(self) -> int:
        """HANDSHAKE_DONE, WANT_READ or WANT_WRITE; TlsFailure if it failed."""
        ...

    def read_into(self, buffer: memoryview) -> int:
        """Bytes read (> 0), 0 at the end of the stream, or a WANT_* code; OSError/TlsFailure on errors."""
        ...

    def write(self, data: bytes | memoryview) -> int:
        """Bytes written (> 0) or a WANT_* code (call again with the same bytes)."""
        ...

    def shutdown_write(self) -> None:
        """Send close_notify (best effort) and the TCP FIN; reading may go on."""
        ...

    def close(self) -> None: ...

    def peer_fingerprint(self) -> bytes | None:
        """SHA-256 of the peer's certificate (DER); None if it sent none. Cheaper than peer_der."""
        ...

    def peer_der(self) -> bytes | None: ...

    def version(self) -> str: ...

    def cipher(self) -> str: ...


class TlsContexts(Protocol):
    """Server and client contexts built from one Material."""

    material: Material

    def accept(self, sock: socket.socket) -> TlsConnection:
        """Server side of a mutual-TLS connection on `sock` (which the connection then owns)."""
        ...

    def connect(self, sock: socket.socket, server_name: str | None) -> TlsConnection:
        """Client side, presenting the workload certificate and verifying the server's chain."""
        ...


class TlsEngine(Protocol):
    name: str

    def contexts(self, material: Material) -> TlsContexts:
        """Contexts for `material`; ConfigError if the library refuses it."""
        ...
