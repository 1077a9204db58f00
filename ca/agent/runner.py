"""Runs the agent: its attempts on an APScheduler timetable, its socket servers, its HTTP endpoint."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ca.agent.agent import Agent, AgentSettings, Replacement, SvidSink
from ca.agent.bundle import HeldBundle
from ca.agent.ca_client import CaClient, CaEndpoint
from ca.agent.identity import token_identity, token_placement
from ca.agent.output import read_leaf
from ca.agent.schedule import AGENT_BACKOFF, RenewalPolicy
from ca.agent.settings import AgentConfig
from ca.agent.sinks import FileSink
from ca.agent.svid import Svid
from ca.common.clock import Clock, SystemClock
from ca.errors import ConfigError
from ca.issuance.keys import generate_private_key
from ca.net.listening import remove_ports_file, split_address, write_ports_file

if TYPE_CHECKING:
    # Imported where they are used, by a running agent only: `--once` (an init container,
    # waited for by its pod) neither schedules, serves nor streams, so it does not import
    # APScheduler, prometheus_client, the Envoy protos or the control stream's.
    import grpc

    from ca.agent.attempts import AttemptScheduler
    from ca.agent.broadcast import SvidBroadcast
    from ca.agent.control import ControlStream
    from ca.agent.telemetry import AgentMetrics
    from ca.net.status_http import StatusServer

log = logging.getLogger("meshca.agent")


class _BroadcastSink:
    def __init__(self, broadcast: SvidBroadcast) -> None:
        self._broadcast = broadcast

    def publish(self, svid: Svid) -> None:
        self._broadcast.publish(svid)


def unix_server(path: Path, register: list[object]) -> grpc.Server:
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    from envoy.service.secret.v3 import sds_pb2_grpc

    from ca.agent.sds import SdsService
    from ca.agent.workload_api import WorkloadApiService

    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server = grpc.server(ThreadPoolExecutor(max_workers=8, thread_name_prefix=f"uds-{path.name}"))
    for item in register:
        if isinstance(item, SdsService):
            sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(item, server)
        elif isinstance(item, WorkloadApiService):
            server.add_generic_rpc_handlers((item.handler(),))
    if server.add_insecure_port(f"unix:{path}") == 0:
        raise ConfigError(f"cannot listen on the Unix socket {path}; check the directory is writable")
    return server


@dataclass
class AgentProcess:
    """A built agent: its attempts, CA client and sinks, and unless --once the servers, health
    endpoint and control stream it runs until it is stopped."""

    cfg: AgentConfig
    agent: Agent
    broadcast: SvidBroadcast | None  # None with --once: no stream to serve
    metrics: AgentMetrics | None  # None with --once: nothing serves them
    client: CaClient
    clock: Clock
    servers: list[grpc.Server] = field(default_factory=list)
    telemetry: StatusServer | None = None
    control: ControlStream | None = None
    _attempts: AttemptScheduler | None = None
    _stopped: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        for server in self.servers:
            server.start()
        if self.telemetry is not None:
            self.telemetry.start()
        write_ports_file(self.cfg.ports_file, self.ports)
        from ca.agent.attempts import AttemptScheduler

        self._attempts = AttemptScheduler(self.agent.attempt, self.clock)
        self._attempts.start()
        if self.control is not None:
            self.control.start()

    @property
    def ports(self) -> dict[str, int]:
        """The TCP ports this agent listens on, by name (as its --ports-file gives them)."""
        return {"health": self.telemetry.port} if self.telemetry is not None else {}

    def retry_now(self) -> None:
        """Ask the CA again at once (an operator forcing rotation)."""
        if self._attempts is not None:
            self._attempts.retry_now()

    def renew_now(self, replacing: Replacement | None) -> None:
        """The control stream's request: a new certificate at once, for an order when `replacing`."""
        if replacing is not None:
            self.agent.replace_for(replacing)
        self.retry_now()

    def stop(self) -> None:
        self._stopped.set()
        if self.control is not None:
            self.control.stop()
        if self._attempts is not None:
            self._attempts.stop()
        for server in self.servers:
            server.stop(0.5).wait()
        if self.telemetry is not None:
            self.telemetry.stop()
        remove_ports_file(self.cfg.ports_file)
        self.client.close()

    def wait(self) -> None:
        self._stopped.wait()


@dataclass
class _Renewals:
    """The control stream's way to the agent's renewals, bound once the process is built."""

    process: AgentProcess | None = None

    def renew_now(self, replacing: Replacement | None) -> None:
        if self.process is not None:
            self.process.renew_now(replacing)


def _control_stream(
    cfg: AgentConfig, clock: Clock, broadcast: SvidBroadcast, renewals: _Renewals, bundle: HeldBundle
) -> ControlStream:
    from ca.agent.control import ControlEndpoint, ControlStream

    assert cfg.ca_control_address is not None
    return ControlStream(
        endpoint=ControlEndpoint(
            address=cfg.ca_control_address, root_file=cfg.ca_root, server_name=cfg.ca_server_name
        ),
        renewer=renewals,
        crls=broadcast.publish_crl,
        clock=clock,
        random=random.SystemRandom().random,
        placement=lambda: token_placement(cfg.token_file),
        bundle=bundle,
        serve_bundle=broadcast.publish_bundle,
    )


def _svid_broadcast(files: FileSink) -> SvidBroadcast:
    from ca.agent.broadcast import SvidBroadcast

    return SvidBroadcast(crl_sinks=[files], bundle_sinks=[files])


def _agent_metrics(clock: Clock, bundle: HeldBundle) -> AgentMetrics:
    from ca.agent.telemetry import AgentMetrics

    return AgentMetrics(clock, bundle=bundle)


def build_agent(cfg: AgentConfig, clock: Clock | None = None) -> AgentProcess:
    clock = clock or SystemClock()
    files = FileSink(cfg.output_dir)
    # broadcast.publish_crl and publish_bundle: the CA's CRLs and trust bundle everywhere
    broadcast = None if cfg.once else _svid_broadcast(files)
    bundle = HeldBundle()  # the roots held: served, and trusted (with --ca-root) to reach the CA
    metrics = None if cfg.once else _agent_metrics(clock, bundle)
    client = CaClient(
        CaEndpoint(
            address=cfg.ca_address,
            root_file=cfg.ca_root,
            server_name=cfg.ca_server_name,
            cluster_id=cfg.cluster_id,
        ),
        cfg.token_file,
        bundle,
    )
    settings = AgentSettings(
        trust_domain=cfg.trust_domain,
        key_type=cfg.key_type,
        ttl=cfg.ttl,
        renewal=RenewalPolicy(ratio=cfg.rotation_ratio, jitter=cfg.rotation_jitter),
        backoff=AGENT_BACKOFF,
        expected_identity=lambda: token_identity(cfg.token_file, cfg.trust_domain),
    )
    renewals = _Renewals()
    control = (
        _control_stream(cfg, clock, broadcast, renewals, bundle)
        if cfg.ca_control_address is not None and broadcast is not None
        else None
    )
    # The control stream last: it reconnects with a new certificate once the others serve it.
    sinks: list[SvidSink] = [
        files,
        *([_BroadcastSink(broadcast)] if broadcast is not None else []),
        bundle,
        *([control] if control else []),
    ]
    agent = Agent(
        settings=settings,
        source=client,
        sinks=sinks,
        clock=clock,
        random=random.SystemRandom().random,
        generate_key=generate_private_key,
        observer=metrics,
    )
    agent.resume(read_leaf(cfg.output_dir))  # a restart: what it held before
    process = AgentProcess(
        cfg=cfg,
        agent=agent,
        broadcast=broadcast,
        metrics=metrics,
        client=client,
        clock=clock,
        control=control,
    )
    renewals.process = process
    if cfg.once:
        return process
    assert broadcast is not None and metrics is not None  # built for an agent that runs
    if control is not None:
        metrics.follow_control_stream(control)
        metrics.follow_revocations(lambda: broadcast.snapshot().revocations.next_update)
    # The port first: an agent that cannot have it stops before replacing any socket file.
    if cfg.health_listen is not None:
        from ca.net.status_http import StatusServer

        host, port = split_address(cfg.health_listen)
        process.telemetry = StatusServer(
            host,
            port,
            flag="--health-listen",
            exposition=metrics.exposition,
            ready=lambda: metrics.ready,
            not_ready="no valid certificate yet",
            thread_name="agent-http",
        )
    if cfg.sds_socket is not None:
        from ca.agent.sds import SdsService

        process.servers.append(unix_server(cfg.sds_socket, [SdsService(broadcast)]))
    if cfg.workload_api_socket is not None:
        from ca.agent.workload_api import WorkloadApiService

        process.servers.append(unix_server(cfg.workload_api_socket, [WorkloadApiService(broadcast)]))
    return process
