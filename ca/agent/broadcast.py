"""What the agent serves, handed to every open stream and to the file sink when it changes.

Three things change: the SVID (at each issuance), the CA's revocation lists and its trust
bundle (when the control stream brings new ones; a bundle replaces the roots the SVID came
with, until the next SVID brings its own). Each change bumps one version, and each open
stream (SDS, Workload API) re-reads the snapshot. Streams register a queue and
block on it, so an idle agent wakes for nothing: no polling.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography import x509

from ca.agent.bundle import BundleNotServedError
from ca.agent.svid import Svid
from ca.common.clock import Clock, SystemClock
from ca.issuance.crl import (
    NO_REVOCATIONS,
    InvalidCrlError,
    RevocationLists,
    SuppliedIssuers,
    certificate_der,
    check_in_force,
    load_der_crls,
    supplied_crl_issuers,
    trusted_crl_issuers,
)

log = logging.getLogger("meshca.agent")

Event = tuple[str, Any]


@dataclass(frozen=True, kw_only=True)
class Delivery:
    """What the agent serves now; `version` grows with every change of either part."""

    version: int
    svid: Svid | None
    revocations: RevocationLists


class CrlSink(Protocol):
    def publish_crls(self, revocations: RevocationLists) -> None:
        """Serve these revocation lists from now on (already checked)."""
        ...


class BundleSink(Protocol):
    def publish_bundle(self, roots: Sequence[x509.Certificate]) -> None:
        """Serve these roots from now on (already checked); BundleNotServedError if it cannot."""
        ...


class SvidBroadcast:
    def __init__(
        self,
        crl_sinks: Sequence[CrlSink] = (),
        clock: Clock | None = None,
        bundle_sinks: Sequence[BundleSink] = (),
    ) -> None:
        self._clock = clock or SystemClock()
        self._lock = threading.Lock()
        # One CRL or bundle delivery at a time, in order, to the sinks.
        self._crl_lock = threading.Lock()
        self._svid: Svid | None = None
        self._revocations = NO_REVOCATIONS
        self._version = 0
        self._listeners: set[queue.SimpleQueue[Event]] = set()
        self._crl_sinks = tuple(crl_sinks)
        self._bundle_sinks = tuple(bundle_sinks)

    @property
    def current(self) -> tuple[int, Svid | None]:
        with self._lock:
            return self._version, self._svid

    def snapshot(self) -> Delivery:
        with self._lock:
            return Delivery(version=self._version, svid=self._svid, revocations=self._revocations)

    def publish(self, svid: Svid) -> None:
        with self._lock:
            self._svid = svid
            self._version += 1
            version = self._version
        self._notify("svid", version)

    def publish_crl(self, crl_ders: Sequence[bytes], signer_ders: Sequence[bytes] = ()) -> bool:
        """Serve the CA's revocation lists: the control stream's one call for them.

        `crl_ders` is every CRL the CA sent (RevocationList.crl_der: DER, one per
        issuing CA certificate; an empty CRL still counts, since Envoy needs a CRL for
        the leaf's issuer once it has any). They are delivered together, replacing the
        previous lists: as `crl.pem` in the output directory (switched with the
        certificate files), in the ROOTCA SDS secret (`crl` + `only_verify_leaf_cert_crl`,
        pushed on every open SDS stream), and in the Workload API's X.509 responses.

        `signer_ders` (RevocationList.signer_der) are the CA certificates that signed
        them, with their chains: while the CA rotates, a CRL may come from a signing CA
        that is not in this agent's chain. Those that chain to a root the agent holds are
        trusted as CRL issuers too and written beside crl.pem as crl-signers.pem, so the
        enforcer trusts them as well; the others are ignored, with a log line each.

        Returns True when they were delivered, False when they were ignored because
        they are no newer than what is served (the largest CRL number is not larger;
        an empty sequence has none). Raises InvalidCrlError, serving nothing new, when
        a CRL does not parse, is not signed by a CA of the current SVID's chain or
        trust bundle or by a supplied CA certificate chaining to that bundle, is not in
        force by this node's clock (Envoy would then refuse every handshake), or when
        there is no SVID yet to check it against. Thread-safe.
        """
        crls = load_der_crls(crl_ders)
        supplied = _load_signers(signer_ders)
        now = self._clock.now()
        for crl in crls:
            check_in_force(crl, now)
        with self._crl_lock:
            with self._lock:
                svid, served = self._svid, self._revocations
            if svid is None:
                raise InvalidCrlError(
                    "revocation lists arrived before the agent holds a certificate; "
                    "they cannot be checked against a trust bundle yet"
                )
            trusted = trusted_crl_issuers(svid.chain[1:], svid.roots)
            extra = supplied_crl_issuers(supplied, trusted)
            _log_ignored(extra)
            revocations = RevocationLists.checked(crls, trusted, extra_issuers=extra.trusted)
            if not revocations or revocations.number <= served.number:
                return False
            with self._lock:
                self._revocations = revocations
                self._version += 1
                version = self._version
            self._notify("crl", version)
            for sink in self._crl_sinks:
                sink.publish_crls(revocations)
        log.info(
            "revocation lists delivered",
            extra={
                "crl_number": revocations.number,
                "crls": len(crls),
                "revoked": revocations.entry_count,
                "extra_issuers": len(revocations.extra_issuers),
            },
        )
        return True

    def publish_bundle(self, roots: Sequence[x509.Certificate]) -> None:
        """Serve `roots` (a checked bundle the CA pushed) in place of the current SVID's roots:
        in the ROOTCA SDS secret (pushed on every open SDS stream), in the Workload API's X.509
        responses, and as root-cert.pem (switched with the other files). The next SVID's roots
        replace them. Raises BundleNotServedError, once the sockets serve them, when there is no
        SVID yet or a sink could not take them. Thread-safe."""
        with self._crl_lock:
            with self._lock:
                svid = self._svid
                if svid is None:
                    raise BundleNotServedError(
                        "a trust bundle arrived before the agent holds a certificate; it is served "
                        "with the first one",
                        reason="bundle_before_svid",
                    )
                self._svid = dataclasses.replace(svid, roots=tuple(roots))
                self._version += 1
                version = self._version
            self._notify("bundle", version)
            for sink in self._bundle_sinks:
                sink.publish_bundle(roots)

    def _notify(self, kind: str, version: int) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener.put((kind, version))

    def listen(self) -> queue.SimpleQueue[Event]:
        events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        with self._lock:
            self._listeners.add(events)
        return events

    def forget(self, events: queue.SimpleQueue[Event]) -> None:
        with self._lock:
            self._listeners.discard(events)

    @property
    def listener_count(self) -> int:
        with self._lock:
            return len(self._listeners)


def _load_signers(ders: Sequence[bytes]) -> list[x509.Certificate]:
    """The supplied CA certificates that parse; one that does not is logged and left out (a CRL
    that only it could have vouched for is then refused as from an untrusted CA)."""
    certs = []
    for index, der in enumerate(ders):
        try:
            certs.append(x509.load_der_x509_certificate(der))
        except ValueError as err:
            log.warning(
                "ignored a CA certificate sent with the revocation lists: it is not a DER certificate",
                extra={"index": index + 1, "error": str(err)},
            )
    return certs


def _log_ignored(extra: SuppliedIssuers) -> None:
    for ignored in extra.ignored:
        log.warning(
            "ignored a CA certificate sent with the revocation lists; a CRL only it vouches for is refused",
            extra={
                "subject": ignored.cert.subject.rfc4514_string(),
                "sha256": hashlib.sha256(certificate_der(ignored.cert)).hexdigest(),
                "reason": ignored.reason,
            },
        )
