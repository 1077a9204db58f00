"""An HTTPS server on a certificate that may change: the TLS half shared by meshca's HTTPS endpoints
(the SPIFFE bundle endpoint, the injection webhook).

The certificate and key come from `certificate()`, asked again on every connection: a renewed
certificate serves from the next handshake on, and the TLS context is rebuilt only when the
material differs from the last one loaded. The listening thread only accepts; each connection's
handshake and request run on a thread of their own, so a slow or silent client holds up only
itself. No client certificate is asked for.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from ca.errors import ConfigError, MeshcaError
from ca.net.listening import listen_error
from ca.net.tls_keys import load_chain_and_key

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 10.0


class ServingMaterial(Protocol):
    """A certificate chain (the server's first) and its private key, both PEM."""

    @property
    def chain_pem(self) -> bytes: ...

    @property
    def key_pem(self) -> bytes: ...


CertificateSource = Callable[[], ServingMaterial]


def server_context(material: ServingMaterial, *, what: str = "the HTTPS endpoint") -> ssl.SSLContext:
    """A TLS server context on `material`; TLS 1.2 at least, no client certificate asked for.

    The key touches the disk only for the moment of loading (ca.net.tls_keys). `what` names the
    endpoint in the error of a certificate or key that cannot be loaded.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    try:
        load_chain_and_key(context, material.chain_pem, material.key_pem, prefix="meshca-https-")
    except (ssl.SSLError, ValueError, OSError) as err:
        raise ConfigError(
            f"{what}'s certificate or key cannot be loaded ({err}); give it a PEM certificate chain "
            "and the private key of its first certificate"
        ) from err
    return context


class TlsContexts:
    """The TLS context of the current serving material, rebuilt when the material changes."""

    def __init__(self, certificate: CertificateSource, *, what: str) -> None:
        self._certificate = certificate
        self._what = what
        self._lock = threading.Lock()
        self._loaded: tuple[bytes, bytes] | None = None
        self._context: ssl.SSLContext | None = None

    def current(self) -> ssl.SSLContext:
        material = self._certificate()
        wanted = (material.chain_pem, material.key_pem)
        with self._lock:
            if self._context is None or wanted != self._loaded:
                self._context = server_context(material, what=self._what)
                self._loaded = wanted
            return self._context


class TlsHttpServer(ThreadingHTTPServer):
    """A threading HTTP server whose connections are wrapped in TLS on their own thread.

    `handler` is the request handler class; it reaches the server (and whatever the caller hung
    on it) as `self.server`. Raises OSError as a bind does.
    """

    daemon_threads = True
    service: Any = None  # the endpoint this server serves, for its handlers

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        contexts: TlsContexts,
        *,
        what: str,
    ) -> None:
        self.contexts = contexts
        self.what = what
        self._handler = handler
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            context = self.contexts.current()
        except MeshcaError as err:
            log.error(f"{self.what}: no usable certificate", extra={"detail": str(err)})
            return
        request.settimeout(HANDSHAKE_TIMEOUT_S)
        # The headers and the body of an answer are written apart: without this, the body waits for
        # the client's delayed ACK of the headers (40 ms a request on a kept-alive connection).
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            connection = context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as err:
            log.debug(f"{self.what}: TLS handshake failed", extra={"detail": str(err)})
            return
        try:
            self._handler(connection, client_address, self)
        finally:
            connection.close()


class TlsHttpService:
    """One HTTPS endpoint: bound at construction, served on a thread of its own from `serve()`.

    Port 0 picks a free port; `port` is the one bound. The handler reaches the endpoint as
    `self.server.service`. An address that cannot be listened on is a ConfigError naming `flag`; a
    certificate that cannot be loaded fails here, not at the first client.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        handler: type[BaseHTTPRequestHandler],
        certificate: CertificateSource,
        what: str,
        flag: str,
        path: str,
        thread_name: str,
        server_class: type[TlsHttpServer] = TlsHttpServer,
    ) -> None:
        self.path = path
        self._host = host
        contexts = TlsContexts(certificate, what=f"the {what}")
        contexts.current()
        try:
            self._server = server_class((host, port), handler, contexts, what=what)
        except OSError as err:
            raise listen_error(flag, f"{host}:{port}", err) from err
        self._server.service = self
        self.port: int = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.5}, name=thread_name, daemon=True
        )

    @property
    def url(self) -> str:
        return f"https://{shown_host(self._host)}:{self.port}{self.path}"

    def serve(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stops listening at once; the serving thread ends within its poll interval (0.5 s)."""
        if self._thread.is_alive():
            threading.Thread(
                target=self._server.shutdown, name=f"{self._thread.name}-stop", daemon=True
            ).start()
        self._server.server_close()


def shown_host(host: str) -> str:
    """`host` as it goes in a URL (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host
