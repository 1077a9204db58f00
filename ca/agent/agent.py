"""The agent's loop, one attempt at a time: each attempt says when the next is due.

No sleeping and no threads here: the scheduler (ca.agent.runner) calls
`attempt()` at the time the previous attempt asked for, and tests call it with
a fake clock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from ca.agent.schedule import RenewalPolicy
from ca.agent.svid import Svid, accept_response
from ca.common.backoff import Backoff, Retrying, UniformRandom
from ca.common.clock import Clock
from ca.errors import MeshcaError
from ca.issuance.keys import KeyAlgorithm, PrivateKey
from ca.issuance.spiffe_id import SpiffeId
from ca.issuance.svid_id import svid_spiffe_id

log = logging.getLogger("meshca.agent")
MIN_INTERVAL = timedelta(seconds=1)


Metadata = Sequence[tuple[str, str]]


class CertificateSource(Protocol):
    def create_certificate(self, csr_pem: str, ttl_seconds: int, *, metadata: Metadata = ()) -> list[str]:
        """The chain the CA issued; `metadata` goes with the request (a rotation order's)."""
        ...


@dataclass(frozen=True, kw_only=True)
class Replacement:
    """The certificate the agent's next one replaces: one a rotation order named (`order_id`), or
    the one it held before it restarted (no order: the CA links the new certificate to the oldest
    order still pushing to that one, if any)."""

    serial: str  # lower-case hex
    order_id: str | None = None

    def metadata(self) -> Metadata:
        """What the request for the new certificate says, so the CA's ledger links the two."""
        replaces = ("meshca-replaces", self.serial)
        return (replaces,) if self.order_id is None else (("meshca-order", self.order_id), replaces)


def held_before_restart(leaf: x509.Certificate | None, expected: SpiffeId | None) -> Replacement | None:
    """What a restarted agent's first certificate replaces: `leaf`, the certificate it last wrote,
    if it is one of the agent's own identity (`expected`, from its token)."""
    if leaf is None or expected is None:
        return None
    try:
        spiffe_id = svid_spiffe_id(leaf)
    except MeshcaError:
        return None
    if spiffe_id != expected:
        return None
    return Replacement(serial=format(leaf.serial_number, "x"))


class SvidSink(Protocol):
    def publish(self, svid: Svid) -> None:
        """Make this SVID the one served; called only with validated SVIDs."""
        ...


class AgentObserver(Protocol):
    def attempted(self, *, seconds: float, failure: str | None = None) -> None:
        """One request to the CA took `seconds`; `failure` is its error's reason when it failed."""
        ...

    def holding(self, svid: Svid | None, now: datetime) -> None: ...


def build_csr(key: PrivateKey, spiffe_id: SpiffeId | None) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if spiffe_id is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id.uri)]), critical=True
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


@dataclass(frozen=True, kw_only=True)
class AgentSettings:
    """How the agent asks for certificates: their trust domain, key type and TTL, when to renew, how
    to back off after a failure, and the identity its token names (a CA answer must match it)."""

    trust_domain: str
    key_type: KeyAlgorithm
    ttl: timedelta
    renewal: RenewalPolicy
    backoff: Backoff
    expected_identity: Callable[[], SpiffeId | None]


class Agent:
    def __init__(
        self,
        *,
        settings: AgentSettings,
        source: CertificateSource,
        sinks: Sequence[SvidSink],
        clock: Clock,
        random: UniformRandom,
        generate_key: Callable[[KeyAlgorithm], PrivateKey],
        observer: AgentObserver | None = None,
    ) -> None:
        self._settings = settings
        self._source = source
        self._sinks = tuple(sinks)
        self._clock = clock
        self._random = random
        self._generate_key = generate_key
        self._observer = observer
        self._retrying = Retrying(settings.backoff, random)
        self._replacing: Replacement | None = None
        self.current: Svid | None = None
        self.last_error: MeshcaError | None = None

    @property
    def consecutive_failures(self) -> int:
        return self._retrying.attempt

    def replace_for(self, replacement: Replacement) -> None:
        """Follow a rotation order: the next attempts (until one succeeds) ask for the new
        certificate with the order's metadata. The caller schedules the attempt."""
        self._replacing = replacement

    def resume(self, leaf: x509.Certificate | None) -> None:
        """Before the first attempt: `leaf` is the certificate a previous run of this agent wrote
        (None if none). If it is of this agent's identity, the first certificate is asked for
        as its replacement, so an order made while the agent was down counts it replaced."""
        held = held_before_restart(leaf, self._settings.expected_identity())
        if held is None:
            return
        log.info(
            "the first certificate replaces the one held before this start", extra={"serial": held.serial}
        )
        self._replacing = held

    def attempt(self) -> datetime:
        """Try once to get a new SVID; return when to try next."""
        started = time.perf_counter()
        replacing = self._replacing
        try:
            svid = self._fetch(replacing)
        except MeshcaError as err:
            return self._after_failure(err, time.perf_counter() - started)
        self._retrying.reset()
        self.last_error = None
        self._replacing = None  # whatever an order asked, the certificate it named is replaced now
        for sink in self._sinks:
            sink.publish(svid)
        replaced, self.current = self.current, svid
        now = self._clock.now()
        self._observe(seconds=time.perf_counter() - started, now=now)
        renew_at = self._settings.renewal.renew_at(now, svid.not_after, self._random)
        _log_new_certificate(svid, replaced, renew_at)
        return max(renew_at, now + MIN_INTERVAL)

    def _fetch(self, replacing: Replacement | None) -> Svid:
        expected = self._settings.expected_identity()
        key = self._generate_key(self._settings.key_type)
        pems = self._source.create_certificate(
            build_csr(key, expected),
            int(self._settings.ttl.total_seconds()),
            metadata=replacing.metadata() if replacing is not None else (),
        )
        return accept_response(
            pems, key, trust_domain=self._settings.trust_domain, expected=expected, now=self._clock.now()
        )

    def _after_failure(self, err: MeshcaError, seconds: float) -> datetime:
        self.last_error = err
        now = self._clock.now()
        delay = timedelta(seconds=self._retrying.next_delay_s())
        self._observe(seconds=seconds, now=now, failure=err.reason)
        held = self.current
        log.warning(
            "certificate request failed" + ("; keeping the last good certificate" if held else ""),
            extra={
                "reason": err.reason,
                "detail": err.message,
                "attempt": self._retrying.attempt,
                "retry_in_s": round(delay.total_seconds(), 3),
                "serving_until": held.not_after.isoformat() if held else None,
            },
        )
        return now + delay

    def _observe(self, *, seconds: float, now: datetime, failure: str | None = None) -> None:
        if self._observer is not None:
            self._observer.attempted(seconds=seconds, failure=failure)
            self._observer.holding(self.current, now)


def _log_new_certificate(svid: Svid, replaced: Svid | None, renew_at: datetime) -> None:
    """The first certificate this agent holds is issued; each one after it is rotated, and names
    the serial it replaces."""
    fields: dict[str, object] = {
        "spiffe_id": svid.spiffe_id.uri,
        "not_after": svid.not_after.isoformat(),
        "serial": _serial(svid),
        "renew_at": renew_at.isoformat(),
    }
    if replaced is None:
        log.info("certificate issued", extra=fields)
    else:
        log.info("certificate rotated", extra={**fields, "replaced_serial": _serial(replaced)})


def _serial(svid: Svid) -> str:
    return format(svid.leaf.serial_number, "x")
