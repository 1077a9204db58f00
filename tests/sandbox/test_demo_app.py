from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from ca.sandbox.demo_app import Book, _handler, call, caller_identity, read_calls

WEB = "spiffe://cluster.local/ns/demo/sa/web"


@pytest.mark.parametrize(
    ("header", "identity"),
    [
        (None, ""),
        ("", ""),
        (f"By=spiffe://cluster.local/ns/demo/sa/api;Hash=ab12;URI={WEB}", WEB),
        (f'By=x;Hash=ab12;URI="{WEB}"', WEB),
        (f"By=a;URI=spiffe://cluster.local/ns/x/sa/old,By=b;Hash=cd;uri={WEB}", WEB),
        ("By=x;Hash=ab12", ""),
    ],
)
def test_the_caller_is_the_uri_of_the_nearest_xfcc_element(header: str | None, identity: str) -> None:
    assert caller_identity(header) == identity


@pytest.fixture
def app() -> Iterator[tuple[Book, int]]:
    book = Book("api")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(book))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield book, server.server_address[1]
    server.shutdown()
    server.server_close()


def get(port: int, path: str, headers: dict[str, str] | None = None) -> dict[str, object]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        assert response.status == 200
        document: dict[str, object] = json.loads(response.read())
        return document
    finally:
        connection.close()


def test_the_app_answers_who_called_and_counts_callers(app: tuple[Book, int]) -> None:
    _, port = app
    assert get(port, "/", {"x-forwarded-client-cert": f"By=x;Hash=1;URI={WEB}"}) == {
        "workload": "api",
        "caller": WEB,
    }
    assert call(f"http://127.0.0.1:{port}/") == ""  # no enforcer in between: plaintext
    assert get(port, "/status")["received"] == {"": 1, WEB: 1}


def test_calls_are_counted_with_the_last_error(app: tuple[Book, int]) -> None:
    book, _ = app
    book.answered("db", WEB)
    book.failed("db", "ConnectionResetError")
    book.answered("web", "")
    status = book.status()
    assert status["calls"] == {
        "db": {"ok": 1, "failed": 1, "last_ok": False, "seen_as": WEB, "last_error": "ConnectionResetError"},
        "web": {"ok": 1, "failed": 0, "last_ok": True, "seen_as": "", "last_error": None},
    }


def test_no_calls_file_yet_means_no_calls(tmp_path: Path) -> None:
    assert read_calls(tmp_path / "calls.json") == {}
    (tmp_path / "calls.json").write_text("[1, 2]")
    assert read_calls(tmp_path / "calls.json") == {}
    (tmp_path / "calls.json").write_text('{"db": "http://127.0.0.1:1/"}')
    assert read_calls(tmp_path / "calls.json") == {"db": "http://127.0.0.1:1/"}


def _eventually_json(path: Path, deadline: float) -> dict[str, object]:
    while time.monotonic() < deadline:
        try:
            document: dict[str, object] = json.loads(path.read_text())
            return document
        except (OSError, ValueError):
            time.sleep(0.02)
    raise AssertionError(f"{path} was not written")


def test_the_app_as_a_process_calls_its_peers_reports_them_and_stops_on_sigterm(tmp_path: Path) -> None:
    ports_file, calls_file = tmp_path / "app.ports.json", tmp_path / "calls.json"
    refusing = socket.socket()  # bound, never listening: connecting to it is refused
    refusing.bind(("127.0.0.1", 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "ca.sandbox.demo_app", "--name", "web", "--ports-file", str(ports_file),
         "--calls-file", str(calls_file), "--interval", "0.05"],
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        port = _eventually_json(ports_file, deadline)["http"]
        calls = {
            "self": f"http://127.0.0.1:{port}/",
            "gone": f"http://127.0.0.1:{refusing.getsockname()[1]}/",
        }
        calls_file.write_text(json.dumps(calls))
        while True:
            status = get(int(str(port)), "/status")
            counts = status["calls"]
            assert isinstance(counts, dict)
            if counts.get("self", {}).get("ok", 0) and counts.get("gone", {}).get("failed", 0):
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.05)
        assert counts["self"]["seen_as"] == ""
        assert counts["gone"]["last_ok"] is False
        assert "ConnectionRefused" in counts["gone"]["last_error"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        assert not ports_file.exists()
    finally:
        refusing.close()
        if process.poll() is None:
            process.kill()
            process.wait()
