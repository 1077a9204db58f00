"""Ports for tests, without a race: a server binds port 0 and says which port it got.

- `read_ports_file`: what a meshca process started with `--ports-file` reports once every
  listener is bound (`meshca serve`, `meshca agent`, `meshca enforce`).
- `inbound_ports` / `outbound_ports`: the listen ports in `meshca enforce`'s report.
- `reserved_port`: a port nothing listens on, held for as long as the test needs it.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def reserved_port() -> Iterator[int]:
    """A loopback port bound by this process but not listening.

    A connection to it is refused. No other process gets it while it is held: neither a
    server binding port 0 nor an outgoing connection picking its source port. Only a server
    that binds this very port with SO_REUSEADDR (as meshca's servers do) can listen on it, so
    it also keeps a port for a server that is stopped and started again on it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def read_ports_file(
    path: Path, process: subprocess.Popen[Any], *, timeout: float = 30.0, log: Path | None = None
) -> dict[str, Any]:
    """The ports a meshca process wrote to its `--ports-file`, once it has written them.

    Fails at once if the process exits first, with the end of `log` (its output) if given.
    The file is replaced atomically, so once it exists it is whole.
    """
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(FileNotFoundError):
            ports: dict[str, Any] = json.loads(path.read_text())
            return ports
        if process.poll() is not None:
            raise AssertionError(
                f"{process.args!r} exited with {process.returncode} before writing {path}{_tail(log)}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} not written within {timeout}s{_tail(log)}")
        time.sleep(0.02)


def inbound_ports(ports: Mapping[str, Any]) -> dict[int, int]:
    """`meshca enforce`'s ports file -> {application port: the listen port in front of it}."""
    return {int(item["app_port"]): int(item["listen_port"]) for item in ports["inbound"]}


def outbound_ports(ports: Mapping[str, Any]) -> list[int]:
    """`meshca enforce`'s ports file -> the listen port of each --outbound, in the order given."""
    return [int(item["listen_port"]) for item in ports["outbound"]]


def _tail(log: Path | None) -> str:
    if log is None:
        return ""
    try:
        return ":\n" + log.read_text(errors="replace")[-3000:]
    except OSError:
        return ""
