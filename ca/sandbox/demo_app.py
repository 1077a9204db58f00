"""A tiny HTTP workload for `meshca up`: `python -m ca.sandbox.demo_app --name web ...`.

It answers `GET /` with who it is and who called it (the URI of the x-forwarded-client-cert
header its enforcer adds: the caller's SPIFFE ID, or none for a plaintext caller), and `GET
/status` with what it has done: its calls to each peer (answered, failed, the last error and
the identity the peer saw) and the calls it received, by caller identity. Every `--interval` it
calls each peer named in `--calls-file` (JSON `{"peer": "http://127.0.0.1:PORT/"}`, re-read each
round, so the sandbox can give it the ports once they are known). Each call is a new connection,
so a policy change applies to the next one. It listens on `--listen` (port 0: a free one) and
writes the port to `--ports-file` as `{"http": PORT}`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import sys
import threading
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType

from ca.common.files import atomic_write

CALL_TIMEOUT_S = 2.0
ERROR_TEXT_LIMIT = 80
PLAINTEXT_CALLER = ""  # the caller's identity when no certificate was presented


def caller_identity(xfcc: str | None) -> str:
    """The caller's SPIFFE ID from x-forwarded-client-cert (the last element: the hop nearest to
    us), or PLAINTEXT_CALLER when there is none."""
    if not xfcc:
        return PLAINTEXT_CALLER
    last = xfcc.split(",")[-1]
    for part in last.split(";"):
        key, _, value = part.strip().partition("=")
        if key.lower() == "uri":
            return value.strip().strip('"')
    return PLAINTEXT_CALLER


@dataclass
class CallCount:
    ok: int = 0
    failed: int = 0
    last_ok: bool | None = None
    seen_as: str | None = None  # the identity the peer saw at the last answered call
    last_error: str | None = None


class Book:
    """What the app did and received; shared by the server threads and the caller."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._calls: dict[str, CallCount] = {}
        self._received: dict[str, int] = {}

    def received(self, caller: str) -> None:
        with self._lock:
            self._received[caller] = self._received.get(caller, 0) + 1

    def answered(self, peer: str, seen_as: str) -> None:
        with self._lock:
            count = self._calls.setdefault(peer, CallCount())
            count.ok += 1
            count.last_ok = True
            count.seen_as = seen_as

    def failed(self, peer: str, error: str) -> None:
        with self._lock:
            count = self._calls.setdefault(peer, CallCount())
            count.failed += 1
            count.last_ok = False
            count.last_error = error

    def status(self) -> dict[str, object]:
        with self._lock:
            return {
                "workload": self.name,
                "calls": {peer: asdict(count) for peer, count in sorted(self._calls.items())},
                "received": dict(sorted(self._received.items())),
            }


def _handler(book: Book) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            if self.path == "/status":
                self._send(book.status())
                return
            caller = caller_identity(self.headers.get("x-forwarded-client-cert"))
            book.received(caller)
            self._send({"workload": book.name, "caller": caller})

        def _send(self, document: Mapping[str, object]) -> None:
            body = json.dumps(document).encode() + b"\n"
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # one line per request would drown the sandbox's logs

    return Handler


def _short(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    return text if len(text) <= ERROR_TEXT_LIMIT else text[: ERROR_TEXT_LIMIT - 1] + "…"


def call(url: str) -> str:
    """One GET on a new connection; the caller identity the peer reports. Raises OSError,
    http.client.HTTPException or ValueError when the call fails."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=CALL_TIMEOUT_S)
    try:
        connection.request("GET", parts.path or "/", headers={"connection": "close"})
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise ValueError(f"HTTP {response.status}")
        answer = json.loads(body)
        return str(answer.get("caller", ""))
    finally:
        connection.close()


def read_calls(path: Path) -> dict[str, str]:
    """The peers to call and their URLs; none until the sandbox has written the file."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(document, dict):
        return {}
    return {str(peer): str(url) for peer, url in document.items()}


def call_peers(book: Book, calls_file: Path, interval_s: float, stop: threading.Event) -> None:
    while not stop.is_set():
        for peer, url in read_calls(calls_file).items():
            try:
                book.answered(peer, call(url))
            except (OSError, http.client.HTTPException, ValueError) as err:
                book.failed(peer, _short(err))
        stop.wait(interval_s)


def _listen_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ca.sandbox.demo_app", description=__doc__)
    parser.add_argument("--name", required=True, help="the workload's name")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to serve on (port 0: any)")
    parser.add_argument("--ports-file", required=True, help='where to write {"http": PORT}')
    parser.add_argument("--calls-file", required=True, help="JSON {peer: url} of the peers to call")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between rounds of calls")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    book = Book(args.name)
    server = ThreadingHTTPServer(_listen_address(args.listen), _handler(book))
    server.daemon_threads = True
    ports_file = Path(args.ports_file)
    atomic_write(ports_file, json.dumps({"http": server.server_address[1]}).encode() + b"\n")
    stop = threading.Event()

    def shutdown(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    serving = threading.Thread(target=server.serve_forever, name="demo-app-http", daemon=True)
    serving.start()
    try:
        call_peers(book, Path(args.calls_file), args.interval, stop)
    finally:
        server.shutdown()
        server.server_close()
        ports_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
