"""The sidecar injection webhook: AdmissionReview (admission.k8s.io/v1) over HTTPS, as the API
server calls a mutating admission webhook.

A POST of an AdmissionReview to the webhook's path (`/inject`) answers the review
`ca.inject.review` makes of it: for a Pod being created, allowed with a JSONPatch that adds
meshca's sidecars. A body that is not a review is answered 400 with the reason and logged (the
API server then applies the webhook's failurePolicy); a failure of meshca's own is answered 500
and logged with its traceback. Neither ends the server.

TLS is `ca.net.tls_http`'s: the certificate is asked of `certificate()` at every connection, so
the webhook serves a renewed or re-issued certificate (after a CA key transition) from the next
handshake on. The API server checks it against the caBundle of the MutatingWebhookConfiguration,
which the leading replica keeps equal to the CA's trust bundle (`ca.kube.webhook_config`).
"""

from __future__ import annotations

import logging
import threading
from urllib.parse import urlsplit

from ca.errors import InvalidRequestError
from ca.inject.review import answer_review
from ca.inject.settings import InjectSettings
from ca.net.status_http import QuietHandler
from ca.net.tls_http import CertificateSource, TlsHttpServer, TlsHttpService

log = logging.getLogger(__name__)

PATH = "/inject"
CONTENT_TYPE = "application/json"
REQUEST_TIMEOUT_S = 30.0
MAX_BODY_BYTES = 8 * 1024 * 1024  # the API server's own limit on an object is 3 MiB


class _Server(TlsHttpServer):
    service: InjectionWebhook


class _Handler(QuietHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT_S
    protocol_version = "HTTP/1.1"  # the API server keeps its connections to webhooks open

    def do_POST(self) -> None:
        webhook = self.server.service
        try:
            length = int(self.headers.get("Content-Length") or "")
        except ValueError:
            self.close_connection = True  # how much body follows is unknown
            self._refuse(411, "a Content-Length header is required", log_it=True)
            return
        if not 0 <= length <= MAX_BODY_BYTES:
            self.close_connection = True  # the body is left unread
            self._refuse(413, f"the body is over {MAX_BODY_BYTES} bytes", log_it=True)
            return
        body = self.rfile.read(length)  # read in full before any answer, or closing resets the connection
        if urlsplit(self.path).path != webhook.path:
            self._send(404, f"not found; the injection webhook is at POST {webhook.path}\n".encode())
            return
        try:
            answer = answer_review(body, webhook.settings)
        except InvalidRequestError as err:
            self._refuse(400, f"not an admission review: {err.message}", log_it=True)
            return
        except Exception:
            log.exception("injection webhook: the review failed", extra={"client": self.client_address[0]})
            self._send(500, b"meshca could not answer the review; see its log\n", "text/plain")
            return
        webhook.count(answer.patched > 0)
        extra = {"pod": answer.pod, "uid": answer.uid, "operations": answer.patched}
        if answer.refusal is not None:
            log.warning("injection webhook: refused a pod", extra={**extra, "detail": answer.refusal})
        elif answer.patched:
            log.info("injection webhook: injected a pod", extra=extra)
        else:
            log.debug("injection webhook: left a pod unchanged", extra=extra)
        for warning in answer.warnings:
            log.info("injection webhook: warning for the pod's creator", extra={**extra, "detail": warning})
        self._send(200, answer.body(), CONTENT_TYPE)

    def do_GET(self) -> None:
        self._refuse(405, f"the injection webhook answers POST {self.server.service.path} only")
        self.close_connection = True

    def _refuse(self, code: int, message: str, *, log_it: bool = False) -> None:
        if log_it:
            log.warning(
                "injection webhook: refused a request",
                extra={"status": code, "detail": message, "client": self.client_address[0]},
            )
        self._send(code, f"{message}\n".encode(), "text/plain")


class InjectionWebhook(TlsHttpService):
    """Serves the injection webhook at `https://host:port/inject` with `settings`.

    Port 0 picks a free port; `port` is the one bound. `start()` serves on a thread of its own;
    `stop()` ends it. An address that cannot be listened on is a ConfigError naming `flag`; a
    certificate that cannot be loaded fails in the constructor, not at the first review.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        settings: InjectSettings,
        certificate: CertificateSource,
        flag: str = "--webhook-listen",
        path: str = PATH,
        thread_name: str = "injection-webhook",
    ) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._reviews = {"injected": 0, "unchanged": 0}
        super().__init__(
            host,
            port,
            handler=_Handler,
            certificate=certificate,
            what="injection webhook",
            flag=flag,
            path=path,
            thread_name=thread_name,
            server_class=_Server,
        )

    def start(self) -> None:
        self.serve()
        log.info("injection webhook serving", extra={"url": self.url})

    def count(self, injected: bool) -> None:
        with self._lock:
            self._reviews["injected" if injected else "unchanged"] += 1

    def reviews(self) -> dict[str, int]:
        """How many pod reviews were answered with a patch, and how many without."""
        with self._lock:
            return dict(self._reviews)
