"""ca.net.status_http.StatusServer on a real socket: /metrics, /healthz/ready and anything else."""

from __future__ import annotations

import http.client
from collections.abc import Iterator

import pytest
from prometheus_client import CONTENT_TYPE_LATEST

from ca.net.status_http import StatusServer


class Readiness:
    def __init__(self) -> None:
        self.ready = False


@pytest.fixture
def served() -> Iterator[tuple[StatusServer, Readiness]]:
    readiness = Readiness()
    server = StatusServer(
        "127.0.0.1",
        0,
        flag="--status-listen",
        exposition=lambda: b"# metrics\nup 1\n",
        ready=lambda: readiness.ready,
        not_ready="no certificate yet",
        thread_name="test-status",
    )
    server.start()
    yield server, readiness
    server.stop()


def get(port: int, path: str) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read()
    finally:
        conn.close()


def test_metrics_serve_the_exposition(served: tuple[StatusServer, Readiness]) -> None:
    server, _ = served
    assert get(server.port, "/metrics") == (200, CONTENT_TYPE_LATEST, b"# metrics\nup 1\n")


def test_readiness_follows_the_callable(served: tuple[StatusServer, Readiness]) -> None:
    server, readiness = served
    assert get(server.port, "/healthz/ready") == (503, "text/plain", b"no certificate yet\n")
    readiness.ready = True
    assert get(server.port, "/healthz/ready") == (200, "text/plain", b"ready\n")


def test_other_paths_are_not_found(served: tuple[StatusServer, Readiness]) -> None:
    server, _ = served
    assert get(server.port, "/") == (404, "text/plain", b"not found; try /metrics or /healthz/ready\n")
