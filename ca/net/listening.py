"""Listening addresses: a port that cannot be had said in one line, and the ports file.

Every long-running meshca process accepts port 0 (the kernel picks a free port) and,
given `--ports-file PATH`, writes the ports it bound there as one JSON object once
every listener is up, so that whoever started it can find them. The file is replaced
atomically (a reader never sees half of it) and removed when the process stops.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path

from ca.common.files import atomic_write
from ca.errors import ConfigError


def listen_error(flag: str, address: str, err: OSError | None = None) -> ConfigError:
    """The error for an address `flag` names that cannot be listened on; `err` is the bind's error
    when known (a gRPC server does not say why)."""
    code = err.errno if err is not None else None
    if code == errno.EADDRINUSE:
        return ConfigError(
            f"{flag} {address}: the address is already in use by another process; stop that process "
            f"or give {flag} another port (port 0 picks a free one)"
        )
    if code == errno.EACCES:
        return ConfigError(
            f"{flag} {address}: permission denied; ports below 1024 need privileges, so give {flag} "
            "a port of 1024 or more"
        )
    if err is not None:
        reason = err.strerror or str(err)
        return ConfigError(
            f"{flag} {address}: cannot listen there ({reason}); give {flag} an address of this host"
        )
    return ConfigError(
        f"{flag} {address}: cannot listen there; the port is in use or the address is not one of this "
        f"host's. Stop the process that uses it or give {flag} another address"
    )


def split_address(address: str) -> tuple[str, int]:
    """`HOST:PORT` (as `ca.common.flags.listen_address` writes it; an IPv6 host may be in brackets)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def check_free(flag: str, address: str) -> None:
    """ConfigError if `address` is already taken (or may not be taken by this user).

    Called before a process writes anything, so that a second instance started on the
    ports of a first stops without creating state of its own. Only a definite refusal
    counts: any other doubt is left to the real bind, which reports it.
    """
    host, port = split_address(address)
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            # As every listener of ours does: a port held only by closing connections is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as err:
                if err.errno in (errno.EADDRINUSE, errno.EACCES):
                    raise listen_error(flag, address, err) from err


def write_ports_file(path: Path | None, ports: Mapping[str, object]) -> None:
    """Write `ports` (name -> bound port, or a list of such objects) to `path` as one JSON line."""
    if path is None:
        return
    try:
        atomic_write(path, json.dumps(ports, sort_keys=True).encode() + b"\n")
    except OSError as err:
        raise ConfigError(
            f"--ports-file {path}: cannot write it ({os.strerror(err.errno or 0)}); give a path in a "
            "writable directory"
        ) from err


def remove_ports_file(path: Path | None) -> None:
    if path is not None:
        with contextlib.suppress(OSError):
            path.unlink()
