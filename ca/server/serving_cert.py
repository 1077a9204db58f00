"""The CA server's own TLS identity: issued by its own CA, rotated before it expires."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import grpc
from cryptography.hazmat.primitives import serialization

from ca.common.clock import Clock
from ca.issuance import profile
from ca.issuance.authority import SigningAuthority
from ca.issuance.issuer import SerialSource, random_serial
from ca.issuance.keys import KeyAlgorithm, generate_private_key, private_key_pem
from ca.issuance.spiffe_id import SpiffeId

SERVING_TTL = timedelta(days=30)


@dataclass(frozen=True)
class ServingCertificate:
    chain_pem: bytes
    key_pem: bytes
    not_before: datetime
    not_after: datetime

    def renew_at(self) -> datetime:
        return self.not_before + (self.not_after - self.not_before) / 2


class ServingIdentity:
    """Holds the current serving certificate; gRPC asks for it on each new handshake."""

    def __init__(
        self,
        *,
        authority: SigningAuthority,
        hosts: Sequence[str],
        spiffe_id: SpiffeId,
        clock: Clock,
        serials: SerialSource = random_serial,
        ttl: timedelta = SERVING_TTL,
    ) -> None:
        self._authority = authority
        self._hosts = tuple(hosts)
        self._spiffe_id = spiffe_id
        self._clock = clock
        self._serials = serials
        self._ttl = ttl
        self._lock = threading.Lock()
        self._current = self._issue()

    @property
    def current(self) -> ServingCertificate:
        return self._current

    def rotate(self) -> ServingCertificate:
        with self._lock:
            self._current = self._issue()
            return self._current

    def use_authority(self, authority: SigningAuthority) -> ServingCertificate:
        """Sign with `authority` from now on, and trust client certificates under its bundle:
        a new serving certificate is issued at once, and each listener picks both up at its
        next handshake."""
        with self._lock:
            self._authority = authority
            self._current = self._issue()
            return self._current

    def _issue(self) -> ServingCertificate:
        key = generate_private_key(KeyAlgorithm.EC_P256)
        issuer_cert = self._authority.signing_cert
        not_before, not_after = profile.leaf_validity(
            now=self._clock.now(), ttl=self._ttl, issuer=issuer_cert
        )
        cert = profile.sign(
            profile.serving_leaf(
                subject_key=key.public_key(),
                hosts=self._hosts,
                spiffe_id=self._spiffe_id,
                issuer=issuer_cert,
                serial=self._serials(),
                not_before=not_before,
                not_after=not_after,
            ),
            self._authority.signing_key,
        )
        leaf = cert.public_bytes(serialization.Encoding.PEM)
        chain = leaf + "".join(self._authority.response_tail[:-1]).encode()
        return ServingCertificate(
            chain_pem=chain,
            key_pem=private_key_pem(key),
            not_before=not_before,
            not_after=not_after,
        )

    def _configuration(self, *, require_client_cert: bool) -> grpc.ServerCertificateConfiguration:
        with self._lock:
            current, authority = self._current, self._authority
        roots = authority.trust_bundle_pem().encode() if require_client_cert else None
        return grpc.ssl_server_certificate_configuration(
            [(current.key_pem, current.chain_pem)], root_certificates=roots
        )

    def server_credentials(self, *, require_client_cert: bool) -> grpc.ServerCredentials:
        seen = self._current

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            nonlocal seen
            if self._current is seen:
                return None
            seen = self._current
            return self._configuration(require_client_cert=require_client_cert)

        return grpc.dynamic_ssl_server_credentials(
            self._configuration(require_client_cert=require_client_cert),
            fetch,  # type: ignore[arg-type]
            require_client_authentication=require_client_cert,
        )
