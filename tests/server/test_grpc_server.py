"""The gRPC servers' options, against grpc itself: a burst of calls that arrives while the
server's event loop is busy waits for the loop instead of being dropped by gRPC core, and
messages far larger than the small TLS records the server writes go through whole."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import uvloop

from ca.issuance.spiffe_id import SpiffeId
from ca.server.grpc_server import MAX_MESSAGE_BYTES, OPTIONS, AsyncioServer, ThreadedServer
from ca.server.serving_cert import ServingIdentity
from tests.support.clock import FakeClock
from tests.support.cpu import spin
from tests.support.issuing import make_root

METHOD = "/meshca.test.Echo/Echo"
BURST = 4000  # a rotation or a CA restart brings thousands of agents' calls at once
CHANNELS = 8
BUSY_S = 1.5


class BusyLoopServer:
    """A grpc.aio server with OPTIONS on a loop of its own, whose loop can be kept busy."""

    def __init__(self, credentials: grpc.ServerCredentials | None = None) -> None:
        self._credentials = credentials
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server, self.port = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> tuple[grpc.aio.Server, int]:
        async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            return request

        server = grpc.aio.server(options=OPTIONS, maximum_concurrent_rpcs=2 * BURST)
        handler = grpc.unary_unary_rpc_method_handler(echo)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("meshca.test.Echo", {"Echo": handler}),)
        )
        if self._credentials is None:
            port = server.add_insecure_port("127.0.0.1:0")
        else:
            port = server.add_secure_port("127.0.0.1:0", self._credentials)
        await server.start()
        return server, port

    def block_loop(self, seconds: float) -> None:
        """Keep the loop from picking up calls, as a CA busy signing and writing does."""
        self.loop.call_soon_threadsafe(time.sleep, seconds)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture
def busy_server() -> Iterator[BusyLoopServer]:
    server = BusyLoopServer()
    yield server
    server.stop()


def test_calls_arriving_while_the_loop_is_busy_wait_for_it_instead_of_being_dropped(
    busy_server: BusyLoopServer,
) -> None:
    channels = [
        grpc.insecure_channel(
            f"127.0.0.1:{busy_server.port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(CHANNELS)
    ]
    try:
        for channel in channels:
            grpc.channel_ready_future(channel).result(timeout=10)
        calls = [c.unary_unary(METHOD, request_serializer=None, response_deserializer=None) for c in channels]
        busy_server.block_loop(BUSY_S)
        futures = [calls[i % CHANNELS].future(b"x", timeout=30) for i in range(BURST)]
        codes = Counter(f.code() for f in futures)
    finally:
        for channel in channels:
            channel.close()

    assert codes == Counter({grpc.StatusCode.OK: BURST})


def test_messages_larger_than_a_tls_record_go_through_whole() -> None:
    clock = FakeClock()
    authority = make_root(clock)
    serving = ServingIdentity(
        authority=authority,
        hosts=("localhost",),
        spiffe_id=SpiffeId.for_workload("cluster.local", "istio-system", "meshca"),
        clock=clock,
    )
    server = BusyLoopServer(serving.server_credentials(require_client_cert=False))
    credentials = grpc.ssl_channel_credentials(root_certificates=authority.trust_bundle_pem().encode())
    channel = grpc.secure_channel(
        f"127.0.0.1:{server.port}", credentials, options=[("grpc.ssl_target_name_override", "localhost")]
    )
    try:
        echo = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        large = bytes(range(256)) * ((MAX_MESSAGE_BYTES - 1024) // 256)
        assert echo(large, timeout=10) == large
    finally:
        channel.close()
        server.stop()


class NoService:
    """Stands in for the certificate API: a server with no methods."""

    name = "meshca.test.Nothing"

    def handler(self, *, asynchronous: bool = False) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
        return grpc.method_handlers_generic_handler(self.name, {})


@pytest.mark.parametrize("model", ["asyncio", "threaded"])
def test_both_servers_keep_each_connection_small(model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each agent's control stream holds a TLS connection for good: its records go out at most
    4 KiB at a time (so that its buffers stay small, while a certificate chain still fits in
    one) and gRPC keeps no channelz statistics."""
    seen: dict[str, object] = {}
    real_aio_server, real_server = grpc.aio.server, grpc.server

    def aio_server(*args: Any, **kwargs: Any) -> grpc.aio.Server:
        seen.update(kwargs["options"])
        return real_aio_server(*args, **kwargs)

    def server(*args: Any, **kwargs: Any) -> grpc.Server:
        seen.update(kwargs["options"])
        return real_server(*args, **kwargs)

    monkeypatch.setattr(grpc.aio, "server", aio_server)
    monkeypatch.setattr(grpc, "server", server)
    service: Any = NoService()
    built = AsyncioServer(service) if model == "asyncio" else ThreadedServer(service, workers=1)
    built.stop(0)
    assert seen["grpc.tsi.max_frame_size"] == 4096
    assert seen["grpc.enable_channelz"] == 0


def test_the_asyncio_server_runs_on_uvloop_and_measures_its_loop_threads_demand() -> None:
    """The ledger lingers only while the loop is short of CPU, as measured on the loop's own
    thread: a loop kept busy for a whole window shows a busy window. The loop is uvloop's."""
    service: Any = NoService()
    built = AsyncioServer(service)
    try:
        assert isinstance(built.loop, uvloop.Loop)

        async def busy_for_a_window() -> float:
            built.load.saturated()  # opens a window
            spin(0.06)  # work, longer than a 50 ms window
            built.load.saturated()  # closes it
            return built.load.busy_share

        # Not 1.0: another thread of this process may take the GIL now and then.
        assert asyncio.run_coroutine_threadsafe(busy_for_a_window(), built.loop).result(10) >= 0.7
    finally:
        built.stop(0)


def test_a_stopped_asyncio_server_gives_back_its_loops_descriptors() -> None:
    """Tests and `meshca up` build many servers in one process; each left open its loop's poller
    descriptors (about five on uvloop) until the process ran past select()'s 1,024."""

    def open_descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    service: Any = NoService()
    AsyncioServer(service).stop(0)  # gRPC's own process-wide descriptors, made once
    before = open_descriptors()
    for _ in range(10):
        AsyncioServer(service).stop(0)
    assert open_descriptors() - before <= 2
