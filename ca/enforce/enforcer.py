"""`meshca enforce` assembled: policy source, certificate watcher, event loop, listeners, metrics.

Threads: the event loop (every socket and TLS call), an APScheduler scheduler
(the certificate poll; the YAML policy source polls on it too), the policy
source's own watch thread for `--policies kube`, and the metrics HTTP server.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from apscheduler.schedulers.background import BackgroundScheduler

from ca.common import logs
from ca.common.clock import Clock, SystemClock
from ca.common.log_limit import LogLimiter
from ca.enforce import tls_openssl
from ca.enforce.events import OpenConnections, RefusalLog
from ca.enforce.inbound import Deadlines, InboundFlow, PortContext, Shared
from ca.enforce.listener import Listener, bind, bound_port
from ca.enforce.loop import EventLoop
from ca.enforce.material import POLL_INTERVAL_S, CertWatcher
from ca.enforce.metrics import EnforcerMetrics
from ca.enforce.outbound import OUTBOUND_HOST, OutboundContext, OutboundFlow, Resolver
from ca.enforce.peer import PeerCache
from ca.enforce.relay import Relay
from ca.enforce.settings import EnforceConfig, OutboundTarget
from ca.enforce.tls import Material, TlsEngine
from ca.enforce.tls_stdlib import StdlibEngine
from ca.errors import ConfigError
from ca.issuance.crl import NO_REVOCATIONS, RevocationLists
from ca.net.listening import remove_ports_file, split_address, write_ports_file
from ca.net.status_http import StatusServer
from ca.policy.policy_set import PolicySet
from ca.policy.ports import InboundPort
from ca.policy.source import PolicySource, WorkloadPolicy, open_policy_source, refuse_invalid_in_scope
from ca.policy.workload_flags import label_text

log = logging.getLogger(__name__)
CERT_JOB = "enforce-certificates"
IDLE_SWEEP_S = 5.0


def select_engine(name: str) -> TlsEngine:
    """`auto`: the bundled OpenSSL when the binding has everything, else Python's ssl."""
    if name == "stdlib":
        return StdlibEngine()
    absent = tls_openssl.missing()
    if name == "openssl" or not absent:
        return tls_openssl.OpensslEngine()
    log.warning(
        "the openssl TLS engine is unavailable; using Python's ssl module (slower handshakes)",
        extra={"missing": absent[:5]},
    )
    return StdlibEngine()


def app_address(host: str, port: int) -> tuple[int, tuple[str, int]]:
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except OSError as err:
        raise ConfigError(f"--app-host {host!r} does not resolve: {err}") from err
    return family, (str(address[0]), int(address[1]))


Acceptor = Callable[[socket.socket, tuple[str, int]], None]


def _inbound_acceptor(ctx: PortContext) -> Acceptor:
    def accept(sock: socket.socket, peer: tuple[str, int]) -> None:
        InboundFlow(ctx, sock, peer).start()

    return accept


def _outbound_acceptor(ctx: OutboundContext) -> Acceptor:
    def accept(sock: socket.socket, peer: tuple[str, int]) -> None:
        OutboundFlow(ctx, sock, peer).start()

    return accept


@dataclass
class Enforcer:
    cfg: EnforceConfig
    engine: TlsEngine
    policy_set: PolicySet
    source: PolicySource | None
    clock: Clock
    loop: EventLoop = field(default_factory=EventLoop)
    connections: OpenConnections = field(default_factory=OpenConnections)
    listeners: list[Listener] = field(default_factory=list)
    metrics_server: StatusServer | None = None
    scheduler: BackgroundScheduler = field(default_factory=lambda: BackgroundScheduler(timezone="UTC"))
    _resolver: Resolver | None = None
    _stopped: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.metrics = EnforcerMetrics(self.connections.counts)
        self.policy = WorkloadPolicy(
            self.policy_set, self.cfg.workload, root_namespace=self.cfg.root_namespace
        )
        self.certs = CertWatcher(
            self.cfg.cert_dir,
            trust_domain=self.cfg.trust_domain,
            engine=self.engine,
            clock=self.clock,
            on_load=self._certificate_loaded,
            on_failure=lambda _: self.metrics.certificate_reloads.labels("refused").inc(),
        )
        self.shared = Shared(
            loop=self.loop,
            metrics=self.metrics,
            certs=self.certs,
            peers=PeerCache(revocations=self._revocations),
            trust_domain=self.cfg.trust_domain,
            deadlines=Deadlines.on(self.loop, self.cfg.timeouts),
            refusals=RefusalLog(LogLimiter(self.loop.monotonic)),
            connections=self.connections,
            clock=self.clock,
        )

    @property
    def ready(self) -> bool:
        return self.certs.current is not None and bool(self.listeners) and not self._stopped.is_set()

    def _certificate_loaded(self, material: Material) -> None:
        self.metrics.certificate_reloads.labels("loaded").inc()
        self.metrics.certificate_expiry.set(material.not_after.timestamp())
        self.metrics.revocations_loaded(material.revocations)

    def _revocations(self) -> RevocationLists:
        contexts = self.certs.current
        return NO_REVOCATIONS if contexts is None else contexts.material.revocations

    # ----------------------------------------------------------------- start and stop

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        # The ports first: one that cannot be had stops the enforcer at once, before it waits for
        # anything and before it logs.
        self._bind_listeners()
        self._bind_status()
        self.scheduler.start()
        if self.source is not None:
            self.source.start()
            refuse_invalid_in_scope(
                self.source.invalid_policies(), self.cfg.workload, root_namespace=self.cfg.root_namespace
            )
        self._start_certificates()
        for listener in self.listeners:
            listener.listen()
        if self.metrics_server is not None:
            self.metrics_server.start()
        self.loop.start()
        self.loop.call_soon_threadsafe(self._start_listening)
        write_ports_file(self.cfg.ports_file, self.ports)
        log.info(
            "enforcing",
            extra={
                "inbound": [f"{p.listen_port}:{p.app_port}/{p.protocol}" for p in self.cfg.inbound],
                "outbound": [f"{t.listen_port}:{t.label}" for t in self.cfg.outbound],
                "tls_engine": self.engine.name,
                "namespace": self.cfg.workload.namespace,
                "labels": label_text(self.cfg.workload.labels),
            },
        )

    def _start_certificates(self) -> None:
        self.certs.poll()
        self.scheduler.add_job(
            self.certs.poll,
            "interval",
            seconds=POLL_INTERVAL_S,
            id=CERT_JOB,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
        )
        if self.certs.current is None:
            logs.running()  # everything given has been checked; the wait below is for the agent
            log.info("waiting for the workload certificate files", extra={"cert_dir": str(self.cfg.cert_dir)})
            if not self.certs.loaded.wait(self.cfg.timeouts.certificate_wait_s):
                log.error(
                    "no usable workload certificate yet; TLS connections are refused until one appears",
                    extra={"cert_dir": str(self.cfg.cert_dir)},
                )

    def _bind_listeners(self) -> None:
        """Bind every listen port. A port given as 0 gets a free one, which then stands for it in
        `cfg`, and so in metrics, log lines and the ports file."""
        cfg = self.cfg
        inbound: list[InboundPort] = []
        for port in cfg.inbound:
            family, address = app_address(cfg.app_host, port.app_port)
            sock = bind(cfg.listen_host, port.listen_port, flag="--inbound")
            bound = replace(port, listen_port=bound_port(sock))
            ctx = PortContext(
                shared=self.shared,
                port=bound,
                decide=self.policy.decide,
                app_family=family,
                app_address=address,
                proxy_protocol=port.app_port in cfg.proxy_protocol_ports,
            )
            self.connections.register_port(ctx.label)
            self._add_listener(sock, bound.listen_port, "--inbound", _inbound_acceptor(ctx))
            inbound.append(bound)
        outbound: list[OutboundTarget] = []
        if cfg.outbound:
            resolver = self._resolver = Resolver(self.loop)
            for target in cfg.outbound:
                sock = bind(OUTBOUND_HOST, target.listen_port, flag="--outbound")
                bound_target = replace(target, listen_port=bound_port(sock))
                octx = OutboundContext(shared=self.shared, target=bound_target, resolver=resolver)
                self.connections.register_port(octx.label)
                self._add_listener(sock, bound_target.listen_port, "--outbound", _outbound_acceptor(octx))
                outbound.append(bound_target)
        self.cfg = replace(cfg, inbound=tuple(inbound), outbound=tuple(outbound))

    def _add_listener(self, sock: socket.socket, port: int, flag: str, on_connection: Acceptor) -> None:
        self.listeners.append(
            Listener(
                self.loop,
                sock,
                listen_port=port,
                flag=flag,
                metrics=self.metrics,
                refusals=self.shared.refusals,
                on_connection=on_connection,
            )
        )

    def _bind_status(self) -> None:
        if self.cfg.metrics_listen is None:
            return
        host, port = split_address(self.cfg.metrics_listen)
        self.metrics_server = StatusServer(
            host,
            port,
            flag="--metrics-listen",
            exposition=self.metrics.exposition,
            ready=lambda: self.ready,
            not_ready="no workload certificate yet",
            thread_name="enforce-metrics",
        )

    @property
    def ports(self) -> dict[str, object]:
        """The ports bound, as the ports file gives them: each --inbound and --outbound item in the
        order given, and the status endpoint's."""
        ports: dict[str, object] = {
            "inbound": [
                {"listen_port": p.listen_port, "app_port": p.app_port, "protocol": p.protocol}
                for p in self.cfg.inbound
            ],
            "outbound": [{"listen_port": t.listen_port, "target": t.label} for t in self.cfg.outbound],
        }
        if self.metrics_server is not None:
            ports["metrics"] = self.metrics_server.port
        return ports

    def _start_listening(self) -> None:
        for listener in self.listeners:
            listener.start()
        self.loop.call_later(self._sweep_interval, self._sweep_idle)
        self.loop.call_later(self.shared.refusals.interval_s, self._flush_refusals)

    def _flush_refusals(self) -> None:
        """Summaries of held-back refusal lines also when no refusal follows to trigger them."""
        self.shared.refusals.flush()
        self.loop.call_later(self.shared.refusals.interval_s, self._flush_refusals)

    @property
    def _sweep_interval(self) -> float:
        return min(IDLE_SWEEP_S, self.cfg.timeouts.idle_s / 2)

    def _sweep_idle(self) -> None:
        """Close relays that moved no byte for the idle timeout (as Envoy's tcp_proxy idle_timeout)."""
        limit = self.loop.monotonic() - self.cfg.timeouts.idle_s
        for connection in self.connections.snapshot():
            relay = getattr(connection, "relay", None)
            if isinstance(relay, Relay) and not relay.closed and relay.last_active < limit:
                relay.close("idle_timeout")
        self.loop.call_later(self._sweep_interval, self._sweep_idle)

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        enforcing = self.loop.running  # else a start that failed: its error is all there is to say
        if enforcing:
            done = threading.Event()

            def close_everything() -> None:
                for listener in self.listeners:
                    listener.close()
                self.connections.abort_all()
                self.shared.refusals.flush(final=True)
                done.set()

            self.loop.call_soon_threadsafe(close_everything)
            done.wait(5.0)
            self.loop.stop()
            self.loop.join(5.0)
        else:
            for listener in self.listeners:
                listener.close()
            self.loop.close()
        if self.source is not None:
            self.source.stop()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        if self.metrics_server is not None:
            self.metrics_server.stop()
        if self._resolver is not None:
            self._resolver.close()
        remove_ports_file(self.cfg.ports_file)
        if enforcing:
            log.info("enforcer stopped")

    def wait(self) -> None:
        self._stopped.wait()


def build_enforcer(
    cfg: EnforceConfig, *, clock: Clock | None = None, policy_set: PolicySet | None = None
) -> Enforcer:
    """An Enforcer for `cfg` (not started). `policy_set` given: used as it is, with no source."""
    engine = select_engine(cfg.tls_engine)
    scheduler = BackgroundScheduler(timezone="UTC")
    source: PolicySource | None = None
    if policy_set is None:
        policy_set = PolicySet()
        if cfg.policies:
            source = open_policy_source(
                cfg.policies,
                policy_set=policy_set,
                kubeconfig=cfg.kubeconfig,
                in_cluster=cfg.in_cluster,
                scheduler=scheduler,
            )
    return Enforcer(
        cfg=cfg,
        engine=engine,
        policy_set=policy_set,
        source=source,
        clock=clock or SystemClock(),
        scheduler=scheduler,
    )
