"""Wiring: builds the CA service from a ServeConfig, starts and stops it."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from apscheduler.schedulers.background import BackgroundScheduler
from cryptography.hazmat.primitives.asymmetric import ed25519
from prometheus_client import generate_latest

from ca.auth.base import Authenticator, AuthenticatorChain
from ca.auth.client_cert import ClientCertificateAuthenticator, RevocationCheck
from ca.auth.jwks import (
    RefreshingKeySet,
    StaticKeySet,
    http_json_fetcher,
    oidc_jwks_fetcher,
)
from ca.auth.jwt_token import JwtAuthenticator, KeySource, PodChecker, TokenRules
from ca.auth.token_cache import TokenCache
from ca.auth.tokenreview import TokenReviewAuthenticator
from ca.common.clock import Clock, SystemClock
from ca.errors import ConfigError, InvalidRequestError
from ca.issuance.authority import SigningAuthority
from ca.issuance.cacerts import load_cacerts_dir
from ca.issuance.issuer import Issuer
from ca.issuance.selfsigned import RootFactory
from ca.issuance.slots import Acknowledgement, Keyring, Slot, Transition
from ca.issuance.spiffe_id import SpiffeId
from ca.kube.election import Elector, SoleElector
from ca.ledger import rotation_operations as operations
from ca.ledger.bundle_holders import SqlBundleHolders
from ca.ledger.changes import ChangeWatcher
from ca.ledger.connected_agents import SqlConnectedAgents
from ca.ledger.ledger import (
    HEAD_FILE,
    HeadFile,
    HeadPublisher,
    Ledger,
    ledger_key_from_pem,
    load_or_create_ledger_key,
    new_ledger_key_pem,
)
from ca.ledger.rotation import RotationStore, Selector
from ca.ledger.rotation_operations import RotationRequest
from ca.ledger.rotation_store import SqlRotationStore
from ca.ledger.schema import CURRENT_VERSION
from ca.ledger.store import open_migrated
from ca.net.bundle_endpoint import BundleEndpoint
from ca.net.listening import check_free, remove_ports_file, split_address, write_ports_file
from ca.net.status_http import StatusServer
from ca.server import state_dir
from ca.server.admin_api import LedgerAdminService, build_admin_service
from ca.server.ca_keys import CaKeys, TransitionRecorder, answer_ca_request
from ca.server.ca_keys_api import CaKeysService
from ca.server.ca_requests import CaInbox, StatusHeartbeat
from ca.server.ca_status import status_document
from ca.server.certificate_api import CertificateService, OutstandingOrders
from ca.server.connections import SharedConnections
from ca.server.control_api import THREADED_SERVER_AT_START, ControlService
from ca.server.devtoken import DevTokenIssuer
from ca.server.grpc_server import ApiServer, AsyncioServer, ThreadedServer
from ca.server.injection_webhook import InjectionWebhook
from ca.server.keyring_store import KeyringDirectory
from ca.server.leader_lock import LEADER_LOCK, FileLockElector
from ca.server.leadership import (
    BundlePublisher,
    Callback,
    ElectorFactory,
    Leadership,
    PublisherFactory,
    PublisherGroup,
)
from ca.server.metrics import CaMetrics
from ca.server.push import PushCoordinator, crl_maker
from ca.server.rotation_api import RotationService, build_rotation_service
from ca.server.serving_cert import ServingIdentity
from ca.server.settings import KUBERNETES_ISSUER, ServeConfig, replica_identity

if TYPE_CHECKING:
    # The Kubernetes client (17 MiB, a third of a second) is imported only where a cluster is
    # configured: each use below imports its module in the branch that has cluster access.
    from ca.kube.client import PodCache
    from ca.kube.keyring_secret import KeyringSecret

log = logging.getLogger("meshca")
CACERTS_POLL_S = 5  # how often the plugged-in CA directory is read for new material
# Where in each second the periodic jobs run, apart: each holds the GIL that the request loop
# needs for 0.4-3 ms of CPU, and fired in the same millisecond they held it up to 6.5 ms at once,
# which the half-load traces showed as a burst of slow certificates every second.
PHASE_S = {"ca-keys": 0.0, "rotation-tick": 0.25, "connected-agents": 0.5, "ledger-checkpoint": 0.75}
UNARY_CALLS = 1024  # certificate and admin calls in flight on the asyncio server, beside the streams
PUSH_LOAD_TIMEOUT_S = 10.0


def open_ca_keys(cfg: ServeConfig, clock: Clock, api: Any | None) -> tuple[CaKeys, str]:
    """The CA's signing slots for this configuration and what happened to them at start-up
    (loaded, created, adopted from a root that signed leaves itself, or prepared from new
    plugged-in material)."""
    policy = cfg.ca_rotation
    store: KeyringDirectory | KeyringSecret
    if cfg.cacerts is not None:
        material = load_cacerts_dir(cfg.cacerts)
        store = KeyringDirectory(cfg.state_dir)
        stored, what = store.load_or_plug(material, clock)
        keys = CaKeys(stored=stored, store=store, factory=None, policy=policy, clock=clock, acks=_nobody)
        return keys, what
    factory = RootFactory(trust_domain=cfg.trust_domain, key_algorithm=cfg.ca_key_type, clock=clock)
    use_secret = cfg.ca_store == "secret" or (cfg.ca_store == "auto" and api is not None)
    if use_secret:
        if api is None:
            raise ConfigError("--ca-store secret needs cluster access; give --kubeconfig or run in a pod")
        from ca.kube.keyring_secret import KeyringSecret

        store = KeyringSecret(api, namespace=cfg.ca_namespace, name=cfg.ca_secret)
    else:
        store = KeyringDirectory(cfg.state_dir)
    stored, what = store.load_or_create(factory, policy, clock)
    return CaKeys(stored=stored, store=store, factory=factory, policy=policy, clock=clock, acks=_nobody), what


def _add_phased(
    scheduler: BackgroundScheduler,
    job: Callable[[], object],
    job_id: str,
    *,
    seconds: float = 1.0,
    **options: Any,
) -> None:
    """Run `job` every `seconds`, starting at its place in the second (PHASE_S); the scheduler
    runs on the wall clock, not on the CA's injected one."""
    start = datetime.now(UTC) + timedelta(seconds=PHASE_S[job_id])
    scheduler.add_job(job, "interval", seconds=seconds, start_date=start, id=job_id, **options)


class SharedHolders:
    """This replica's count of agents holding each root, written to the ledger's database for the
    leader to sum with the other replicas' (rewritten when it changes, and often enough to stay
    fresh)."""

    REWRITE_S = 4.0

    def __init__(self, table: SqlBundleHolders, replica: str, clock: Clock) -> None:
        self._table = table
        self._replica = replica
        self._clock = clock
        self._last: tuple[dict[str, Acknowledgement], float] | None = None

    def report(self, roots: Sequence[str], push: PushCoordinator) -> None:
        counts = {root: push.bundle_holders(root) for root in roots}
        now = self._clock.monotonic()
        if self._last is not None and self._last[0] == counts and now - self._last[1] < self.REWRITE_S:
            return
        self._table.report(self._replica, counts, self._clock.now())
        self._last = (counts, now)

    def acks(self, root_fingerprint: str) -> Acknowledgement:
        return self._table.total(root_fingerprint, self._clock.now())


def _nobody(_root_fingerprint: str) -> Acknowledgement:
    return Acknowledgement(holding=0, connected=0)


def ledger_slot_recorder(ledger: Ledger, replica: str) -> TransitionRecorder:
    def record(transition: Transition, slot: Slot, *, requested_by: str, why: str) -> None:
        try:
            ledger.record_ca_slot(
                transition,
                not_after=slot.authority.expiry(),
                replica=replica,
                requested_by=requested_by,
                why=why,
            ).result(timeout=10)
        except Exception as err:
            log.error(
                "could not record the CA slot transition in the ledger",
                extra={"slot": transition.slot_id, "detail": str(err)},
            )

    return record


def _key_source(cfg: ServeConfig, clock: Clock, api: Any | None) -> tuple[KeySource, tuple[str, ...]]:
    if cfg.jwks is not None:
        issuer = cfg.token_issuer or KUBERNETES_ISSUER
        if cfg.jwks.startswith(("http://", "https://")):
            return RefreshingKeySet(http_json_fetcher(cfg.jwks), cfg.jwks), (issuer,)
        return StaticKeySet.from_file(Path(cfg.jwks)), (issuer,)
    if api is not None:
        from ca.kube import client as kube

        issuer = cfg.token_issuer or kube.service_account_issuer(api)
        return RefreshingKeySet(kube.jwks_fetcher(api), "the API server's /openid/v1/jwks"), (issuer,)
    if cfg.token_issuer is not None:
        return RefreshingKeySet(
            oidc_jwks_fetcher(cfg.token_issuer), f"OIDC discovery of {cfg.token_issuer}"
        ), (cfg.token_issuer,)
    dev = DevTokenIssuer.load_or_create(cfg.state_dir, clock)
    log.warning(
        "no token issuer configured: trusting the development token signer in %s "
        "(mint tokens with 'meshca token'); configure --jwks or --kubeconfig for a real cluster",
        cfg.state_dir,
    )
    return dev.key_set(), (dev.issuer,)


def build_authenticators(
    cfg: ServeConfig,
    clock: Clock,
    api: Any | None,
    pods: PodChecker | None,
    is_revoked: RevocationCheck | None = None,
) -> AuthenticatorChain:
    cache = TokenCache(cfg.token_cache_size)
    token_auth: Authenticator
    if cfg.auth == "tokenreview":
        if api is None:
            raise ConfigError("--auth tokenreview needs cluster access; give --kubeconfig or run in a pod")
        from ca.kube import client as kube

        token_auth = TokenReviewAuthenticator(
            review=kube.tokenreview_call(api),
            audiences=cfg.audiences,
            trust_domain=cfg.trust_domain,
            clock=clock,
            cache=cache,
        )
    else:
        keys, issuers = _key_source(cfg, clock, api)
        token_auth = JwtAuthenticator(
            keys=keys,
            rules=TokenRules(
                issuers=issuers,
                audiences=cfg.audiences,
                trust_domain=cfg.trust_domain,
                leeway=cfg.token_leeway,
            ),
            clock=clock,
            pods=pods,
            cache=cache,
        )
    client_cert = ClientCertificateAuthenticator(
        trust_domain=cfg.trust_domain, clock=clock, is_revoked=is_revoked
    )
    return AuthenticatorChain([client_cert, token_auth])


@dataclass
class CaServer:
    """A built CA service; `start()` binds its ports."""

    cfg: ServeConfig
    clock: Clock
    authority: SigningAuthority
    issuer: Issuer
    metrics: CaMetrics
    serving: ServingIdentity
    service: CertificateService
    pod_cache: PodCache | None = None
    ledger: Ledger | None = None
    admin: LedgerAdminService | None = None
    push: PushCoordinator | None = None  # with a ledger: forced rotation's pushes, CRLs, revocations
    rotation_store: SqlRotationStore | None = None  # with a ledger: shared by push and rotation
    control: ControlService | None = None
    rotation: RotationService | None = None
    ca_keys_api: CaKeysService | None = None  # the admin CaKeys service: meshca ca --ca-addr
    ports: dict[str, int] = field(default_factory=dict)
    api: Any | None = None  # cluster access: the Lease election and the trust bundle ConfigMaps
    make_elector: ElectorFactory | None = None  # None: a Lease with cluster access, else the sole process
    keys: CaKeys | None = None  # the signing slots; None only in tests that build parts by hand
    holders: SharedHolders | None = None  # with a ledger: agents' roots counted over every replica
    connections: SharedConnections | None = None  # with a ledger: the agents connected to every replica
    webhook_serving: ServingIdentity | None = None  # with --webhook-listen: the webhook's certificate
    _leadership: Leadership = field(init=False)
    _status: StatusHeartbeat = field(init=False)
    _bundle_endpoint: BundleEndpoint | None = None
    _webhook: InjectionWebhook | None = None
    _server: ApiServer | None = None
    _status_http: StatusServer | None = None
    _serving: bool = False
    _scheduler: BackgroundScheduler | None = None
    _watcher: ChangeWatcher | None = None
    _stopped: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._status = StatusHeartbeat(self._inbox, self.clock)
        self._leadership = Leadership(
            identity=self.cfg.replica or replica_identity(),
            make_elector=self.make_elector or self._default_elector(),
            bundle_pem=self.authority.trust_bundle_pem(),
            clock=self.clock,
            make_publisher=self._root_cert_publisher(),
        )
        self.metrics.leader.set_function(lambda: 1.0 if self.is_leader else 0.0)
        self.refresh_expiry_gauges()  # known from the start, not 0 until the scheduler's first run

    @property
    def is_leader(self) -> bool:
        """Whether this replica does the singleton work now (the Lease holder, or the only
        process without a cluster)."""
        return self._leadership.is_leader

    @property
    def replica(self) -> str:
        return self._leadership.identity

    def on_trust_bundle(self, bundle_pem: str) -> None:
        """The CA's trust bundle changed (a root prepared or retired): the leader publishes it in
        every namespace's ConfigMap, and every replica's SPIFFE bundle endpoint serves it."""
        self._leadership.on_trust_bundle(bundle_pem)

    def _default_elector(self) -> ElectorFactory:
        identity = self.cfg.replica or replica_identity()
        api = self.api
        if api is None and self.cfg.shares_port:  # a worker of --processes N: one of them leads
            lock = self.cfg.state_dir / LEADER_LOCK
            return lambda started, stopped: FileLockElector(
                lock, identity, clock=self.clock, on_started_leading=started, on_stopped_leading=stopped
            )
        if api is None:
            return lambda started, stopped: SoleElector(
                identity, on_started_leading=started, on_stopped_leading=stopped
            )

        def lease(started: Callback, stopped: Callback) -> Elector:
            from ca.kube.leader import kube_lease_elector

            return kube_lease_elector(
                api,
                namespace=self.cfg.ca_namespace,
                name=self.cfg.leader_lease,
                identity=identity,
                timings=self.cfg.leader_timings,
                clock=self.clock,
                on_started_leading=started,
                on_stopped_leading=stopped,
            )

        return lease

    def _root_cert_publisher(self) -> PublisherFactory | None:
        api = self.api
        if api is None:
            return None
        from ca.kube.bundles import RootCertPublisher
        from ca.kube.webhook_config import CaBundlePatcher

        webhook_configuration = self.cfg.webhook_configuration if self.cfg.webhook_listen else None

        def publishers(bundle_pem: str) -> BundlePublisher:
            configmaps = RootCertPublisher(api, bundle_pem, clock=self.clock)
            if webhook_configuration is None:
                return configmaps
            patcher = CaBundlePatcher(api, bundle_pem, name=webhook_configuration, clock=self.clock)
            return PublisherGroup([configmaps, patcher])

        return publishers

    def start(self) -> None:
        """Bind every port and serve; on failure (a port in use) nothing is left running."""
        remove_ports_file(self.cfg.ports_file)
        try:
            self._start()
        except BaseException:
            self.stop(grace_s=0)
            raise
        write_ports_file(self.cfg.ports_file, self.ports)

    def _start(self) -> None:
        extra = tuple(s for s in (self.admin, self.rotation, self.ca_keys_api, self.control) if s is not None)
        streams = self.control.max_sessions if self.control is not None else 0
        reuse_port = self.cfg.shares_port
        server: ApiServer = (
            AsyncioServer(
                self.service, extra=extra, max_concurrent=UNARY_CALLS + streams, reuse_port=reuse_port
            )
            if self.cfg.grpc_server == "asyncio"
            else ThreadedServer(
                self.service, workers=self.cfg.grpc_workers, extra=extra, reuse_port=reuse_port
            )
        )
        self._server = server
        if self.control is not None and not isinstance(server, AsyncioServer):
            log.warning(THREADED_SERVER_AT_START)
        self._start_push(server)
        if self.ledger is not None and isinstance(server, AsyncioServer):
            # Batches on the loop, written by the ledger process (the threaded server keeps the
            # writer thread: its handlers block on their own threads anyway).
            self.ledger.commit_on_loop(
                server.loop,
                linger_s=self.cfg.ledger_linger.total_seconds(),
                short_of_cpu=server.load.saturated,
            )
        self.ports["grpc"] = self._bind(server, "--listen", self.cfg.listen, require_client_cert=False)
        if self.cfg.renew_listen is not None:
            self.ports["renew"] = self._bind(
                server, "--renew-listen", self.cfg.renew_listen, require_client_cert=True
            )
        if self.cfg.metrics_listen is not None:
            self.ports["metrics"] = self._serve_metrics(self.cfg.metrics_listen)
        if self.cfg.bundle_listen is not None:
            self.ports["bundle"] = self._serve_bundle(self.cfg.bundle_listen)
        if self.cfg.webhook_listen is not None:
            self.ports["webhook"] = self._serve_webhook(self.cfg.webhook_listen)
        server.start()
        self._serving = True
        self._scheduler = self._schedule()
        self._leadership.start()
        log.info(
            "meshca CA serving",
            extra={
                "trust_domain": self.cfg.trust_domain,
                "ports": self.ports,
                "ca_source": self.authority.source,
                "ca_key_id": self.authority.key_id,
            },
        )

    def _start_push(self, server: ApiServer) -> None:
        """Load the rotation tables before serving (the renewal port checks revocations against
        them) and follow their changes."""
        if self.push is None or self.rotation_store is None or self.cfg.ledger_url is None:
            return
        if isinstance(server, AsyncioServer):
            self.push.attach(server.loop)
        self._watcher = follow_rotation_changes(
            self.rotation_store, self.push, self.cfg.ledger_url, self.clock
        )

    def _bind(self, server: ApiServer, flag: str, address: str, *, require_client_cert: bool) -> int:
        credentials = self.serving.server_credentials(require_client_cert=require_client_cert)
        return server.bind(address, credentials, flag=flag)

    def _serve_metrics(self, address: str) -> int:
        host, port = split_address(address)
        self._status_http = StatusServer(
            host,
            port,
            flag="--metrics-listen",
            exposition=lambda: generate_latest(self.metrics.registry),
            ready=lambda: self._serving,
            not_ready="the certificate API is not serving yet",
            thread_name="ca-http",
        )
        self._status_http.start()
        return self._status_http.port

    def _serve_bundle(self, address: str) -> int:
        """The SPIFFE bundle endpoint, on every replica: the current trust bundle's roots, over TLS
        with the CA server's own certificate."""
        host, port = split_address(address)
        self._bundle_endpoint = BundleEndpoint(
            host,
            port,
            roots=self._leadership.roots,
            certificate=lambda: self.serving.current,
            clock=self.clock,
            flag="--bundle-listen",
        )
        self._bundle_endpoint.start()
        return self._bundle_endpoint.port

    def _serve_webhook(self, address: str) -> int:
        """The sidecar injection webhook, on every replica, with a certificate of its own for the
        names the API server calls it by."""
        assert self.webhook_serving is not None
        webhook_serving = self.webhook_serving
        host, port = split_address(address)
        self._webhook = InjectionWebhook(
            host,
            port,
            settings=self.cfg.inject,
            certificate=lambda: webhook_serving.current,
            flag="--webhook-listen",
        )
        self._webhook.start()
        return self._webhook.port

    def _schedule(self) -> BackgroundScheduler:
        scheduler = BackgroundScheduler(timezone="UTC")
        scheduler.add_job(self.refresh_expiry_gauges, "interval", seconds=60, next_run_time=self.clock.now())
        self._schedule_serving_rotation(scheduler)
        self._schedule_ca_keys(scheduler)
        # Singleton jobs: on every replica's scheduler, run only where this replica leads.
        singleton = self._leadership.singleton
        if self.ledger is not None:
            _add_phased(
                scheduler,
                singleton(self._checkpoint_ledger),
                "ledger-checkpoint",
                seconds=self.cfg.ledger_checkpoint_interval.total_seconds() or 5,
            )
            if self.cfg.ledger_retention is not None:
                scheduler.add_job(singleton(self._compact_ledger), "interval", hours=1, id="ledger-retention")
        if self.push is not None:
            # Not a singleton: every replica pushes the CRL to the agents on its own control
            # streams at once, so each signs it from the shared revocation table (the same key and
            # entries; the number is thisUpdate in ms). Its writes are safe on every replica: an
            # order completes once (the UPDATE ... WHERE state = 'pushing' that changed the row),
            # and each replica's crl_published record describes the CRL that replica served.
            _add_phased(scheduler, self.push.tick, "rotation-tick")
        if self.connections is not None:
            _add_phased(scheduler, self._report_connections, "connected-agents", max_instances=1)
        scheduler.start()
        return scheduler

    def _schedule_ca_keys(self, scheduler: BackgroundScheduler) -> None:
        """The leader makes the transitions that are due; every other replica adopts them."""
        if self.keys is None:
            return
        _add_phased(scheduler, self._ca_keys_turn, "ca-keys", max_instances=1)
        if self.cfg.cacerts is not None:
            scheduler.add_job(self._watch_cacerts, "interval", seconds=CACERTS_POLL_S, id="cacerts-watch")

    def _ca_keys_turn(self) -> None:
        assert self.keys is not None
        try:
            if self.holders is not None and self.push is not None:
                self.holders.report(self.keys.keyring.bundle_fingerprints(), self.push)
            if self.is_leader:
                self.keys.tick()
                self._answer_ca_requests()
                self._status.write(
                    status_document(
                        self.keys.keyring,
                        policy=self.keys.policy,
                        now=self.clock.now(),
                        acks=self.keys.acks,
                        replica=self.replica,
                    )
                )
            else:
                self.keys.refresh()
        except Exception as err:
            log.warning("CA slot schedule failed; will retry", extra={"detail": str(err)})

    def _report_connections(self) -> None:
        assert self.connections is not None
        try:
            self.connections.report()
        except Exception as err:
            log.warning(
                "could not share this replica's connected agents in the ledger; will retry",
                extra={"detail": str(err)},
            )

    def _pushable_serials(self) -> set[str]:
        """The serials a push from some replica reaches now (this one's alone without a ledger)."""
        if self.connections is not None:
            return self.connections.pushable()
        return self.push.pushable_serials() if self.push is not None else set()

    @property
    def _inbox(self) -> CaInbox:
        return CaInbox(self.cfg.state_dir)

    def _answer_ca_requests(self) -> None:
        assert self.keys is not None
        for request in self._inbox.pending():
            answer = answer_ca_request(self.keys, request, reissue=self._order_reissue)
            self._inbox.answer(request.id, answer)

    def _order_reissue(self, issued_before: datetime, requested_by: str, why: str) -> str:
        """Order every leaf issued before `issued_before` (the old slot's) to be replaced."""
        if self.rotation_store is None or self.push is None:
            return "no ledger (--ledger off): restart the workloads to re-issue their certificates"
        request = RotationRequest(selector=Selector(issued_before=issued_before), reason=why)
        try:
            result = operations.rotate(
                self.rotation_store,
                request,
                now=self.clock.now(),
                order_id=operations.new_order_id(os.urandom),
                ordered_by=requested_by,
                connected=frozenset(self._pushable_serials()),
                workloads=lambda pods, _restart: operations.pods_as_workloads(list(pods)),
            )
        except InvalidRequestError as err:
            if err.reason == "selector_matches_nothing":
                return "no live certificate from the old slot to re-issue"
            raise
        self.push.notify_changed()
        assert result.order is not None
        return f"ordered {result.matched} certificates re-issued: rotation order {result.order.id}"

    def _watch_cacerts(self) -> None:
        assert self.keys is not None and self.cfg.cacerts is not None
        if not self.is_leader:
            return
        try:
            self.keys.offer(load_cacerts_dir(self.cfg.cacerts), requested_by=f"cacerts {self.cfg.cacerts}")
        except Exception as err:
            log.warning(
                "the plugged-in CA material cannot be used yet; still signing with the current slot",
                extra={"detail": str(err)},
            )

    def keyring_changed(self, keyring: Keyring) -> None:
        """A transition here or on another replica: sign, serve and publish with the new keyring."""
        authority = keyring.signing_authority()
        self.authority = authority
        self.issuer.use_authority(authority)
        self.serving.use_authority(authority)
        if self.webhook_serving is not None:
            self.webhook_serving.use_authority(authority)
        state_dir.write_trust_bundle(self.cfg.state_dir, authority)
        if self.push is not None:
            self.push.signers_changed(bundle=keyring.bundle())
        self.on_trust_bundle(authority.trust_bundle_pem())
        self.refresh_expiry_gauges()

    def _schedule_serving_rotation(self, scheduler: BackgroundScheduler) -> None:
        scheduler.add_job(
            self._rotate_serving,
            "date",
            run_date=self.serving.current.renew_at(),
            id="rotate-serving-cert",
            replace_existing=True,
        )
        if self.webhook_serving is not None:
            scheduler.add_job(
                self._rotate_webhook_serving,
                "date",
                run_date=self.webhook_serving.current.renew_at(),
                id="rotate-webhook-cert",
                replace_existing=True,
            )

    def _rotate_serving(self) -> None:
        current = self.serving.rotate()
        log.info(
            "rotated the CA server's TLS certificate",
            extra={"not_after": current.not_after.isoformat()},
        )
        if self._scheduler is not None:
            self._schedule_serving_rotation(self._scheduler)

    def _rotate_webhook_serving(self) -> None:
        assert self.webhook_serving is not None
        current = self.webhook_serving.rotate()
        log.info(
            "rotated the injection webhook's TLS certificate",
            extra={"not_after": current.not_after.isoformat()},
        )
        if self._scheduler is not None:
            self._schedule_serving_rotation(self._scheduler)

    def _checkpoint_ledger(self) -> None:
        assert self.ledger is not None
        try:
            self.ledger.checkpoint()
        except Exception as err:
            log.warning("ledger checkpoint failed; will retry", extra={"detail": str(err)})

    def _compact_ledger(self) -> None:
        assert self.ledger is not None and self.cfg.ledger_retention is not None
        try:
            removed = self.ledger.compact(self.clock.now() - self.cfg.ledger_retention)
        except Exception as err:
            log.warning("ledger compaction failed; will retry", extra={"detail": str(err)})
            return
        if removed:
            log.info("compacted expired ledger records", extra={"removed": removed})

    def refresh_expiry_gauges(self) -> None:
        now = self.clock.now()
        root, chain = self.authority.root_expiry(), self.authority.expiry()
        self.metrics.root_expiry.set(root.timestamp())
        self.metrics.root_expiry_seconds.set((root - now).total_seconds())
        self.metrics.chain_expiry.set(chain.timestamp())
        self.metrics.chain_expiry_seconds.set((chain - now).total_seconds())

    def stop(self, grace_s: float = 2.0) -> None:
        if self._stopped.is_set():
            return
        self._serving = False
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        self._leadership.stop()  # releases the lease: another replica leads at its next try
        self._withdraw_connections()
        if self._watcher is not None:
            self._watcher.stop()
        if self.pod_cache is not None:
            self.pod_cache.stop()
        if self._server is not None:
            self._server.stop(grace_s)
        if self._status_http is not None:
            self._status_http.stop()
        if self._bundle_endpoint is not None:
            self._bundle_endpoint.stop()
        if self._webhook is not None:
            self._webhook.stop()
        if self.admin is not None:
            self.admin.close()
        if self.push is not None:
            self.push.close()
        if self.rotation is not None:
            self.rotation.close()
        if self.ca_keys_api is not None:
            self.ca_keys_api.close()
        if self.rotation_store is not None:
            self.rotation_store.dispose()
        if self.connections is not None:
            self.connections.dispose()
        if self.ledger is not None:
            self.ledger.close()
        remove_ports_file(self.cfg.ports_file)
        self._stopped.set()

    def _withdraw_connections(self) -> None:
        """This replica's agents reconnect to the others: it stops counting them at once."""
        if self.connections is None:
            return
        try:
            self.connections.withdraw()
        except Exception as err:
            log.warning(
                "could not withdraw this replica's connected agents from the ledger; the other "
                "replicas stop counting them within 10 s",
                extra={"detail": str(err)},
            )

    def wait(self) -> None:
        self._stopped.wait()


class ChangeFollower(Protocol):
    """What follows the rotation tables (the push coordinator)."""

    def start(self) -> None:
        """Begin the first load of the tables."""
        ...

    def wait_loaded(self, timeout_s: float) -> bool: ...

    def notify_changed(self) -> None: ...


def follow_rotation_changes(
    store: RotationStore, follower: ChangeFollower, url: str, clock: Clock
) -> ChangeWatcher:
    """Load the rotation tables into `follower`, then watch the ledger for changes from the
    marker read before that load: a change made while it loaded calls back too."""
    since = store.change_marker()
    follower.start()
    if not follower.wait_loaded(PUSH_LOAD_TIMEOUT_S):
        log.warning("rotation orders and revocations not loaded yet; serving meanwhile")
    watcher = ChangeWatcher(url, lambda _marker: follower.notify_changed(), clock=clock)
    watcher.start(since=since)
    return watcher


def open_ledger(cfg: ServeConfig, clock: Clock, api: Any | None, metrics: CaMetrics) -> Ledger:
    assert cfg.ledger_url is not None
    store, found = open_migrated(cfg.ledger_url)
    if found not in (0, CURRENT_VERSION):
        log.info("upgraded the ledger schema", extra={"from_version": found, "to_version": CURRENT_VERSION})
    publishers: list[HeadPublisher] = [HeadFile(cfg.state_dir / HEAD_FILE).publish]
    if api is not None:
        from ca.kube import client as kube

        publishers.append(kube.ledger_head_publisher(api, namespace=cfg.ca_namespace))
    return Ledger(
        store, key=_ledger_key(cfg, api), clock=clock, publishers=publishers, observer=metrics.ledger
    )


def _ledger_key(cfg: ServeConfig, api: Any | None) -> ed25519.Ed25519PrivateKey:
    """In a cluster, unless --ledger-key names a file, every replica shares the key through a
    Secret beside the CA's; elsewhere it is a file in the state directory."""
    if api is None or cfg.ledger_key_given:
        return load_or_create_ledger_key(cfg.ledger_key)
    from ca.kube import client as kube

    pem = kube.load_or_create_ledger_key_secret(api, namespace=cfg.ca_namespace, make=new_ledger_key_pem)
    return ledger_key_from_pem(pem, f"Secret {cfg.ca_namespace}/{kube.LEDGER_KEY_SECRET}")


def _record_ca_event(ledger: Ledger, event: str, authority: SigningAuthority) -> None:
    try:
        ledger.record_ca_event(event, authority).result(timeout=10)
    except Exception as err:
        log.error("could not record the CA event in the ledger", extra={"event": event, "detail": str(err)})


def build_push(
    clock: Clock,
    store: SqlRotationStore | None,
    keys: CaKeys,
    metrics: CaMetrics,
    crl_validity: timedelta,
) -> PushCoordinator | None:
    """Forced rotation needs the ledger's database (orders and revocations live there)."""
    if store is None:
        return None
    crl = crl_maker(lambda: keys.keyring.crl_signers(), crl_validity)
    push = PushCoordinator(store=store, clock=clock, crl=crl)
    metrics.control_streams.set_function(push.session_count)
    metrics.rotation_orders_past_grace.set_function(push.orders_past_grace)
    return push


def outstanding_orders(store: SqlRotationStore) -> OutstandingOrders:
    """What a restarted agent's request is linked by: the orders still pushing to the serial it
    held (one indexed read, on the request's thread)."""
    return lambda serial: [order.id for order in store.outstanding_for(serial)]


def _no_connections() -> frozenset[str]:
    return frozenset()


def _nothing_changed() -> None:
    return None


def check_ports_free(cfg: ServeConfig) -> None:
    """Stop before anything is written when another process holds one of our ports. A worker of
    --processes N shares its gRPC ports with the others (its supervisor checked them)."""
    if not cfg.shares_port:
        check_free("--listen", cfg.listen)
    if cfg.renew_listen is not None and not cfg.shares_port:
        check_free("--renew-listen", cfg.renew_listen)
    if cfg.metrics_listen is not None:
        check_free("--metrics-listen", cfg.metrics_listen)
    if cfg.bundle_listen is not None:
        check_free("--bundle-listen", cfg.bundle_listen)
    if cfg.webhook_listen is not None:
        check_free("--webhook-listen", cfg.webhook_listen)


def cluster_api(cfg: ServeConfig) -> Any | None:
    """The API server's client when a cluster is configured (--kubeconfig, or in a pod); None
    otherwise, and then the Kubernetes client is never imported."""
    if not cfg.has_cluster_access:
        return None
    from ca.kube import client as kube

    return kube.api_client(cfg.kubeconfig, cfg.in_cluster)


def start_pod_cache(api: Any) -> PodCache:
    from ca.kube.client import PodCache

    pod_cache = PodCache(api)
    pod_cache.start()
    return pod_cache


def build_server(cfg: ServeConfig, clock: Clock | None = None) -> CaServer:
    clock = clock or SystemClock()
    check_ports_free(cfg)
    api = cluster_api(cfg)
    # The ledger opens before the CA material, so a bad --ledger stops the CA before it
    # creates a root whose "created" event would then never be recorded.
    state_dir.prepare(cfg.state_dir)
    metrics = CaMetrics()
    ledger = open_ledger(cfg, clock, api, metrics) if cfg.ledger_url else None
    keys, what = open_ca_keys(cfg, clock, api)
    authority = keys.keyring.signing_authority()
    log.info(
        f"CA {what}",
        extra={
            "ca_event": what,
            "ca_source": authority.source,
            "ca_key_id": authority.key_id,
            "ca_fingerprint": authority.fingerprint,
            "ca_not_after": authority.expiry().isoformat(),
        },
    )
    bundle = state_dir.write_trust_bundle(cfg.state_dir, authority)
    log.info("wrote the trust bundle", extra={"path": str(bundle)})
    pod_cache = start_pod_cache(api) if api is not None and cfg.pod_check and cfg.auth == "jwt" else None
    issuer = Issuer(authority=authority, policy=cfg.issuance, clock=clock)
    if ledger is not None:
        _record_ca_event(ledger, what, authority)
    rotation_store = SqlRotationStore(ledger.store) if ledger is not None else None
    push = build_push(clock, rotation_store, keys, metrics, cfg.crl_validity)
    connections = (
        SharedConnections(SqlConnectedAgents(ledger.store), cfg.replica or replica_identity(), clock, push)
        if ledger is not None and push is not None
        else None
    )
    authenticators = build_authenticators(
        cfg, clock, api, pod_cache, is_revoked=push.is_revoked if push is not None else None
    )
    service = CertificateService(
        recorder=ledger,
        issuer=issuer,
        authenticators=authenticators,
        metrics=metrics,
        cluster_id=cfg.cluster_id,
        links=push,
        outstanding=outstanding_orders(rotation_store) if rotation_store is not None else None,
    )
    serving = ServingIdentity(
        authority=authority,
        hosts=cfg.dns_names,
        spiffe_id=SpiffeId.for_workload(cfg.trust_domain, cfg.ca_namespace, "meshca"),
        clock=clock,
    )
    server = CaServer(
        cfg=cfg,
        clock=clock,
        authority=authority,
        issuer=issuer,
        metrics=metrics,
        serving=serving,
        service=service,
        pod_cache=pod_cache,
        ledger=ledger,
        admin=build_admin_service(cfg, clock, authenticators, ledger, api),
        rotation=build_rotation_service(
            authenticators=authenticators,
            admin_identities=cfg.admin_identities,
            clock=clock,
            ledger=ledger,
            api=api,
            random_bytes=os.urandom,
            connected=connections.pushable if connections is not None else _no_connections,
            changed=push.notify_changed if push is not None else _nothing_changed,
            store=rotation_store,
        ),
        push=push,
        rotation_store=rotation_store,
        connections=connections,
        api=api,
        control=ControlService(
            coordinator=push,
            authenticator=ClientCertificateAuthenticator(trust_domain=cfg.trust_domain, clock=clock),
            leaf_issuers=lambda: [a.signing_cert for a in keys.keyring.crl_signers()],
            clock=clock,
        )
        if push is not None
        else None,
        keys=keys,
        webhook_serving=ServingIdentity(
            authority=authority,
            hosts=cfg.webhook_dns_names,
            spiffe_id=SpiffeId.for_workload(cfg.trust_domain, cfg.ca_namespace, "meshca"),
            clock=clock,
        )
        if cfg.webhook_listen is not None
        else None,
    )
    connect_keys(server, keys, ledger, push)
    server.ca_keys_api = CaKeysService(
        authenticators=authenticators,
        admin_identities=cfg.admin_identities,
        keys=keys,
        clock=clock,
        replica=lambda: server.replica,
        reissue=server._order_reissue,
        recorder=ledger,
    )
    return server


def connect_keys(server: CaServer, keys: CaKeys, ledger: Ledger | None, push: PushCoordinator | None) -> None:
    """Transitions are recorded in the ledger (naming this replica), wait for the agents' copies of
    a new root, and reach every part of the server."""
    if ledger is not None:
        keys.set_recorder(ledger_slot_recorder(ledger, server.replica))
    if push is not None and ledger is not None:  # the push coordinator exists only with a ledger
        server.holders = SharedHolders(SqlBundleHolders(ledger.store), server.replica, server.clock)
        keys.set_acks(server.holders.acks)
    keys.listen(server.keyring_changed)
    if server.cfg.cacerts is not None:
        keys.offer(load_cacerts_dir(server.cfg.cacerts), requested_by=f"cacerts {server.cfg.cacerts}")
