"""A TLS engine of the enforcer's interface (ca.enforce.tls) on pyOpenSSL's public API, for comparison.

The same OpenSSL as the product's `openssl` engine (ca.enforce.tls_openssl), reached
through pyOpenSSL's documented `SSL.Context` and `SSL.Connection` instead of the
cffi binding underneath them. scripts/bench_tls_engines.py measures the two side by
side; pyOpenSSL is a test dependency, not one of meshca's. Differences that
pyOpenSSL's API imposes:

- results that would block come back as exceptions (WantReadError,
  WantWriteError), one raised and caught per WANT on the hot path;
- `recv_into` reads into a buffer of its own and copies into ours, so a read
  asks for at most one TLS record's plaintext;
- the key exchange groups cannot be listed (OpenSSL's defaults apply);
- a failed certificate check reads "certificate verify failed", without
  OpenSSL's reason for it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import socket

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto

from ca.enforce.tls import (
    HANDSHAKE_DONE,
    SESSION_ID_CONTEXT,
    TLS12_CIPHERS,
    TLS13_SUITES,
    WANT_READ,
    WANT_WRITE,
    Material,
    TlsFailure,
)
from ca.errors import ConfigError

MAX_RECORD_PLAINTEXT = 16384  # one SSL_read returns at most one record's plaintext


def _reasons(err: SSL.Error) -> list[str]:
    """OpenSSL's reason strings from a pyOpenSSL error (its args hold (lib, func, reason) tuples)."""
    queue = err.args[0] if err.args and isinstance(err.args[0], list) else []
    return [str(entry[2]) for entry in queue if isinstance(entry, tuple) and len(entry) == 3]


def _detail(err: SSL.Error) -> str:
    return "; ".join(_reasons(err)) or str(err) or "unknown TLS error"


def _context(method: int, material: Material) -> SSL.Context:
    ctx = SSL.Context(method)
    try:
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_options(
            SSL.OP_NO_COMPRESSION
            | SSL.OP_NO_RENEGOTIATION
            | SSL.OP_IGNORE_UNEXPECTED_EOF
            | SSL.OP_CIPHER_SERVER_PREFERENCE
        )
        ctx.set_cipher_list(TLS12_CIPHERS.encode())
        ctx.set_tls13_ciphersuites(TLS13_SUITES.encode())
    except SSL.Error as err:
        raise ConfigError(f"OpenSSL refused the TLS settings: {_detail(err)}") from err
    _load_identity(ctx, material)
    _load_trust(ctx, material)
    # A peer certificate is required and verified against root-cert.pem (chain, validity, purpose).
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT)
    # As the openssl engine: stateless session tickets only, no server-side cache.
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.set_session_id(SESSION_ID_CONTEXT)
    return ctx


def _load_identity(ctx: SSL.Context, material: Material) -> None:
    try:
        chain = x509.load_pem_x509_certificates(material.chain_pem)
        key = serialization.load_pem_private_key(material.key_pem, password=None)
    except ValueError as err:
        raise ConfigError(f"cert-chain.pem or key.pem does not parse: {err}") from err
    try:
        ctx.use_certificate(chain[0])
        for extra in chain[1:]:
            ctx.add_extra_chain_cert(extra)
        ctx.use_privatekey(key)  # type: ignore[arg-type]  # an unsupported key type fails below
        ctx.check_privatekey()
    except (SSL.Error, TypeError) as err:
        raise ConfigError(f"OpenSSL refused the workload certificate or key: {err}") from err


def _load_trust(ctx: SSL.Context, material: Material) -> None:
    try:
        roots = x509.load_pem_x509_certificates(material.roots_pem)
    except ValueError as err:
        raise ConfigError(f"root-cert.pem does not parse: {err}") from err
    store = ctx.get_cert_store()
    if store is None:  # pragma: no cover - a fresh context always has a store
        raise ConfigError("the TLS context has no certificate store")
    for root in roots:
        store.add_cert(crypto.X509.from_cryptography(root))


class PyopensslConnection:
    """One TLS connection on its socket (OpenSSL's socket BIO does the I/O)."""

    __slots__ = ("_conn", "_server", "sock")
    drains_in_one_read = False

    def __init__(
        self, ctx: SSL.Context, sock: socket.socket, *, server: bool, server_name: str | None = None
    ) -> None:
        self.sock = sock
        self._server = server
        self._conn = SSL.Connection(ctx, sock)
        if server:
            self._conn.set_accept_state()
        else:
            if server_name:
                self._conn.set_tlsext_host_name(server_name.encode("idna"))
            self._conn.set_connect_state()

    def fileno(self) -> int:
        return self.sock.fileno()

    def handshake(self) -> int:
        try:
            self._conn.do_handshake()
        except SSL.WantReadError:
            return WANT_READ
        except SSL.WantWriteError:
            return WANT_WRITE
        except SSL.SysCallError as err:
            raise TlsFailure("handshake_eof", f"the connection broke: {err.args[-1]}") from None
        except SSL.Error as err:
            raise self._handshake_failure(err) from None
        return HANDSHAKE_DONE

    def _handshake_failure(self, err: SSL.Error) -> TlsFailure:
        reasons = _reasons(err)
        if "certificate verify failed" in reasons:
            who = "client" if self._server else "server"
            return TlsFailure(f"untrusted_{who}_cert", f"the {who} certificate does not verify")
        if self._server and "peer did not return a certificate" in reasons:
            return TlsFailure("no_client_cert", "the client sent no certificate")
        return TlsFailure("handshake_failed", _detail(err))

    def read_into(self, buffer: memoryview) -> int:
        try:
            return self._conn.recv_into(buffer, min(len(buffer), MAX_RECORD_PLAINTEXT))
        except SSL.WantReadError:
            return WANT_READ
        except SSL.ZeroReturnError:
            return 0
        except SSL.WantWriteError:
            return WANT_WRITE
        except SSL.SysCallError:
            raise ConnectionError(errno.ECONNRESET, "the connection broke") from None
        except SSL.Error as err:
            raise TlsFailure("tls_error", _detail(err)) from None

    def write(self, data: bytes | memoryview) -> int:
        try:
            return self._conn.send(data)
        except SSL.WantWriteError:
            return WANT_WRITE
        except SSL.WantReadError:
            return WANT_READ
        except SSL.SysCallError:
            raise ConnectionError(errno.ECONNRESET, "the connection broke") from None
        except SSL.Error as err:
            raise TlsFailure("tls_error", _detail(err)) from None

    def shutdown_write(self) -> None:
        with contextlib.suppress(SSL.Error):
            self._conn.shutdown()  # sends close_notify; the answer is not awaited
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()

    def peer_fingerprint(self) -> bytes | None:
        der = self.peer_der()
        return None if der is None else hashlib.sha256(der).digest()

    def peer_der(self) -> bytes | None:
        cert = self._conn.get_peer_certificate(as_cryptography=True)
        return None if cert is None else cert.public_bytes(serialization.Encoding.DER)

    def version(self) -> str:
        return self._conn.get_protocol_version_name()

    def cipher(self) -> str:
        return self._conn.get_cipher_name() or ""


class PyopensslContexts:
    def __init__(self, material: Material) -> None:
        self.material = material
        self._server = _context(SSL.TLS_SERVER_METHOD, material)
        self._client = _context(SSL.TLS_CLIENT_METHOD, material)

    def accept(self, sock: socket.socket) -> PyopensslConnection:
        return PyopensslConnection(self._server, sock, server=True)

    def connect(self, sock: socket.socket, server_name: str | None) -> PyopensslConnection:
        return PyopensslConnection(self._client, sock, server=False, server_name=server_name)


class PyopensslEngine:
    name = "pyopenssl"

    def contexts(self, material: Material) -> PyopensslContexts:
        return PyopensslContexts(material)
