"""What scripts/bench_enforcer.py and scripts/bench_tls_engines.py both measure with, and how.

- The application behind the TLS server under test: echo, sink and source on one
  plaintext connection each (`serve_app`).
- The load client: blocking TLS 1.3 connections through the engine contexts it is given.
- The measurements against a target (a server process with a port and a CPU clock):
  mutual-TLS handshakes from several client threads for a fixed time, and one bulk
  transfer each way, both counted per CPU-second of the target.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

CLIENT_THREADS = 8
BLOCK_BYTES = 1 << 20


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the application


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed early")
        data += chunk
    return data


def serve_app_connection(conn: socket.socket) -> None:
    """First byte: E echo; S<u64> sink that many bytes, answer K; D<u64> send that many bytes."""
    buffer = bytearray(BLOCK_BYTES)
    view = memoryview(buffer)
    with contextlib.suppress(OSError), conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        command = conn.recv(1)
        if command == b"E":
            while count := conn.recv_into(buffer):
                conn.sendall(view[:count])
            return
        if command not in (b"S", b"D"):
            return
        (total,) = struct.unpack("!Q", recv_exactly(conn, 8))
        done = 0
        if command == b"S":
            while done < total and (count := conn.recv_into(buffer)):
                done += count
            conn.sendall(b"K")
            return
        while done < total:
            chunk = view[: min(len(buffer), total - done)]
            conn.sendall(chunk)
            done += len(chunk)
        conn.recv(1)


def serve_app(listening: socket.socket) -> None:
    """Serve each connection on its own thread until the listening socket is closed."""
    while True:
        try:
            conn, _ = listening.accept()
        except OSError:
            return
        threading.Thread(target=serve_app_connection, args=(conn,), daemon=True).start()


# --------------------------------------------------------------------------- the load client


class TlsClient:
    """Blocking TLS 1.3 client connections to loopback ports, through the given engine contexts."""

    def __init__(self, contexts: Any) -> None:
        self.contexts = contexts

    def connect(self, port: int) -> Any:
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.settimeout(None)  # a timeout makes the fd non-blocking; OpenSSL is to block here
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = self.contexts.connect(sock, None)
        if conn.handshake() != 1:  # blocking socket: completes or raises
            raise RuntimeError("handshake did not complete")
        return conn

    @staticmethod
    def send_all(conn: Any, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            count = conn.write(view)
            if count <= 0:
                raise ConnectionError(f"TLS write returned {count}")
            view = view[count:]

    @staticmethod
    def recv_exactly(conn: Any, size: int) -> bytes:
        buffer = bytearray(size)
        view, got = memoryview(buffer), 0
        while got < size:
            count = conn.read_into(view[got:])
            if count <= 0:
                raise ConnectionError(f"TLS read returned {count}")
            got += count
        return bytes(buffer)


# --------------------------------------------------------------------------- measurements


class Target(Protocol):
    """A TLS server process under test."""

    @property
    def name(self) -> str: ...

    @property
    def port(self) -> int: ...

    def cpu_s(self) -> float: ...


def process_cpu_s(pid: int) -> float:
    """CPU time of all of a process's threads in seconds (/proc/<pid>/task/*/schedstat, in ns).

    /proc/<pid>/stat counts in clock ticks (10 ms), too coarse for a second of bulk transfer.
    Threads that ended are not counted; the servers measured keep theirs.
    """
    total = 0
    with contextlib.suppress(FileNotFoundError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
    return total / 1e9


def handshakes(client: TlsClient, target: Target, seconds: float) -> dict[str, float]:
    """New connection, full mutual-TLS handshake, 3-byte echo, close, from CLIENT_THREADS threads."""
    stop = time.perf_counter() + seconds
    done, failed = [0] * CLIENT_THREADS, [0] * CLIENT_THREADS

    def worker(index: int) -> None:
        while time.perf_counter() < stop:
            try:
                conn = client.connect(target.port)
                TlsClient.send_all(conn, b"Ehi")
                TlsClient.recv_exactly(conn, 2)
                conn.close()
                done[index] += 1
            except (OSError, RuntimeError) as err:
                failed[index] += 1
                if failed[index] == 1:
                    progress(f"{target.name}: handshake failed: {err!r}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(CLIENT_THREADS)]
    cpu0, t0 = target.cpu_s(), time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed, cpu = time.perf_counter() - t0, target.cpu_s() - cpu0
    count = sum(done)
    return {
        "rate": count / elapsed,
        "cpu_util": cpu / elapsed,
        "per_cpu_s": count / cpu if cpu > 0 else float("nan"),
        "failed": float(sum(failed)),
    }


def bulk(client: TlsClient, target: Target, total: int, *, upload: bool) -> dict[str, float]:
    """`total` bytes on one connection towards the application (upload) or from it (download)."""
    conn = client.connect(target.port)
    try:
        cpu0, t0 = target.cpu_s(), time.perf_counter()
        if upload:
            TlsClient.send_all(conn, b"S" + struct.pack("!Q", total))
            block, sent = memoryview(b"x" * BLOCK_BYTES), 0
            while sent < total:
                part = block[: min(len(block), total - sent)]
                TlsClient.send_all(conn, part)
                sent += len(part)
            TlsClient.recv_exactly(conn, 1)
        else:
            TlsClient.send_all(conn, b"D" + struct.pack("!Q", total))
            buffer = memoryview(bytearray(BLOCK_BYTES))
            got = 0
            while got < total:
                count = conn.read_into(buffer)
                if count <= 0:
                    raise ConnectionError("download ended early")
                got += count
        elapsed, cpu = time.perf_counter() - t0, target.cpu_s() - cpu0
        if not upload:
            TlsClient.send_all(conn, b"k")
    finally:
        conn.close()
    megabytes = total / 1e6
    return {
        "mb_s": megabytes / elapsed,
        "cpu_util": cpu / elapsed,
        "mb_per_cpu_s": megabytes / cpu if cpu > 0 else float("nan"),
    }


# --------------------------------------------------------------------------- the run


def load_average() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "?"


@contextlib.contextmanager
def workspace(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
