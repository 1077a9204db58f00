"""TLS on the OpenSSL bundled with `cryptography`, through its cffi binding (the `openssl` engine).

The binding is the one pyOpenSSL uses; cryptography keeps the functions
pyOpenSSL needs, which are all this module needs (checked at import:
`missing()` names any that are gone, and the engine is then unavailable).

Memory rules: every SSL and SSL_CTX is wrapped with `ffi.gc` and released
explicitly on close (`ffi.release`), so nothing is freed twice and nothing
leaks if a close is missed. An SSL holds a reference on its SSL_CTX, so a
context replaced at certificate rotation lives until its last connection ends.
OpenSSL's error queue is per thread and must be empty before the next call's
SSL_get_error; every failure path drains it.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from typing import Any

from ca.enforce.tls import (
    GROUPS,
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

try:
    from cryptography.hazmat.bindings.openssl.binding import Binding

    _binding: Any = Binding()
    ffi: Any = _binding.ffi
    lib: Any = _binding.lib
except Exception:  # pragma: no cover - depends on the installed cryptography
    ffi = lib = None

REQUIRED = (
    "SSL_CTX_new",
    "SSL_CTX_free",
    "TLS_server_method",
    "TLS_client_method",
    "SSL_CTX_set_min_proto_version",
    "SSL_CTX_set_options",
    "SSL_CTX_set_mode",
    "SSL_CTX_set_cipher_list",
    "SSL_CTX_set_ciphersuites",
    "SSL_CTX_set1_curves_list",
    "SSL_CTX_set_session_id_context",
    "SSL_CTX_set_session_cache_mode",
    "SSL_CTX_use_certificate",
    "SSL_CTX_add_extra_chain_cert",
    "SSL_CTX_use_PrivateKey",
    "SSL_CTX_check_private_key",
    "SSL_CTX_get_cert_store",
    "SSL_CTX_set_verify",
    "X509_STORE_add_cert",
    "X509_free",
    "X509_up_ref",
    "EVP_PKEY_free",
    "PEM_read_bio_X509",
    "PEM_read_bio_PrivateKey",
    "BIO_new_mem_buf",
    "BIO_new",
    "BIO_s_mem",
    "BIO_free",
    "BIO_get_mem_data",
    "i2d_X509_bio",
    "SSL_new",
    "SSL_free",
    "SSL_set_fd",
    "SSL_set_accept_state",
    "SSL_set_connect_state",
    "SSL_set_tlsext_host_name",
    "SSL_do_handshake",
    "SSL_read",
    "SSL_write",
    "SSL_shutdown",
    "SSL_get_error",
    "SSL_get_peer_certificate",
    "SSL_get_verify_result",
    "SSL_get_version",
    "SSL_get_current_cipher",
    "SSL_CIPHER_get_name",
    "ERR_get_error",
    "ERR_clear_error",
    "ERR_reason_error_string",
    "X509_verify_cert_error_string",
    "X509_digest",
    "EVP_get_digestbyname",
)


def missing() -> list[str]:
    """Functions this engine needs that the installed binding does not have."""
    if lib is None:
        return ["cryptography.hazmat.bindings.openssl"]
    return [name for name in REQUIRED if not hasattr(lib, name)]


def library_version() -> str:
    return "" if lib is None else ffi.string(lib.OPENSSL_VERSION_TEXT).decode()


if lib is not None and not missing():
    _SSL_read = lib.SSL_read
    _SSL_write = lib.SSL_write
    _SSL_get_error = lib.SSL_get_error
    _SSL_do_handshake = lib.SSL_do_handshake
    _ERR_clear_error = lib.ERR_clear_error
    _from_buffer = ffi.from_buffer
    _ERROR_WANT_READ = lib.SSL_ERROR_WANT_READ
    _ERROR_WANT_WRITE = lib.SSL_ERROR_WANT_WRITE
    _ERROR_ZERO_RETURN = lib.SSL_ERROR_ZERO_RETURN
    _ERROR_SYSCALL = lib.SSL_ERROR_SYSCALL
    _SHA256 = lib.EVP_get_digestbyname(b"sha256")


def _error_text() -> str:
    """The oldest queued OpenSSL error as text; drains the queue."""
    code = lib.ERR_get_error()
    text = ""
    if code:
        reason = lib.ERR_reason_error_string(code)
        text = ffi.string(reason).decode(errors="replace") if reason != ffi.NULL else f"error {code:#x}"
    lib.ERR_clear_error()
    return text or "unknown TLS error"


def _bio(data: bytes) -> Any:
    bio = lib.BIO_new_mem_buf(data, len(data))
    if bio == ffi.NULL:
        raise MemoryError("BIO_new_mem_buf failed")
    return ffi.gc(bio, lib.BIO_free)


def _read_certs(pem: bytes, what: str) -> list[Any]:
    """Every certificate in a PEM bundle, each an owned X509*."""
    bio = _bio(pem)
    certs = []
    while True:
        x509 = lib.PEM_read_bio_X509(bio, ffi.NULL, ffi.NULL, ffi.NULL)
        if x509 == ffi.NULL:
            lib.ERR_clear_error()  # the end of the bundle reads as an error
            break
        certs.append(ffi.gc(x509, lib.X509_free))
    if not certs:
        raise ConfigError(f"{what} holds no PEM certificate")
    return certs


def _load_identity(ctx: Any, material: Material) -> None:
    chain = _read_certs(material.chain_pem, "cert-chain.pem")
    if lib.SSL_CTX_use_certificate(ctx, chain[0]) != 1:
        raise ConfigError(f"OpenSSL refused the workload certificate: {_error_text()}")
    for extra in chain[1:]:
        lib.X509_up_ref(extra)  # SSL_CTX_add_extra_chain_cert takes over one reference
        if lib.SSL_CTX_add_extra_chain_cert(ctx, extra) != 1:
            raise ConfigError(f"OpenSSL refused an intermediate certificate: {_error_text()}")
    key = lib.PEM_read_bio_PrivateKey(_bio(material.key_pem), ffi.NULL, ffi.NULL, ffi.NULL)
    if key == ffi.NULL:
        raise ConfigError(f"key.pem is not a readable private key: {_error_text()}")
    key = ffi.gc(key, lib.EVP_PKEY_free)
    if lib.SSL_CTX_use_PrivateKey(ctx, key) != 1 or lib.SSL_CTX_check_private_key(ctx) != 1:
        raise ConfigError(f"key.pem does not match cert-chain.pem: {_error_text()}")


def _load_trust(ctx: Any, material: Material) -> None:
    store = lib.SSL_CTX_get_cert_store(ctx)
    for root in _read_certs(material.roots_pem, "root-cert.pem"):
        if lib.X509_STORE_add_cert(store, root) != 1:  # takes its own reference
            raise ConfigError(f"OpenSSL refused a root certificate: {_error_text()}")


def _context(method: Any, material: Material) -> Any:
    ctx = lib.SSL_CTX_new(method)
    if ctx == ffi.NULL:
        raise ConfigError(f"cannot create a TLS context: {_error_text()}")
    ctx = ffi.gc(ctx, lib.SSL_CTX_free)
    lib.SSL_CTX_set_min_proto_version(ctx, lib.TLS1_2_VERSION)
    lib.SSL_CTX_set_options(
        ctx,
        lib.SSL_OP_NO_COMPRESSION
        | lib.SSL_OP_NO_RENEGOTIATION
        | lib.SSL_OP_IGNORE_UNEXPECTED_EOF
        | lib.SSL_OP_CIPHER_SERVER_PREFERENCE,
    )
    lib.SSL_CTX_set_mode(ctx, lib.SSL_MODE_ENABLE_PARTIAL_WRITE | lib.SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER)
    if lib.SSL_CTX_set_cipher_list(ctx, TLS12_CIPHERS.encode()) != 1:
        raise ConfigError(f"OpenSSL refused the cipher list: {_error_text()}")
    if lib.SSL_CTX_set_ciphersuites(ctx, TLS13_SUITES.encode()) != 1:
        raise ConfigError(f"OpenSSL refused the TLS 1.3 suites: {_error_text()}")
    if lib.SSL_CTX_set1_curves_list(ctx, GROUPS.encode()) != 1:
        raise ConfigError(f"OpenSSL refused the key exchange groups: {_error_text()}")
    _load_identity(ctx, material)
    _load_trust(ctx, material)
    # A peer certificate is required and verified against root-cert.pem (chain, validity, purpose).
    lib.SSL_CTX_set_verify(ctx, lib.SSL_VERIFY_PEER | lib.SSL_VERIFY_FAIL_IF_NO_PEER_CERT, ffi.NULL)
    # Resumption works with (stateless) session tickets, OpenSSL's default, which carry the session
    # themselves: no server-side session cache, whose default of 20480 sessions would hold a peer
    # certificate each. The id context is required for resumption with client certificates.
    lib.SSL_CTX_set_session_cache_mode(ctx, lib.SSL_SESS_CACHE_OFF)
    lib.SSL_CTX_set_session_id_context(ctx, SESSION_ID_CONTEXT, len(SESSION_ID_CONTEXT))
    return ctx


class OpensslConnection:
    """One TLS connection on its socket (OpenSSL's socket BIO does the I/O).

    Memory BIOs were measured as an alternative (one recv/send per batch instead of per
    record): no gain for handshakes, and a third more CPU per byte sent, spent growing
    the write BIO and copying out of it. OpenSSL writing each record straight to the
    socket is the cheaper path.
    """

    __slots__ = ("_server", "_ssl", "sock")
    drains_in_one_read = False

    def __init__(
        self, ctx: Any, sock: socket.socket, *, server: bool, server_name: str | None = None
    ) -> None:
        self.sock = sock
        self._server = server
        ssl = lib.SSL_new(ctx)
        if ssl == ffi.NULL:
            raise TlsFailure("tls_error", f"SSL_new failed: {_error_text()}")
        self._ssl: Any = ffi.gc(ssl, lib.SSL_free)
        lib.SSL_set_fd(self._ssl, sock.fileno())
        if server:
            lib.SSL_set_accept_state(self._ssl)
        else:
            if server_name:
                lib.SSL_set_tlsext_host_name(self._ssl, server_name.encode("idna"))
            lib.SSL_set_connect_state(self._ssl)

    def fileno(self) -> int:
        return self.sock.fileno()

    def handshake(self) -> int:
        result = _SSL_do_handshake(self._ssl)
        if result == 1:
            return HANDSHAKE_DONE
        code = _SSL_get_error(self._ssl, result)
        if code == _ERROR_WANT_READ:
            return WANT_READ
        if code == _ERROR_WANT_WRITE:
            return WANT_WRITE
        raise self._handshake_failure(code)

    def _handshake_failure(self, code: int) -> TlsFailure:
        detail = _error_text() if code != _ERROR_SYSCALL else "the peer closed the connection"
        verify = lib.SSL_get_verify_result(self._ssl)  # X509_V_OK unless a certificate failed
        if verify != lib.X509_V_OK:
            text = ffi.string(lib.X509_verify_cert_error_string(verify)).decode(errors="replace")
            who = "client" if self._server else "server"
            return TlsFailure(f"untrusted_{who}_cert", f"the {who} certificate does not verify: {text}")
        if self._server and "peer did not return a certificate" in detail:
            return TlsFailure("no_client_cert", "the client sent no certificate")
        if code == _ERROR_SYSCALL:
            return TlsFailure("handshake_eof", detail)
        return TlsFailure("handshake_failed", detail)

    def read_into(self, buffer: memoryview) -> int:
        result = _SSL_read(self._ssl, _from_buffer(buffer), len(buffer))
        if result > 0:
            return int(result)
        code = _SSL_get_error(self._ssl, result)
        if code == _ERROR_WANT_READ:
            return WANT_READ
        if code == _ERROR_ZERO_RETURN:
            return 0
        if code == _ERROR_WANT_WRITE:
            return WANT_WRITE
        raise self._io_failure(code)

    def write(self, data: bytes | memoryview) -> int:
        result = _SSL_write(self._ssl, _from_buffer(data), len(data))
        if result > 0:
            return int(result)
        code = _SSL_get_error(self._ssl, result)
        if code == _ERROR_WANT_WRITE:
            return WANT_WRITE
        if code == _ERROR_WANT_READ:
            return WANT_READ
        raise self._io_failure(code)

    @staticmethod
    def _io_failure(code: int) -> Exception:
        if code == _ERROR_SYSCALL:
            _ERR_clear_error()
            return ConnectionError(errno.ECONNRESET, "the connection broke")
        return TlsFailure("tls_error", _error_text())

    def shutdown_write(self) -> None:
        if self._ssl is not None:
            lib.SSL_shutdown(self._ssl)  # sends close_notify; the answer is not awaited
            _ERR_clear_error()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        if self._ssl is not None:
            ffi.release(self._ssl)
            self._ssl = None
        self.sock.close()

    def peer_fingerprint(self) -> bytes | None:
        x509 = lib.SSL_get_peer_certificate(self._ssl)
        if x509 == ffi.NULL:
            return None
        digest = ffi.new("unsigned char[]", 64)
        size = ffi.new("unsigned int *")
        try:
            if lib.X509_digest(x509, _SHA256, digest, size) != 1:
                raise TlsFailure("tls_error", f"cannot hash the peer certificate: {_error_text()}")
            return bytes(ffi.buffer(digest, size[0]))
        finally:
            lib.X509_free(x509)

    def peer_der(self) -> bytes | None:
        x509 = lib.SSL_get_peer_certificate(self._ssl)
        if x509 == ffi.NULL:
            return None
        bio = lib.BIO_new(lib.BIO_s_mem())
        try:
            if lib.i2d_X509_bio(bio, x509) != 1:
                raise TlsFailure("tls_error", f"cannot encode the peer certificate: {_error_text()}")
            data = ffi.new("char **")
            size = lib.BIO_get_mem_data(bio, data)
            return bytes(ffi.buffer(data[0], size))
        finally:
            lib.BIO_free(bio)
            lib.X509_free(x509)

    def version(self) -> str:
        return str(ffi.string(lib.SSL_get_version(self._ssl)).decode())

    def cipher(self) -> str:
        current = lib.SSL_get_current_cipher(self._ssl)
        if current == ffi.NULL:
            return ""
        return str(ffi.string(lib.SSL_CIPHER_get_name(current)).decode())


class OpensslContexts:
    def __init__(self, material: Material) -> None:
        self.material = material
        self._server = _context(lib.TLS_server_method(), material)
        self._client = _context(lib.TLS_client_method(), material)

    def accept(self, sock: socket.socket) -> OpensslConnection:
        return OpensslConnection(self._server, sock, server=True)

    def connect(self, sock: socket.socket, server_name: str | None) -> OpensslConnection:
        return OpensslConnection(self._client, sock, server=False, server_name=server_name)


class OpensslEngine:
    name = "openssl"

    def __init__(self) -> None:
        absent = missing()
        if absent:
            raise ConfigError(
                "the openssl TLS engine needs functions the installed cryptography binding lacks "
                f"({', '.join(absent[:5])}); use --tls-engine stdlib"
            )

    def contexts(self, material: Material) -> OpensslContexts:
        return OpensslContexts(material)
