"""The SPIFFE bundle endpoint: this trust domain's bundle over HTTPS, so that other trust domains can
federate with it.

A GET of the endpoint's path answers the bundle (`ca.issuance.spiffe_bundle`) as
`application/json`. The roots are asked of `roots()` on every request, so a root a rotation
publishes or withdraws is served from the next request on, under a higher `spiffe_sequence`.
The server's certificate and key come from `certificate()`, asked again on every connection: a
renewed certificate serves from the next handshake on. No client certificate is asked for, as
the bundle is public; the consumer authenticates the endpoint, by Web PKI or by the SPIFFE ID in
the endpoint's certificate.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import timedelta
from urllib.parse import urlsplit

from cryptography import x509

from ca.common.clock import Clock
from ca.errors import MeshcaError
from ca.issuance.spiffe_bundle import DEFAULT_REFRESH_HINT, SpiffeBundle, next_sequence
from ca.net.status_http import QuietHandler
from ca.net.tls_http import CertificateSource, TlsHttpServer, TlsHttpService

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/json"
REQUEST_TIMEOUT_S = 30.0


RootsSource = Callable[[], Sequence[x509.Certificate]]


class _Server(TlsHttpServer):
    service: BundleEndpoint


class _Handler(QuietHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT_S

    def do_GET(self) -> None:
        endpoint = self.server.service
        if urlsplit(self.path).path != endpoint.path:
            self._send(404, f"not found; the SPIFFE bundle is at {endpoint.path}\n".encode(), "text/plain")
            return
        try:
            body = endpoint.bundle_json()
        except MeshcaError as err:
            log.error("SPIFFE bundle endpoint: cannot build the bundle", extra={"detail": str(err)})
            self._send(503, b"the trust bundle is not available; see the CA's log\n", "text/plain")
            return
        self._send(200, body, CONTENT_TYPE)


class BundleEndpoint(TlsHttpService):
    """Serves the SPIFFE bundle of `roots()` at `https://host:port/path`.

    Port 0 picks a free port; `port` is the one bound. `start()` checks that the roots make a
    bundle and serves on a thread of its own; `stop()` ends it. An address that cannot be
    listened on is a ConfigError naming `flag`.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        roots: RootsSource,
        certificate: CertificateSource,
        clock: Clock,
        refresh_hint: timedelta = DEFAULT_REFRESH_HINT,
        path: str = "/",
        flag: str = "--bundle-endpoint-listen",
        thread_name: str = "bundle-endpoint",
    ) -> None:
        self._roots = roots
        self._clock = clock
        self._refresh_hint = refresh_hint
        self._lock = threading.Lock()
        self._bundle: SpiffeBundle | None = None
        self._json = b""
        super().__init__(
            host,
            port,
            handler=_Handler,
            certificate=certificate,
            what="SPIFFE bundle endpoint",
            flag=flag,
            path=path,
            thread_name=thread_name,
            server_class=_Server,
        )

    def start(self) -> None:
        bundle = self.bundle()
        self.serve()
        log.info(
            "SPIFFE bundle endpoint serving",
            extra={"url": self.url, "roots": len(bundle.roots), "sequence": bundle.sequence},
        )

    def bundle(self) -> SpiffeBundle:
        """The bundle served now: a new sequence number whenever the roots differ from the last ones."""
        roots = tuple(self._roots())
        with self._lock:
            if self._bundle is not None and self._bundle.same_keys(roots):
                return self._bundle
            previous = None if self._bundle is None else self._bundle.sequence
            bundle = SpiffeBundle.of(
                roots, sequence=next_sequence(previous, self._clock.now()), refresh_hint=self._refresh_hint
            )
            self._bundle, self._json = bundle, bundle.to_json()
        if previous is not None:
            log.info(
                "SPIFFE bundle endpoint: the roots changed",
                extra={"roots": len(roots), "sequence": bundle.sequence, "previous_sequence": previous},
            )
        return bundle

    def bundle_json(self) -> bytes:
        bundle = self.bundle()
        with self._lock:
            return self._json if self._bundle is bundle else bundle.to_json()
