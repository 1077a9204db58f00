"""A flow's non-blocking connection to its next hop, on a real event loop and loopback sockets.

A connect that stays in progress: a listener with a backlog of 0 takes one connection into its
accept queue and drops the SYNs that come after it, until the queue has room again.
"""

from __future__ import annotations

import contextlib
import gc
import os
import queue
import socket
import threading
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TypeVar

import pytest

from ca.enforce.connect import Connecting
from ca.enforce.loop import DeadlineQueue, EventLoop
from tests.support.ports import reserved_port

CONNECT_S = 5.0
WAIT_S = 10.0
T = TypeVar("T")


@dataclass
class Flow:
    """Records what the attempt tells its flow; `fail_on_connect` makes that call raise."""

    calls: queue.Queue[tuple[str, object]] = field(default_factory=queue.Queue)
    fail_on_connect: bool = False

    def next_hop_connected(self, sock: socket.socket) -> None:
        self.calls.put(("connected", sock))
        if self.fail_on_connect:
            raise RuntimeError("a bug in the flow")

    def next_hop_failed(self, detail: str) -> None:
        self.calls.put(("failed", detail))

    def abort(self) -> None:
        self.calls.put(("abort", None))

    def next_call(self) -> tuple[str, object]:
        return self.calls.get(timeout=WAIT_S)

    def no_more_calls(self) -> bool:
        return self.calls.empty()


@dataclass
class Running:
    loop: EventLoop
    deadline: DeadlineQueue
    now: list[float]

    def on_loop(self, call: Callable[[], T]) -> T:
        """Run `call` on the loop thread, as every handler runs, and return what it returned."""
        done: Future[T] = Future()

        def run() -> None:
            try:
                done.set_result(call())
            except BaseException as err:
                done.set_exception(err)

        self.loop.call_soon_threadsafe(run)
        return done.result(timeout=WAIT_S)

    def pass_deadline(self) -> None:
        self.now[0] += CONNECT_S + 1
        self.on_loop(lambda: None)  # wakes the loop, which then runs the deadlines that are due
        self.on_loop(lambda: None)  # and has finished that round when this runs


@pytest.fixture
def running() -> Iterator[Running]:
    now = [1000.0]
    loop = EventLoop(monotonic=lambda: now[0])
    deadline = loop.deadline_queue(CONNECT_S)
    loop.start("test-loop")
    try:
        yield Running(loop, deadline, now)
    finally:
        loop.stop()
        loop.join(WAIT_S)


@pytest.fixture
def full_listener() -> Iterator[socket.socket]:
    """A listener whose accept queue is full: a connect to it stays in progress."""
    with socket.create_server(("127.0.0.1", 0), backlog=0) as listener:
        queued = socket.create_connection(listener.getsockname(), timeout=WAIT_S)
        try:
            yield listener
        finally:
            queued.close()


def open_sockets() -> set[int]:
    """The file descriptors of this process that are sockets. Tests compare the set before and
    after, not the count: other tests' threads close their files meanwhile."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                found.add(int(name))
        except OSError:
            continue  # closed while listed
    return found


@contextlib.contextmanager
def no_socket_left_to_the_garbage_collector() -> Iterator[None]:
    """Fails if a socket is closed by being dropped rather than by its owner (ResourceWarning)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        yield
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def start(running: Running, flow: Flow, address: tuple[str, int]) -> tuple[Connecting, bool]:
    connecting = Connecting(running.loop, running.deadline, flow, to="the application")
    return connecting, running.on_loop(lambda: connecting.start(socket.AF_INET, address))


def test_a_listening_peer_is_handed_over_as_a_connected_socket(running: Running) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        flow = Flow()
        start(running, flow, listener.getsockname())
        call, sock = flow.next_call()
        assert call == "connected" and isinstance(sock, socket.socket)
        with sock:
            assert sock.getpeername() == listener.getsockname()
            assert not sock.getblocking()
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        running.pass_deadline()
        assert flow.no_more_calls()


def test_a_refused_connection_fails_with_the_reason_and_closes_the_socket(running: Running) -> None:
    with reserved_port() as port:
        flow = Flow()
        before = open_sockets()
        with no_socket_left_to_the_garbage_collector():
            start(running, flow, ("127.0.0.1", port))
            assert flow.next_call() == ("failed", "cannot connect to the application: Connection refused")
        assert open_sockets() - before == set()
        running.pass_deadline()
        assert flow.no_more_calls()


def test_no_answer_within_the_deadline_fails_as_a_timeout(
    running: Running, full_listener: socket.socket
) -> None:
    flow = Flow()
    before = open_sockets()
    _, waiting = start(running, flow, full_listener.getsockname())
    assert waiting
    assert flow.no_more_calls() and len(open_sockets() - before) == 1
    with no_socket_left_to_the_garbage_collector():
        running.pass_deadline()
        assert flow.next_call() == ("failed", "connecting to the application timed out")
    assert open_sockets() - before == set()
    assert flow.no_more_calls()


def test_a_cancelled_attempt_calls_nothing_even_past_its_deadline(
    running: Running, full_listener: socket.socket
) -> None:
    flow = Flow()
    before = open_sockets()
    connecting, waiting = start(running, flow, full_listener.getsockname())
    assert waiting and len(open_sockets() - before) == 1
    with no_socket_left_to_the_garbage_collector():
        running.on_loop(connecting.cancel)
    assert open_sockets() - before == set()
    running.pass_deadline()
    assert flow.no_more_calls()


def test_an_answer_that_comes_later_is_handed_over_from_the_loop(
    running: Running, full_listener: socket.socket
) -> None:
    flow = Flow()
    _, waiting = start(running, flow, full_listener.getsockname())
    assert waiting
    full_listener.accept()[0].close()  # room in the queue: the next SYN (about 1 s later) is answered
    call, sock = flow.next_call()
    assert call == "connected" and isinstance(sock, socket.socket)
    sock.close()
    running.pass_deadline()
    assert flow.no_more_calls()


def test_a_flow_that_raises_on_the_answer_is_aborted(running: Running, full_listener: socket.socket) -> None:
    flow = Flow(fail_on_connect=True)
    _, waiting = start(running, flow, full_listener.getsockname())
    assert waiting
    full_listener.accept()[0].close()
    call, sock = flow.next_call()
    assert call == "connected" and isinstance(sock, socket.socket)
    assert flow.next_call() == ("abort", None)
    sock.close()


def test_the_flow_is_called_on_the_loop_thread(running: Running) -> None:
    threads: list[str] = []

    class Named(Flow):
        def next_hop_connected(self, sock: socket.socket) -> None:
            threads.append(threading.current_thread().name)
            super().next_hop_connected(sock)

    with socket.create_server(("127.0.0.1", 0)) as listener:
        flow = Named()
        start(running, flow, listener.getsockname())
        _, sock = flow.next_call()
        assert isinstance(sock, socket.socket)
        sock.close()
    assert threads == ["test-loop"]
