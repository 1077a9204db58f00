"""An operator's flags for a running CA's admin API (`--ca-addr` on its renewal port, mutual TLS
with a client certificate the CA issued), as `meshca rotate` and `meshca ca` take them."""

from __future__ import annotations

from pathlib import Path

from tests.support.ca_server import RunningCa


def admin_flags(ca: RunningCa, files: Path, who: str) -> list[str]:
    """`files/<who>.pem` and `files/<who>.key` are the client certificate chain and its key."""
    return [
        "--ca-addr",
        f"127.0.0.1:{ca.server.ports['renew']}",
        "--ca-server-name",
        "localhost",
        "--cert",
        str(files / f"{who}.pem"),
        "--key",
        str(files / f"{who}.key"),
        "--ca-root",
        str(ca.state_dir / "root-cert.pem"),
    ]
