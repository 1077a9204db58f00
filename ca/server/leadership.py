"""This replica's part in the leader election, and the singleton work that follows leadership.

Every replica serves issuance; the work that must run on one replica at a time runs only on the
one the election chose (`ca.kube.leader`: a Lease with a cluster; `ca.kube.election.SoleElector`, the
single process, without):

- scheduled jobs wrapped by `singleton(job)`: they run on every replica's scheduler and return at
  once where this replica does not lead (ledger checkpoints and compaction);
- the trust bundle ConfigMap in every namespace (`ca.kube.bundles.RootCertPublisher`) and, with
  the injection webhook, the caBundle of its MutatingWebhookConfiguration
  (`ca.kube.webhook_config.CaBundlePatcher`), started together (`PublisherGroup`) when this
  replica becomes leader and stopped when it stops leading.

The election's callbacks must return quickly (the lease is not renewed while they run), so they
only wake a worker thread of this module, which brings the publisher in line with `is_leader`:
it starts one (retrying a start that failed, such as an API server that did not list in time) or
stops it. One worker does both, so a start and a stop never overlap.

`on_trust_bundle(pem)` is where a change of the CA's roots arrives: the publisher (if this
replica leads) writes it to every namespace, and `roots()` (the SPIFFE bundle endpoint's source,
on every replica) answers it from the next call on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from cryptography import x509

from ca.common.clock import Clock
from ca.issuance.authority import load_pem_certificates
from ca.kube.election import Elector

log = logging.getLogger("meshca")

PUBLISHER_START_WAIT_S = 10.0  # for both watches to list the cluster
PUBLISHER_RETRY_S = 5.0  # after a publisher that did not start
IDLE_WAIT_S = 3600.0  # nothing to do: the worker sleeps until woken


class BundlePublisher(Protocol):
    """Publishes the trust bundle where consumers read it (RootCertPublisher); one instance runs
    once."""

    def start(self, wait_s: float) -> None: ...

    def set_bundle(self, bundle_pem: str) -> None: ...

    def stop(self) -> None: ...


class PublisherGroup:
    """Several publishers run as one (the trust bundle ConfigMaps and the injection webhook's
    caBundle): started in order, and if one cannot start, those already started are stopped and
    the failure raised, so that the leader's worker retries the whole group."""

    def __init__(self, publishers: Sequence[BundlePublisher]) -> None:
        self._publishers = tuple(publishers)

    def start(self, wait_s: float) -> None:
        started: list[BundlePublisher] = []
        try:
            for publisher in self._publishers:
                publisher.start(wait_s)
                started.append(publisher)
        except BaseException:
            for publisher in reversed(started):
                publisher.stop()
            raise

    def set_bundle(self, bundle_pem: str) -> None:
        for publisher in self._publishers:
            publisher.set_bundle(bundle_pem)

    def stop(self) -> None:
        for publisher in reversed(self._publishers):
            publisher.stop()


Callback = Callable[[], None]
ElectorFactory = Callable[[Callback, Callback], Elector]
"""Builds the elector with its (on_started_leading, on_stopped_leading) callbacks."""
PublisherFactory = Callable[[str], BundlePublisher]
"""Builds a publisher of the given bundle PEM."""


class Leadership:
    """See the module's description. `start()` joins the election; `stop()` leaves it (releasing
    the lease, so another replica takes over at its next try) and stops the singleton work."""

    def __init__(
        self,
        *,
        identity: str,
        make_elector: ElectorFactory,
        bundle_pem: str,
        clock: Clock,
        make_publisher: PublisherFactory | None = None,
        retry_s: float = PUBLISHER_RETRY_S,
    ) -> None:
        self.identity = identity
        self._clock = clock
        self._make_publisher = make_publisher
        self._retry_s = retry_s
        self._lock = threading.Lock()
        self._bundle_pem = bundle_pem
        self._roots = tuple(load_pem_certificates(bundle_pem.encode(), "the trust bundle"))
        self._publisher: BundlePublisher | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._worker = threading.Thread(target=self._run, name="leader-work", daemon=True)
        self._elector = make_elector(self._started_leading, self._stopped_leading)

    @property
    def is_leader(self) -> bool:
        return self._elector.is_leader and not self._stopping.is_set()

    @property
    def publishing(self) -> bool:
        """Whether this replica's trust bundle publisher is running."""
        with self._lock:
            return self._publisher is not None

    def start(self) -> None:
        self._worker.start()
        self._elector.start()

    def stop(self) -> None:
        """Leaves the election, then stops the singleton work (waits for the worker)."""
        self._elector.stop(release=True)
        self._stopping.set()
        self._wake.set()
        if self._worker.ident is not None:
            self._worker.join(PUBLISHER_START_WAIT_S + 5)
        self._stop_publisher()

    def singleton(self, job: Callback) -> Callback:
        """`job` made to run only while this replica leads (for the scheduler)."""

        def run_if_leader() -> None:
            if self.is_leader:
                job()

        run_if_leader.__name__ = getattr(job, "__name__", "singleton_job")
        return run_if_leader

    # The trust bundle.

    @property
    def trust_bundle_pem(self) -> str:
        with self._lock:
            return self._bundle_pem

    def roots(self) -> tuple[x509.Certificate, ...]:
        """The roots of the current trust bundle."""
        with self._lock:
            return self._roots

    def on_trust_bundle(self, bundle_pem: str) -> None:
        """The CA's trust bundle is now `bundle_pem`: publish it (if leading) and serve it."""
        roots = tuple(load_pem_certificates(bundle_pem.encode(), "the new trust bundle"))
        with self._lock:
            if bundle_pem == self._bundle_pem:
                return
            self._bundle_pem, self._roots = bundle_pem, roots
            publisher = self._publisher
        log.info("the trust bundle changed", extra={"roots": len(roots), "replica": self.identity})
        if publisher is not None:
            publisher.set_bundle(bundle_pem)

    # The election's callbacks (its thread): log, then hand the work to the worker.

    def _started_leading(self) -> None:
        log.info("this replica leads: singleton work runs here", extra={"replica": self.identity})
        self._wake.set()

    def _stopped_leading(self) -> None:
        log.info("this replica no longer leads: singleton work stops here", extra={"replica": self.identity})
        self._wake.set()

    # The worker: brings the publisher in line with is_leader.

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            wait_s = self._sync()
            self._clock.wait(self._wake, wait_s)

    def _sync(self) -> float:
        """One step; returns how long to wait unless woken."""
        if not self.is_leader:
            self._stop_publisher()
            return IDLE_WAIT_S
        if self._make_publisher is None or self.publishing:
            return IDLE_WAIT_S
        bundle = self.trust_bundle_pem
        try:
            publisher = self._make_publisher(bundle)
            publisher.start(PUBLISHER_START_WAIT_S)
        except Exception as err:
            log.warning(
                "could not start publishing the trust bundle ConfigMaps; will retry",
                extra={"detail": str(err), "retry_in_s": self._retry_s, "replica": self.identity},
            )
            return self._retry_s
        with self._lock:
            self._publisher = publisher
            latest = self._bundle_pem
        if latest != bundle:  # changed while it started
            publisher.set_bundle(latest)
        log.info("publishing the trust bundle ConfigMaps", extra={"replica": self.identity})
        # Leadership may have ended while it started: the next step (at once) stops it again.
        return 0.0 if not self.is_leader else IDLE_WAIT_S

    def _stop_publisher(self) -> None:
        with self._lock:
            publisher, self._publisher = self._publisher, None
        if publisher is None:
            return
        publisher.stop()
        log.info("stopped publishing the trust bundle ConfigMaps", extra={"replica": self.identity})
