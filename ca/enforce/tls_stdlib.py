"""TLS on Python's `ssl` module (the `stdlib` engine): always available, slower handshakes.

`ssl.SSLContext.load_cert_chain` reads only files, so the chain and key are
written to a private temporary directory (0700, the key 0600) for the moment
of loading and removed at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import ssl

from ca.enforce.tls import (
    HANDSHAKE_DONE,
    TLS12_CIPHERS,
    WANT_READ,
    WANT_WRITE,
    Material,
    TlsFailure,
)
from ca.errors import ConfigError
from ca.net.tls_keys import load_chain_and_key


def _context(protocol: int, material: Material) -> ssl.SSLContext:
    context = ssl.SSLContext(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_IGNORE_UNEXPECTED_EOF
    context.set_ciphers(TLS12_CIPHERS)
    context.check_hostname = False  # peers are checked by SPIFFE ID, not host name
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        load_chain_and_key(context, material.chain_pem, material.key_pem, prefix="meshca-enforce-")
        context.load_verify_locations(cadata=material.roots_pem.decode("ascii"))
    except (ssl.SSLError, ValueError, OSError) as err:
        raise ConfigError(f"the workload certificate, key or roots cannot be loaded: {err}") from err
    return context


def _failure(err: ssl.SSLError, *, server: bool) -> TlsFailure:
    reason = getattr(err, "reason", None) or ""
    if isinstance(err, ssl.SSLCertVerificationError):
        who = "client" if server else "server"
        return TlsFailure(
            f"untrusted_{who}_cert", f"the {who} certificate does not verify: {err.verify_message}"
        )
    if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return TlsFailure("no_client_cert", "the client sent no certificate")
    if isinstance(err, ssl.SSLEOFError):
        return TlsFailure("handshake_eof", "the peer closed the connection")
    return TlsFailure("handshake_failed", str(err))


class StdlibConnection:
    __slots__ = ("_server", "sock")
    drains_in_one_read = False

    def __init__(
        self, context: ssl.SSLContext, sock: socket.socket, *, server: bool, server_name: str | None
    ) -> None:
        self._server = server
        self.sock = context.wrap_socket(
            sock, server_side=server, server_hostname=server_name, do_handshake_on_connect=False
        )

    def fileno(self) -> int:
        return self.sock.fileno()

    def handshake(self) -> int:
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            return WANT_READ
        except ssl.SSLWantWriteError:
            return WANT_WRITE
        except ssl.SSLError as err:
            raise _failure(err, server=self._server) from None
        except OSError as err:
            raise TlsFailure("handshake_eof", f"the connection broke: {err}") from None
        return HANDSHAKE_DONE

    def read_into(self, buffer: memoryview) -> int:
        try:
            return self.sock.recv_into(buffer)
        except ssl.SSLWantReadError:
            return WANT_READ
        except ssl.SSLWantWriteError:
            return WANT_WRITE
        except ssl.SSLZeroReturnError:
            return 0
        except ssl.SSLError as err:
            raise TlsFailure("tls_error", str(err)) from None

    def write(self, data: bytes | memoryview) -> int:
        try:
            return self.sock.send(data)
        except ssl.SSLWantWriteError:
            return WANT_WRITE
        except ssl.SSLWantReadError:
            return WANT_READ
        except ssl.SSLError as err:
            raise TlsFailure("tls_error", str(err)) from None

    def shutdown_write(self) -> None:
        # Only the TCP FIN: SSLSocket.unwrap and SSLSocket.shutdown both drop the TLS state, after
        # which reads would return raw ciphertext, and the other direction may still be open.
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self.sock, socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()

    def peer_fingerprint(self) -> bytes | None:
        der = self.sock.getpeercert(binary_form=True)
        return None if der is None else hashlib.sha256(der).digest()

    def peer_der(self) -> bytes | None:
        return self.sock.getpeercert(binary_form=True)

    def version(self) -> str:
        return self.sock.version() or ""

    def cipher(self) -> str:
        cipher = self.sock.cipher()
        return cipher[0] if cipher else ""


class StdlibContexts:
    def __init__(self, material: Material) -> None:
        self.material = material
        self._server = _context(ssl.PROTOCOL_TLS_SERVER, material)
        self._client = _context(ssl.PROTOCOL_TLS_CLIENT, material)

    def accept(self, sock: socket.socket) -> StdlibConnection:
        return StdlibConnection(self._server, sock, server=True, server_name=None)

    def connect(self, sock: socket.socket, server_name: str | None) -> StdlibConnection:
        return StdlibConnection(self._client, sock, server=False, server_name=server_name)


class StdlibEngine:
    name = "stdlib"

    def contexts(self, material: Material) -> StdlibContexts:
        return StdlibContexts(material)
