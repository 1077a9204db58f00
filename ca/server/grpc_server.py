"""The gRPC server that carries the certificate API: threaded or asyncio.

Both register the same handler and health service. The asyncio server runs
its loop on a thread of its own, so the caller's API is the same for both.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import grpc
import uvloop
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ca.common.loop_load import CpuDemand, LoopLoad, ThreadCpuDemand
from ca.net.listening import listen_error
from ca.server.certificate_api import SERVICE_NAME, CertificateService

MAX_MESSAGE_BYTES = 256 * 1024
MAX_PENDING_CALLS = 100_000  # more than the control streams and calls the CA ever runs at once
# gRPC would set SO_REUSEPORT: a second CA on the same port would then start without a word
# and the kernel would split the clients between two unrelated roots. Only the workers of one
# `meshca serve --processes N` set it (server_options).
OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
    # Agents ping their idle control streams (ca.agent.control, every 60 s): allow it, and ping
    # them in turn so that a stream whose agent vanished is noticed and closed.
    ("grpc.http2.min_ping_interval_without_data_ms", 30_000),
    ("grpc.keepalive_time_ms", 120_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    # Calls that arrive while the server is busy wait in gRPC core until it picks them up; past
    # about a thousand waiting, core drops them (the caller sees CANCELLED). A rotation order or
    # a CA restart brings thousands of agents' streams and requests at once: let them wait (the
    # server's maximum_concurrent_rpcs still bounds what runs).
    ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
    ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_CALLS),
    # Every TLS connection keeps a buffer the size of its largest outgoing record, and its
    # records pass through buffers of which only that much is used: 4 KiB in place of 16 KiB
    # saves about 5 KiB per agent's control stream (50 MiB for 10,000). Not 1 KiB (gRPC's
    # least, about 3 KiB less again): a certificate chain then goes out in three records
    # instead of one, and in scripts/bench_ca.py the CA spent about 10% more CPU per
    # certificate (1.23 against 1.11 ms, median of 3 pinned rounds).
    ("grpc.tsi.max_frame_size", 4096),
    # Channelz (gRPC's own statistics per connection and call, for its admin service, which the
    # CA does not serve) keeps about 1.5 KiB per connection.
    ("grpc.enable_channelz", 0),
]
SERVING = health_pb2.HealthCheckResponse.SERVING


def server_options(*, reuse_port: bool = False) -> list[tuple[str, int]]:
    """OPTIONS; `reuse_port` sets SO_REUSEPORT, for the workers of `meshca serve --processes N`
    alone: they bind one port and the kernel spreads the connections over them."""
    return [(name, int(reuse_port) if name == "grpc.so_reuseport" else value) for name, value in OPTIONS]


class RpcService(Protocol):
    """A further service the server carries beside the certificate API (the ledger admin API)."""

    name: str

    def handler(self, *, asynchronous: bool = False) -> grpc.GenericRpcHandler: ...  # type: ignore[type-arg]


class ApiServer(Protocol):
    def bind(self, address: str, credentials: grpc.ServerCredentials, *, flag: str) -> int: ...

    def start(self) -> None: ...

    def stop(self, grace_s: float) -> None: ...


def _bound(flag: str, address: str, add_port: Callable[[], int]) -> int:
    """The port `add_port` bound `address` to; ConfigError naming `flag` if it could not."""
    try:
        port = add_port()
    except RuntimeError as err:  # grpcio's "Failed to bind", which does not say why
        raise listen_error(flag, address) from err
    if port == 0:
        raise listen_error(flag, address)
    return port


class ThreadedServer:
    def __init__(
        self,
        service: CertificateService,
        *,
        workers: int,
        extra: Sequence[RpcService] = (),
        reuse_port: bool = False,
    ) -> None:
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
            options=server_options(reuse_port=reuse_port),
            maximum_concurrent_rpcs=workers * 64,
        )
        self._server.add_generic_rpc_handlers((service.handler(), *(s.handler() for s in extra)))
        self._names = ("", SERVICE_NAME, *(s.name for s in extra))
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)

    def bind(self, address: str, credentials: grpc.ServerCredentials, *, flag: str) -> int:
        return _bound(flag, address, lambda: self._server.add_secure_port(address, credentials))

    def start(self) -> None:
        self._server.start()
        for name in self._names:
            self._health.set(name, SERVING)

    def stop(self, grace_s: float) -> None:
        self._server.stop(grace_s).wait()


class AsyncioServer:
    """grpc.aio on a private event loop thread: the handler runs on the loop, with no
    hand-off to a worker thread per request. The loop is uvloop's: asyncio's own scheduling
    is a large share of a certificate's CPU, and uvloop's costs less (README, "Operating")."""

    def __init__(
        self,
        service: CertificateService,
        *,
        max_concurrent: int = 1024,
        extra: Sequence[RpcService] = (),
        reuse_port: bool = False,
    ) -> None:
        self._names = ("", SERVICE_NAME, *(s.name for s in extra))
        self._loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="grpc-aio", daemon=True)
        self._thread.start()

        async def loop_thread_demand() -> CpuDemand:
            return ThreadCpuDemand.of_this_thread()

        self._demand: CpuDemand = self._run(loop_thread_demand)
        self.load = LoopLoad(self._demand)
        self._health = health_aio.HealthServicer()

        async def build() -> grpc.aio.Server:
            server = grpc.aio.server(
                options=server_options(reuse_port=reuse_port), maximum_concurrent_rpcs=max_concurrent
            )
            server.add_generic_rpc_handlers(
                (service.handler(asynchronous=True), *(s.handler(asynchronous=True) for s in extra))
            )
            health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
            return server

        self._server = self._run(build)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def _run(self, make: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        return asyncio.run_coroutine_threadsafe(make(), self._loop).result()

    def bind(self, address: str, credentials: grpc.ServerCredentials, *, flag: str) -> int:
        async def add() -> int:
            port: int = self._server.add_secure_port(address, credentials)
            return port

        return _bound(flag, address, lambda: int(self._run(add)))

    def start(self) -> None:
        async def start() -> None:
            await self._server.start()
            for name in self._names:
                await self._health.set(name, SERVING)

        self._run(start)

    def stop(self, grace_s: float) -> None:
        async def stop() -> None:
            await self._server.stop(grace_s)

        self._run(stop)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()  # its poller's descriptors: a process that builds many servers runs out
        if isinstance(self._demand, ThreadCpuDemand):
            self._demand.close()
