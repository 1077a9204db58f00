"""Renewal by mutual TLS: a workload proves itself with a still-valid certificate of ours.

The TLS layer has already checked that the chain leads to our trust bundle;
here we check the certificate is a workload SVID of our trust domain, is
still valid by our clock, and (when the CA keeps revocations) is not revoked.
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography import x509

from ca.auth.base import Caller, Credentials
from ca.common.clock import Clock
from ca.errors import AuthenticationError, InvalidSpiffeIdError
from ca.issuance.authority import valid_at
from ca.issuance.spiffe_id import SpiffeId
from ca.issuance.svid_id import svid_spiffe_id


def _refused(problem: str) -> AuthenticationError:
    return AuthenticationError(
        f"the client certificate cannot be used for renewal: {problem}; "
        "request a new certificate with the service-account token instead",
        reason="client_cert_invalid",
    )


RevocationCheck = Callable[[str], bool]
"""Whether the certificate with this serial (lower-case hex, no leading zeros) is revoked."""


class ClientCertificateAuthenticator:
    name = "client-certificate"

    def __init__(self, *, trust_domain: str, clock: Clock, is_revoked: RevocationCheck | None = None) -> None:
        self._trust_domain = trust_domain
        self._clock = clock
        self._is_revoked = is_revoked

    def authenticate(self, credentials: Credentials) -> Caller | None:
        pem = credentials.peer_certificate_pem
        if not pem:
            return None
        try:
            cert = x509.load_pem_x509_certificate(pem.encode())
        except ValueError as err:
            raise _refused(f"it cannot be parsed ({err})") from err
        if not valid_at(cert, self._clock.now()):
            raise _refused(f"it is valid only from {cert.not_valid_before_utc} to {cert.not_valid_after_utc}")
        spiffe_id = self._workload_id(cert)
        serial = format(cert.serial_number, "x")
        if self._is_revoked is not None and self._is_revoked(serial):
            raise AuthenticationError(
                f"the client certificate (serial {serial}, {spiffe_id}) is revoked; request a new "
                "certificate with the service-account token instead",
                reason="client_cert_revoked",
            )
        workload = spiffe_id.workload()
        assert workload is not None
        return Caller(
            spiffe_id=spiffe_id,
            namespace=workload[0],
            service_account=workload[1],
            method=self.name,
            expires_at=cert.not_valid_after_utc,
            certificate_serial=serial,
        )

    def _workload_id(self, cert: x509.Certificate) -> SpiffeId:
        try:
            spiffe_id = svid_spiffe_id(cert)
        except InvalidSpiffeIdError as err:
            raise _refused(str(err)) from err
        if not spiffe_id.is_member_of(self._trust_domain) or spiffe_id.workload() is None:
            raise _refused(f"{spiffe_id} is not a workload of trust domain {self._trust_domain}")
        return spiffe_id
